"""SQuAD v1.1 end to end (`bertforge finetune squad`, `predict squad`, `evaluate squad`):
features, fine-tuning, prediction, n-best post-processing and the official EM/F1."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.checkpoint import save_native
from bertforge.data import squad as data
from bertforge.errors import ConfigError
from bertforge.evaluate import squad as metric
from bertforge.infer import predict
from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
from bertforge.tasks.common import load_model, log_batch_plan, total_steps, write_json
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.runtime import DistInfo, Runtime, seed_everything

log = logging.getLogger(__name__)


@dataclass
class SquadData:
    """SQuAD files and Google's run_squad.py windowing and decoding settings."""

    train_file: str | None = None
    """SQuAD JSON to train on."""
    predict_file: str | None = None
    """SQuAD JSON to predict (and, when it has answers, to evaluate)."""
    train_articles: str | None = None
    """Use only these articles of train_file, as a Python slice: '0:38' (the first 38)."""
    predict_articles: str | None = None
    """Use only these articles of predict_file, e.g. '38:48'."""
    max_seq_length: int = 384
    doc_stride: int = 128
    max_query_length: int = 64
    predict_batch_size: int = 64
    """Sequences per device per prediction batch."""
    n_best_size: int = 20
    max_answer_length: int = 30


@dataclass
class SquadRun:
    """Fine-tune BERT on SQuAD v1.1, predict answers, and score them with the official metric."""

    output_dir: str = "runs/squad"
    do_train: bool = False
    do_predict: bool = False
    do_eval: bool = True
    """Score the predictions when predict_file has answers."""
    data: SquadData = field(default_factory=SquadData)
    model: ModelArgs = field(default_factory=ModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=3e-5, num_train_epochs=2.0,
                                                               train_batch_size=32))
    runtime: RuntimeArgs = field(default_factory=RuntimeArgs)


@dataclass
class EvaluateArgs:
    """Official SQuAD v1.1 evaluation of a predictions file."""

    data_file: str
    """The SQuAD JSON with gold answers."""
    predictions_file: str
    """JSON object: question id -> answer text."""
    output_file: str | None = None
    """Where to write the scores as JSON (default: <predictions_file stem>_eval.json beside it)."""


# ---- training loss -------------------------------------------------------------------------


def span_logits(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Start/end logits with padding positions at -inf: answers never start or end in padding,
    and the softmax does not depend on how much padding a batch carries."""
    start, end = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    pad = batch["attention_mask"] == 0
    return start.float().masked_fill(pad, float("-inf")), end.float().masked_fill(pad, float("-inf"))


class SpanLoss:
    """(cross-entropy of the start + of the end position) / 2, as Google's run_squad.py."""

    def denominators(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return {"qa": batch["start_positions"].shape[0]}

    def loss_sums(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        start, end = span_logits(model, batch)
        loss = (F.cross_entropy(start, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end, batch["end_positions"], reduction="sum")) / 2
        return {"qa": loss}


# ---- data ----------------------------------------------------------------------------------


def parse_slice(text: str | None, what: str) -> slice | None:
    if text is None:
        return None
    try:
        parts = [int(p) if p.strip() else None for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3):
        raise ConfigError(f"--{what} {text!r}: expected a Python slice such as '0:38' or '38:'")
    return slice(*parts)


def read_examples(path: str, articles: str | None, is_training: bool, what: str):
    examples, problems = data.read_squad_examples(path, is_training=is_training,
                                                  articles=parse_slice(articles, what))
    if not examples:
        raise ConfigError(f"{path}: no usable questions{f' in articles {articles}' if articles else ''}")
    return examples, problems


def _model_arrays(features: data.SquadFeatures, with_labels: bool) -> dict[str, np.ndarray]:
    arrays = {"input_ids": features.input_ids, "token_type_ids": features.token_type_ids,
              "attention_mask": features.attention_mask}
    if with_labels:
        arrays["start_positions"] = features.start_positions
        arrays["end_positions"] = features.end_positions
    return arrays


def report_problems(problems: list[data.Problem], path: str, output_dir: Path, name: str) -> None:
    if not problems:
        return
    shown = "; ".join(f"{p.qas_id}: {p.message}" for p in problems[:3])
    log.warning("%s: skipped %d question(s) (%s%s); all listed in %s", path, len(problems), shown,
                " ..." if len(problems) > 3 else "", output_dir / name)
    write_json(output_dir / name, [{"id": p.qas_id, "problem": p.message} for p in problems])


# ---- the run -------------------------------------------------------------------------------


def run(cfg: SquadRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Train and/or predict as asked; returns {"train": ..., "eval": {"exact_match", "f1"}}."""
    if not (cfg.do_train or cfg.do_predict):
        raise ConfigError("nothing to do: pass --do_train and/or --do_predict")
    if cfg.do_train and not cfg.data.train_file:
        raise ConfigError("--do_train needs --train_file")
    if cfg.do_predict and not cfg.data.predict_file:
        raise ConfigError("--do_predict needs --predict_file")
    cfg.train.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with Runtime(cfg.runtime, dist_info) as runtime:
        return _run(cfg, runtime, progress)


def _run(cfg: SquadRun, runtime: Runtime, progress: bool) -> dict:
    out = Path(cfg.output_dir)
    accumulation = cfg.train.accumulation_for(runtime.world_size)  # fail before any work
    seed_everything(cfg.train.seed)
    loaded = load_model(cfg.model, "qa", unpad=cfg.runtime.unpad, require_head=not cfg.do_train)
    model, tokenizer = loaded.model, loaded.tokenizer
    results: dict = {}
    settings = dict(max_seq_length=cfg.data.max_seq_length, doc_stride=cfg.data.doc_stride,
                    max_query_length=cfg.data.max_query_length)

    if cfg.do_train:
        examples, problems = read_examples(cfg.data.train_file, cfg.data.train_articles, True,
                                           "train_articles")
        if runtime.is_main:
            report_problems(problems, cfg.data.train_file, out, "train_problems.json")
        features = data.convert_examples_to_features(examples, tokenizer, is_training=True,
                                                     progress=progress and runtime.is_main, **settings)
        plan = StepPlan(cfg.train.train_batch_size, accumulation, runtime.world_size)
        loader = ArrayStepLoader(_model_arrays(features, True), plan, runtime.dist.rank, cfg.train.seed)
        steps = total_steps(cfg.train, loader.steps_per_epoch)
        log.info("SQuAD training: %d questions -> %d features", len(examples), len(features))
        log_batch_plan(cfg.train, runtime, accumulation, steps, loader.steps_per_epoch)
        trainer = Trainer(model, SpanLoss(), loader, cfg.train, runtime, out, steps, accumulation,
                          progress=progress)
        result = trainer.fit()
        results["train"] = {"steps": result.steps, "seconds": result.seconds,
                            "samples": result.samples, "first_loss": result.first_loss,
                            "last_loss": result.last_loss}
        if runtime.is_main:
            save_native(out, model, loaded.config, vocab_file=loaded.vocab_file,
                        do_lower_case=tokenizer.do_lower_case, extra={"task": "squad"})
            log.info("model written to %s", out)
        runtime.barrier()

    if cfg.do_predict:
        results.update(predict_and_evaluate(cfg, model, tokenizer, runtime, out, progress))
    return results


def predict_and_evaluate(cfg: SquadRun, model: nn.Module, tokenizer, runtime: Runtime, out: Path,
                         progress: bool) -> dict:
    examples, problems = read_examples(cfg.data.predict_file, cfg.data.predict_articles, False,
                                       "predict_articles")
    if runtime.is_main:
        report_problems(problems, cfg.data.predict_file, out, "predict_problems.json")
    features = data.convert_examples_to_features(
        examples, tokenizer, is_training=False, progress=progress and runtime.is_main,
        max_seq_length=cfg.data.max_seq_length, doc_stride=cfg.data.doc_stride,
        max_query_length=cfg.data.max_query_length)
    start, end = predict(model, _model_arrays(features, False), cfg.data.predict_batch_size, runtime,
                         span_logits, desc="predict", progress=progress)
    results: dict = {"predict": {"questions": len(examples), "features": len(features),
                                 "skipped": len(problems)}}
    if not runtime.is_main:
        return results
    T = features.max_seq_length
    start = _widen(start, T)
    end = _widen(end, T)
    predictions, nbest = data.postprocess(examples, features, start, end, cfg.data.n_best_size,
                                          cfg.data.max_answer_length, progress=progress)
    data.write_predictions(out, predictions, nbest)
    log.info("%d predictions written to %s", len(predictions), out / "predictions.json")
    if cfg.do_eval and all(e.answers for e in examples):
        gold = [{"paragraphs": [{"qas": [{"id": e.qas_id, "answers": e.answers}]}]} for e in examples]
        scores = metric.evaluate(gold, predictions)
        print(json.dumps(scores))
        write_json(out / "eval_results.json", {**scores, "questions": len(examples),
                                                "skipped": len(problems),
                                                "predict_file": cfg.data.predict_file,
                                                "predict_articles": cfg.data.predict_articles})
        results["eval"] = scores
    return results


def _widen(logits: np.ndarray, width: int) -> np.ndarray:
    """Per-batch trimmed logits, gathered, back to the features' full width (-inf = padding)."""
    logits = np.where(np.isfinite(logits), logits, -1e9)
    if logits.shape[1] == width:
        return logits
    full = np.full((logits.shape[0], width), -1e9, dtype=logits.dtype)
    full[:, : logits.shape[1]] = logits
    return full


def evaluate_files(args: EvaluateArgs) -> dict:
    predictions = metric.load_predictions(args.predictions_file)
    scores = metric.evaluate(args.data_file, predictions)
    print(json.dumps(scores))
    pred = Path(args.predictions_file)
    out = Path(args.output_file) if args.output_file else pred.with_name(f"{pred.stem}_eval.json")
    write_json(out, scores)
    log.info("scores written to %s", out)
    return scores
