"""Optimizers and learning-rate schedules of the BERT recipes.

- AdamW for fine-tuning: torch's AdamW (fused on CUDA, foreach elsewhere), with Adam's bias
  correction, as Hugging Face's examples and Trainer use it. The reference recipes fine-tune
  without bias correction: Google's AdamWeightDecayOptimizer (optimization.py) and NVIDIA's
  run_squad.py (BertAdam, or apex FusedAdam(bias_correction=False) with fp16). `AdamWeightDecay`
  is that rule (--adam_bias_correction false).
- LAMB for pretraining (You et al., 2019) as NVIDIA's FusedLAMB computes it, written with
  foreach ops: one kernel launch per op over all tensors, not a Python loop per parameter.
- Weight decay skips biases and LayerNorm weights (exactly the 1-D parameters of BERT); LAMB's
  trust ratio applies where weight decay is non-zero, as NVIDIA's FusedLAMB does (so with
  --weight_decay 0 LAMB is Adam).
- Schedules: linear warmup then linear decay (fine-tuning, Hugging Face's); NVIDIA's
  PolyWarmUpScheduler (pretraining, degree 0.5). Google's optimization.py decays linearly over
  all steps too, but counts the updates already made: its update k has what poly with power 1.0
  gives update k - 1 (and its warmup is floor(warmup_proportion x steps) whole steps).
- A schedule follows the updates the optimizer has applied: an update that fp16 loss scaling
  skipped does not advance it, as NVIDIA's PolyWarmUpScheduler (which reads the optimizer's step
  count) and transformers' Trainer (which does not step the schedule after a skipped update) do.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from bertforge.runconfig import OptimizerName, ScheduleName

BETAS = (0.9, 0.999)
EPS = 1e-6  # Google's and NVIDIA's BERT recipes (torch's default is 1e-8)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices, none on biases and LayerNorm parameters. Each group also lists,
    per parameter, how many of the reference model's tensors it stacks (`parts`: 3 for the fused
    query/key/value weight), for the per-tensor trust ratio of Lamb."""
    from bertforge.model import stacked_parts

    stacked = stacked_parts(model)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": group, "weight_decay": wd, "parts": [stacked.get(p, 1) for p in group]}
            for group, wd in ((decay, weight_decay), (no_decay, 0.0))]


class AdamWeightDecay(Optimizer):
    """Adam with decoupled weight decay, bias correction optional: Google's
    AdamWeightDecayOptimizer with bias_correction=False (and NVIDIA's BertAdam without its
    per-tensor clipping); torch's AdamW with bias_correction=True.

    Per tensor w with gradient g, at step t of its parameter group:
        m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
        u = m' / (sqrt(v') + eps) + wd * w,  w = w - lr * u
    with m' = m / (1 - b1^t), v' = v / (1 - b2^t) under bias correction, else m' = m, v' = v.
    Each parameter group runs as a fixed number of foreach ops per (device, dtype), with nothing
    read back to the host. The step count is the group's (all tensors of a group step together),
    a host integer: the learning-rate schedule reads it for free.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = BETAS, eps: float = EPS,
                 weight_decay: float = 0.01, bias_correction: bool = True):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, step=0))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            given = group.get("parts") or [1] * len(group["params"])
            params = [p for p in group["params"] if p.grad is not None]
            parts = [k for p, k in zip(group["params"], given) if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            for p, state in zip(params, states):
                if not state:  # the first step only
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            group["step"] += 1
            tensors = [params, [p.grad for p in params], [s["exp_avg"] for s in states],
                       [s["exp_avg_sq"] for s in states]]
            grouped = Optimizer._group_tensors_by_device_and_dtype(tensors, with_indices=True)
            for (w, g, m, v), indices in grouped.values():
                denom, c = self._moments(g, m, v, group)
                self._apply(w, m, denom, c, group, [parts[i] for i in indices])
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        # `parts` describes this model's parameters; it is not restored from the checkpoint.
        parts = [group.get("parts") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, p in zip(self.param_groups, parts):
            if p is not None:
                group["parts"] = p

    @staticmethod
    def _moments(g: list[Tensor], m: list[Tensor], v: list[Tensor], group: dict) -> tuple[list[Tensor], float]:
        """Update the moments; returns (denom, c) with m' / (sqrt(v') + eps) = c m / denom."""
        (beta1, beta2), eps, t = group["betas"], group["eps"], group["step"]
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        # Bias-corrected: m' / (sqrt(v') + eps) = c m / (sqrt(v) + eps sqrt(1 - b2^t)) with
        # c = sqrt(1 - b2^t) / (1 - b1^t): the corrections ride on ops that run anyway.
        bias1, bias2 = (1 - beta1 ** t, 1 - beta2 ** t) if group["bias_correction"] else (1.0, 1.0)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps * math.sqrt(bias2))
        return denom, math.sqrt(bias2) / bias1

    @staticmethod
    def _apply(w: list[Tensor], m: list[Tensor], denom: list[Tensor], c: float, group: dict,
               parts: list[int]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        if wd != 0:  # w - lr wd w, from the weights before the Adam step (decoupled)
            torch._foreach_mul_(w, 1 - lr * wd)
        torch._foreach_addcdiv_(w, m, denom, value=-lr * c)


class Lamb(AdamWeightDecay):
    """LAMB as NVIDIA's FusedLAMB computes it (apex `multi_tensor_lamb`, use_nvlamb=False, as
    DeepLearningExamples' BERT pretraining runs it): Adam's update direction, scaled per tensor
    by the trust ratio ||w|| / ||update|| where the tensor's weight decay is non-zero.

    Per tensor w with gradient g, at step t of its parameter group:
        m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * w
        w = w - lr * r * u,  r = ||w|| / ||u|| if wd != 0 (1 where either norm is 0), else 1

    so biases and LayerNorm parameters (wd = 0) take plain Adam steps, and so does every tensor
    of a run with weight decay 0. bias_correction=False drops the (1 - b^t) divisions, as
    FusedLAMB's flag of that name does. Each parameter group runs as one foreach pass per
    (device, dtype), with no per-tensor kernel and nothing read back to the host.

    A parameter that stacks several of the reference model's tensors (a group's optional
    `parts`, one count per parameter: 3 for the fused query/key/value weight) takes one trust
    ratio per part, as NVIDIA's and transformers' separate query, key and value weights do.
    """

    @staticmethod
    def _apply(w: list[Tensor], m: list[Tensor], denom: list[Tensor], c: float, group: dict,
               parts: list[int]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        if wd == 0:  # no trust ratio: the Adam step, straight into the weights
            torch._foreach_addcdiv_(w, m, denom, value=-lr * c)
            return
        update = torch._foreach_mul(w, wd)
        torch._foreach_addcdiv_(update, m, denom, value=c)
        del denom
        if any(k > 1 for k in parts):  # a trust ratio per stacked part
            w, update = Lamb._split_parts(w, parts), Lamb._split_parts(update, parts)
        w_norm = torch.stack(torch._foreach_norm(w))  # (n,), before the weights move
        u_norm = torch.stack(torch._foreach_norm(update))
        trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)  # (n,)
        torch._foreach_addcmul_(w, update, Lamb._per_element(trust, update), value=-lr)
    @staticmethod
    def _split_parts(tensors: list[torch.Tensor], parts: list[int]) -> list[torch.Tensor]:
        """Each tensor as its `parts` row blocks (views, so in-place updates reach it)."""
        return [block for x, k in zip(tensors, parts) for block in (x.chunk(k) if k > 1 else (x,))]

    @staticmethod
    def _per_element(scalars: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """scalars[i] spread over the shape of tensors[i], for every i: views of one buffer.

        No foreach op takes per-tensor scalars from device memory (a list of 0-d tensors takes
        the per-tensor fallback on CUDA: one kernel per tensor), so they are written out: one
        kernel, with the memory traffic of the per-tensor multiply it replaces."""
        numels = [t.numel() for t in tensors]
        repeats = torch.tensor(numels, pin_memory=scalars.is_cuda).to(scalars.device, non_blocking=True)
        flat = torch.repeat_interleave(scalars, repeats, output_size=sum(numels))
        return list(torch._utils._unflatten_dense_tensors(flat, tensors))  # views made in C++



def build_optimizer(model: nn.Module, name: OptimizerName, lr: float, weight_decay: float,
                    device: torch.device, bias_correction: bool = True) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay, bias_correction=bias_correction)
    if not bias_correction:
        return AdamWeightDecay(groups, lr=lr, weight_decay=weight_decay, bias_correction=False)
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS, eps=EPS, fused=fused or None,
                             foreach=None if fused else True)


def lr_multiplier(step: int, total_steps: int, warmup_proportion: float, kind: ScheduleName,
                  power: float = 0.5) -> float:
    """Multiplier of the peak learning rate for the optimizer update that follows `step`
    completed updates (update number step + 1).

    linear (Hugging Face's get_linear_schedule_with_warmup): W = floor(warmup_proportion * total);
        step < W: step / W; else (total - step) / (total - W).
    poly (NVIDIA's PolyWarmUpScheduler, which steps the schedule before each update, so update k
        uses progress p = k / total): p < warmup_proportion: p / warmup_proportion;
        else (1 - p) ** power. The decay is measured over all steps, warmup included, and drops
        at the end of warmup from 1 to (1 - warmup_proportion) ** power, exactly as NVIDIA's does.
    """
    if kind == "linear":
        warmup = math.floor(warmup_proportion * total_steps)
        if step < warmup:
            return step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    progress = (step + 1) / total_steps
    if progress < warmup_proportion:
        return progress / warmup_proportion
    return max(0.0, 1.0 - progress) ** power


def updates_applied(optimizer: Optimizer) -> int | Tensor | None:
    """How many updates `optimizer` has applied; an update fp16 loss scaling skipped is not one.

    A host integer where the optimizer counts on the host: ours (a count per group) and torch's
    Adam/AdamW unfused (a CPU tensor per parameter). A tensor on the parameters' device where it
    counts there: torch's fused or capturable Adam/AdamW, which also skip an overflowed update
    on the device. None for an optimizer that keeps no count (SGD)."""
    if "step" in optimizer.param_groups[0]:
        return max(group["step"] for group in optimizer.param_groups)
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return None
    on_device = optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")
    for group in optimizer.param_groups:
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if step is not None:
                return step if on_device else int(step)
    return 0


def build_schedule(optimizer: Optimizer, total_steps: int, warmup_proportion: float,
                   kind: ScheduleName = "linear", power: float = 0.5) -> LambdaLR:
    """The rate of each update: peak x lr_multiplier(updates the optimizer has applied).

    An update skipped by fp16 loss scaling leaves the rate where it was (see the module
    docstring), with nothing read back from the device: where the optimizer counts on the host,
    the multiplier is computed there; where it counts on the device (fused AdamW), the rate is a
    device tensor looked up in the schedule's table of multipliers, indexed by that count. An
    optimizer that keeps no count advances one step per schedule step."""
    table: dict[torch.device, Tensor] = {}

    def multiplier(schedule_steps: int) -> float | Tensor:
        done = updates_applied(optimizer)
        if done is None:
            done = schedule_steps
        if not isinstance(done, Tensor):
            return lr_multiplier(done, total_steps, warmup_proportion, kind, power)
        if done.device not in table:
            values = [lr_multiplier(k, total_steps, warmup_proportion, kind, power) for k in range(total_steps + 1)]
            table[done.device] = torch.tensor(values, dtype=torch.float32, device=done.device)
        index = done.detach().reshape(1).long().clamp(0, total_steps)
        return torch.index_select(table[done.device], 0, index).reshape(())

    return LambdaLR(optimizer, multiplier)


def apply_schedule(schedule: LambdaLR) -> None:
    """Set every group's rate for the next update from the schedule as it stands (base rates,
    the optimizer's update count), without counting a step: after a resume restored the
    optimizer, or changed the peak rate or the run's length."""
    lambdas: list[Callable] = schedule.lr_lambdas
    for group, base, fn in zip(schedule.optimizer.param_groups, schedule.base_lrs, lambdas, strict=True):
        value = base * fn(schedule.last_epoch)
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
    schedule._last_lr = [g["lr"].clone() if isinstance(g["lr"], Tensor) else g["lr"]
                         for g in schedule.optimizer.param_groups]
