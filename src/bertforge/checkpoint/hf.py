"""Hugging Face BERT checkpoints: the map between their parameter names and bertforge's, and
reading and writing their directories (`config.json` + `model.safetensors` or
`pytorch_model.bin`, sharded or not).

Hugging Face names (`bert.encoder.layer.0.attention.self.query.weight`, `cls.predictions...`)
are also the hub through which Google TF and NVIDIA DLE checkpoints are imported: their readers
produce Hugging Face names and this map does the rest. The map is explicit, per tensor; query,
key and value are concatenated into bertforge's fused `qkv` projection.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors.torch import save_file
from torch import Tensor

from bertforge.checkpoint.common import (
    Checkpoint, CheckpointInfo, adopt_padded_vocab, atomic_dir_write, config_beside, read_safetensors, read_torch_file,
    state_bytes, state_dict_of, vocab_beside,
)
from bertforge.config import BertConfig
from bertforge.data.glue.tasks import named_labels
from bertforge.errors import CheckpointError
from bertforge.fileio import read_json
from bertforge.model.heads import HEADS

log = logging.getLogger(__name__)

# bertforge name -> Hugging Face name, inside `bert.` (backbone) ...
_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
# ... per layer (prefix `encoder.layers.{i}.` vs `encoder.layer.{i}.`) ...
_LAYER = {
    "attention_output": "attention.output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "ffn.intermediate": "intermediate.dense",
    "ffn.output": "output.dense",
    "ffn_norm": "output.LayerNorm",
}
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
# ... and heads (no `bert.` prefix on either side), from the table of heads.
_HEADS = {ours: theirs for spec in HEADS.values() for ours, theirs in spec.hf_names.items()}
# Hugging Face tensors that carry no information of their own.
_REDUNDANT = {"bert.embeddings.position_ids", "cls.predictions.decoder.bias",
              "bert.embeddings.token_type_ids"}
_TIED_DECODER = "cls.predictions.decoder.weight"


def _canonical_hf_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face names from their dialects: the `bert.` prefix a BertModel checkpoint lacks,
    pytorch-pretrained-BERT's LayerNorm gamma/beta, the `module.` prefix of a model saved from
    inside DistributedDataParallel, and NVIDIA DLE's `dense_act` (its fused Linear+activation
    layers: intermediate, pooler, MLM transform)."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.").replace(".dense_act.", ".dense.")
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        if key.startswith(("embeddings.", "encoder.", "pooler.")):
            key = "bert." + key
        out[key] = value
    return out


def hf_to_native(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Hugging Face names -> bertforge names. Unknown tensors are kept under their own name, so
    that loading them into a model reports them as unexpected."""
    hf = _canonical_hf_names(state)
    out: dict[str, Tensor] = {}
    used: set[str] = set(_REDUNDANT & hf.keys())
    for ours, theirs in _EMBEDDINGS.items():
        if "bert." + theirs in hf:
            out["bert." + ours] = hf["bert." + theirs]
            used.add("bert." + theirs)
    for ours, theirs in _HEADS.items():
        if theirs in hf:
            out[ours] = hf[theirs]
            used.add(theirs)
    layers = sorted({int(m.group(1)) for k in hf
                     if (m := re.match(r"bert\.encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        src, dst = f"bert.encoder.layer.{i}.", f"bert.encoder.layers.{i}."
        for ours, theirs in _LAYER.items():
            for kind in ("weight", "bias"):
                if f"{src}{theirs}.{kind}" in hf:
                    out[f"{dst}{ours}.{kind}"] = hf[f"{src}{theirs}.{kind}"]
                    used.add(f"{src}{theirs}.{kind}")
        for kind in ("weight", "bias"):
            parts = [f"{src}{name}.{kind}" for name in _QKV]
            present = [p for p in parts if p in hf]
            if len(present) == 3:
                shapes = {tuple(hf[p].shape) for p in parts}
                if len(shapes) != 1:
                    raise CheckpointError(
                        f"{source}: query/key/value {kind}s of layer {i} differ in shape: "
                        + ", ".join(f"{p} {tuple(hf[p].shape)}" for p in parts))
                out[f"{dst}attention.qkv.{kind}"] = torch.cat([hf[p] for p in parts], dim=0)
                used.update(parts)
    if _TIED_DECODER in hf:
        decoder = hf[_TIED_DECODER]
        embeddings = out.get("bert.embeddings.word_embeddings.weight")
        if embeddings is None or decoder.shape != embeddings.shape or not torch.equal(decoder, embeddings):
            raise CheckpointError(
                f"{source}: {_TIED_DECODER} differs from the word embeddings; bertforge ties the "
                "MLM decoder to the word embeddings as BERT does, so an untied decoder cannot be loaded")
        used.add(_TIED_DECODER)
    for key, value in hf.items():
        if key not in used:
            out[key] = value
    return out


def native_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """bertforge names -> Hugging Face names (the layout of `BertFor*` / `BertModel` with `bert.`).

    The tied MLM decoder is left out, as transformers' own `save_pretrained` does."""
    out: dict[str, Tensor] = {}
    for ours, theirs in _EMBEDDINGS.items():
        if "bert." + ours in state:
            out["bert." + theirs] = state["bert." + ours]
    for ours, theirs in _HEADS.items():
        if ours in state:
            out[theirs] = state[ours]
    for key, value in state.items():
        m = re.match(r"bert\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            continue
        i, name, kind = m.groups()
        prefix = f"bert.encoder.layer.{i}."
        if name == "attention.qkv":
            for part, chunk in zip(_QKV, value.chunk(3, dim=0)):
                out[f"{prefix}{part}.{kind}"] = chunk.contiguous()
        else:
            out[f"{prefix}{_LAYER[name]}.{kind}"] = value
    return out


# ---- files -------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def find_weights(directory: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def _shard_path(index_path: Path, shard: object) -> Path:
    """Where a shard index's entry points, refusing any entry that could name a file outside
    the index's directory. The check is on the name, not on where symlinks lead: the Hugging
    Face cache links every snapshot file into a `blobs` directory beside the snapshot."""
    if not isinstance(shard, str) or not shard:
        raise CheckpointError(f"{index_path}: weight_map entry {shard!r} is not a file name")
    posix, windows = PurePosixPath(shard), PureWindowsPath(shard)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in windows.parts:
        raise CheckpointError(f"{index_path}: shard {shard!r} leaves the checkpoint directory; "
                              "an index may only name files beside it")
    if not shard.endswith((".safetensors", ".bin")):
        raise CheckpointError(f"{index_path}: shard {shard!r} is not a .safetensors or .bin file")
    return index_path.parent / shard


def read_weights(path: Path) -> dict[str, Tensor]:
    """One weights file, or a sharded checkpoint through its index JSON."""
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({_shard_path(path, shard) for shard in index.values()})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a valid shard index ({e})") from None
        state: dict[str, Tensor] = {}
        for shard_path in shards:
            if not shard_path.is_file():
                raise CheckpointError(f"{path}: shard {shard_path.relative_to(path.parent)} is missing")
            state.update(read_weights(shard_path))
        return state
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    # NVIDIA DLE's run_squad.py saves {"model": state_dict} under this very name.
    return state_dict_of(read_torch_file(path), path)


def read_hf_config(directory: Path) -> tuple[BertConfig, dict]:
    """The BertConfig of a Hugging Face directory, and the raw dict (for labels and architecture)."""
    path = directory / "config.json"
    raw = read_json(path, "config.json beside the weights", CheckpointError)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if raw.get("model_type", "bert") != "bert":
        raise CheckpointError(f"{path}: model_type is {raw['model_type']!r}; bertforge reads BERT ('bert') only")
    return BertConfig.from_dict(raw, source=str(path)), raw


def hf_labels(raw: dict) -> list[str] | None:
    id2label = raw.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        return [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (ValueError, TypeError):
        return None


# Hugging Face's `finetuning_task` for a SQuAD model: transformers' own names for the two versions.
_SQUAD_TASKS = {"squad": False, "squad_v2": True}


def hf_finetuning_task(meta: dict) -> str | None:
    """The `finetuning_task` config.json records for a checkpoint's bertforge meta: squad or
    squad_v2 (whose models answer "" when the null answer wins)."""
    if meta.get("task") == "squad":
        return "squad_v2" if meta.get("version_2_with_negative") else "squad"
    return None


def meta_of_hf_config(raw: dict) -> dict:
    """The bertforge meta a Hugging Face config.json records (`hf_finetuning_task` read back)."""
    task = raw.get("finetuning_task")
    if task in _SQUAD_TASKS:
        return {"task": "squad", "version_2_with_negative": _SQUAD_TASKS[task]}
    return {}


def peek_hf(path: Path, config: str | Path | BertConfig | None = None) -> CheckpointInfo:
    """A Hugging Face directory's (or weights file's) config (the given one, else its
    config.json), labels, casing (tokenizer_config.json) and fine-tuning task."""
    directory = path if path.is_dir() else path.parent
    labels, do_lower_case, meta = None, None, {}
    if config is None and (directory / "config.json").is_file():
        cfg, raw = read_hf_config(directory)
        labels = hf_labels(raw)
        meta = meta_of_hf_config(raw)
    else:
        cfg = config_beside(path, config, "Hugging Face")
    tok_cfg = directory / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            do_lower_case = json.loads(tok_cfg.read_text(encoding="utf-8")).get("do_lower_case")
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; ignoring it", tok_cfg)
    return CheckpointInfo("hf", cfg, vocab_beside(path), do_lower_case, labels, meta)


def load_hf(path: Path, config: str | Path | BertConfig | None = None) -> Checkpoint:
    """A Hugging Face directory, or one weights file of it, as a bertforge Checkpoint."""
    weights = find_weights(path) if path.is_dir() else path
    info = peek_hf(path, config)
    state = hf_to_native(read_weights(weights), source=str(weights))
    cfg = adopt_padded_vocab(info.config, state, str(weights))
    return Checkpoint(cfg, state, path, "hf", labels=info.labels, vocab_file=info.vocab_file,
                      do_lower_case=info.do_lower_case, meta=info.meta)


def save_hf(ckpt: Checkpoint, out_dir: Path) -> Path:
    """Write `ckpt` in transformers' layout: model.safetensors, config.json (with the
    architecture of its head and its labels), tokenizer_config.json, vocab.txt."""
    spec = HEADS[ckpt.head]
    hf_state = {}
    for key, value in native_to_hf({k: v.contiguous() for k, v in ckpt.state.items()}).items():
        if key.startswith("bert."):  # the encoder, where transformers' class for the head keeps it
            key = spec.hf_encoder_prefix + key.removeprefix("bert.")
        hf_state[key] = value
    cfg = ckpt.config.to_hf_dict(spec.hf_architecture)
    if ckpt.labels:
        # A GLUE checkpoint that records GLUE's file labels ("0", "1") gets the classes' names.
        labels = named_labels(ckpt.meta.get("task"), ckpt.labels)
        cfg["id2label"] = {str(i): label for i, label in enumerate(labels)}
        cfg["label2id"] = {label: i for i, label in enumerate(labels)}
    elif ckpt.num_labels:
        cfg["num_labels"] = ckpt.num_labels
    if task := hf_finetuning_task(ckpt.meta):
        cfg["finetuning_task"] = task

    def write(tmp: Path) -> None:
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if ckpt.do_lower_case is not None:
            (tmp / "tokenizer_config.json").write_text(json.dumps(
                {"do_lower_case": ckpt.do_lower_case, "tokenizer_class": "BertTokenizer",
                 "model_max_length": ckpt.config.max_position_embeddings}, indent=2) + "\n")
        if ckpt.vocab_file is not None:
            shutil.copyfile(ckpt.vocab_file, tmp / "vocab.txt")

    # model.safetensors last: detection looks for the weights
    atomic_dir_write(out_dir, write, last="model.safetensors", needed=state_bytes(hf_state))
    return out_dir
