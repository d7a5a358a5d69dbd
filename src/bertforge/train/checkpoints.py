"""Resumable training checkpoints, written atomically.

`<output_dir>/checkpoints/step_00001000/` holds the model (`model.safetensors`, bertforge
names), the optimizer, schedule, loss scaler and data position (`trainer.pt`), and each rank's
random-number generator states (`rng_rank<r>.pt`). Everything is written into a hidden
`.tmp-step_...` directory first and renamed into place only when complete, so a crash leaves
either the previous checkpoint or the new one, never half of one; only then are the oldest
checkpoints beyond `keep` removed.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bertforge.errors import CheckpointError

STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[Path]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_training_checkpoint(output_dir: Path, step: int, model_state: dict, trainer_state: dict,
                             rng: dict, rank: int, barrier, keep: int) -> Path:
    """Called on every rank: rank 0 writes the shared state, every rank its RNG state."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(rng, tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(trainer_state, tmp / "trainer.pt")
    barrier()
    if rank == 0:
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # a re-run of the same step: replace the old copy
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def load_training_checkpoint(path: Path, rank: int) -> tuple[dict, dict, dict]:
    """-> (model state, trainer state, this rank's RNG state)."""
    rng_file = path / f"rng_rank{rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{path}: no RNG state for rank {rank}; was it written with fewer processes? "
                              "Resume with the same number of processes")
    try:
        model_state = load_file(str(path / "model.safetensors"))
        trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=False)
        rng = torch.load(rng_file, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read training checkpoint ({e})") from None
    return model_state, trainer_state, rng
