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
import types
from pathlib import Path

import torch

from bertforge.checkpoint.common import (
    Checkpoint, adopt_padded_vocab, config_beside, infer_do_lower_case, read_torch_file, state_dict_of,
    vocab_beside,
)
from bertforge.checkpoint.hf import hf_to_native
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


def load_nvidia_checkpoint(path: str | Path, config: str | Path | BertConfig | None = None) -> Checkpoint:
    """An NVIDIA DLE `.pt` checkpoint (or a directory holding one) as a bertforge Checkpoint."""
    path = Path(path)
    weights = _weights_file(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    native = hf_to_native(state_dict_of(read_dle_file(weights), weights), source=str(weights))
    cfg = adopt_padded_vocab(config_beside(path, config, "NVIDIA DLE"), native, str(weights))
    return Checkpoint(cfg, native, path, "nvidia", vocab_file=vocab_beside(path),
                      do_lower_case=infer_do_lower_case(path))


__all__ = ["load_nvidia_checkpoint", "read_dle_file"]
