"""GLUE fine-tuning, evaluation and test-set submission files (`bertforge finetune glue`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.checkpoint import save_native
from bertforge.data import glue as data
from bertforge.errors import ConfigError
from bertforge.evaluate.glue import compute_metrics
from bertforge.infer import predict
from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
from bertforge.tasks.common import load_model, log_batch_plan, total_steps, write_json
from bertforge.train.batching import ArrayStepLoader, StepPlan
from bertforge.train.loop import Trainer
from bertforge.train.runtime import DistInfo, Runtime, seed_everything

log = logging.getLogger(__name__)


@dataclass
class GlueData:
    task_name: str = "mrpc"
    """cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli (GLUE names like SST-2 work too; also --task)."""
    data_dir: str | None = None
    """The task's GLUE directory (or the GLUE root holding it)."""
    max_seq_length: int = 128
    eval_batch_size: int = 64
    """Sequences per device per prediction batch (also --predict_batch_size)."""


@dataclass
class GlueRun:
    """Fine-tune and/or evaluate BERT on a GLUE task."""

    output_dir: str = "runs/glue"
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    """Write the test set's GLUE submission file(s) into output_dir."""
    data: GlueData = field(default_factory=GlueData)
    model: ModelArgs = field(default_factory=ModelArgs)
    train: TrainArgs = field(default_factory=lambda: TrainArgs(learning_rate=2e-5, train_batch_size=32))
    runtime: RuntimeArgs = field(default_factory=RuntimeArgs)


class ClassificationLoss:
    """Cross-entropy for classes, squared error for STS-B's regression."""

    def __init__(self, regression: bool):
        self.regression = regression

    def denominators(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return {"cls": batch["labels"].shape[0]}

    def loss_sums(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        if self.regression:
            return {"cls": F.mse_loss(logits.squeeze(-1).float(), batch["labels"].float(), reduction="sum")}
        return {"cls": F.cross_entropy(logits.float(), batch["labels"], reduction="sum")}


def _arrays(features: data.GlueFeatures) -> dict[str, np.ndarray]:
    arrays = {"input_ids": features.input_ids, "token_type_ids": features.token_type_ids,
              "attention_mask": features.attention_mask}
    if features.labels is not None:
        arrays["labels"] = features.labels
    return arrays


def _logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])


def run(cfg: GlueRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Train / evaluate / predict as asked; returns the dev metrics (empty without --do_eval)."""
    if not (cfg.do_train or cfg.do_eval or cfg.do_predict):
        raise ConfigError("nothing to do: pass --do_train, --do_eval and/or --do_predict")
    if cfg.data.data_dir is None:
        raise ConfigError("--data_dir is required: the GLUE task's directory")
    cfg.train.validate()
    data.get_task(cfg.data.task_name)  # an unknown task fails before the device is set up
    with Runtime(cfg.runtime, dist_info) as runtime:
        return _run(cfg, runtime, progress)


def _run(cfg: GlueRun, runtime: Runtime, progress: bool) -> dict:
    task = data.get_task(cfg.data.task_name)
    out = Path(cfg.output_dir)
    accumulation = cfg.train.accumulation_for(runtime.world_size)  # fail before any work
    seed_everything(cfg.train.seed)
    loaded = load_model(cfg.model, "classification", num_labels=task.num_labels,
                        unpad=cfg.runtime.unpad, require_head=not cfg.do_train)
    model = loaded.model
    labels = list(task.labels) if task.labels else None
    results: dict = {}
    if cfg.do_train:
        features = data.encode_examples(data.read_split(task, cfg.data.data_dir, "train"),
                                        loaded.tokenizer, cfg.data.max_seq_length, task)
        plan = StepPlan(cfg.train.train_batch_size, accumulation, runtime.world_size)
        loader = ArrayStepLoader(_arrays(features), plan, runtime.dist.rank, cfg.train.seed)
        steps = total_steps(cfg.train, loader.steps_per_epoch)
        log_batch_plan(cfg.train, runtime, accumulation, steps, loader.steps_per_epoch)
        trainer = Trainer(model, ClassificationLoss(task.is_regression), loader, cfg.train, runtime,
                          out, steps, accumulation, progress=progress)
        result = trainer.fit()
        results["train"] = {"steps": result.steps, "seconds": result.seconds,
                            "first_loss": result.first_loss, "last_loss": result.last_loss}
        if runtime.is_main:
            save_native(out, model, loaded.config, vocab_file=loaded.vocab_file,
                        do_lower_case=loaded.tokenizer.do_lower_case, labels=labels,
                        extra={"task": f"glue/{task.name}"})
            log.info("model written to %s", out)
    if cfg.do_eval:
        metrics = {}
        for split in task.splits_of("dev"):
            features = data.encode_examples(data.read_split(task, cfg.data.data_dir, split.name),
                                            loaded.tokenizer, cfg.data.max_seq_length, task)
            (logits,) = predict(model, _arrays(features), cfg.data.eval_batch_size, runtime, _logits,
                                desc=f"eval {split.name}", progress=progress)
            scores = compute_metrics(task, logits, features.labels)
            suffix = "" if len(task.splits_of("dev")) == 1 else "_" + split.name.removeprefix("dev_")
            metrics.update({f"{k}{suffix}": v for k, v in scores.items()})
        if len(task.splits_of("dev")) > 1:  # MNLI: the matched accuracy is the headline number
            metrics = {"accuracy": metrics["accuracy_matched"], **metrics}
        results["eval"] = metrics
        if runtime.is_main:
            write_json(out / "eval_results.json", {"task": task.name, **metrics})
            print(json.dumps({k: (round(v, 6) if v == v else None) for k, v in metrics.items()}))
    if cfg.do_predict:
        for split in task.splits_of("test"):
            examples = data.read_split(task, cfg.data.data_dir, split.name)
            features = data.encode_examples(examples, loaded.tokenizer, cfg.data.max_seq_length, task)
            (logits,) = predict(model, _arrays(features), cfg.data.eval_batch_size, runtime, _logits,
                                desc=f"predict {split.name}", progress=progress)
            if runtime.is_main:
                path = data.write_submission(out, task, logits, split.name, indices=features.guids)
                log.info("submission written to %s", path)
    return results
