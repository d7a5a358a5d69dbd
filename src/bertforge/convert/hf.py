"""Hugging Face BERT checkpoints <-> bertforge's parameter names.

Hugging Face names (`bert.encoder.layer.0.attention.self.query.weight`, `cls.predictions...`)
are also the hub through which Google TF and NVIDIA DLE checkpoints are imported: their readers
produce Hugging Face names and this map does the rest. The map is explicit, per tensor; query,
key and value are concatenated into bertforge's fused `qkv` projection.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from bertforge.config import BertConfig
from bertforge.errors import CheckpointError
from bertforge.fileio import read_json

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
# ... and heads (no `bert.` prefix on either side).
_HEADS = {
    "mlm.dense.weight": "cls.predictions.transform.dense.weight",
    "mlm.dense.bias": "cls.predictions.transform.dense.bias",
    "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
    "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
    "mlm.bias": "cls.predictions.bias",
    "nsp.weight": "cls.seq_relationship.weight",
    "nsp.bias": "cls.seq_relationship.bias",
    "qa_outputs.weight": "qa_outputs.weight",
    "qa_outputs.bias": "qa_outputs.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}
# Hugging Face tensors that carry no information of their own.
_REDUNDANT = {"bert.embeddings.position_ids", "cls.predictions.decoder.bias",
              "bert.embeddings.token_type_ids"}
_TIED_DECODER = "cls.predictions.decoder.weight"

ARCHITECTURES = {
    "base": "BertModel",
    "pretraining": "BertForPreTraining",
    "qa": "BertForQuestionAnswering",
    "classification": "BertForSequenceClassification",
}


def _canonical_hf_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the `bert.` prefix where a BertModel checkpoint lacks it; old gamma/beta names."""
    out = {}
    for key, value in state.items():
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
