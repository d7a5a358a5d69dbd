"""The model and tokenizer a `ModelArgs` describes, and the checks of the data's sequences
against what the model can embed. Every task, the Python API and the server load models here:
checkpoints with `load_model`, `bertforge export` directories (for the onnxruntime engine) with
`load_export`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path

from bertforge.checkpoint import load_checkpoint, load_into
from bertforge.checkpoint.common import VOCAB_PAD_MULTIPLE
from bertforge.checkpoint.load import peek_checkpoint
from bertforge.config import BertConfig, resolve_config
from bertforge.engine.ort import is_export_dir
from bertforge.errors import ConfigError
from bertforge.model import HEADS, BertPreTrainedModel, build_model, count_parameters
from bertforge.runconfig import ModelArgs
from bertforge.tokenization import WordPieceTokenizer

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A built model filled from its checkpoint, with its tokenizer and what the checkpoint records."""

    model: BertPreTrainedModel  # or, once made ready to predict, what `engine.inference_model` made of it
    config: BertConfig
    tokenizer: WordPieceTokenizer | None  # None: a run on token ids given no vocabulary (need_tokenizer)
    labels: list[str] | None  # class names the checkpoint records for its classification head
    task: str | None  # the task the checkpoint was fine-tuned for, where it records one
    head_loaded: bool  # the checkpoint had trained weights for the model's head
    meta: dict = field(default_factory=dict)  # what else the checkpoint records (bertforge.json)

    @property
    def vocab_file(self) -> Path | None:
        return self.tokenizer.vocab_file if self.tokenizer is not None else None

    @property
    def do_lower_case(self) -> bool | None:
        return self.tokenizer.do_lower_case if self.tokenizer is not None else None


def plan_model(args: ModelArgs, head: str | None, *, require_head: bool = False,
               default_vocab: str | Path | None = None, default_lower_case: bool | None = None,
               need_tokenizer: bool = True) -> BertConfig:
    """Every check `load_model` makes of the flags and of what the checkpoint says about itself
    (its config, vocabulary, casing), without reading its weights or building the model: a run
    calls it before any work. Returns the model's config (a DLE-padded vocabulary shows only in
    the weights, so `load_model`'s config may have a larger vocab_size)."""
    _check_head(head)
    _refuse_export(args)
    if args.init_checkpoint:
        info = peek_checkpoint(args.init_checkpoint, config=args.bert_model)
        config, vocab, recorded = info.config, info.vocab_file, info.do_lower_case
        if args.bert_model:
            _check_bert_model(args.bert_model, config, args.init_checkpoint, warn=False)
    elif require_head:
        raise ConfigError("prediction needs trained weights: pass --init_checkpoint")
    else:
        config, vocab, recorded = _config_without_checkpoint(args, head), None, None
    _tokenizer(args, vocab, default_vocab, recorded, default_lower_case, warn=False, required=need_tokenizer)
    return config


def load_model(args: ModelArgs, head: str | None, *, num_labels: int = 2, unpad: bool = True,
               require_head: bool = False, default_vocab: str | Path | None = None,
               default_lower_case: bool | None = None, resuming: bool = False,
               need_tokenizer: bool = True) -> LoadedModel:
    """Build the model with `head` and fill it from `args.init_checkpoint` when given.
    `head=None` takes the head the checkpoint has (`Checkpoint.head`) with its number of labels.
    `default_vocab` / `default_lower_case` stand in for the checkpoint's when it has none (the
    vocabulary prepared pretraining data was made with). `resuming`: the run continues from a
    training checkpoint, whose weights replace these. `need_tokenizer=False`: the run reads
    token ids only (pretraining on other toolkits' files), so no vocabulary or casing is
    required; the tokenizer is None unless both are known."""
    _check_head(head)
    _refuse_export(args)
    ckpt = None
    if args.init_checkpoint:
        ckpt = load_checkpoint(args.init_checkpoint, config=args.bert_model)
        config = ckpt.config
        if args.bert_model:
            _check_bert_model(args.bert_model, config, args.init_checkpoint)
        if head is None:
            head, num_labels = ckpt.head, ckpt.num_labels or num_labels
    else:
        config = _config_without_checkpoint(args, head)
    tokenizer = _tokenizer(args, ckpt.vocab_file if ckpt else None, default_vocab,
                           ckpt.do_lower_case if ckpt else None, default_lower_case, required=need_tokenizer)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ConfigError(f"vocab file {tokenizer.vocab_file} has {len(tokenizer)} tokens but the model's "
                          f"vocab_size is {config.vocab_size}: they do not belong together")
    model = build_model(config, head, num_labels=num_labels, unpad=unpad)
    head_loaded = False
    if ckpt is not None:
        head_loaded = load_into(model, ckpt, require_head=require_head, resuming=resuming).head_loaded
    elif require_head:
        raise ConfigError("prediction needs trained weights: pass --init_checkpoint")
    log.info("model: %s with %s head, %.1fM parameters%s", _describe(config), head,
             count_parameters(model) / 1e6, f", from {ckpt.source} ({ckpt.format})" if ckpt else "")
    if ckpt is None and head != "pretraining" and not resuming:
        log.warning("no --init_checkpoint: fine-tuning starts from random weights, not a pretrained model")
    return LoadedModel(model, config, tokenizer, ckpt.labels if ckpt else None,
                       ckpt.meta.get("task") if ckpt else None, head_loaded, dict(ckpt.meta) if ckpt else {})


def load_export(args: ModelArgs, head: str | None, precision: str, threads: int | None = None) -> LoadedModel:
    """The `bertforge export` directory `args.init_checkpoint` on the onnxruntime engine (an
    OrtModel, whose precision must be `precision`), with its tokenizer and what its export.json
    records. `head`: the head it must have; None takes the export's."""
    from bertforge.engine import onnxruntime_model

    source = Path(args.init_checkpoint)
    if args.bert_model:
        raise ConfigError(f"--bert_model: {source} is an export, which records its model's config; leave it out")
    _check_head(head)
    model = onnxruntime_model(source, precision, threads)
    if head is not None and head != model.head:
        raise ConfigError(f"{source} is an export of the {model.head} head, not {head}: export the checkpoint "
                          f"again with --head {head}")
    record = model.record
    vocab = source / "vocab.txt"
    tokenizer = _tokenizer(args, vocab if vocab.is_file() else None, None, record.get("do_lower_case"), None)
    if len(tokenizer) > model.config.vocab_size:
        raise ConfigError(f"vocab file {tokenizer.vocab_file} has {len(tokenizer)} tokens but the model's "
                          f"vocab_size is {model.config.vocab_size}: they do not belong together")
    log.info("model: %s with %s head, the %s ONNX export %s on onnxruntime", _describe(model.config), model.head,
             model.precision, source)
    meta = {k: record[k] for k in ("task", "version_2_with_negative") if record.get(k) is not None}
    # Exports of an older bertforge do not say whether the base head's pooler was trained.
    trained = record.get("head_trained", model.head != "base")
    return LoadedModel(model, model.config, tokenizer, record.get("labels"), record.get("task"), trained, meta)


def _refuse_export(args: ModelArgs) -> None:
    """An export has no weights PyTorch loads: only `load_export` (the onnxruntime engine) runs it."""
    if args.init_checkpoint and is_export_dir(args.init_checkpoint):
        raise ConfigError(f"--init_checkpoint {args.init_checkpoint} is an ONNX export (bertforge export), which only "
                          "the onnxruntime engine runs (--engine onnxruntime with predict --question/--input_jsonl, "
                          "serve, bertforge.load); here give the checkpoint it was exported from")


def _check_head(head: str | None) -> None:
    if head is not None and head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; heads: {', '.join(HEADS)}")


def _config_without_checkpoint(args: ModelArgs, head: str | None) -> BertConfig:
    if head is None:
        raise ConfigError("no checkpoint to take the model's head from: pass --init_checkpoint")
    if not args.bert_model:
        raise ConfigError("which model? give --init_checkpoint (weights) or --bert_model "
                          "(a preset such as base, or a bert_config.json)")
    return resolve_config(args.bert_model)


# The fields that shape the weights: a --bert_model that differs in one describes another model.
_SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")


def _check_bert_model(spec: str, config: BertConfig, source: str, warn: bool = True) -> None:
    """--bert_model given with a checkpoint that has its own config: it must describe the same
    model (a DLE-padded vocab_size counts as the same); other differences (dropout) are not
    used, and said so."""
    given = resolve_config(spec)
    padded = -(-given.vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
    shape = [f for f in _SHAPE_FIELDS if getattr(given, f) != getattr(config, f)]
    if config.vocab_size not in (given.vocab_size, padded):
        shape.insert(0, "vocab_size")
    if shape:
        shown = ", ".join(f"{f} {getattr(given, f)} vs {getattr(config, f)}" for f in shape[:4])
        raise ConfigError(f"--bert_model {spec} is another model than --init_checkpoint {source} ({shown}); "
                          "leave --bert_model out: the checkpoint's own config is used")
    other = [f.name for f in fields(BertConfig) if f.name not in (*_SHAPE_FIELDS, "vocab_size")
             and getattr(given, f.name) != getattr(config, f.name)]
    if other and warn:
        log.warning("--bert_model %s differs from --init_checkpoint %s's config in %s; the checkpoint's "
                    "values are used", spec, source, ", ".join(other))


def _tokenizer(args: ModelArgs, beside: Path | None, default_vocab: str | Path | None, recorded: bool | None,
               default_lower_case: bool | None, warn: bool = True, required: bool = True) -> WordPieceTokenizer | None:
    """The tokenizer of --vocab_file, else the checkpoint's vocab.txt, else `default_vocab`, with
    --do_lower_case, else the casing the checkpoint (or `default_lower_case`) records. Not
    `required`: None where the vocabulary or the casing is unknown."""
    vocab = args.vocab_file or beside or default_vocab
    do_lower_case = args.do_lower_case
    recorded = recorded if recorded is not None else default_lower_case
    if not required and (vocab is None or (do_lower_case is None and recorded is None)):
        return None
    if vocab is None:
        raise ConfigError("no vocab file: pass --vocab_file (the checkpoint has no vocab.txt beside it)")
    if do_lower_case is None:
        if recorded is None:
            raise ConfigError("is the model cased or uncased? pass --do_lower_case true (uncased) or "
                              "false (cased); the checkpoint does not record it")
        do_lower_case = recorded
    elif recorded is not None and recorded != do_lower_case and warn:
        log.warning("--do_lower_case %s, but the checkpoint was trained with do_lower_case=%s",
                    do_lower_case, recorded)
    return WordPieceTokenizer(vocab, do_lower_case=do_lower_case)


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


__all__ = ["LoadedModel", "MODEL_INPUTS", "check_seq_length", "load_export", "load_model", "model_inputs",
           "plan_model"]
