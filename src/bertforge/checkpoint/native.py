"""bertforge's own checkpoint: the directory every training run writes to its `--output_dir`.

- `model.safetensors`: the weights in bertforge names (the model's own state dict).
- `config.json`: the architecture, in Google's `bert_config.json` keys.
- `bertforge.json`: what the weights alone do not say: the head, class labels, casing, and
  where the checkpoint came from. Its presence is what marks a directory as native.
- `vocab.txt`: the vocabulary, when one is known.

`write_native` is the one writer: `save_native` (a model, at the end of training) and
`save_checkpoint_as(..., to="native")` (a converted checkpoint) both go through it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

from bertforge.checkpoint.common import (
    CARRIED_META, Checkpoint, CheckpointInfo, atomic_dir_write, read_safetensors, state_bytes, vocab_beside,
)
from bertforge.config import BertConfig
from bertforge.errors import CheckpointError
from bertforge.fileio import read_json

NATIVE_META = "bertforge.json"
NATIVE_WEIGHTS = "model.safetensors"
NATIVE_CONFIG = "config.json"
FORMAT_VERSION = 1


def write_native(out_dir: str | Path, state: dict[str, Tensor], config: BertConfig, *, head: str,
                 vocab_file: str | Path | None = None, do_lower_case: bool | None = None,
                 labels: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write `state` (bertforge names) as a native checkpoint directory; `extra` is merged into
    bertforge.json (the task a run trained, where a conversion came from, ...)."""
    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / NATIVE_WEIGHTS), metadata={"format": "pt"})
        write_description(tmp, config, head=head, vocab_file=vocab_file, do_lower_case=do_lower_case,
                          labels=labels, extra=extra)

    # bertforge.json last: a reader that finds it finds complete weights.
    atomic_dir_write(out_dir, write, last=NATIVE_META, needed=state_bytes(state))
    return out_dir


def write_description(directory: str | Path, config: BertConfig, *, head: str,
                      vocab_file: str | Path | None = None, do_lower_case: bool | None = None,
                      labels: list[str] | None = None, extra: dict | None = None) -> None:
    """Everything of a native checkpoint but the weights (config.json, vocab.txt, then
    bertforge.json), into a directory that has or will have model.safetensors."""
    directory = Path(directory)
    meta = {"format": "bertforge", "format_version": FORMAT_VERSION, "head": head,
            "do_lower_case": do_lower_case}
    if labels:
        meta["labels"] = list(labels)
    meta.update(extra or {})
    config.to_json(directory / NATIVE_CONFIG)
    if vocab_file is not None:
        shutil.copyfile(vocab_file, directory / "vocab.txt")
    (directory / NATIVE_META).write_text(json.dumps(meta, indent=2) + "\n")


def save_native(out_dir: str | Path, model: nn.Module, config: BertConfig, *,
                vocab_file: str | Path | None = None, do_lower_case: bool | None = None,
                labels: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write `model` as a native checkpoint directory (weights in their own dtype)."""
    return write_native(out_dir, model.state_dict(), config, head=getattr(model, "head", "base"),
                        vocab_file=vocab_file, do_lower_case=do_lower_case, labels=labels, extra=extra)


def save_native_checkpoint(ckpt: Checkpoint, out_dir: str | Path) -> Path:
    """Write a loaded checkpoint of any format as a native one, recording where it came from."""
    return write_native(out_dir, ckpt.state, ckpt.config, head=ckpt.head, vocab_file=ckpt.vocab_file,
                        do_lower_case=ckpt.do_lower_case, labels=ckpt.labels,
                        extra={**{k: ckpt.meta[k] for k in CARRIED_META if k in ckpt.meta},
                               "converted_from": f"{ckpt.format}:{ckpt.source}"})


def peek_native(path: Path, _config: object = None) -> CheckpointInfo:
    """A native checkpoint's config, vocabulary, casing and bertforge.json (a given config is
    not used: the checkpoint carries its own)."""
    meta = read_json(path / NATIVE_META, NATIVE_META, CheckpointError)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path / NATIVE_META}: expected a JSON object")
    return CheckpointInfo("native", BertConfig.from_json(path / NATIVE_CONFIG), vocab_beside(path),
                          meta.get("do_lower_case"), meta.get("labels"), meta)


def load_native(path: Path) -> Checkpoint:
    info = peek_native(path)
    weights = path / NATIVE_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: native checkpoint without {NATIVE_WEIGHTS}")
    return Checkpoint(info.config, read_safetensors(weights), path, "native", labels=info.labels,
                      vocab_file=info.vocab_file, do_lower_case=info.do_lower_case, meta=info.meta)
