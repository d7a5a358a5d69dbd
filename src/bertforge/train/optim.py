"""Optimizers and learning-rate schedules of the BERT recipes.

- AdamW for fine-tuning (Google's AdamWeightDecayOptimizer is AdamW without bias correction;
  Hugging Face and NVIDIA use torch's AdamW with it; we do too), fused on CUDA, foreach elsewhere.
- LAMB for pretraining (You et al., 2019), written with foreach ops: one kernel launch per op
  over all tensors, not a Python loop per parameter.
- Weight decay, and LAMB's trust ratio, skip biases and LayerNorm weights: exactly the 1-D
  parameters of BERT.
- Schedules: linear warmup then linear decay (fine-tuning); linear warmup then polynomial
  decay (pretraining, NVIDIA's PolyWarmUpScheduler with degree 0.5).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

OptimizerName = Literal["adamw", "lamb"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay, "adapt": True},
            {"params": no_decay, "weight_decay": 0.0, "adapt": False}]


class Lamb(Optimizer):
    """LAMB: Adam's update direction scaled per tensor by the trust ratio ||w|| / ||update||.

    Per tensor w with gradient g (step t, bias-corrected moments as NVIDIA's FusedLAMB):
        m = b1 m + (1 - b1) g,  v = b2 v + (1 - b2) g^2
        u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * w
        w = w - lr * r * u,  r = ||w|| / ||u|| (1 where either norm is 0; 1 for groups with adapt=False)
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, adapt=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            exp_avg = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
            # One step counter per group: all tensors of a group step together.
            t = self.state[params[0]]["step"]
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1 - beta2)
            bias1, bias2 = 1 - beta1 ** t, 1 - beta2 ** t
            denom = torch._foreach_div(exp_avg_sq, bias2)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(exp_avg, bias1)
            torch._foreach_div_(update, denom)
            if group["weight_decay"]:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])
            if group["adapt"]:
                w_norm = torch.stack(torch._foreach_norm(params))
                u_norm = torch.stack(torch._foreach_norm(update))
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                torch._foreach_mul_(update, list(trust.unbind()))
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: OptimizerName, lr: float, weight_decay: float,
                    device: torch.device) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "lamb":
        return Lamb(groups, lr=lr, weight_decay=weight_decay)
    for g in groups:
        g.pop("adapt")
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-6,
                             fused=fused or None, foreach=None if fused else True)


ScheduleName = Literal["linear", "poly"]


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, kind: ScheduleName,
                  power: float = 0.5) -> float:
    """Multiplier of the peak learning rate after `step` optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "linear":
        return 1.0 - progress
    return (1.0 - progress) ** power


def build_schedule(optimizer: Optimizer, total_steps: int, warmup_proportion: float,
                   kind: ScheduleName = "linear", power: float = 0.5) -> LambdaLR:
    warmup = int(math.floor(warmup_proportion * total_steps))
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, warmup, kind, power))
