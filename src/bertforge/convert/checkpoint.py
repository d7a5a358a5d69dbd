"""Checkpoints in every format bertforge reads, and its own.

Formats, detected from what is on disk:
- native:  a directory with `model.safetensors` (bertforge names), `config.json` (Google's
           bert_config keys), `bertforge.json` (head, labels, casing) and `vocab.txt`. Every
           training run's `--output_dir` is one, so it can be passed to `--init_checkpoint`.
- hf:      a Hugging Face directory (`config.json` + `model.safetensors` or `pytorch_model.bin`,
           sharded or not), or a single such weights file with a config beside it.
- tf:      a Google TensorFlow checkpoint (`bert_model.ckpt.index` + `.data-*`), read without
           TensorFlow (`bertforge.convert.tf_checkpoint`).
- nvidia:  an NVIDIA DeepLearningExamples `.pt` file (`{'model': state_dict}`).

`load_checkpoint` returns a `Checkpoint` in bertforge names; `load_into` puts it into a model and
refuses partial loads (see its docstring).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from bertforge.config import BertConfig, find_config_file, resolve_config
from bertforge.convert import hf as hfmap
from bertforge.errors import BertforgeError, CheckpointError, ConfigError
from bertforge.fileio import read_json

log = logging.getLogger(__name__)

NATIVE_META = "bertforge.json"
NATIVE_WEIGHTS = "model.safetensors"
FORMATS = ("native", "hf", "tf", "nvidia")


@dataclass
class Checkpoint:
    """Weights in bertforge names with what is known about them."""

    config: BertConfig
    state: dict[str, Tensor]
    source: Path
    format: str
    labels: list[str] | None = None  # class names of a classification head
    vocab_file: Path | None = None
    do_lower_case: bool | None = None
    meta: dict = field(default_factory=dict)  # bertforge.json of a native checkpoint

    @property
    def heads(self) -> set[str]:
        """Which heads the weights include: pretraining, qa, classification."""
        found = set()
        if "mlm.bias" in self.state or "nsp.weight" in self.state:
            found.add("pretraining")
        if "qa_outputs.weight" in self.state:
            found.add("qa")
        if "classifier.weight" in self.state:
            found.add("classification")
        return found

    @property
    def num_labels(self) -> int | None:
        w = self.state.get("classifier.weight")
        return None if w is None else int(w.shape[0])


# ---- reading weight files ----------------------------------------------------------------


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated or "
                              "not a safetensors file?") from None


def read_torch_file(path: Path) -> dict:
    """A pickled state dict (`pytorch_model.bin`, DLE `.pt`), loaded with weights_only=True so a
    malicious file cannot run code."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: cannot read PyTorch checkpoint ({msg}); is it truncated, "
                              "or not a PyTorch checkpoint?") from None


def read_weights_file(path: Path) -> dict[str, Tensor]:
    """One weights file, or a sharded Hugging Face checkpoint through its index JSON."""
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}: not a valid shard index ({e})") from None
        state: dict[str, Tensor] = {}
        for shard in sorted(set(index.values())):
            shard_path = path.parent / shard
            if not shard_path.is_file():
                raise CheckpointError(f"{path}: shard {shard} is missing")
            state.update(read_weights_file(shard_path))
        return state
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = read_torch_file(path)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict)")
    return state


# ---- detection ---------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """One of FORMATS, from the files at `path`; CheckpointError when none fits."""
    path = Path(path)
    if not path.exists():
        if Path(f"{path}.index").is_file():  # a TensorFlow prefix such as bert_model.ckpt
            return "tf"
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        if (path / NATIVE_META).is_file():
            return "native"
        if hfmap.find_weights(path) is not None:
            return "hf"
        if list(path.glob("*.ckpt.index")) or list(path.glob("*.index")):
            return "tf"
        pts = sorted(path.glob("*.pt"))
        if len(pts) == 1:
            return "nvidia"
        raise CheckpointError(
            f"{path}: no checkpoint in this directory (looked for {NATIVE_META}, "
            f"{', '.join(hfmap.WEIGHT_FILES)}, a TensorFlow *.ckpt.index, or one DLE *.pt file)")
    name = path.name
    if name.endswith(".index") or ".ckpt" in name:
        return "tf"
    if name.endswith((".safetensors", ".bin", ".index.json")):
        return "hf"
    if name.endswith((".pt", ".pth")):
        return "nvidia"
    raise CheckpointError(f"{path}: unknown checkpoint file type (expected a directory, *.safetensors, "
                          "*.bin, *.pt, or a TensorFlow *.ckpt prefix / *.ckpt.index)")


# ---- loading -----------------------------------------------------------------------------


def load_checkpoint(path: str | Path, config: str | Path | BertConfig | None = None,
                    format: str = "auto") -> Checkpoint:
    """Read a checkpoint of any supported format into bertforge names.

    `config` (a BertConfig, preset name or config file) is needed only where the checkpoint has
    none beside it (TF and DLE checkpoints usually come with a bert_config.json next to them).
    """
    path = Path(path)
    fmt = detect_format(path) if format == "auto" else format
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "native":
        return _load_native(path)
    if fmt == "hf":
        return _load_hf(path, config)
    if fmt == "tf":
        from bertforge.convert import google
        return google.load_tf_checkpoint(path, config)
    from bertforge.convert import nvidia
    return nvidia.load_nvidia_checkpoint(path, config)


def _config_near(path: Path, config: str | Path | BertConfig | None, what: str) -> BertConfig:
    """The config given explicitly, else the one in the checkpoint's directory."""
    if isinstance(config, BertConfig):
        return config
    if config is not None:
        return resolve_config(config)
    directory = path if path.is_dir() else path.parent
    found = find_config_file(directory)
    if found is None:
        raise CheckpointError(f"{path}: {what} checkpoint has no bert_config.json/config.json beside it; "
                              "pass one with --bert_config_file")
    return BertConfig.from_json(found)


def _vocab_near(path: Path) -> Path | None:
    directory = path if path.is_dir() else path.parent
    vocab = directory / "vocab.txt"
    return vocab if vocab.is_file() else None


def _load_native(path: Path) -> Checkpoint:
    meta = read_json(path / NATIVE_META, NATIVE_META, CheckpointError)
    weights = path / NATIVE_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: native checkpoint without {NATIVE_WEIGHTS}")
    config = BertConfig.from_json(path / "config.json")
    return Checkpoint(config, read_safetensors(weights), path, "native", labels=meta.get("labels"),
                      vocab_file=_vocab_near(path), do_lower_case=meta.get("do_lower_case"), meta=meta)


def _load_hf(path: Path, config) -> Checkpoint:
    weights = hfmap.find_weights(path) if path.is_dir() else path
    directory = path if path.is_dir() else path.parent
    labels, do_lower_case = None, None
    if config is None and (directory / "config.json").is_file():
        cfg, raw = hfmap.read_hf_config(directory)
        labels = hfmap.hf_labels(raw)
    else:
        cfg = _config_near(path, config, "Hugging Face")
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            do_lower_case = json.loads(tok_cfg.read_text(encoding="utf-8")).get("do_lower_case")
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; ignoring it", tok_cfg)
    state = hfmap.hf_to_native(read_weights_file(weights), source=str(weights))
    return Checkpoint(cfg, state, path, "hf", labels=labels, vocab_file=_vocab_near(path),
                      do_lower_case=do_lower_case)


# ---- putting weights into a model --------------------------------------------------------

BACKBONE_PREFIXES = ("bert.embeddings.", "bert.encoder.")
HEAD_PREFIXES = ("bert.pooler.", "mlm.", "nsp.", "qa_outputs.", "classifier.")


@dataclass
class LoadReport:
    initialized: list[str]  # head tensors the checkpoint lacks, left freshly initialised
    dropped: list[str]  # tensors of heads the model does not have


def load_into(model: nn.Module, ckpt: Checkpoint, require_head: bool = False) -> LoadReport:
    """Copy `ckpt` into `model`, all or nothing.

    Errors (one message listing every offending tensor): a backbone tensor (embeddings, encoder)
    missing, any tensor of the wrong shape, a tensor that belongs to no known part of BERT.
    Allowed and reported: head tensors the checkpoint lacks (fine-tuning from a pretrained
    encoder initialises the new head), and tensors of heads the model does not have (a
    pretraining checkpoint's MLM/NSP head when fine-tuning). `require_head=True` (prediction,
    evaluation) makes a missing head an error too.
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
    if missing:
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


# ---- writing -----------------------------------------------------------------------------


def _atomic_dir_write(out_dir: Path, write) -> None:
    """Write files into a temporary sibling directory, then move each into place with
    os.replace, so a crash never leaves a half-written weights file under its final name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        tmp_path = Path(tmp)
        write(tmp_path)
        # Metadata last: a reader that finds bertforge.json finds complete weights.
        names = sorted(p.name for p in tmp_path.iterdir())
        names.sort(key=lambda n: n == NATIVE_META)
        for name in names:
            os.replace(tmp_path / name, out_dir / name)


def save_native(out_dir: str | Path, model: nn.Module, config: BertConfig, *,
                vocab_file: str | Path | None = None, do_lower_case: bool | None = None,
                labels: list[str] | None = None, extra: dict | None = None) -> Path:
    """Write `model` as a native checkpoint directory (weights in fp32 unless they are not)."""
    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "bertforge", "format_version": 1,
            "head": getattr(model, "head", "base"), "do_lower_case": do_lower_case}
    if labels is not None:
        meta["labels"] = list(labels)
    meta.update(extra or {})

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / NATIVE_WEIGHTS), metadata={"format": "pt"})
        config.to_json(tmp / "config.json")
        if vocab_file is not None:
            shutil.copyfile(vocab_file, tmp / "vocab.txt")
        (tmp / NATIVE_META).write_text(json.dumps(meta, indent=2) + "\n")

    _atomic_dir_write(out_dir, write)
    return out_dir


def save_checkpoint_as(ckpt: Checkpoint, out_dir: str | Path, to: str = "native") -> Path:
    """Write a loaded checkpoint in bertforge's format or Hugging Face's."""
    out_dir = Path(out_dir)
    if to not in ("native", "hf"):
        raise ConfigError(f"--to must be 'native' or 'hf', got {to!r}")
    state = {k: v.contiguous() for k, v in ckpt.state.items()}
    heads = ckpt.heads
    head = next(iter(heads)) if len(heads) == 1 else ("pretraining" if "pretraining" in heads else "base")

    def write(tmp: Path) -> None:
        if to == "native":
            save_file(state, str(tmp / NATIVE_WEIGHTS), metadata={"format": "pt"})
            ckpt.config.to_json(tmp / "config.json")
            meta = {"format": "bertforge", "format_version": 1, "head": head,
                    "do_lower_case": ckpt.do_lower_case, "converted_from": f"{ckpt.format}:{ckpt.source}"}
            if ckpt.labels:
                meta["labels"] = ckpt.labels
            (tmp / NATIVE_META).write_text(json.dumps(meta, indent=2) + "\n")
        else:
            hf_state = hfmap.native_to_hf(state)
            if head == "base":  # transformers' BertModel keeps its weights without the `bert.` prefix
                hf_state = {k.removeprefix("bert."): v for k, v in hf_state.items()}
            save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            cfg = ckpt.config.to_hf_dict(hfmap.ARCHITECTURES[head])
            if ckpt.labels:
                cfg["id2label"] = {str(i): label for i, label in enumerate(ckpt.labels)}
                cfg["label2id"] = {label: i for i, label in enumerate(ckpt.labels)}
            elif ckpt.num_labels:
                cfg["num_labels"] = ckpt.num_labels
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            if ckpt.do_lower_case is not None:
                (tmp / "tokenizer_config.json").write_text(json.dumps(
                    {"do_lower_case": ckpt.do_lower_case, "tokenizer_class": "BertTokenizer",
                     "model_max_length": ckpt.config.max_position_embeddings}, indent=2) + "\n")
        if ckpt.vocab_file is not None:
            shutil.copyfile(ckpt.vocab_file, tmp / "vocab.txt")

    _atomic_dir_write(out_dir, write)
    return out_dir


__all__ = ["Checkpoint", "LoadReport", "load_checkpoint", "load_into", "save_native",
           "save_checkpoint_as", "detect_format", "BertforgeError"]
