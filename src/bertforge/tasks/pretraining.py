"""BERT pretraining (`bertforge pretrain`): masked LM + next sentence prediction with LAMB,
two phases (seq 128, then seq 512 from phase 1's weights), on prepared data or on the HDF5 /
TFRecord files other toolkits prepared, MLM/NSP accuracy on a held-out split or a separate
evaluation set (MLPerf's loop: `tasks.mlperf`), atomic checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bertforge.checkpoint import load_into
from bertforge.checkpoint.native import NATIVE_META
from bertforge.checkpoint.nvidia import (NvidiaResume, import_nvidia_checkpoint, nvidia_resume_point,
                                         read_pretraining_checkpoint)
from bertforge.data.pretraining import PretrainingDataset, StaticMaskDataset, open_pretraining_data
from bertforge.errors import ConfigError
from bertforge.fileio import read_json
from bertforge.loading import LoadedModel, check_seq_length, model_inputs
from bertforge.tasks.common import write_json
from bertforge.tasks.config import PretrainRun
from bertforge.tasks.mlperf import RunStop, add_training_loop
from bertforge.tasks.runner import Job, run
from bertforge.train.batching import StepPlan, trim_padding
from bertforge.train.checkpoints import list_checkpoints
from bertforge.train.loop import Trainer, to_device
from bertforge.train.runtime import DistInfo, Runtime

log = logging.getLogger(__name__)


class PretrainLoss:
    """Google's losses: MLM cross-entropy averaged over the real masked positions (weights),
    plus NSP cross-entropy averaged over sequences."""

    def denominators(self, batch: dict[str, Tensor]) -> dict[str, float]:
        return {"mlm": float(batch["masked_lm_weights"].sum()), "nsp": batch["input_ids"].shape[0]}

    def loss_sums(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = model(**model_inputs(batch, "masked_lm_positions"))
        mlm = F.cross_entropy(out.mlm_logits.float().flatten(0, 1), batch["masked_lm_ids"].flatten(),
                              reduction="none")
        return {"mlm": (mlm * batch["masked_lm_weights"].flatten()).sum(),
                "nsp": F.cross_entropy(out.nsp_logits.float(), batch["next_sentence_labels"], reduction="sum")}


PretrainingData = PretrainingDataset | StaticMaskDataset


class PretrainStepLoader:
    """The data set's global batches, this rank's rows cut into micro-batches."""

    def __init__(self, dataset: PretrainingData, plan: StepPlan, rank: int):
        self.dataset = dataset
        self.plan = plan
        self.rank = rank
        self.steps_per_epoch = dataset.num_samples // plan.global_batch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{dataset.num_samples} training instances are fewer than one global batch "
                              f"of {plan.global_batch}; use a smaller batch or more data")

    def __iter__(self):
        B = self.plan.per_device
        for rows in self.dataset.batches(self.plan.global_batch, self.rank, self.plan.world_size):
            yield [trim_padding({k: v[m * B:(m + 1) * B] for k, v in rows.items()})
                   for m in range(self.plan.accumulation)]

    def state_dict(self) -> dict:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state)


@torch.no_grad()
def evaluate_pretraining(model: nn.Module, dataset: PretrainingData, runtime: Runtime, batch_size: int,
                         max_samples: int | None = None) -> dict[str, float]:
    """MLM and NSP accuracy and loss over an evaluation set, its first `max_samples` samples if
    given (sums reduced over ranks)."""
    model.eval()
    # mlm loss, mlm correct, masked, nsp loss, nsp correct, sequences: summed on the device
    sums = torch.zeros(6, dtype=torch.float64, device=runtime.device)
    t0 = time.perf_counter()
    for batch in dataset.eval_batches(batch_size * runtime.world_size, runtime.dist.rank, runtime.world_size,
                                      max_samples):
        batch = to_device(trim_padding(batch), runtime.device)
        with runtime.autocast():
            out = model(**model_inputs(batch, "masked_lm_positions"))
        w = batch["masked_lm_weights"].flatten().double()
        labels = batch["masked_lm_ids"].flatten()
        logits = out.mlm_logits.float().flatten(0, 1)
        mlm_loss = F.cross_entropy(logits, labels, reduction="none").double()
        nsp = out.nsp_logits.float()
        nsp_labels = batch["next_sentence_labels"]
        sums += torch.stack([(mlm_loss * w).sum(), ((logits.argmax(-1) == labels).double() * w).sum(), w.sum(),
                             F.cross_entropy(nsp, nsp_labels, reduction="sum").double(),
                             (nsp.argmax(-1) == nsp_labels).double().sum(),
                             torch.full((), float(nsp_labels.shape[0]), dtype=torch.float64, device=w.device)])
    sums = runtime.all_reduce_sum(sums).cpu()
    masked, seqs = max(sums[2].item(), 1.0), max(sums[5].item(), 1.0)
    return {"mlm_accuracy": sums[1].item() / masked, "nsp_accuracy": sums[4].item() / seqs,
            "mlm_loss": sums[0].item() / masked, "nsp_loss": sums[3].item() / seqs,
            "loss": sums[0].item() / masked + sums[3].item() / seqs,
            "eval_sequences": int(sums[5].item()), "eval_seconds": time.perf_counter() - t0}


class PretrainJob(Job):
    head = "pretraining"
    cfg: PretrainRun

    def __init__(self, cfg: PretrainRun):
        super().__init__(cfg)
        self.train_set: PretrainingData | None = None
        self.eval_set: PretrainingData | None = None
        self.nvidia: NvidiaResume | None = None
        self.plan: StepPlan | None = None
        self.trainer: Trainer | None = None
        self.run_stop: RunStop | None = None

    def check(self) -> None:
        cfg, d = self.cfg, self.cfg.data
        if not cfg.do_train:
            raise ConfigError("--do_train=false: pretraining trains (evaluate a checkpoint with --do_eval on a "
                              "run of --max_steps 1, or fine-tune it)")
        if d.input_dir is None:
            raise ConfigError("--input_dir is required: a directory written by `bertforge prepare pretraining`, "
                              "or NVIDIA/Habana HDF5 or Google/MLPerf TFRecord files")
        out = Path(cfg.output_dir)
        self.nvidia = nvidia_resume_point(out, resume=bool(cfg.train.resume),
                                          has_own_checkpoints=bool(list_checkpoints(out)), phase2=cfg.phase2,
                                          phase1_end_step=cfg.phase1_end_step, resume_step=cfg.resume_step,
                                          init_checkpoint=cfg.model.init_checkpoint, optimizer=cfg.train.optimizer)
        if cfg.phase2 and not cfg.model.init_checkpoint and self.nvidia is None:
            raise ConfigError("--phase2 starts from phase 1's weights: pass --init_checkpoint PHASE1_OUTPUT_DIR "
                              "(bertforge keeps each phase in its own --output_dir; add --resume to continue an "
                              "interrupted phase 2)")
        if cfg.train.max_steps is None:
            raise ConfigError("pretraining runs for --max_steps optimizer steps; give --max_steps")
        self.train_set = open_pretraining_data(d.input_dir, flag="--input_dir", seed=cfg.train.seed,
                                               shuffle_window=d.shuffle_window)
        packed = getattr(self.train_set, "layout", None) == "Habana packed HDF5"
        for name in ("max_seq_length", "max_predictions_per_seq"):
            given, prepared = getattr(cfg, name), getattr(self.train_set, name)
            # A packed row holds P + (sequences per row) masked-LM entries; the flag gives P.
            if given is not None and given != prepared and not (packed and name == "max_predictions_per_seq"
                                                                 and given < prepared):
                raise ConfigError(f"--{name} {given}, but {d.input_dir} was prepared with {name}="
                                  f"{prepared}; pass {prepared} (or leave the flag out: the data decides)")
        if cfg.mlm_bias_init == "unigram" and not isinstance(self.train_set, PretrainingDataset):
            raise ConfigError(f"--mlm_bias_init unigram counts target tokens in data `bertforge prepare pretraining` "
                              f"wrote; --input_dir {d.input_dir} holds files other toolkits prepared (leave the flag out)")
        asked = [f"--{n}" for n in ("eval_every", "samples_between_eval", "stop_threshold") if getattr(d, n)]
        if not cfg.do_eval:
            if asked:
                raise ConfigError(f"--do_eval=false, but {' and '.join(asked)} asks for evaluations")
            return
        if d.eval_dir is not None:
            self.eval_set = open_pretraining_data(d.eval_dir, flag="--eval_dir", seed=cfg.train.seed)
        elif isinstance(self.train_set, PretrainingDataset):
            self.eval_set = PretrainingDataset(self.train_set.data_dir, "held_out")
            if self.eval_set.num_samples == 0:
                self.eval_set = None
        if self.eval_set is None and d.eval_on_train:
            log.info("evaluating on the training files (%s), as Google's run_pretraining.py --do_eval does: "
                     "a measure of fit; --eval_dir names held-out data", d.input_dir)
            self.eval_set = open_pretraining_data(d.input_dir, flag="--input_dir", seed=cfg.train.seed)
        if self.eval_set is None and asked:
            raise ConfigError(f"evaluation needs an evaluation set: --input_dir {d.input_dir} has no held-out "
                              "split; give --eval_dir")

    def prepare_model(self, loaded: LoadedModel) -> None:
        if self.cfg.mlm_bias_init == "unigram":
            if loaded.head_loaded:
                raise ConfigError(f"--mlm_bias_init unigram sets the output bias of a model that starts from "
                                  f"random weights, but --init_checkpoint {self.cfg.model.init_checkpoint} has a "
                                  "trained masked-LM head; leave the flag out to keep its bias")
            counts = self.train_set.target_counts()
            bias = unigram_log_probs(counts, loaded.config.vocab_size)
            with torch.no_grad():
                loaded.model.mlm.bias.copy_(torch.from_numpy(bias))
            log.info("masked-LM output bias set to the log unigram frequencies of %d target tokens (%d distinct)",
                     int(counts.sum()), int((counts > 0).sum()))

    def model_options(self) -> dict:
        # Prepared data was tokenized with a vocabulary and casing; a checkpoint's own, if it
        # has one, must agree (load_model warns when casing does not). Other toolkits' files
        # hold token ids: training reads no text, so it needs no vocabulary (the model's
        # vocab_size bounds the ids); one given or found is kept with the model.
        return {"default_vocab": self.train_set.vocab_file, "default_lower_case": self.train_set.do_lower_case,
                "need_tokenizer": isinstance(self.train_set, PretrainingDataset)}

    def check_model(self, config) -> None:
        for data in (self.train_set, self.eval_set):
            if data is not None:
                check_seq_length(data.max_seq_length, config)
            if isinstance(data, StaticMaskDataset):
                data.vocab_size = config.vocab_size  # its ids are checked as batches are read

    def train_loader(self, loaded: LoadedModel, plan: StepPlan, runtime: Runtime) -> PretrainStepLoader:
        log.info("pretraining%s: %d instances of length <= %d; %s", " phase 2" if self.cfg.phase2 else "",
                 self.train_set.num_samples, self.train_set.max_seq_length, self.cfg.data.input_dir)
        self.plan = plan
        return PretrainStepLoader(self.train_set, plan, runtime.dist.rank)

    def loss(self) -> PretrainLoss:
        return PretrainLoss()

    def add_callbacks(self, trainer: Trainer, loaded: LoadedModel, runtime: Runtime) -> None:
        if self.nvidia is not None:
            continue_nvidia_run(self.nvidia, trainer, loaded, runtime)
        d = self.cfg.data
        self.trainer = trainer
        evaluate = None
        if self.eval_set is not None:
            def evaluate(step: int) -> dict:
                result = evaluate_pretraining(loaded.model, self.eval_set, runtime, d.eval_batch_size,
                                              d.max_eval_samples)
                return {**result, "lr": trainer.lr}
        elif self.cfg.do_eval:
            log.warning("no evaluation set (%s has no held-out instances; --eval_dir names one): no MLM/NSP "
                        "accuracy will be reported", d.input_dir)
        self.run_stop = add_training_loop(
            trainer, evaluate, per_step=self.plan.global_batch, eval_every=d.eval_every,
            samples_between_eval=d.samples_between_eval, samples_start_eval=d.samples_start_eval,
            stop_threshold=d.stop_threshold, max_samples_termination=d.max_samples_termination)

    def checkpoint_meta(self, loaded: LoadedModel, trainer: Trainer) -> dict:
        return {"task": "pretraining", "phase": 2 if self.cfg.phase2 else 1, "steps": trainer.step}

    def after(self, loaded: LoadedModel, runtime: Runtime, out: Path, results: dict) -> dict:
        summary = results["train"]
        if self.trainer is not None and self.trainer.stop_reason is not None:
            summary = {**summary, "stop_reason": self.trainer.stop_reason}
        if self.run_stop is not None and self.run_stop.record is not None:
            summary = {**summary, "run_stop": self.run_stop.record}
        if runtime.is_main:
            write_json(out / "train_summary.json", summary)
            log.info("pretraining done: %s", json.dumps(summary))
        return {}


def unigram_log_probs(counts: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(token) with add-one smoothing over the model's vocabulary: (vocab_size,) float32.
    Tokens never seen (special tokens included) get log(1 / (total + vocab_size))."""
    if len(counts) > vocab_size:
        raise ConfigError(f"the data's vocabulary has {len(counts)} tokens, the model {vocab_size}")
    smoothed = np.ones(vocab_size, dtype=np.float64)
    smoothed[:len(counts)] += counts
    return np.log(smoothed / smoothed.sum()).astype(np.float32)


def continue_nvidia_run(point: NvidiaResume, trainer: Trainer, loaded: LoadedModel, runtime: Runtime) -> None:
    """Load an NVIDIA checkpoint's weights and LAMB moments into the trainer and write them as
    this run's first checkpoint, from which the trainer then resumes (as from any of its own)."""
    state = read_pretraining_checkpoint(point.path, loaded.config)
    load_into(loaded.model, state.checkpoint)
    import_nvidia_checkpoint(point, state, loaded.model, trainer.state.optimizer, trainer.state.schedule,
                             trainer.state.scaler, runtime.device)
    trainer.step = point.step
    saved_at = trainer.save()
    log.warning("%s: NVIDIA run_pretraining.py checkpoint at step %d: %s; written as %s. The data order "
                "restarts from the beginning (run_pretraining.py's file position is not carried over)",
                point.path, state.step,
                "phase 2 starts from its weights and LAMB moments, step counts reset" if point.phase2_start
                else f"resuming at step {point.step} with its weights, LAMB moments and step count", saved_at)


PHASE2_DIR = "phase2"  # where NVIDIA's phase-2 spelling writes phase 2 in a bertforge phase-1 run


def phase2_after_own_phase1(cfg: PretrainRun) -> PretrainRun:
    """NVIDIA's phase 2 spelling (--phase2 --resume_from_checkpoint --phase1_end_step N, the
    same --output_dir) where that directory holds a bertforge phase 1: phase 2 starts from that
    run's model (a fresh LAMB state: run_pretraining.py carries phase 1's moments over) and is
    written into output_dir/phase2, so that phase 1 stays as it was. Any other config as it is."""
    out = Path(cfg.output_dir)
    if not (cfg.phase2 and cfg.train.resume is True and cfg.phase1_end_step is not None
            and not cfg.model.init_checkpoint and (out / "run_config.json").is_file()):
        return cfg
    stored = read_json(out / "run_config.json", "run config", ConfigError)
    if not isinstance(stored, dict) or stored.get("phase2") is not False:
        return cfg
    meta = read_json(out / NATIVE_META, NATIVE_META, ConfigError) if (out / NATIVE_META).is_file() else None
    if not isinstance(meta, dict) or meta.get("task") != "pretraining":
        raise ConfigError(f"--phase2 --resume_from_checkpoint: {out} holds a bertforge phase 1 that has not "
                          f"finished (no trained model yet); finish it first (its command with --resume), "
                          f"then run phase 2")
    if meta.get("steps") != cfg.phase1_end_step:
        log.warning("--phase1_end_step %d, but the phase 1 in %s ran %s steps; phase 2 starts from its model "
                    "all the same", cfg.phase1_end_step, out, meta.get("steps"))
    phase2_dir = out / PHASE2_DIR
    log.warning("--phase2 --resume_from_checkpoint in %s, a bertforge phase 1: phase 2 starts from its model "
                "with a fresh LAMB state (run_pretraining.py carries phase 1's LAMB moments over) and is written "
                "to %s", out, phase2_dir)
    resume = phase2_dir.is_dir() and any(phase2_dir.iterdir())
    return replace(cfg, output_dir=str(phase2_dir), model=replace(cfg.model, init_checkpoint=str(out)),
                   train=replace(cfg.train, resume=resume))


def pretrain(cfg: PretrainRun, dist_info: DistInfo = DistInfo(), progress: bool = True) -> dict:
    """Returns {"train": {"steps", "seconds", "samples", "first_loss", "last_loss"}}."""
    return run(PretrainJob(phase2_after_own_phase1(cfg)), dist_info, progress)
