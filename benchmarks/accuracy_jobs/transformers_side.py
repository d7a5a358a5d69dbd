"""The transformers side of a comparison: its model with bertforge's initial weights, a plain
PyTorch fine-tuning loop fed bertforge's batches, and its predictions."""

from __future__ import annotations

import math

import numpy as np
import torch

from .common import Env, log


def bertforge_initial_weights(env: Env, head: str, seed: int, num_labels: int = 2) -> dict[str, torch.Tensor]:
    """The weights a bertforge run with --seed `seed` starts from (the checkpoint, plus the new
    head drawn from the seeded generator), made the way the run makes them."""
    from bertforge.runconfig import ModelArgs
    from bertforge.tasks.common import load_model
    from bertforge.train.runtime import seed_everything

    seed_everything(seed)
    loaded = load_model(ModelArgs(init_checkpoint=str(env.model_dir)), head, num_labels=num_labels)
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def hf_model(env: Env, cls_name: str, initial: dict[str, torch.Tensor], **config_kw):
    """transformers' `cls_name` with bertforge's initial weights, on the device."""
    import transformers
    from bertforge.checkpoint import native_to_hf

    config = transformers.BertConfig.from_pretrained(env.model_dir, **config_kw)
    model = getattr(transformers, cls_name)(config)
    model.load_state_dict(native_to_hf(initial), strict=True)
    return model.to(env.device)


def hf_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """transformers' examples' rule: no decay on biases and LayerNorm weights, by name."""
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]


def autocast(env: Env):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(env.precision)
    if dtype is None:
        return torch.autocast(torch.device(env.device).type, enabled=False)
    return torch.autocast(torch.device(env.device).type, dtype=dtype)


def hf_train(env: Env, model: torch.nn.Module, loader, total_steps: int, train, inputs: tuple[str, ...],
             seed: int) -> list[float]:
    """A plain transformers fine-tuning loop: the model's own loss, torch AdamW (bertforge's
    betas and eps), transformers' linear warmup/decay schedule, gradient clipping. Consumes
    bertforge's step loader, so it sees bertforge's batches in bertforge's order. Returns the loss
    of every step."""
    import transformers

    if env.precision == "fp16":
        raise SystemExit("the transformers side runs fp32 or bf16 (fp16 would need a loss scaler)")
    device = torch.device(env.device)
    optimizer = torch.optim.AdamW(hf_param_groups(model, train.weight_decay), lr=train.learning_rate,
                                  betas=(0.9, 0.999), eps=1e-6, fused=device.type == "cuda" or None)
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, math.floor(train.warmup_proportion * total_steps), total_steps)
    torch.manual_seed(seed)  # dropout
    model.train()
    losses = []
    for step, micro in zip(range(total_steps), iter(loader)):
        (batch,) = micro
        batch = {k: batch[k].to(device, non_blocking=True) for k in inputs}
        with autocast(env):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
        if (step + 1) % 50 == 0:
            log.info("transformers step %d/%d loss %.4f", step + 1, total_steps, float(losses[-1]))
    return torch.stack(losses).cpu().tolist()


@torch.no_grad()
def hf_forward_all(env: Env, model: torch.nn.Module, arrays: dict[str, np.ndarray], outputs: tuple[str, ...],
                   per_token: bool, batch_size: int = 64) -> list[np.ndarray]:
    """Every row of `arrays` through `model` in eval mode, in batches trimmed to their longest
    row; per output name a float32 array: (N, T) per token, -inf past a batch's width (padding),
    else (N, C)."""
    from bertforge.train.batching import make_batch

    model.eval()
    n, T = arrays["input_ids"].shape
    results: dict[str, np.ndarray] = {}
    for lo in range(0, n, batch_size):
        batch = make_batch(arrays, np.arange(lo, min(lo + batch_size, n)))
        feed = {k: batch[k].to(env.device) for k in ("input_ids", "token_type_ids", "attention_mask")}
        with autocast(env):
            out = model(**feed)
        for name in outputs:
            value = getattr(out, name).float().cpu().numpy()  # (B, W) per token, else (B, C)
            if name not in results:
                results[name] = np.full((n, T) if per_token else (n, value.shape[1]), -np.inf, dtype=np.float32)
            results[name][lo:lo + len(value), :value.shape[1]] = value
    return [results[name] for name in outputs]
