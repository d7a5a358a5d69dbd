"""Resumable training checkpoints, written atomically, read without running code.

`<output_dir>/checkpoints/step_00001000/` holds
- `model.safetensors`: the weights (bertforge names);
- `trainer.pt`: optimizer, schedule and loss-scaler states (tensors and plain numbers only, so
  it loads with `torch.load(weights_only=True)`: a tampered file cannot run code);
- `trainer.json`: the step, the data position, the run's total steps and seed, the optimizer's
  class, and when it was written;
- `rng_rank<r>.pt`: each rank's random-number generator states (tensors and numbers only);
- where the run describes its model (the Trainer's `describe`): `config.json`, `vocab.txt` and
  `bertforge.json`, which make the directory a native checkpoint `--init_checkpoint` loads alone.

Everything is written into a hidden `.tmp-step_...` directory first and renamed into place only
when complete, so a crash leaves either the previous checkpoint or the new one, never half of
one; a write that fails (a full disk) removes its hidden directory and raises `WriteError`
naming the space it needed. "Latest" means most recently written (not highest step number), so
a run resumed from an older checkpoint by hand continues its own line. Rotation never removes
the checkpoint just written.

A checkpoint that cannot be read, or whose files parse but do not hold what a resume needs, is
skipped with a warning when choosing where to resume; when none is left and the run directory
holds a finished model, `--resume` is refused rather than retraining over that model.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from torch import Tensor

from bertforge.errors import CheckpointError, WriteError
from bertforge.fileio import WRITE_FAILURES, check_free_space, default_file_mode, write_error

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "trainer.pt", "trainer.json"
FINISHED_MODEL = "model.safetensors"  # what a finished run writes into its output directory


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rng_rank{rank}.pt"


def _written_at(path: Path) -> int:
    try:
        return int(json.loads((path / META_FILE).read_text())["written_at_ns"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # unreadable metadata sorts first: the oldest, the first to go


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint directories, oldest written first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: (_written_at(p), p.name))


# ---- random-number generator states as tensors and numbers -----------------------------------


def rng_state() -> dict:
    """This process's generator states, in types `torch.load(weights_only=True)` accepts."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.accelerator.is_available():
        module = getattr(torch, torch.accelerator.current_accelerator().type, None)
        if module is not None and hasattr(module, "get_rng_state_all"):
            state["accelerator"] = module.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    torch.set_rng_state(state["torch"])
    if "accelerator" in state and torch.accelerator.is_available():
        module = getattr(torch, torch.accelerator.current_accelerator().type, None)
        if module is not None and hasattr(module, "set_rng_state_all"):
            module.set_rng_state_all(state["accelerator"])


# ---- writing ---------------------------------------------------------------------------------


@dataclass
class TrainingCheckpoint:
    """What a resume needs, read back from one checkpoint directory."""

    path: Path
    model: dict
    state: dict  # optimizer, schedule, scaler
    meta: dict  # step, loader, total_steps, seed, optimizer (its class), written_at_ns
    rng: dict


def save_training_checkpoint(output_dir: Path, step: int, model_state: dict, state: dict, meta: dict,
                             rng: dict, rank: int, barrier, keep: int,
                             describe: Callable[[Path], None] | None = None) -> Path:
    """Called on every rank: rank 0 writes the shared state (and `describe(directory)`'s files),
    every rank its RNG state."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}"
    needed = tensor_bytes(model_state) + tensor_bytes(state)
    if rank == 0:
        with _write_errors(final, tmp, needed):
            if tmp.exists():
                shutil.rmtree(tmp)
            check_free_space(root, needed, f"checkpoint {final.name}")
            tmp.mkdir(parents=True)
    barrier()
    with _write_errors(final, tmp, needed):
        torch.save(rng, rng_file(tmp, rank))
        if rank == 0:
            save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()},
                      str(tmp / MODEL_FILE), metadata={"format": "pt"})
            torch.save(state, tmp / STATE_FILE)
            (tmp / META_FILE).write_text(json.dumps({**meta, "step": step, "written_at_ns": time.time_ns()},
                                                    indent=2) + "\n")
            if describe is not None:
                describe(tmp)
    barrier()
    if rank == 0:
        with _write_errors(final, tmp, needed):
            for f in tmp.iterdir():
                os.chmod(f, default_file_mode())  # safetensors writes 0600
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # a re-run of the same step: replace the old copy
                shutil.rmtree(final)
            os.rename(tmp, final)
        # Keep the newest `keep` (this one included), oldest written removed first.
        others = [p for p in list_checkpoints(output_dir) if p != final]
        for old in others[:max(0, len(others) + 1 - keep)]:
            shutil.rmtree(old)
    barrier()
    return final


def tensor_bytes(obj: object) -> int:
    """What the tensors in a (nested) state take."""
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@contextlib.contextmanager
def _write_errors(final: Path, tmp: Path, needed: int):
    """A failed write (torch.save and safetensors report a full disk as RuntimeError /
    SafetensorError from deep inside their writers) as one line, its hidden directory removed
    so that it does not hold the space; the earlier checkpoints stay."""
    try:
        yield
    except (*WRITE_FAILURES, WriteError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = e if isinstance(e, WriteError) else write_error(final, e, needed)
        raise WriteError(f"{reason}; the checkpoint was not written, earlier ones are kept") from None


# ---- reading ---------------------------------------------------------------------------------


def load_training_checkpoint(path: Path, rank: int) -> TrainingCheckpoint:
    """Read and check one checkpoint; CheckpointError says what is wrong with it."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    for name in (MODEL_FILE, STATE_FILE, META_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint ({name} is missing)")
    if not rng_file(path, rank).is_file():
        written = sorted(p.name for p in path.glob("rng_rank*.pt"))
        raise CheckpointError(f"{path}: no random-generator state for rank {rank} (the checkpoint has "
                              f"{', '.join(written) or 'none'}); resume with as many processes as wrote it")
    try:
        model = load_file(str(path / MODEL_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / MODEL_FILE}: unreadable ({e})") from None
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        int(meta["step"]), int(meta["total_steps"])
        if not isinstance(meta["loader"], dict):
            raise TypeError(f"'loader' is {type(meta['loader']).__name__}, not the data position (an object)")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointError(f"{path / META_FILE}: unreadable ({type(e).__name__}: {e})") from None
    state = _load_tensors_only(path / STATE_FILE)
    _check_trainer_state(state, path / STATE_FILE)
    rng = _load_tensors_only(rng_file(path, rank))
    return TrainingCheckpoint(path, model, state, meta, rng)


def _check_trainer_state(state: dict, path: Path) -> None:
    """The optimizer, schedule and loss-scaler states a resume loads, each a dict; the
    optimizer's with its per-parameter state and parameter groups."""
    missing = [k for k in ("optimizer", "schedule", "scaler") if not isinstance(state.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: holds no {', '.join(missing)} state (found: "
                              f"{', '.join(map(str, state)) or 'an empty dict'})")
    optimizer, groups = state["optimizer"], state["optimizer"].get("param_groups")
    if not isinstance(optimizer.get("state"), dict) or not isinstance(groups, list) or not groups \
            or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path}: the optimizer state lacks its 'state' or its 'param_groups'")


def check_loader_state(ckpt: Path, current: dict) -> None:
    """The data position a checkpoint stored against the shape of this run's (the same keys):
    a checkpoint of another task's data cannot continue this run's."""
    try:
        stored = json.loads((ckpt / META_FILE).read_text(encoding="utf-8"))["loader"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # load_training_checkpoint says what is wrong with it
    if isinstance(stored, dict) and set(stored) != set(current):
        raise CheckpointError(f"cannot resume from {ckpt}: its data position ({', '.join(sorted(stored))}) "
                              f"is not one of this run's data ({', '.join(sorted(current))}); it is a "
                              "checkpoint of another task or data set")


def _load_tensors_only(path: Path) -> dict:
    """torch.load with weights_only=True: tensors, numbers, strings and containers, no code."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds pickled objects other than tensors and plain data; refused, "
                              "since loading them could run code") from None
    except Exception as e:  # noqa: BLE001 - every other failure means the file is damaged
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable ({first})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def latest_intact_checkpoint(output_dir: Path, rank: int) -> TrainingCheckpoint | None:
    """The most recently written checkpoint that reads back completely; the ones that do not are
    reported and passed over. None when there is none; CheckpointError instead when the
    directory holds a finished model, which starting from step 0 would replace."""
    found = list_checkpoints(output_dir)
    for path in reversed(found):
        try:
            return load_training_checkpoint(path, rank)
        except CheckpointError as e:
            log.warning("skipping a damaged checkpoint: %s", e)
    if (output_dir / FINISHED_MODEL).is_file():
        what = (f"none of its {len(found)} checkpoint(s) can be read back" if found
                else "it has no checkpoint to resume from")
        raise CheckpointError(f"--resume: {output_dir} holds a finished model ({FINISHED_MODEL}), and {what}; "
                              "starting again from step 0 would replace that model. Resume from a checkpoint "
                              "by hand (--resume PATH), or train anew in another --output_dir")
    return None


# ---- resuming the optimizer ------------------------------------------------------------------

# Optimizer settings a resumed run reports when they differ from the checkpoint's (it applies all
# of its own settings; these are the ones a command line or a version of bertforge can change).
REPORTED_SETTINGS = ("weight_decay", "betas", "eps", "bias_correction")


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: TrainingCheckpoint, flags: str) -> dict[str, list]:
    """Load the checkpoint's moments and update counts into `optimizer` and keep its own
    settings: a resumed run steps with the weight decay (LAMB's trust ratio follows it), betas,
    eps and bias correction it was built with, never silently with the checkpoint's (torch's
    load_state_dict would take the checkpoint's). Returns the settings that differ,
    {name: [checkpoint's, this run's]}, each also logged. Another optimizer's state is refused
    (`flags`: the options that chose this run's optimizer, for the message)."""
    saved = ckpt.state["optimizer"]
    kind, saved_kind = type(optimizer).__name__, ckpt.meta.get("optimizer")
    # Checkpoints that do not record the optimizer: bertforge's own count steps per group,
    # torch's per parameter.
    if (saved_kind is not None and saved_kind != kind) or \
            ("step" in optimizer.param_groups[0]) != ("step" in saved["param_groups"][0]):
        raise CheckpointError(f"cannot resume from {ckpt.path}: it holds the state of another optimizer "
                              f"({saved_kind or 'not recorded'}) than this run's {kind} ({flags}); resume "
                              "with the optimizer it was written with")
    wanted = [{k: v for k, v in group.items() if k not in ("params", "step")} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    changed: dict[str, list] = {}
    for group, settings in zip(optimizer.param_groups, wanted, strict=True):
        for key, value in settings.items():
            if key in REPORTED_SETTINGS and key not in changed and group.get(key) != value:
                changed[key] = [group.get(key), value]
            group[key] = value
    for key, (before, now) in changed.items():
        log.warning("resuming with %s %s where the checkpoint's run had %s: this run's setting applies",
                    key, now, before)
    return changed
