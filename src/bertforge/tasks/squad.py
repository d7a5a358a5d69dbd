"""SQuAD v1.1 and v2.0 end to end (`bertforge finetune squad`, `predict squad`, `evaluate squad`):
fine-tuning, prediction of SQuAD files through the answer pipeline every entry point shares
(`bertforge.qa`, with the null answer for v2.0) and the official metrics. The run configs live in
`bertforge.tasks.config`.

`span_logits` and `model_arrays` (defined in `bertforge.qa` and `bertforge.data.squad`) can also be
imported from here."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.data import squad as data
from bertforge.data.squad import model_arrays
from bertforge.errors import ConfigError
from bertforge.evaluate import squad as metric
from bertforge.fileio import ensure_parent_dir
from bertforge.infer import InferenceStats
from bertforge.loading import LoadedModel, check_seq_length
from bertforge.qa import AnswerPipeline, Answers, span_logits
from bertforge.tasks.common import report_inference, write_json
from bertforge.tasks.config import EvaluateArgs, SquadPredictData, SquadPredictRun, SquadRun, parse_slice
from bertforge.tasks.evaluation import evaluate_during_training
from bertforge.tasks.runner import Job, run
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.runtime import DistInfo, Runtime

log = logging.getLogger(__name__)


# ---- loss ----------------------------------------------------------------------------------


class SpanLoss:
    """(cross-entropy of the start + of the end position) / 2, as Google's run_squad.py."""

    def denominators(self, batch: dict) -> dict[str, float]:
        return {"qa": batch["start_positions"].shape[0]}

    def loss_sums(self, model: nn.Module, batch: dict) -> dict[str, Tensor]:
        start, end = span_logits(model, batch)
        loss = (F.cross_entropy(start, batch["start_positions"], reduction="sum")
                + F.cross_entropy(end, batch["end_positions"], reduction="sum")) / 2
        return {"qa": loss}


# ---- data ----------------------------------------------------------------------------------


def read_examples(path: str, articles: str | None, is_training: bool, what: str,
                  version_2_with_negative: bool = False):
    examples, problems = data.read_squad_examples(path, is_training=is_training,
                                                  articles=parse_slice(articles, what),
                                                  version_2_with_negative=version_2_with_negative)
    if not examples:
        raise ConfigError(f"{path}: no usable questions{f' in articles {articles}' if articles else ''}")
    return examples, problems


def report_problems(problems: list[data.Problem], path: str, output_dir: Path, name: str) -> None:
    if not problems:
        return
    shown = "; ".join(f"{p.qas_id}: {p.message}" for p in problems[:3])
    log.warning("%s: skipped %d question(s) (%s%s); all listed in %s", path, len(problems), shown,
                " ..." if len(problems) > 3 else "", output_dir / name)
    write_json(output_dir / name, [{"id": p.qas_id, "problem": p.message} for p in problems])


# ---- the job -------------------------------------------------------------------------------


class SquadJob(Job):
    head = "qa"
    result_files = ("predictions.json", "nbest_predictions.json", "null_odds.json", "eval_results.json",
                    "predict_problems.json")
    cfg: SquadRun | SquadPredictRun

    def check(self) -> None:
        cfg = self.cfg
        if not (self.training or cfg.predicting):
            raise ConfigError("nothing to do: pass --do_train and/or --do_predict")
        if self.training and not cfg.data.train_file:
            raise ConfigError("--do_train needs --train_file")
        if cfg.predicting and not cfg.data.predict_file:
            raise ConfigError("--predict_file is required to predict")
        if self.training and cfg.evaluation.eval_every and not cfg.data.predict_file:
            raise ConfigError("--eval_every scores --predict_file: give one (with answers)")

    def validate(self) -> None:
        d = self.cfg.data
        if self.training:
            read_examples(d.train_file, d.train_articles, True, "train_articles", d.version_2_with_negative)
        if self.cfg.predicting or (self.training and self.cfg.evaluation.eval_every):
            read_examples(d.predict_file, d.predict_articles, False, "predict_articles")

    def model_options(self) -> dict:
        return {"require_head": not self.training}

    def check_model(self, config) -> None:
        check_seq_length(self.cfg.data.max_seq_length, config)

    def pipeline(self, loaded: LoadedModel, runtime: Runtime) -> AnswerPipeline:
        d = self.cfg.data
        return AnswerPipeline(loaded.model, loaded.tokenizer, d, runtime, d.predict_batch_size,
                              allow_no_answer=d.version_2_with_negative)

    def train_loader(self, loaded: LoadedModel, plan: StepPlan, runtime: Runtime) -> ArrayStepLoader:
        d = self.cfg.data
        examples, problems = read_examples(d.train_file, d.train_articles, True, "train_articles",
                                           d.version_2_with_negative)
        if runtime.is_main:
            report_problems(problems, d.train_file, Path(self.cfg.output_dir), "train_problems.json")
        features = self.pipeline(loaded, runtime).windows(examples, is_training=True, progress=self.progress)
        log.info("SQuAD training: %d questions -> %d features", len(examples), len(features))
        return ArrayStepLoader(model_arrays(features, True), plan, runtime.dist.rank, self.cfg.train.seed)

    def loss(self) -> SpanLoss:
        return SpanLoss()

    def checkpoint_meta(self, loaded, trainer) -> dict:
        # Readers of the checkpoint (Predictor.answer, the server) decode as it was trained.
        return {"task": "squad", "version_2_with_negative": self.cfg.data.version_2_with_negative}

    def add_callbacks(self, trainer: Trainer, loaded: LoadedModel, runtime: Runtime) -> None:
        if not self.cfg.evaluation.eval_every:
            return
        # Features once, scored at every evaluation.
        d = self.cfg.data
        pipeline = self.pipeline(loaded, runtime)
        examples, features, _ = predict_features(d, pipeline, progress=False)
        if not has_gold(examples, d.version_2_with_negative):
            v2 = any(e.is_impossible for e in examples) and not d.version_2_with_negative
            raise ConfigError(f"--eval_every: {d.predict_file} has questions without answers to score against"
                              + ("; it is a SQuAD 2.0 file: add --version_2_with_negative" if v2 else ""))

        def evaluate() -> dict | None:
            found, _ = predict_answers(pipeline, examples, features, progress=False)
            return None if found is None else score(d, examples, found)

        self.best = evaluate_during_training(self.cfg.evaluation, trainer, loaded, runtime, Path(self.cfg.output_dir),
                                             self.labels(loaded), evaluate, "f1")

    def after(self, loaded: LoadedModel, runtime: Runtime, out: Path, results: dict) -> dict:
        if not self.cfg.predicting:
            return {}
        return predict_and_evaluate(self.cfg, self.pipeline(loaded, runtime), out, self.progress)


def predict_features(d: SquadPredictData, pipeline: AnswerPipeline, progress: bool
                     ) -> tuple[list, data.SquadFeatures, list[data.Problem]]:
    """predict_file's questions (and those skipped) and their windows."""
    examples, problems = read_examples(d.predict_file, d.predict_articles, False, "predict_articles")
    return examples, pipeline.windows(examples, progress=progress), problems


def predict_answers(pipeline: AnswerPipeline, examples: list, features: data.SquadFeatures, progress: bool
                    ) -> tuple[Answers | None, InferenceStats]:
    """The answers on rank 0 (every rank predicts its share of the windows; None elsewhere), and
    how fast the windows were predicted."""
    (start, end), stats = pipeline.logits(features, progress)
    if not pipeline.runtime.is_main:
        return None, stats
    return pipeline.decode(examples, features, start, end, progress), stats


def gold_answers(examples: list) -> dict[str, list[str]]:
    """Question id -> gold answer texts (none for an unanswerable SQuAD v2.0 question)."""
    return {e.qas_id: [] if e.is_impossible else [a["text"] for a in e.answers] for e in examples}


def has_gold(examples: list, version_2_with_negative: bool) -> bool:
    """Whether every question can be scored: it has answers (or, for v2.0, is unanswerable)."""
    return all(e.answers or (version_2_with_negative and e.is_impossible) for e in examples)


def score(d: SquadPredictData, examples: list, answers: Answers) -> dict:
    """The official v1.1 scores, or v2.0 with the null odds as no-answer scores."""
    if d.version_2_with_negative:
        return metric.evaluate_answers_v2(gold_answers(examples), answers.predictions, answers.null_odds)
    return metric.evaluate_answers(gold_answers(examples), answers.predictions)


def predict_and_evaluate(cfg: SquadRun | SquadPredictRun, pipeline: AnswerPipeline, out: Path,
                         progress: bool = True) -> dict:
    d, runtime = cfg.data, pipeline.runtime
    examples, features, problems = predict_features(d, pipeline, progress)
    if runtime.is_main:
        report_problems(problems, d.predict_file, out, "predict_problems.json")
    found, stats = predict_answers(pipeline, examples, features, progress)
    results: dict = {"predict": {"questions": len(examples), "features": len(features), "skipped": len(problems),
                                 **report_inference(out, stats, runtime, "predict")}}
    if found is None:
        return results
    predictions = found.predictions
    data.write_predictions(out, predictions, found.nbest, found.null_odds)
    log.info("%d predictions written to %s", len(predictions), out / "predictions.json")
    if not d.version_2_with_negative and any(e.is_impossible for e in examples):
        log.warning("%s has unanswerable questions (is_impossible): SQuAD v2.0 needs "
                    "--version_2_with_negative", d.predict_file)
    if cfg.do_eval and has_gold(examples, d.version_2_with_negative):
        scores = score(d, examples, found)
        print(json.dumps(scores))
        write_json(out / "eval_results.json", {**scores, "questions": len(examples), "skipped": len(problems),
                                               "predict_file": d.predict_file,
                                               "predict_articles": d.predict_articles})
        results["eval"] = scores
    return results


def finetune(cfg: SquadRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Train and/or predict as asked; returns {"train": ..., "eval": {"exact_match", "f1"}} (for
    SQuAD v2.0, "eval" holds the official v2.0 scores: "exact", "f1", "HasAns_f1", ...)."""
    return run(SquadJob(cfg), dist_info, progress)


def predict_run(cfg: SquadPredictRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """`predict squad` of a SQuAD file. Raw text (--question/--context, --input_jsonl) is
    answered by `bertforge.raw_text.answer_run`, which the CLI calls instead."""
    if cfg.raw_text:
        raise ConfigError("predict_run predicts a SQuAD file (--predict_file); raw text (--question/--context, "
                          "--input_jsonl) goes to bertforge.raw_text.answer_run")
    return run(SquadJob(cfg), dist_info, progress)


def evaluate_files(args: EvaluateArgs) -> dict:
    pred = Path(args.predictions_file)
    out = Path(args.output_file) if args.output_file else pred.with_name(f"{pred.stem}_eval.json")
    ensure_parent_dir(out, "--output_file")
    predictions = metric.load_predictions(args.predictions_file)
    na_probs = metric.load_na_probs(args.na_prob_file) if args.na_prob_file else None
    scores = metric.evaluate(args.data_file, predictions, na_probs, args.na_prob_thresh)
    print(json.dumps(scores))
    write_json(out, scores)
    log.info("scores written to %s", out)
    return scores
