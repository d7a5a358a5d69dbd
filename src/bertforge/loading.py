"""The model and tokenizer a `ModelArgs` describes, and the checks of the data's sequences
against what the model can embed. Every task, the Python API and the server load models here."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.checkpoint import load_checkpoint, load_into
from bertforge.config import BertConfig, resolve_config
from bertforge.errors import ConfigError
from bertforge.model import BertPreTrainedModel, build_model, count_parameters
from bertforge.runconfig import ModelArgs
from bertforge.tokenization import WordPieceTokenizer

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A built model filled from its checkpoint, with its tokenizer and what the checkpoint records."""

    model: BertPreTrainedModel
    config: BertConfig
    tokenizer: WordPieceTokenizer
    labels: list[str] | None  # class names the checkpoint records for its classification head
    task: str | None  # the task the checkpoint was fine-tuned for, where it records one
    head_loaded: bool  # the checkpoint had trained weights for the model's head
    meta: dict = field(default_factory=dict)  # what else the checkpoint records (bertforge.json)

    @property
    def vocab_file(self) -> Path:
        return self.tokenizer.vocab_file


def load_model(args: ModelArgs, head: str | None, *, num_labels: int = 2, unpad: bool = True,
               require_head: bool = False, default_vocab: str | Path | None = None,
               default_lower_case: bool | None = None) -> LoadedModel:
    """Build the model with `head` and fill it from `args.init_checkpoint` when given.
    `head=None` takes the head the checkpoint has (`Checkpoint.head`) with its number of labels.
    `default_vocab` / `default_lower_case` stand in for the checkpoint's when it has none (the
    vocabulary prepared pretraining data was made with)."""
    ckpt = None
    if args.init_checkpoint:
        ckpt = load_checkpoint(args.init_checkpoint, config=args.bert_model)
        config = ckpt.config
        if head is None:
            head, num_labels = ckpt.head, ckpt.num_labels or num_labels
    elif head is None:
        raise ConfigError("no checkpoint to take the model's head from: pass --init_checkpoint")
    elif args.bert_model:
        config = resolve_config(args.bert_model)
    else:
        raise ConfigError("which model? give --init_checkpoint (weights) or --bert_model "
                          "(a preset such as base, or a bert_config.json)")
    vocab = args.vocab_file or (ckpt.vocab_file if ckpt else None) or default_vocab
    if vocab is None:
        raise ConfigError("no vocab file: pass --vocab_file (the checkpoint has no vocab.txt beside it)")
    do_lower_case = args.do_lower_case
    recorded = ckpt.do_lower_case if ckpt and ckpt.do_lower_case is not None else default_lower_case
    if do_lower_case is None:
        if recorded is None:
            raise ConfigError("is the model cased or uncased? pass --do_lower_case true (uncased) or "
                              "false (cased); the checkpoint does not record it")
        do_lower_case = recorded
    elif recorded is not None and recorded != do_lower_case:
        log.warning("--do_lower_case %s, but the checkpoint was trained with do_lower_case=%s",
                    do_lower_case, recorded)
    tokenizer = WordPieceTokenizer(vocab, do_lower_case=do_lower_case)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"vocab file {vocab} has {len(tokenizer)} tokens but the model's vocab_size "
                          f"is {config.vocab_size}: they do not belong together")
    model = build_model(config, head, num_labels=num_labels, unpad=unpad)
    head_loaded = False
    if ckpt is not None:
        head_loaded = load_into(model, ckpt, require_head=require_head).head_loaded
    elif require_head:
        raise ConfigError("prediction needs trained weights: pass --init_checkpoint")
    log.info("model: %s with %s head, %.1fM parameters%s", _describe(config), head,
             count_parameters(model) / 1e6, f", from {ckpt.source} ({ckpt.format})" if ckpt else "")
    if ckpt is None and head != "pretraining":
        log.warning("no --init_checkpoint: fine-tuning starts from random weights, not a pretrained model")
    return LoadedModel(model, config, tokenizer, ckpt.labels if ckpt else None,
                       ckpt.meta.get("task") if ckpt else None, head_loaded, dict(ckpt.meta) if ckpt else {})


def _describe(config: BertConfig) -> str:
    return (f"BERT L={config.num_hidden_layers} H={config.hidden_size} "
            f"A={config.num_attention_heads}")


MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "seq_lengths")


def model_inputs(batch: dict, *extra: str) -> dict:
    """The model's keyword inputs out of a batch that also holds labels."""
    return {k: batch[k] for k in (*MODEL_INPUTS, *extra) if k in batch}


def check_seq_length(max_seq_length: int, config: BertConfig, pair: bool = True) -> None:
    """The data's sequence length and segment count against what the model can embed."""
    if max_seq_length > config.max_position_embeddings:
        raise ConfigError(f"--max_seq_length {max_seq_length} exceeds the model's max_position_embeddings "
                          f"({config.max_position_embeddings})")
    if pair and config.type_vocab_size < 2:
        raise ConfigError(f"this task feeds sentence pairs (token types 0 and 1) but the model's "
                          f"type_vocab_size is {config.type_vocab_size}")


__all__ = ["LoadedModel", "MODEL_INPUTS", "check_seq_length", "load_model", "model_inputs"]
