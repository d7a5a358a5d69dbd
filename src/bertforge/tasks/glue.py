"""GLUE fine-tuning, evaluation and test-set submission files (`bertforge finetune glue`,
`evaluate glue`, `predict glue`)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.data import glue as data
from bertforge.errors import ConfigError
from bertforge.evaluate.glue import compute_metrics, require_metrics
from bertforge.infer import InferenceStats, predict_timed
from bertforge.loading import LoadedModel, check_seq_length, model_inputs
from bertforge.tasks.common import report_inference, write_json
from bertforge.tasks.config import GlueEvalRun, GlueRun
from bertforge.tasks.evaluation import evaluate_during_training
from bertforge.tasks.runner import Job, run
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.runtime import DistInfo, Runtime

log = logging.getLogger(__name__)


class ClassificationLoss:
    """Cross-entropy for classes, squared error for STS-B's regression."""

    def __init__(self, regression: bool):
        self.regression = regression

    def denominators(self, batch: dict) -> dict[str, float]:
        return {"cls": batch["labels"].shape[0]}

    def loss_sums(self, model: nn.Module, batch: dict) -> dict[str, Tensor]:
        logits = model(**model_inputs(batch))
        if self.regression:
            return {"cls": F.mse_loss(logits.squeeze(-1).float(), batch["labels"].float(), reduction="sum")}
        return {"cls": F.cross_entropy(logits.float(), batch["labels"], reduction="sum")}


def _arrays(features: data.GlueFeatures) -> dict[str, np.ndarray]:
    arrays = {"input_ids": features.input_ids, "token_type_ids": features.token_type_ids,
              "attention_mask": features.attention_mask}
    if features.labels is not None:
        arrays["labels"] = features.labels
    return arrays


def _logits(model: nn.Module, batch: dict) -> Tensor:
    return model(**model_inputs(batch))


_UNNAMED = re.compile(r"^LABEL_\d+$")


def align_labels(model: nn.Module, checkpoint_labels: list[str] | None, task: data.GlueTask,
                 source: str, label_order: list[str] | None = None) -> None:
    """Put a trained classifier's outputs in the task's class order.

    What the outputs are comes from `label_order` (--label_order) where given, else from the
    names the checkpoint records: the task's class names or GLUE's file labels, in any case
    (an MNLI model from Hugging Face lists ENTAILMENT, NEUTRAL, CONTRADICTION; GLUE's files
    contradiction, entailment, neutral). The classifier's rows are permuted to the task's
    order; names that are not the task's are an error.

    Unnamed outputs (LABEL_0, ..., or no names recorded) of a two-class head are taken to be in
    GLUE's order, with a warning: binary GLUE models are trained in it, whether with Google's or
    NVIDIA's scripts or on Hugging Face's GLUE data sets, which number every two-class task as
    GLUE's files do. With more classes they are refused: Hugging Face's MNLI data set numbers
    entailment, neutral, contradiction, GLUE's files contradiction, entailment, neutral, and a
    guess would permute every prediction silently."""
    if task.label_names is None:
        return
    ours = list(task.label_names)
    theirs = [str(x) for x in checkpoint_labels or []]
    unnamed = not theirs or all(_UNNAMED.match(x) for x in theirs)
    if label_order is not None:
        if not unnamed and [task.class_id(x) for x in theirs] != [task.class_id(x) for x in label_order]:
            log.warning("%s names its labels %s; --label_order %s overrides them", source, ", ".join(theirs),
                        ",".join(label_order))
        theirs, source = list(label_order), f"--label_order ({source})"
    elif unnamed and len(ours) == 2:
        log.warning("%s does not name its labels (%s): assuming they are %s's labels in GLUE's order (%s); "
                    "--label_order says otherwise", source, ", ".join(theirs) or "none recorded", task.name,
                    ", ".join(ours))
        return
    elif unnamed:  # MNLI, the one task with more than two classes
        raise ConfigError(f"{source} does not name its {len(ours)} labels ({', '.join(theirs) or 'none recorded'}): "
                          f"say which output is which with --label_order, e.g. --label_order {','.join(ours)} "
                          "(GLUE's order, in which Google's and NVIDIA's scripts train) or "
                          "entailment,neutral,contradiction (Hugging Face's GLUE data set's order)")
    ids = [task.class_id(x) for x in theirs]
    if sorted(i for i in ids if i is not None) != list(range(len(ours))):
        raise ConfigError(f"{source} was trained with labels {theirs}, but GLUE {task.name} has labels "
                          f"{ours}: it is not a {task.name} model")
    if ids == list(range(len(ours))):
        return
    order = [ids.index(i) for i in range(len(ours))]  # order[k]: the output that is our class k
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[order].clone())
        model.classifier.bias.copy_(model.classifier.bias[order].clone())
    log.info("%s lists its labels as %s; classifier reordered to GLUE's %s", source, theirs, ours)


class GlueJob(Job):
    head = "classification"
    cfg: GlueRun | GlueEvalRun

    def __init__(self, cfg: GlueRun | GlueEvalRun):
        super().__init__(cfg)
        self.task = data.get_task(cfg.data.task_name)
        self.result_files = ("eval_results.json",) + tuple(s.submission_file for s in self.task.splits_of("test"))
        self._encoded: dict[str, data.GlueFeatures] = {}  # dev/test splits, encoded once per run

    def check(self) -> None:
        cfg = self.cfg
        if not (self.training or cfg.do_eval or cfg.do_predict):
            raise ConfigError("nothing to do: pass --do_train, --do_eval and/or --do_predict")
        if cfg.data.data_dir is None:
            raise ConfigError("--data_dir is required: the GLUE task's directory")
        if cfg.do_eval or (self.training and cfg.evaluation.eval_every):
            require_metrics()

    def validate(self) -> None:
        cfg = self.cfg
        kinds = ((["train"] if self.training else [])
                 + (["dev"] if cfg.do_eval or (self.training and cfg.evaluation.eval_every) else [])
                 + (["test"] if cfg.do_predict else []))
        for split in (s for kind in kinds for s in self.task.splits_of(kind)):
            data.read_split(self.task, cfg.data.data_dir, split.name)  # every label checked before training

    def model_options(self) -> dict:
        return {"num_labels": self.task.num_labels, "require_head": not self.training}

    def check_model(self, config) -> None:
        check_seq_length(self.cfg.data.max_seq_length, config, pair=self.task.is_pair)

    def prepare_model(self, loaded: LoadedModel) -> None:
        source = self.cfg.model.init_checkpoint or "the model"
        recorded = loaded.task
        if loaded.head_loaded and recorded and recorded != f"glue/{self.task.name}":
            log.warning("%s was fine-tuned for %s, not glue/%s: its scores on %s mean little", source,
                        recorded, self.task.name, self.task.name)
        label_order = self.cfg.data.label_order
        if loaded.head_loaded:
            align_labels(loaded.model, loaded.labels, self.task, source, label_order)
        elif label_order is not None:
            raise ConfigError(f"--label_order names the outputs of a trained {self.task.name} head, but {source} "
                              "has none: the head trained here is in GLUE's order")

    def _features(self, loaded: LoadedModel, split: str) -> data.GlueFeatures:
        if split not in self._encoded:
            examples = data.read_split(self.task, self.cfg.data.data_dir, split)
            features = data.encode_examples(examples, loaded.tokenizer, self.cfg.data.max_seq_length, self.task)
            if split == "train":  # read once; not worth keeping
                return features
            self._encoded[split] = features
        return self._encoded[split]

    def train_loader(self, loaded: LoadedModel, plan: StepPlan, runtime: Runtime) -> ArrayStepLoader:
        return ArrayStepLoader(_arrays(self._features(loaded, "train")), plan, runtime.dist.rank,
                               self.cfg.train.seed)

    def loss(self) -> ClassificationLoss:
        return ClassificationLoss(self.task.is_regression)

    def labels(self, loaded: LoadedModel) -> list[str] | None:
        """The class names the trained model records (its head is in the task's order)."""
        return list(self.task.label_names) if self.task.label_names else None

    def checkpoint_meta(self, loaded, trainer) -> dict:
        return {"task": f"glue/{self.task.name}"}

    def add_callbacks(self, trainer: Trainer, loaded: LoadedModel, runtime: Runtime) -> None:
        # The main metric is the task's first: MNLI's matched accuracy, CoLA's MCC, STS-B's
        # Pearson, accuracy elsewhere (MRPC and QQP too, F1 being their second).
        self.best = evaluate_during_training(self.cfg.evaluation, trainer, loaded, runtime, Path(self.cfg.output_dir),
                                             self.labels(loaded), lambda: self.evaluate(loaded, runtime)[0],
                                             self.task.metrics[0])

    def _predict(self, loaded: LoadedModel, runtime: Runtime, features: data.GlueFeatures, desc: str):
        d = self.cfg.data
        return predict_timed(loaded.model, _arrays(features), d.eval_batch_size, runtime, _logits, desc=desc,
                             progress=self.progress, max_tokens=d.max_tokens_per_batch)

    def evaluate(self, loaded: LoadedModel, runtime: Runtime) -> tuple[dict, InferenceStats]:
        """The dev metrics, and how fast the dev set(s) were predicted."""
        task, metrics = self.task, {}
        dev = task.splits_of("dev")
        timing = InferenceStats(0, 0, 0.0, [])
        for split in dev:
            features = self._features(loaded, split.name)
            (logits,), stats = self._predict(loaded, runtime, features, f"eval {split.name}")
            timing = InferenceStats(timing.sequences + stats.sequences, timing.batches + stats.batches,
                                    timing.seconds + stats.seconds, timing.latencies_ms + stats.latencies_ms)
            scores = compute_metrics(task, logits, features.labels)
            suffix = "" if len(dev) == 1 else "_" + split.name.removeprefix("dev_")
            metrics.update({f"{k}{suffix}": v for k, v in scores.items()})
        if len(dev) > 1:  # MNLI: the matched accuracy is the headline number
            metrics = {"accuracy": metrics["accuracy_matched"], **metrics}
        return metrics, timing

    def after(self, loaded: LoadedModel, runtime: Runtime, out: Path, results: dict) -> dict:
        cfg, task, more = self.cfg, self.task, {}
        if cfg.do_eval:
            metrics, timing = self.evaluate(loaded, runtime)
            more["eval"] = metrics
            more["predict"] = report_inference(out, timing, runtime, "eval")
            if runtime.is_main:
                write_json(out / "eval_results.json", {"task": task.name, **metrics})
                print(json.dumps({k: (round(v, 6) if v == v else None) for k, v in metrics.items()}))
        if cfg.do_predict:
            for split in task.splits_of("test"):
                features = self._features(loaded, split.name)
                (logits,), _ = self._predict(loaded, runtime, features, f"predict {split.name}")
                if runtime.is_main:
                    path = data.write_submission(out, task, logits, split.name, indices=features.guids)
                    log.info("submission written to %s", path)
        return more


def finetune(cfg: GlueRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Train / evaluate / predict as asked; returns the dev metrics under "eval"."""
    return run(GlueJob(cfg), dist_info, progress)


def evaluate_run(cfg: GlueEvalRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """`evaluate glue` / `predict glue` of the task's files. JSON lines (--input_jsonl) are
    classified by `bertforge.raw_text.classify_run`, which the CLI calls instead."""
    if cfg.raw_text:
        raise ConfigError("evaluate_run reads the task's files (--data_dir); --input_jsonl goes to "
                          "bertforge.raw_text.classify_run")
    return run(GlueJob(cfg), dist_info, progress)
