"""Optimizers and learning-rate schedules of the BERT recipes.

- AdamW for fine-tuning (Google's AdamWeightDecayOptimizer is AdamW without bias correction;
  Hugging Face and NVIDIA use torch's AdamW with it; we do too), fused on CUDA, foreach elsewhere.
- LAMB for pretraining (You et al., 2019), written with foreach ops: one kernel launch per op
  over all tensors, not a Python loop per parameter.
- Weight decay skips biases and LayerNorm weights (exactly the 1-D parameters of BERT); LAMB's
  trust ratio applies where weight decay is non-zero, as NVIDIA's FusedLAMB does (so with
  --weight_decay 0 LAMB is Adam with bias correction).
- Schedules: linear warmup then linear decay (fine-tuning, Hugging Face's); NVIDIA's
  PolyWarmUpScheduler (pretraining, degree 0.5; with degree 1.0 it is Google's optimization.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from bertforge.runconfig import OptimizerName, ScheduleName


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


class Lamb(Optimizer):
    """LAMB as NVIDIA's FusedLAMB computes it (apex `multi_tensor_lamb`, use_nvlamb=False, as
    DeepLearningExamples' BERT pretraining runs it): Adam's update direction, scaled per tensor
    by the trust ratio ||w|| / ||update|| where the tensor's weight decay is non-zero.

    Per tensor w with gradient g, at step t of its parameter group:
        m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * w
        w = w - lr * r * u,  r = ||w|| / ||u|| if wd != 0 (1 where either norm is 0), else 1

    so biases and LayerNorm parameters (wd = 0) take plain Adam steps, and so does every tensor
    of a run with weight decay 0. Each parameter group runs as one foreach pass per (device,
    dtype), with no per-tensor kernel and nothing read back to the host.

    A parameter that stacks several of the reference model's tensors (a group's optional
    `parts`, one count per parameter: 3 for the fused query/key/value weight) takes one trust
    ratio per part, as NVIDIA's and transformers' separate query, key and value weights do.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        # One step count per group (as FusedLAMB keeps it): all tensors of a group step together.
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, step=0))

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
                self._pass(w, g, m, v, group, [parts[i] for i in indices])
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        # `parts` describes this model's parameters; it is not restored from the checkpoint.
        parts = [group.get("parts") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, p in zip(self.param_groups, parts):
            if p is not None:
                group["parts"] = p

    @staticmethod
    def _pass(w: list[torch.Tensor], g: list[torch.Tensor], m: list[torch.Tensor],
              v: list[torch.Tensor], group: dict, parts: list[int]) -> None:
        """One LAMB step of tensors on one device with one dtype: a fixed number of foreach ops
        (one multi-tensor kernel each on CUDA), however many tensors."""
        (beta1, beta2), eps, lr, wd, t = (group["betas"], group["eps"], group["lr"],
                                          group["weight_decay"], group["step"])
        torch._foreach_lerp_(m, g, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, g, g, value=1 - beta2)
        # m_hat / (sqrt(v_hat) + eps) = c m / (sqrt(v) + eps sqrt(1 - b2^t)) with
        # c = sqrt(1 - b2^t) / (1 - b1^t): the bias corrections ride on ops that run anyway.
        bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
        c = math.sqrt(bias2) / bias1
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, eps * math.sqrt(bias2))
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
                    device: torch.device) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay)
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6,
                             fused=fused or None, foreach=None if fused else True)


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


def build_schedule(optimizer: Optimizer, total_steps: int, warmup_proportion: float,
                   kind: ScheduleName = "linear", power: float = 0.5) -> LambdaLR:
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, warmup_proportion, kind, power))
