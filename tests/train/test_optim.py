"""Optimizers and learning-rate schedules against independent implementations: LAMB as written
in You et al. (2019) with NVIDIA's trust-ratio rule, Google's AdamWeightDecayOptimizer (no bias
correction), the schedules' closed forms (NVIDIA's, Hugging Face's, Google's), and which
parameters are decayed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bertforge.model import build_model
from bertforge.runconfig import RuntimeArgs, TrainArgs
from bertforge.tasks.glue import ClassificationLoss
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.loop import build_train_state
from bertforge.train.optim import (AdamWeightDecay, Lamb, build_optimizer, build_schedule, lr_multiplier,
                                   param_groups)
from bertforge.train.runtime import Runtime
from conftest import random_batch, tiny_config

# ---- LAMB ----------------------------------------------------------------------------------


def lamb_reference(weights: list[np.ndarray], grads: list[list[np.ndarray]], lrs: list[float],
                   decays: list[float], betas=(0.9, 0.999), eps=1e-6, bias_correction=True) -> list[np.ndarray]:
    """LAMB (You et al. 2019, Algorithm 2, with Adam's bias correction), one tensor at a time,
    with NVIDIA's choice of which tensors get the trust ratio. grads[t][i] is tensor i's gradient
    at step t + 1, decays[i] its weight decay. As NVIDIA's FusedLAMB (apex multi_tensor_lamb,
    use_nvlamb=False) the ratio ||w|| / ||r|| applies only where the weight decay is non-zero,
    and is 1 where ||w|| or ||r|| is 0, as in Google's TF LAMB too (the paper's phi(0) = 0 would
    freeze a zero-initialised tensor for good)."""
    b1, b2 = betas
    out = []
    for i, w in enumerate(weights):
        w = w.astype(np.float64).copy()
        m, v = np.zeros_like(w), np.zeros_like(w)
        decay = decays[i]
        for t, (step_grads, lr) in enumerate(zip(grads, lrs), start=1):
            g = step_grads[i]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
            r = (m / c1) / (np.sqrt(v / c2) + eps) + decay * w
            w_norm, r_norm = np.linalg.norm(w), np.linalg.norm(r)
            trust = w_norm / r_norm if decay != 0 and w_norm > 0 and r_norm > 0 else 1.0
            w = w - lr * trust * r
        out.append(w)
    return out


class Toy(nn.Module):
    """2-D and 3-D weights, biases, a LayerNorm, and an all-zero weight (trust ratio 1)."""

    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.kernel = nn.Parameter(torch.randn(3, 4, 2))
        self.zero = nn.Linear(5, 3)
        nn.init.zeros_(self.zero.weight)


def _toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    model = Toy().double()
    for p in model.parameters():  # LayerNorm starts at 1/0: give every tensor its own values
        if p is not model.zero.weight:
            p.data.normal_()
    return model


LRS = [1e-2, 5e-3, 2e-2, 1e-3, 8e-3, 1e-2]


def _run(optimizer, params: list[nn.Parameter], lrs=LRS) -> list[list[np.ndarray]]:
    """Steps with gradients of very different scales; returns them for the reference."""
    rng = np.random.default_rng(1)
    grads = []
    for lr in lrs:
        step_grads = [rng.normal(scale=rng.choice([1e-4, 1e-2, 1.0]), size=p.shape) for p in params]
        for p, g in zip(params, step_grads):
            p.grad = torch.from_numpy(g)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        grads.append(step_grads)
    return grads


def _assert_matches_reference(params, initial, grads, decays, bias_correction=True):
    expected = lamb_reference(initial, grads, LRS, decays, bias_correction=bias_correction)
    for p, want in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-15)


def test_lamb_matches_the_paper_formula():
    model = _toy()
    params = list(model.parameters())
    initial = [p.detach().numpy().copy() for p in params]
    weight_decay = 0.01
    optimizer = build_optimizer(model, "lamb", 1e-2, weight_decay, torch.device("cpu"))
    assert isinstance(optimizer, Lamb)
    grads = _run(optimizer, params)
    _assert_matches_reference(params, initial, grads, [weight_decay if p.ndim > 1 else 0.0 for p in params])
    # the trust ratio was at work: a plain Adam step would have ended elsewhere
    dense = params[0].detach().numpy()
    assert not np.allclose(dense, lamb_reference([initial[0]], [[g[0]] for g in grads], LRS, [0.0])[0])


def test_lamb_without_weight_decay_is_adam_with_bias_correction():
    """weight_decay 0 (a recipe may set it): no tensor gets the trust ratio, as in FusedLAMB."""
    model = _toy()
    params = list(model.parameters())
    initial = [p.detach().numpy().copy() for p in params]
    grads = _run(build_optimizer(model, "lamb", 1e-2, 0.0, torch.device("cpu")), params)
    _assert_matches_reference(params, initial, grads, [0.0] * len(params))


def test_lamb_without_bias_correction():
    """FusedLAMB's bias_correction=False (--adam_bias_correction false): the moments as they are."""
    model = _toy()
    params = list(model.parameters())
    initial = [p.detach().numpy().copy() for p in params]
    optimizer = build_optimizer(model, "lamb", 1e-2, 0.01, torch.device("cpu"), bias_correction=False)
    grads = _run(optimizer, params)
    _assert_matches_reference(params, initial, grads, [0.01 if p.ndim > 1 else 0.0 for p in params],
                              bias_correction=False)


def test_lamb_trust_ratio_follows_weight_decay_not_shape():
    model = _toy()
    no_decay = [model.dense.weight, model.zero.weight]
    decay = [model.dense.bias, model.kernel, model.norm.weight]
    params = no_decay + decay
    initial = [p.detach().numpy().copy() for p in params]
    optimizer = Lamb([{"params": no_decay, "weight_decay": 0.0},
                      {"params": decay, "weight_decay": 0.05}], lr=1e-2)
    grads = _run(optimizer, params)
    _assert_matches_reference(params, initial, grads, [0.0, 0.0, 0.05, 0.05, 0.05])


def test_lamb_in_float32_matches_the_reference_to_float_precision():
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    g = [torch.randn(16, 8) * 1e-2 for _ in range(5)]
    p = nn.Parameter(w.clone())
    optimizer = Lamb([{"params": [p], "weight_decay": 0.01}], lr=1e-2, weight_decay=0.01)
    for grad in g:
        p.grad = grad.clone()
        optimizer.step()
    want = lamb_reference([w.double().numpy()], [[x.double().numpy()] for x in g], [1e-2] * 5, [0.01])[0]
    np.testing.assert_allclose(p.detach().double().numpy(), want, rtol=1e-5, atol=1e-7)


def _fast_route(lists: list[list[torch.Tensor]]) -> bool:
    """When CUDA runs a foreach op as one multi-tensor kernel (ATen ForeachUtils.h,
    check_fast_path_restrictions): one dtype and device, dense tensors, and tensor i of every
    list with the sizes and strides of tensor i of the first list. Otherwise it falls back to
    one kernel per tensor."""
    first = lists[0][0]
    for lst in lists:
        for a, b in zip(lists[0], lst):
            if (b.dtype != first.dtype or b.device != first.device or not b.is_contiguous()
                    or a.shape != b.shape or a.stride() != b.stride()):
                return False
    return True


class CudaLaunches(TorchDispatchMode):
    """Kernels the ops dispatched would launch on CUDA: one per foreach op on its fast route,
    one per tensor off it, one per other op; views launch none. Also notes reads back to host."""

    def __init__(self):
        super().__init__()
        self.launches = 0
        self.off_fast_route: list[str] = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            self.syncs.append(name)
        lists = [a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor)]
        if name.startswith("_foreach_"):
            if _fast_route(lists):
                self.launches += 1
            else:
                self.launches += len(lists[0])
                self.off_fast_route.append(str(func))
        elif not func.is_view:
            self.launches += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weight_decay", [0.01, 0.0])
def test_lamb_step_launches_the_same_kernels_however_many_tensors(weight_decay):
    """A BERT with 2 layers and one with 6 (56 more tensors, 24 of them with the trust ratio):
    one step issues the same foreach ops, all on CUDA's multi-tensor fast route, and reads
    nothing back to the host."""
    counts = []
    for layers in (2, 6):
        model = build_model(tiny_config(num_hidden_layers=layers), "pretraining")
        optimizer = build_optimizer(model, "lamb", 1e-3, weight_decay, torch.device("cpu"))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()  # the first step creates the state
        with CudaLaunches() as launches:
            optimizer.step()
        assert launches.off_fast_route == [] and launches.syncs == []
        counts.append(launches.launches)
    assert counts[0] == counts[1] <= 30, counts


# ---- Adam without bias correction (Google's AdamWeightDecayOptimizer) ------------------------


def google_adam_weight_decay(weights: list[np.ndarray], grads: list[list[np.ndarray]], lrs: list[float],
                             decays: list[float], beta_1=0.9, beta_2=0.999, epsilon=1e-6) -> list[np.ndarray]:
    """Google BERT's optimization.py AdamWeightDecayOptimizer.apply_gradients, one tensor at a
    time: no bias correction, and the decay added to the update before the learning rate."""
    out = []
    for i, param in enumerate(weights):
        param = param.astype(np.float64).copy()
        m, v = np.zeros_like(param), np.zeros_like(param)
        for step_grads, learning_rate in zip(grads, lrs):
            grad = step_grads[i]
            next_m = beta_1 * m + (1.0 - beta_1) * grad
            next_v = beta_2 * v + (1.0 - beta_2) * np.square(grad)
            update = next_m / (np.sqrt(next_v) + epsilon)
            update += decays[i] * param
            param = param - learning_rate * update
            m, v = next_m, next_v
        out.append(param)
    return out


def test_adamw_without_bias_correction_is_googles_adam_weight_decay():
    model = _toy()
    params = list(model.parameters())
    initial = [p.detach().numpy().copy() for p in params]
    optimizer = build_optimizer(model, "adamw", 1e-2, 0.01, torch.device("cpu"), bias_correction=False)
    assert isinstance(optimizer, AdamWeightDecay) and not isinstance(optimizer, Lamb)
    grads = _run(optimizer, params)
    expected = google_adam_weight_decay(initial, grads, LRS, [0.01 if p.ndim > 1 else 0.0 for p in params])
    for p, want in zip(params, expected):
        np.testing.assert_allclose(p.detach().numpy(), want, rtol=1e-12, atol=1e-15)
    # ... and not torch's AdamW, whose bias correction makes the first steps ~3x (1/sqrt(1 - b2)) larger
    torch_model = _toy()
    torch_opt = torch.optim.AdamW(param_groups(torch_model, 0.01), lr=1e-2, eps=1e-6)
    _run(torch_opt, list(torch_model.parameters()))
    assert not np.allclose(model.dense.weight.detach().numpy(), torch_model.dense.weight.detach().numpy(), rtol=1e-3)


def test_train_args_choose_the_optimizer():
    model = build_model(tiny_config(), "qa")
    runtime = Runtime(RuntimeArgs(device="cpu"))
    kinds = {(name, bc): type(build_train_state(model, TrainArgs(optimizer=name, adam_bias_correction=bc),
                                                runtime, 10).optimizer)
             for name in ("adamw", "lamb") for bc in (True, False)}
    assert kinds == {("adamw", True): torch.optim.AdamW, ("adamw", False): AdamWeightDecay,
                     ("lamb", True): Lamb, ("lamb", False): Lamb}
    lamb = build_train_state(model, TrainArgs(optimizer="lamb", adam_bias_correction=False), runtime, 10).optimizer
    assert all(g["bias_correction"] is False for g in lamb.param_groups)


# ---- which parameters decay ------------------------------------------------------------------


def no_decay_names(model: nn.Module) -> set[str]:
    """By what the parameters are, not by their shape: biases and LayerNorm parameters."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            if param_name == "bias" or isinstance(module, nn.LayerNorm):
                names.add(f"{module_name}.{param_name}" if module_name else param_name)
    return names


@pytest.mark.parametrize("head", ["pretraining", "qa", "classification"])
def test_no_weight_decay_on_biases_and_layernorm(head):
    model = build_model(tiny_config(), head)
    groups = param_groups(model, 0.01)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in groups[0]["params"]}
    skipped = {by_id[id(p)] for p in groups[1]["params"]}
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert skipped == no_decay_names(model)
    assert decayed == set(by_id.values()) - skipped
    assert "bert.embeddings.word_embeddings.weight" in decayed


def test_adamw_groups_decay_only_matrices():
    """With zero gradients an AdamW step is weight decay alone: w <- w (1 - lr wd) for the
    decayed group, nothing for biases and LayerNorm."""
    torch.manual_seed(0)
    model = build_model(tiny_config(), "qa")
    lr, wd = 1e-2, 0.1
    optimizer = build_optimizer(model, "adamw", lr, wd, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [wd, 0.0]
    assert all(g["betas"] == (0.9, 0.999) and g["eps"] == 1e-6 for g in optimizer.param_groups)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    skipped = no_decay_names(model)
    for name, p in model.named_parameters():
        if name in skipped:
            assert torch.equal(p, before[name]), name
        else:
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), rtol=1e-6, atol=0)


# ---- schedules -------------------------------------------------------------------------------


def closed_form(step: int, total: int, warmup: int, kind: str = "linear") -> float:
    """Hugging Face's get_linear_schedule_with_warmup, for the update after `step` updates."""
    if step < warmup:
        return step / warmup
    return max(0.0, (total - step) / (total - warmup))


def nvidia_poly_lr(base: float, warmup: float, total: int, degree: float, update: int) -> float:
    """NVIDIA DeepLearningExamples' PolyWarmUpScheduler as run_pretraining.py drives it: the
    schedule is stepped before each optimizer update, so update k (1-based) sees last_epoch = k
    and progress = k / total; warmup is a proportion of the total."""
    progress = update / total
    if progress < warmup:
        return base * progress / warmup
    return base * (1.0 - progress) ** degree


@pytest.mark.parametrize("total, warmup_proportion", [(12, 0.25), (10, 0.0), (7, 0.5)])
def test_linear_schedule_is_hugging_faces(total, warmup_proportion):
    """The fine-tuning schedule against transformers' own get_linear_schedule_with_warmup."""
    from transformers import get_linear_schedule_with_warmup

    warmup = math.floor(warmup_proportion * total)
    ours_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    theirs_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    ours = build_schedule(ours_opt, total, warmup_proportion, "linear")
    theirs = get_linear_schedule_with_warmup(theirs_opt, warmup, total)
    for step in range(total + 1):
        assert ours_opt.param_groups[0]["lr"] == pytest.approx(theirs_opt.param_groups[0]["lr"], abs=1e-15), step
        assert lr_multiplier(step, total, warmup_proportion, "linear") == pytest.approx(
            closed_form(step, total, warmup), abs=1e-15)
        ours_opt.step(), theirs_opt.step()
        ours.step(), theirs.step()


@pytest.mark.parametrize("total, warmup, degree, base", [
    (7038, 0.2843, 0.5, 6e-3),  # NVIDIA's BERT-large phase 1
    (1563, 0.128, 0.5, 4e-3),  # phase 2
    (50, 0.0, 1.0, 1e-4),  # Google's optimization.py shape (power 1), no warmup
    (13, 0.5, 2.0, 1.0),
])
def test_poly_schedule_is_nvidias(total, warmup, degree, base):
    """Every update's learning rate equals NVIDIA's formula; in particular the decay runs over
    all steps, so after warmup the rate is not above NVIDIA's (it was 18.2% above in phase 1)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    schedule = build_schedule(optimizer, total, warmup, "poly", degree)
    for update in range(1, total + 1):
        want = nvidia_poly_lr(base, warmup, total, degree, update)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12, abs=1e-18), update
        optimizer.step()
        schedule.step()
    assert nvidia_poly_lr(base, warmup, total, degree, total) == 0.0


def google_lr(base: float, total: int, warmup_steps: int, update: int) -> float:
    """Google BERT's optimization.py: polynomial_decay (power 1, to 0) of the global step, with
    linear warmup over the first warmup_steps; update k (1-based) runs at global step k - 1."""
    global_step = update - 1
    decayed = base * (1.0 - min(global_step, total) / total)
    if global_step < warmup_steps:
        return base * global_step / warmup_steps
    return decayed


@pytest.mark.parametrize("total, warmup_proportion", [(50, 0.2), (40, 0.0)])
def test_poly_power_one_is_googles_schedule_one_update_behind(total, warmup_proportion):
    """Where warmup_proportion x total is whole (Google's warmup is its floor): Google's update k
    has the rate poly with power 1.0 gives update k - 1; its first update has rate 0 with warmup,
    the peak rate without."""
    warmup_steps = math.floor(warmup_proportion * total)
    assert google_lr(1.0, total, warmup_steps, 1) == (0.0 if warmup_steps else 1.0)
    for update in range(2, total + 1):
        poly = lr_multiplier(update - 2, total, warmup_proportion, "poly", power=1.0)  # update k - 1
        assert google_lr(1.0, total, warmup_steps, update) == pytest.approx(poly, abs=1e-15), update
    # not the same update: poly's update k is a step of decay further
    assert lr_multiplier(total // 2, total, warmup_proportion, "poly", 1.0) != pytest.approx(
        google_lr(1.0, total, warmup_steps, total // 2 + 1))


def test_trainer_logs_the_learning_rate_each_step_used(tmp_path):
    """metrics.jsonl's lr at step k is the rate of update k: peak x closed_form(k - 1)."""
    torch.manual_seed(0)
    config = tiny_config()
    arrays = {k: v.numpy() for k, v in random_batch(config, 32, 16).items()}
    arrays["labels"] = np.arange(32) % 2
    total, peak = 5, 1e-3
    args = TrainArgs(train_batch_size=4, learning_rate=peak, warmup_proportion=0.4, max_steps=total,
                     log_every=1)
    trainer = Trainer(build_model(config, "classification"), ClassificationLoss(regression=False),
                      ArrayStepLoader(arrays, StepPlan(4, 1, 1), rank=0, seed=0), args,
                      Runtime(RuntimeArgs(device="cpu")), tmp_path, total, progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["lr"] for r in records}
    assert logged == pytest.approx({k: peak * closed_form(k - 1, total, 2) for k in range(1, total + 1)},
                                   abs=1e-15)


def test_lamb_takes_a_trust_ratio_per_stacked_part():
    """A fused (3H, H) query/key/value weight with parts=3 steps exactly as its three (H, H)
    blocks stepped as separate tensors (as NVIDIA's and transformers' models hold them)."""
    torch.manual_seed(0)
    h = 8
    fused = torch.nn.Parameter(torch.randn(3 * h, h))
    blocks = [torch.nn.Parameter(b.detach().clone() * s) for b, s in zip(fused.detach().chunk(3), (1.0, 1.0, 1.0))]
    with torch.no_grad():  # parts of very different scale, so one shared ratio would differ
        fused[h:2 * h] *= 10.0
        blocks[1] *= 10.0
    grads = torch.randn(3 * h, h)
    one = Lamb([{"params": [fused], "weight_decay": 0.01, "parts": [3]}], lr=1e-2, weight_decay=0.01)
    three = Lamb([{"params": blocks, "weight_decay": 0.01}], lr=1e-2, weight_decay=0.01)
    shared = torch.nn.Parameter(fused.detach().clone())
    unsplit = Lamb([{"params": [shared], "weight_decay": 0.01}], lr=1e-2, weight_decay=0.01)
    for _ in range(3):
        fused.grad, shared.grad = grads.clone(), grads.clone()
        for b, g in zip(blocks, grads.chunk(3)):
            b.grad = g.clone()
        one.step(), three.step(), unsplit.step()
    torch.testing.assert_close(fused.detach(), torch.cat([b.detach() for b in blocks]), rtol=0, atol=1e-7)
    assert (fused - shared).abs().max() > 1e-4  # one ratio over the whole weight is another step


def test_model_declares_its_fused_qkv_parts():
    model = build_model(tiny_config(), "qa")
    groups = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    stacked = {names[id(p)] for g in groups for p, k in zip(g["params"], g["parts"]) if k == 3}
    layers = tiny_config().num_hidden_layers
    assert stacked == {f"bert.encoder.layers.{i}.attention.qkv.{w}" for i in range(layers) for w in ("weight", "bias")}
