"""BERT model code: `bert` holds the layers and heads."""

from bertforge.model.bert import (
    HEADS, BertEncoderOnly, BertForPreTraining, BertForQuestionAnswering,
    BertForSequenceClassification, BertModel, BertPreTrainedModel, build_model, count_parameters,
    model_flops_per_token, stacked_parts,
)

__all__ = [
    "HEADS", "BertEncoderOnly", "BertForPreTraining", "BertForQuestionAnswering",
    "BertForSequenceClassification", "BertModel", "BertPreTrainedModel", "build_model",
    "count_parameters", "model_flops_per_token", "stacked_parts",
]
