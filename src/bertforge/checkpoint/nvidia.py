"""NVIDIA DeepLearningExamples (DLE) PyTorch BERT checkpoints (`.pt`).

`{'model': state_dict, ...}` as run_pretraining.py saves it, or a bare state dict. DLE's names
(`dense_act`, a DDP `module.` prefix) are read by `hf.hf_to_native` as dialects of Hugging Face
names; its vocabulary padded to a multiple of 8 is adopted as vocab_size. A mid-pretraining file
also pickles a DataLoader: it is read with an unpickler that runs none of the file's code.

DLE's `"hidden_act": "gelu"` is the exact (erf) GELU its scripts train with, which is what
bertforge's "gelu" is, so the config is taken as written (sources in docs/checkpoints.md).
"""

from __future__ import annotations

import collections
import logging
import pickle
import re
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from bertforge.checkpoint.common import (
    Checkpoint, CheckpointInfo, adopt_padded_vocab, config_beside, infer_do_lower_case, read_torch_file, state_dict_of,
    vocab_beside,
)
from bertforge.checkpoint.hf import _REDUNDANT, _TIED_DECODER, hf_to_native
from bertforge.config import BertConfig
from bertforge.errors import CheckpointError

log = logging.getLogger(__name__)


# ---- reading the file safely ---------------------------------------------------------------

# The globals a pickled state dict of plain or Parameter tensors refers to (storage classes are
# resolved by torch.load itself before these are asked for).
_STATE_DICT_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    **{("torch", name): getattr(torch, name) for name in (
        "float32", "float64", "float16", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
        "bool", "complex64", "complex128")},
}


class _Inert:
    """Stands in for any class or function the file names that a state dict does not need.
    Calling, building or filling it does nothing, so unpickling runs none of the file's code."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        found = _STATE_DICT_GLOBALS.get((module, name))
        return found if found is not None else _Inert


# torch.load takes a "pickle module": it uses its Unpickler (and load, for old-format headers).
_inert_pickle = types.ModuleType("bertforge_state_dict_pickle")
_inert_pickle.Unpickler = _StateDictUnpickler
_inert_pickle.load = lambda f, **kwargs: _StateDictUnpickler(f, **kwargs).load()


def read_dle_file(path: Path) -> dict:
    """The unpickled top-level object of a DLE `.pt` file (see the module docstring)."""
    try:
        return read_torch_file(path)
    except CheckpointError as strict_error:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False,
                             pickle_module=_inert_pickle)
        except Exception:  # any failure here: the strict reader's message is the better one
            raise strict_error from None
        log.info("%s: holds objects other than tensors (e.g. a DataLoader); read with a "
                 "restricted unpickler that ignores them", path)
        return obj


def _weights_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    files = sorted(path.glob("*.pt")) + sorted(path.glob("*.pth"))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise CheckpointError(f"{path}: expected exactly one DLE *.pt file here, found {found}; "
                              "pass the file itself")
    return files[0]


def peek_nvidia_checkpoint(path: Path, config: str | Path | BertConfig | None = None) -> CheckpointInfo:
    """A DLE checkpoint's config (given, or its bert_config.json), vocab.txt and the casing its
    name says."""
    return CheckpointInfo("nvidia", config_beside(path, config, "NVIDIA DLE"), vocab_beside(path),
                          infer_do_lower_case(path))


def load_nvidia_checkpoint(path: str | Path, config: str | Path | BertConfig | None = None) -> Checkpoint:
    """An NVIDIA DLE `.pt` checkpoint (or a directory holding one) as a bertforge Checkpoint."""
    path = Path(path)
    weights = _weights_file(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    return _as_checkpoint(state_dict_of(read_dle_file(weights), weights), path, weights, config)


def _as_checkpoint(state: dict, path: Path, weights: Path, config) -> Checkpoint:
    native = hf_to_native(state, source=str(weights))
    cfg = adopt_padded_vocab(config_beside(path, config, "NVIDIA DLE"), native, str(weights))
    return Checkpoint(cfg, native, path, "nvidia", vocab_file=vocab_beside(path),
                      do_lower_case=infer_do_lower_case(path))


# ---- run_pretraining.py's training checkpoints (ckpt_<step>.pt) --------------------------------

CKPT_FILE = re.compile(r"^ckpt_(\d+)\.pt$")
# run_pretraining.py's rule for the parameters without weight decay (its second LAMB group).
_NO_DECAY = ("bias", "gamma", "beta", "LayerNorm")


def find_pretraining_checkpoints(directory: str | Path) -> dict[int, Path]:
    """The `ckpt_<step>.pt` files run_pretraining.py writes into its --output_dir, by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return {}
    return {int(m.group(1)): p for p in directory.iterdir() if (m := CKPT_FILE.match(p.name))}


@dataclass
class PretrainingState:
    """What a run_pretraining.py checkpoint holds besides the weights, in bertforge names."""

    path: Path
    step: int  # the global step in the file name
    exp_avg: dict[str, torch.Tensor]  # LAMB's first moments, by bertforge parameter name
    exp_avg_sq: dict[str, torch.Tensor]  # and second moments
    optimizer_steps: int | None  # LAMB's step count (bias correction), where the file records it
    grad_scaler: dict | None  # torch.cuda.amp.GradScaler state (newer versions, fp16 runs)
    checkpoint: Checkpoint  # the weights


def read_pretraining_checkpoint(path: str | Path, config: str | Path | BertConfig | None) -> PretrainingState:
    """A `ckpt_<step>.pt` of NVIDIA's run_pretraining.py: weights, LAMB moments and step.

    Its optimizer state numbers the parameters in the order run_pretraining.py grouped them:
    `model.named_parameters()` (the state dict's order without the tied MLM decoder), those
    without any of bias/gamma/beta/LayerNorm in their name first. The moments are renamed the
    way the weights are (query/key/value concatenated), so they fit bertforge's parameters."""
    path = Path(path)
    m = CKPT_FILE.match(path.name)
    if m is None or not path.is_file():
        raise CheckpointError(f"{path}: not a run_pretraining.py checkpoint (ckpt_<step>.pt)")
    obj = read_dle_file(path)
    weights = state_dict_of(obj, path)
    ckpt = _as_checkpoint(weights, path, path, config)
    optimizer = obj.get("optimizer") if isinstance(obj, dict) else None
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict) \
            or not isinstance(optimizer.get("param_groups"), list):
        raise CheckpointError(f"{path}: no optimizer state (expected {{'optimizer': {{'state', 'param_groups'}}}}); "
                              "resume needs the LAMB moments: start a new run with --init_checkpoint instead")
    # without the tied decoder and the buffers, the state dict's order is named_parameters()'s
    names = [k for k in weights if k.removeprefix("module.") not in _REDUNDANT | {_TIED_DECODER}]
    ordered = ([n for n in names if not any(nd in n for nd in _NO_DECAY)]
               + [n for n in names if any(nd in n for nd in _NO_DECAY)])
    indices = [i for group in optimizer["param_groups"] for i in group.get("params", [])]
    if len(indices) != len(ordered):
        raise CheckpointError(f"{path}: the optimizer holds {len(indices)} parameters, the model {len(ordered)}; "
                              "cannot tell which moments belong to which weights")
    moments: dict[str, dict[str, torch.Tensor]] = {"exp_avg": {}, "exp_avg_sq": {}}
    for index, name in zip(indices, ordered):
        state = optimizer["state"].get(index, {})
        for key, found in moments.items():
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != weights[name].shape:
                raise CheckpointError(f"{path}: optimizer entry {index} ({name}) has no {key} of the "
                                      f"weight's shape {tuple(weights[name].shape)}")
            found[name] = value.float()
    steps = {int(g["step"]) for g in optimizer["param_groups"] if "step" in g}
    return PretrainingState(path, int(m.group(1)), hf_to_native(moments["exp_avg"], str(path)),
                            hf_to_native(moments["exp_avg_sq"], str(path)), max(steps) if steps else None,
                            obj.get("grad_scaler") if isinstance(obj.get("grad_scaler"), dict) else None, ckpt)


__all__ = ["load_nvidia_checkpoint", "read_dle_file", "find_pretraining_checkpoints", "read_pretraining_checkpoint",
           "PretrainingState"]


# ---- continuing a run_pretraining.py run -----------------------------------------------------


@dataclass
class NvidiaResume:
    """Where a pretraining run continues from run_pretraining.py's checkpoint: NVIDIA's
    `--resume_from_checkpoint` in a directory that holds its ckpt_<step>.pt files."""

    path: Path
    step: int  # the step this run continues after
    phase2_start: bool  # phase 2 starting from phase 1: moments carried, step counts reset


def nvidia_resume_point(out: Path, *, resume: bool, has_own_checkpoints: bool, phase2: bool,
                        phase1_end_step: int | None, resume_step: int | None, init_checkpoint: str | None,
                        optimizer: str) -> NvidiaResume | None:
    """The ckpt_<step>.pt of NVIDIA's run_pretraining.py to continue from, when the run resumes
    (`resume`) in `out`, which holds them and no checkpoint of the run's own yet
    (`has_own_checkpoints`). `resume_step` picks one (default: the latest); with `phase2`,
    steps up to `phase1_end_step` are phase 1's, from which phase 2 starts afresh."""
    found = find_pretraining_checkpoints(out)
    if not resume or not found or has_own_checkpoints:
        if phase2 and phase1_end_step is not None and resume and not found and not init_checkpoint:
            raise CheckpointError(f"--phase2 --resume_from_checkpoint --phase1_end_step: {out} holds no "
                                  "run_pretraining.py checkpoint (ckpt_<step>.pt) to start phase 2 from. bertforge "
                                  "keeps each phase in its own directory: bertforge pretrain --phase2 "
                                  "--init_checkpoint PHASE1_OUTPUT_DIR --output_dir PHASE2_DIR")
        return None
    if resume_step is not None and resume_step >= 0:
        if resume_step not in found:
            raise CheckpointError(f"--resume_step {resume_step}: no {out}/ckpt_{resume_step}.pt (there are "
                                  f"{', '.join(p.name for _, p in sorted(found.items()))})")
        step = resume_step
    else:
        step = max(found)
    if optimizer != "lamb":
        raise CheckpointError(f"{found[step]} holds LAMB moments; resume it with --optimizer lamb")
    if not phase2:
        return NvidiaResume(found[step], step, False)
    if phase1_end_step is None:
        raise CheckpointError(f"--phase2 in {out}, which holds run_pretraining.py checkpoints: give --phase1_end_step "
                              "(the last step of phase 1) so that phase-1 and phase-2 checkpoints can be told apart")
    if step <= phase1_end_step:
        return NvidiaResume(found[step], 0, True)
    return NvidiaResume(found[step], step - phase1_end_step, False)


def import_nvidia_checkpoint(point: NvidiaResume, state: PretrainingState, model: torch.nn.Module,
                             optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
                             scaler: torch.amp.GradScaler, device: torch.device) -> None:
    """Put the LAMB moments and step counts of `state` (read from `point.path`) into the
    optimizer, schedule and loss scaler of `model`, which already holds the file's weights
    (`load_into(model, state.checkpoint)`). Phase 2 starting from phase 1 keeps the moments
    and resets the step counts, as run_pretraining.py does."""
    names = {id(p): n for n, p in model.named_parameters()}
    saved = optimizer.state_dict()
    ordered = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    missing = sorted(set(ordered) - set(state.exp_avg))
    if missing:
        raise CheckpointError(f"{point.path}: no LAMB moments for {', '.join(missing[:4])}; it does not belong to "
                              "this model")
    saved["state"] = {i: {"exp_avg": state.exp_avg[n].to(device), "exp_avg_sq": state.exp_avg_sq[n].to(device)}
                      for i, n in enumerate(ordered)}
    lamb_steps = 0 if point.phase2_start else (state.optimizer_steps if state.optimizer_steps is not None
                                                else point.step)
    for group in saved["param_groups"]:
        group["step"] = lamb_steps
    optimizer.load_state_dict(saved)
    if state.grad_scaler and scaler.is_enabled() and not point.phase2_start:
        scaler.load_state_dict(state.grad_scaler)
    schedule.last_epoch = point.step


__all__ += ["NvidiaResume", "import_nvidia_checkpoint", "nvidia_resume_point"]
