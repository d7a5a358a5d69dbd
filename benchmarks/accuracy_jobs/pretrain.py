"""pretrain: a small BERT (default L=4, H=256, A=4) pretrained from scratch (MLM + NSP, LAMB) on
the Wikipedia lead sections, then fine-tuned on SST-2 (its first 8,000 sentences) and MRPC beside
the same architecture from random weights, over --finetune_seeds. Pretraining passes when the
SST-2 gain (means) exceeds the largest spread of the seeds."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .common import Env, Results, bertforge_config, latest, log, lr_tag
from .glue import GLUE_HEADLINE, glue_data_dir, glue_train_args

NAME = "pretrain"
HELP = "does pretraining work: a small BERT from scratch, fine-tuned beside random weights"
IN_ALL = True

PRETRAIN = dict(bert_model="mini", max_seq_length=128, max_predictions_per_seq=20, train_batch_size=32,
                learning_rate=5e-3, warmup_proportion=0.1, max_steps=1000, eval_every=200)
FINETUNE_LR = 1e-4
SMOKE_DOCUMENTS = 120  # --smoke pretrains on the first Wikipedia documents: a few hundred sequences


@dataclass(frozen=True)
class PretrainRecipe:
    """What the pretraining comparison varies: the architecture, steps, batch, optimizer and its
    peak rate (LAMB with NVIDIA's poly schedule, or AdamW with the linear one), and the masked-LM
    output bias a run starts from (`bertforge pretrain --mlm_bias_init`)."""

    model: str = PRETRAIN["bert_model"]
    steps: int = PRETRAIN["max_steps"]
    batch: int = PRETRAIN["train_batch_size"]
    lr: float = PRETRAIN["learning_rate"]
    optimizer: str = "lamb"
    mlm_bias_init: str = "zero"
    seq: int = PRETRAIN["max_seq_length"]

    @property
    def name(self) -> str:
        name = f"{self.model}_{self.steps}steps_b{self.batch}_lr{lr_tag(self.lr)}"
        name = name if self.optimizer == "lamb" else f"{name}_{self.optimizer}"
        name = name if self.mlm_bias_init == "zero" else f"{name}_{self.mlm_bias_init}bias"
        return name if self.seq == PRETRAIN["max_seq_length"] else f"{name}_seq{self.seq}"

    @property
    def data_dir(self) -> str:
        return "data" if self.seq == PRETRAIN["max_seq_length"] else f"data_seq{self.seq}"

    @property
    def max_predictions(self) -> int:
        """Google's 20 at 128, scaled with the length (15% of the tokens, rounded up)."""
        return math.ceil(PRETRAIN["max_predictions_per_seq"] * self.seq / PRETRAIN["max_seq_length"])

    @property
    def schedule(self) -> str:
        return "poly" if self.optimizer == "lamb" else "linear"

    def key(self) -> dict:
        """The fields that identify the pretraining run (and the fine-tunes of its model)."""
        return {"model": self.model, "max_steps": self.steps, "train_batch_size": self.batch,
                "learning_rate": self.lr, "optimizer": self.optimizer, "mlm_bias_init": self.mlm_bias_init,
                "max_seq_length": self.seq}


def with_legacy_fields(r: dict) -> dict:
    """Pretraining-comparison records written before the model, batch and learning rate were
    options (2026-11-29) ran the recipe of that time: mini, batch 64, LAMB lr 5e-3 (and records
    before the optimizer was one, LAMB; before the output bias and the sequence length were
    options, zero and 128)."""
    if r.get("comparison") != "pretrain":
        return r
    r = {"model": "mini", **r}
    if r.get("stage") != "finetune" or r.get("init") == "pretrained":
        r = {"train_batch_size": 64, "learning_rate": 5e-3, "optimizer": "lamb", "mlm_bias_init": "zero",
             "max_seq_length": PRETRAIN["max_seq_length"], **r}
    return r


def find_pretrain(results: Results, key: dict) -> dict | None:
    """The latest pretraining-comparison record with these fields (see with_legacy_fields)."""
    return results.find(key, with_legacy_fields)


def time_bound_pretrain_job(cfg, deadline: float):
    """bertforge's pretraining job, ended at the first step past `deadline` (time.monotonic()):
    evaluation and the saved model then come from that step, the learning rate stopped where its
    schedule stood."""
    from bertforge.tasks.pretraining import PretrainJob

    class TimeBoundPretrainJob(PretrainJob):
        def add_callbacks(self, trainer, loaded, runtime) -> None:
            super().add_callbacks(trainer, loaded, runtime)
            trainer.add_callback("on_step_end", lambda t: t.request_stop("time budget")
                                 if time.monotonic() > deadline else None)
    return TimeBoundPretrainJob(cfg)


def in_process(args: list, make_job=None) -> tuple[str, float, dict]:
    """`bertforge ARGS` run in this process (a model's compilation then serves every later run
    of its architecture); returns the command, its seconds and its results. `make_job(cfg)`
    replaces the command's own job (training commands only)."""
    from bertforge.tasks.runner import run

    command = shlex.join(["bertforge", *map(str, args)])
    log.info("running %s", command)
    cfg = bertforge_config(args)
    t0 = time.perf_counter()
    if args[0] == "prepare":
        from bertforge.data.pretraining import prepare_pretraining_data

        outcome = prepare_pretraining_data(cfg)
    else:
        if make_job is None:
            from bertforge.tasks.glue import GlueJob

            make_job = GlueJob
        outcome = run(make_job(cfg), progress=False)
    return command, time.perf_counter() - t0, outcome


def run_pretrain(env: Env, results: Results, seeds: list[int], recipe: PretrainRecipe,
                 tasks: tuple[str, ...] = ("sst2", "mrpc"), prepared: Path | None = None,
                 max_minutes: float | None = None) -> None:
    """`prepared`: data `bertforge prepare pretraining` wrote (else made from the Wikipedia text);
    `max_minutes`: pretraining stops at the first step past it."""
    root = env.workdir / "pretrain"
    data = prepared or root / recipe.data_dir
    vocab = env.vocab_file
    p = PRETRAIN
    if not (data / "manifest.json").exists():
        if prepared is not None:
            raise SystemExit(f"--pretrain_data {prepared}: no manifest.json there (expected what `bertforge prepare "
                             f"pretraining` writes)")
        wiki = env.wiki_file
        if env.smoke:
            root.mkdir(parents=True, exist_ok=True)
            wiki = root / "wiki_smoke.jsonl"
            documents = env.wiki_file.read_text(encoding="utf-8").splitlines(keepends=True)[:SMOKE_DOCUMENTS]
            wiki.write_text("".join(documents))
        cmd, seconds, _ = in_process(
            ["prepare", "pretraining", "--input_file", wiki, "--output_dir", data, "--vocab_file", vocab,
             "--max_seq_length", recipe.seq, "--max_predictions_per_seq", recipe.max_predictions,
             "--held_out_fraction", 0.02, "--num_workers", 1])
        manifest = json.loads((data / "manifest.json").read_text())
        results.add({"comparison": "pretrain", "stage": "prepare", "max_seq_length": recipe.seq,
                     "run_command": cmd, "seconds": seconds,
                     "instances": {s: v["instances"] for s, v in manifest["splits"].items()}})
    model_dir = root / recipe.name
    key = {"comparison": "pretrain", "stage": "pretrain", **recipe.key()}
    if not find_pretrain(results, key) and env.time_left("pretraining"):
        deadline = time.monotonic() + 60 * max_minutes if max_minutes else math.inf
        cpu0 = time.process_time()
        cmd, seconds, outcome = in_process(
            ["pretrain", "--bert_model", recipe.model, "--input_dir", data, "--output_dir", model_dir,
             "--overwrite_output_dir", "--max_steps", recipe.steps, "--train_batch_size", recipe.batch,
             "--max_seq_length", recipe.seq, "--max_predictions_per_seq", recipe.max_predictions,
             "--learning_rate", recipe.lr, "--warmup_proportion", p["warmup_proportion"],
             "--optimizer", recipe.optimizer, "--schedule", recipe.schedule, "--mlm_bias_init", recipe.mlm_bias_init,
             "--seed", 0, "--log_every", 10,
             "--eval_every", max(1, min(p["eval_every"], recipe.steps)), *env.runtime_flags()],
            lambda cfg: time_bound_pretrain_job(cfg, deadline))
        rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((model_dir / "train_summary.json").read_text())
        results.add({**key, "run_command": cmd, "seconds": seconds, "cpu_seconds": time.process_time() - cpu0,
                     "steps_done": outcome["train"]["steps"], "stop_reason": summary.get("stop_reason"),
                     "max_minutes": max_minutes,
                     "heldout": [{k: r[k] for k in ("step", "mlm_accuracy", "nsp_accuracy", "mlm_loss", "nsp_loss")}
                                 for r in rows if r.get("split") == "eval"],
                     "loss_curve": [(r["step"], r["loss"]) for r in rows if "seq_per_s" in r]})
    if not (model_dir / "model.safetensors").exists():
        return
    for task_name in tasks:
        for seed in seeds:
            for init in ("pretrained", "random"):
                finetune_small(env, results, task_name, seed, init, model_dir, recipe)
    summarize_pretrain(env, results, seeds, recipe)


def finetune_key(task_name: str, seed: int, init: str, recipe: PretrainRecipe) -> dict:
    """Fine-tuning from random weights depends on the architecture only, not on the pretraining."""
    key = {"comparison": "pretrain", "stage": "finetune", "task": task_name, "seed": seed, "init": init}
    if init == "random":
        return {**key, "model": recipe.model}
    return {**key, **{("pretrain_steps" if k == "max_steps" else k): v for k, v in recipe.key().items()}}


def finetune_small(env: Env, results: Results, task_name: str, seed: int, init: str, model_dir: Path,
                   recipe: PretrainRecipe) -> None:
    key = finetune_key(task_name, seed, init, recipe)
    if find_pretrain(results, key) or not env.time_left(f"{task_name} fine-tuning ({init}, seed {seed})"):
        return
    out = env.workdir / "pretrain" / "finetune" / (f"{task_name}_random_{recipe.model}_seed{seed}" if init == "random"
                                                   else f"{task_name}_{recipe.name}_seed{seed}")
    model = (["--init_checkpoint", model_dir] if init == "pretrained"
             else ["--bert_model", recipe.model, "--vocab_file", env.vocab_file, "--do_lower_case", "true"])
    t = glue_train_args(seed, FINETUNE_LR)
    cmd, seconds, _ = in_process(
        ["finetune", "glue", "--task_name", task_name, "--data_dir", glue_data_dir(env, task_name), *model,
         "--do_train", "--do_eval", "--max_seq_length", 128, "--train_batch_size", t.train_batch_size,
         "--learning_rate", t.learning_rate, "--num_train_epochs", t.num_train_epochs,
         "--warmup_proportion", t.warmup_proportion, "--seed", seed, *(["--max_steps", 3] if env.smoke else []),
         *env.runtime_flags(), "--output_dir", out, "--overwrite_output_dir"])
    scores = json.loads((out / "eval_results.json").read_text())
    results.add({**key, **{k: v for k, v in scores.items() if k != "task"}, "run_command": cmd,
                 "seconds": seconds})


def summarize_pretrain(env: Env, results: Results, seeds: list[int], recipe: PretrainRecipe) -> None:
    for task_name in ("sst2", "mrpc"):
        metric = GLUE_HEADLINE[task_name]
        scores = {}
        for init in ("pretrained", "random"):
            found = [find_pretrain(results, finetune_key(task_name, s, init, recipe)) for s in seeds]
            if not all(found):
                break
            scores[init] = [100 * r[metric] for r in found]
        if len(scores) < 2:
            continue
        spread = max(max(v) - min(v) for v in scores.values())
        gain = statistics.mean(scores["pretrained"]) - statistics.mean(scores["random"])
        results.add({"comparison": "pretrain", "stage": "summary", "task": task_name, "metric": metric,
                     **recipe.key(), "pretrain_steps": recipe.steps, "seeds": seeds, "scores": scores,
                     "gain": gain, "spread": spread, "passes": gain > spread if task_name == "sst2" else None})


def report(rows: list[dict]) -> list[str]:
    out: list[str] = []
    pre = latest(rows, lambda r: r.get("comparison") == "pretrain" and r.get("stage") == "pretrain", with_legacy_fields)
    for r in map(with_legacy_fields, pre):
        out += [f"Pretraining ({r['model']}, {r['max_steps']} steps, batch {r['train_batch_size']}, {r['optimizer']} lr "
                f"{r['learning_rate']:g}, MLM bias from {r['mlm_bias_init']}, seq {r['max_seq_length']}, "
                f"{r['seconds'] / 60:.0f} min wall, "
                f"{r['cpu_seconds'] / 60:.0f} CPU min), held-out split:", "",
                "| step | MLM accuracy | NSP accuracy | MLM loss | NSP loss |", "|---|---|---|---|---|"]
        out += [f"| {h['step']} | {100 * h['mlm_accuracy']:.2f} | {100 * h['nsp_accuracy']:.2f} | "
                f"{h['mlm_loss']:.3f} | {h['nsp_loss']:.3f} |" for h in r["heldout"]]
        out.append("")
    summaries = latest(rows, lambda r: r.get("comparison") == "pretrain" and r.get("stage") == "summary",
                       with_legacy_fields)
    if summaries:
        out += ["| pretraining | task | metric | pretrained (per seed) | random init (per seed) | gain (means) | "
                "largest spread | gain > spread |", "|---|---|---|---|---|---|---|---|"]
        for r in map(with_legacy_fields, summaries):
            fmt = lambda v: ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
            recipe = (f"{r['model']}, {r['pretrain_steps']} steps, batch {r['train_batch_size']}, "
                      f"{r['optimizer']} lr {r['learning_rate']:g}, MLM bias from {r['mlm_bias_init']}, "
                      f"seq {r['max_seq_length']}")
            out.append(f"| {recipe} | {r['task']} | {r['metric']} | {fmt(r['scores']['pretrained'])} | "
                       f"{fmt(r['scores']['random'])} | {r['gain']:+.2f} | {r['spread']:.2f} | "
                       f"{'yes' if r['gain'] > r['spread'] else 'no'} |")
        out.append("")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrain_steps", type=int, default=PRETRAIN["max_steps"])
    parser.add_argument("--pretrain_model", default=PRETRAIN["bert_model"], help="a bertforge preset")
    parser.add_argument("--pretrain_batch", type=int, default=PRETRAIN["train_batch_size"])
    parser.add_argument("--pretrain_lr", type=float, default=PRETRAIN["learning_rate"], help="the peak rate")
    parser.add_argument("--pretrain_optimizer", choices=["lamb", "adamw"], default="lamb")
    parser.add_argument("--pretrain_mlm_bias_init", choices=["zero", "unigram"], default="zero",
                        help="bertforge pretrain --mlm_bias_init")
    parser.add_argument("--pretrain_seq", type=int, default=PRETRAIN["max_seq_length"],
                        help="sequence length of the pretraining data (prepared once per length)")
    parser.add_argument("--pretrain_data", type=Path,
                        help="pretraining data `bertforge prepare pretraining` wrote at --pretrain_seq (default: "
                             "prepared here from DATA_ROOT/text/wiki_summaries_en.jsonl)")
    parser.add_argument("--pretrain_max_minutes", type=float,
                        help="end pretraining at the first step past this many minutes")
    parser.add_argument("--finetune_tasks", nargs="+", choices=["sst2", "mrpc"], default=["sst2", "mrpc"])
    parser.add_argument("--finetune_seeds", type=int, nargs="+", default=[0, 1, 2])


def run(env: Env, results: Results, args: argparse.Namespace) -> None:
    recipe = PretrainRecipe(args.pretrain_model, 3 if env.smoke else args.pretrain_steps, args.pretrain_batch,
                            args.pretrain_lr, args.pretrain_optimizer, args.pretrain_mlm_bias_init, args.pretrain_seq)
    run_pretrain(env, results, args.finetune_seeds, recipe, tuple(args.finetune_tasks),
                 args.pretrain_data.resolve() if args.pretrain_data else None, args.pretrain_max_minutes)
