"""Reading a checkpoint of any format: detection from what is on disk, `load_checkpoint`, and
`load_into`, which puts the weights into a model all or nothing.

The formats are the entries of `formats.FORMATS` (see docs/checkpoints.md for what each holds):
- native:  bertforge's own directory (`bertforge.json` marks it); what training runs write.
- hf:      a Hugging Face directory or weights file (safetensors or pytorch_model.bin, sharded or
           not).
- tf:      a Google TensorFlow checkpoint (`bert_model.ckpt.index` + `.data-*`), read without
           TensorFlow.
- nvidia:  an NVIDIA DeepLearningExamples `.pt` file.
A string that is no local path but a Hugging Face Hub id is fetched first (`hub`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bertforge.checkpoint import hub
from bertforge.checkpoint.common import Checkpoint, CheckpointInfo
from bertforge.checkpoint.formats import FORMATS
from bertforge.config import BertConfig
from bertforge.errors import CheckpointError
from bertforge.model.heads import BACKBONE_PREFIXES, HEAD_PREFIXES

log = logging.getLogger(__name__)


# ---- detection ---------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """The first of FORMATS whose files are at `path`; CheckpointError when none fits."""
    path = Path(path)
    for spec in FORMATS.values():
        if spec.detect(path):
            return spec.name
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        looked_for = _one_of([spec.in_directory for spec in FORMATS.values()])
        raise CheckpointError(f"{path}: no checkpoint in this directory (looked for {looked_for})")
    expected = _one_of(["a directory", *(spec.files for spec in FORMATS.values() if spec.files)])
    raise CheckpointError(f"{path}: unknown checkpoint file type (expected {expected})")


def _one_of(items: list[str]) -> str:
    return ", ".join(items[:-1]) + ", or " + items[-1]


# ---- loading -----------------------------------------------------------------------------


def load_checkpoint(path: str | Path, config: str | Path | BertConfig | None = None,
                    format: str = "auto") -> Checkpoint:
    """Read a checkpoint of any supported format into bertforge names.

    `path` is a local path, or (as a string, when no such path exists) a Hugging Face Hub model
    id such as "bert-base-uncased" or "user/model", fetched into the Hugging Face cache (see
    `hub`). `config` (a BertConfig, preset name or config file) is needed only where the
    checkpoint has none beside it (TF and DLE checkpoints usually come with a bert_config.json).
    """
    path = _local_path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt].load(path, config)


def peek_checkpoint(path: str | Path, config: str | Path | BertConfig | None = None,
                    format: str = "auto") -> CheckpointInfo:
    """What `load_checkpoint` would find besides the weights (config, vocabulary, casing, labels,
    meta), without reading the weights: the checks of a run's flags before any work."""
    path = _local_path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    return FORMATS[fmt].peek(path, config)


def _local_path(source: str | Path) -> Path:
    """`source` as a local path, fetching it from the Hugging Face Hub when it is an id there.
    A Path object is always local."""
    path = Path(source)
    if path.exists() or Path(f"{path}.index").is_file() or not isinstance(source, str):
        return path
    return hub.fetch(source) if hub.is_hub_id(source) else path


# ---- putting weights into a model --------------------------------------------------------


@dataclass
class LoadReport:
    initialized: list[str]  # head tensors the checkpoint lacks, left freshly initialised
    dropped: list[str]  # tensors of heads the model does not have

    @property
    def head_loaded(self) -> bool:
        """Every tensor of the model's head came from the checkpoint (a trained head)."""
        return not self.initialized


def load_into(model: nn.Module, ckpt: Checkpoint, require_head: bool = False, resuming: bool = False) -> LoadReport:
    """Copy `ckpt` into `model`, all or nothing.

    Errors (one message listing every offending tensor): a backbone tensor (embeddings, encoder)
    missing, any tensor of the wrong shape, a tensor that belongs to no known part of BERT.
    Allowed and reported: head tensors the checkpoint lacks (fine-tuning from a pretrained
    encoder initialises the new head), and tensors of heads the model does not have (a
    pretraining checkpoint's MLM/NSP head when fine-tuning). `require_head=True` (prediction,
    evaluation) makes a missing head an error too. `resuming`: a training checkpoint's weights
    replace these next, the missing ones included (the log says so instead of "initialised fresh").
    """
    own = model.state_dict()
    state = ckpt.state
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    bad_missing = [k for k in missing if require_head or k.startswith(BACKBONE_PREFIXES)]
    unknown = [k for k in unexpected if not k.startswith(HEAD_PREFIXES)]
    if bad_missing or unknown or misshaped:
        lines = [f"checkpoint {ckpt.source} ({ckpt.format}) does not fit the model "
                 f"({type(model).__name__}, {_describe(ckpt.config)}):"]
        for title, items in (("missing", bad_missing), ("unexpected", unknown), ("wrong shape", misshaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): " + _short_list(items))
        if bad_missing and not [k for k in bad_missing if k.startswith(BACKBONE_PREFIXES)]:
            lines.append("  the checkpoint has no trained head for this task: fine-tune it first "
                         "(--do_train) or pass a fine-tuned checkpoint")
        raise CheckpointError("\n".join(lines))
    with torch.no_grad():
        for key, value in state.items():
            if key in own:
                own[key].copy_(value)
    report = LoadReport(initialized=missing, dropped=unexpected)
    if missing and resuming:
        log.info("not in %s: %s; they come from the checkpoint the run resumes from", ckpt.source,
                 _short_list(missing))
    elif missing:
        log.info("initialised fresh (not in %s): %s", ckpt.source, _short_list(missing))
    if unexpected:
        log.info("not used from %s: %s", ckpt.source, _short_list(unexpected))
    return report


def _describe(config: BertConfig) -> str:
    return (f"L={config.num_hidden_layers} H={config.hidden_size} A={config.num_attention_heads} "
            f"V={config.vocab_size}")


def _short_list(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")

