"""BERT model code: `bert` holds the layers and heads, `attention` the attention kernels and the
padded / unpadded layouts, `heads` the table of heads (HEADS) and `build_model`."""

from bertforge.model.bert import (
    BertEncoderOnly, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    BertModel, BertPreTrainedModel, count_parameters, model_flops_per_token, stacked_parts,
)
from bertforge.model.heads import HEADS, HeadSpec, build_model

__all__ = [
    "HEADS", "BertEncoderOnly", "BertForPreTraining", "BertForQuestionAnswering",
    "BertForSequenceClassification", "BertModel", "BertPreTrainedModel", "HeadSpec", "build_model",
    "count_parameters", "model_flops_per_token", "stacked_parts",
]
