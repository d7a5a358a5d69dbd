"""The heads, one entry each: the model class, which tensors are the head's own, what Hugging Face
calls them, and what the head outputs. Building a model, telling which heads a checkpoint
carries, loading it into a model, writing Hugging Face files and exporting all read this table,
so a new head is a class in `bert` and an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from bertforge.config import BertConfig
from bertforge.errors import ConfigError
from bertforge.model.bert import (
    BertEncoderOnly, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    BertPreTrainedModel,
)

# Every model has these; a checkpoint without them cannot be loaded into any.
BACKBONE_PREFIXES = ("bert.embeddings.", "bert.encoder.")


@dataclass(frozen=True)
class HeadSpec:
    """One head of the table."""

    module: type[BertPreTrainedModel]
    """The model class; its `head` attribute is the head's name."""
    prefixes: tuple[str, ...]
    """State-dict prefixes of the model's tensors outside the backbone (BACKBONE_PREFIXES): the
    pooler where the head reads it, and the head's own layers."""
    markers: tuple[str, ...]
    """Tensors whose presence shows that a checkpoint carries this head trained; none for the
    bare encoder, which every checkpoint carries."""
    hf_architecture: str
    """transformers' class for this head (`architectures` in a Hugging Face config.json)."""
    outputs: dict[str, tuple[str | int, ...]]
    """Output names, in the order the model returns them, with their axes (export.json, ONNX)."""
    hf_names: dict[str, str] = field(default_factory=dict)
    """Hugging Face names of the head's own tensors, by bertforge name (the pooler's are the
    backbone map's, in `bertforge.checkpoint.hf`)."""
    hf_encoder_prefix: str = "bert."
    """Where transformers' class keeps the encoder's weights ("" for its BertModel, which is
    the encoder itself)."""
    label_weight: str | None = None
    """The tensor with one row per class, for heads built with num_labels."""

    @property
    def name(self) -> str:
        return self.module.head

    def build(self, config: BertConfig, num_labels: int = 2, unpad: bool = False) -> BertPreTrainedModel:
        """A freshly initialised model with this head."""
        if self.label_weight is None:
            return self.module(config, unpad=unpad)
        return self.module(config, num_labels=num_labels, unpad=unpad)


POOLER = ("bert.pooler.",)

HEADS: dict[str, HeadSpec] = {spec.name: spec for spec in (
    HeadSpec(
        BertEncoderOnly, prefixes=POOLER, markers=(), hf_architecture="BertModel",
        outputs={"sequence_output": ("batch", "sequence", "hidden"), "pooled_output": ("batch", "hidden")},
        hf_encoder_prefix=""),
    HeadSpec(
        BertForPreTraining, prefixes=(*POOLER, "mlm.", "nsp."), markers=("mlm.bias", "nsp.weight"),
        hf_architecture="BertForPreTraining",
        outputs={"mlm_logits": ("batch", "sequence", "vocab"), "nsp_logits": ("batch", 2)},
        hf_names={
            "mlm.dense.weight": "cls.predictions.transform.dense.weight",
            "mlm.dense.bias": "cls.predictions.transform.dense.bias",
            "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "mlm.bias": "cls.predictions.bias",
            "nsp.weight": "cls.seq_relationship.weight",
            "nsp.bias": "cls.seq_relationship.bias",
        }),
    HeadSpec(
        BertForQuestionAnswering, prefixes=("qa_outputs.",), markers=("qa_outputs.weight",),
        hf_architecture="BertForQuestionAnswering",
        outputs={"start_logits": ("batch", "sequence"), "end_logits": ("batch", "sequence")},
        hf_names={"qa_outputs.weight": "qa_outputs.weight", "qa_outputs.bias": "qa_outputs.bias"}),
    HeadSpec(
        BertForSequenceClassification, prefixes=(*POOLER, "classifier."), markers=("classifier.weight",),
        hf_architecture="BertForSequenceClassification", outputs={"logits": ("batch", "num_labels")},
        hf_names={"classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"},
        label_weight="classifier.weight"),
)}

# Tensors a checkpoint may lack, or carry for a head the model does not have, without being wrong.
HEAD_PREFIXES = tuple(dict.fromkeys(p for spec in HEADS.values() for p in spec.prefixes))


def build_model(config: BertConfig, head: str, num_labels: int = 2, unpad: bool = False
                ) -> BertPreTrainedModel:
    """A freshly initialised model with the named head (see HEADS)."""
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; heads: {', '.join(HEADS)}")
    return HEADS[head].build(config, num_labels=num_labels, unpad=unpad)


def heads_in(state: dict[str, Tensor]) -> set[str]:
    """The heads whose trained tensors `state` (bertforge names) holds."""
    return {name for name, spec in HEADS.items() if any(k in state for k in spec.markers)}


def num_labels_in(state: dict[str, Tensor]) -> int | None:
    """The number of classes of the labelled head `state` holds, if any."""
    for spec in HEADS.values():
        if spec.label_weight is not None and spec.label_weight in state:
            return int(state[spec.label_weight].shape[0])
    return None


__all__ = ["BACKBONE_PREFIXES", "HEAD_PREFIXES", "HEADS", "HeadSpec", "build_model", "heads_in",
           "num_labels_in"]
