"""glue: MiniLM on MRPC, CoLA (full train sets) and SST-2 (its first 8,000 training sentences,
full dev), 3 epochs, lr 5e-5, batch 32, seq 128: bertforge's GLUE run and a transformers loop
started from bertforge's initial weights (its new classifier included) and fed bertforge's
batches in bertforge's order, per --glue_seeds."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from .common import Env, Results, latest, loss_curve, window_means
from .transformers_side import bertforge_initial_weights, hf_forward_all, hf_model, hf_train

NAME = "glue"
HELP = "MiniLM on MRPC, CoLA and SST-2, bertforge and transformers from the same start"
IN_ALL = True

GLUE_TASKS = ("mrpc", "cola", "sst2")
GLUE_DIRS = {"mrpc": "MRPC", "cola": "CoLA", "sst2": "SST-2"}
GLUE_HEADLINE = {"mrpc": "f1", "cola": "mcc", "sst2": "accuracy"}  # the metric each is judged on
SST2_TRAIN_ROWS = 8000
GLUE_TOLERANCE = {"accuracy": 1.5, "f1": 1.5, "mcc": 3.0}  # points, bertforge vs transformers


def glue_data_dir(env: Env, task_name: str) -> Path:
    """The task's GLUE folder: the shared one, or for SST-2 (and every task in --smoke) a copy
    holding the first rows of train.tsv."""
    from bertforge.data.glue import get_task

    source = env.data_root / "glue" / GLUE_DIRS[task_name]
    rows = 256 if env.smoke else SST2_TRAIN_ROWS if task_name == "sst2" else None
    if rows is None:
        return source
    target = env.workdir / "glue_data" / f"{GLUE_DIRS[task_name]}-train{rows}"
    if not (target / "train.tsv").exists():
        target.mkdir(parents=True, exist_ok=True)
        lines = (source / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        header = 0 if get_task(task_name).headerless else 1
        (target / "train.tsv").write_text("".join(lines[:header + rows]), encoding="utf-8")
        dev = (source / "dev.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (target / "dev.tsv").write_text("".join(dev[:header + 200] if env.smoke else dev), encoding="utf-8")
    return target


def glue_train_args(seed: int, lr: float = 5e-5):
    from bertforge.runconfig import TrainArgs

    return TrainArgs(learning_rate=lr, num_train_epochs=3.0, train_batch_size=32, warmup_proportion=0.1,
                     weight_decay=0.01, max_grad_norm=1.0, seed=seed, log_every=10)


def glue_pair(env: Env, results: Results, task_name: str, seed: int, sides: list[str], dropout: bool = True) -> None:
    """bertforge's GLUE run, then transformers from the same initial weights on the same batches.
    dropout=False (a diagnostic) turns dropout off on both sides, which leaves only numerical
    differences between them: the two runs then differ by what their dropout draws alone cannot
    explain."""
    from bertforge.data import glue as glue_data
    from bertforge.evaluate.glue import compute_metrics
    from bertforge.runconfig import ModelArgs, RuntimeArgs
    from bertforge.tasks.config import GlueData, GlueRun
    from bertforge.tasks.glue import GlueJob
    from bertforge.tasks.runner import run
    from bertforge.tokenization import WordPieceTokenizer
    from bertforge.train.batching import ArrayStepLoader, StepPlan

    key = {"comparison": "glue", "task": task_name, "seed": seed, "dropout": None if dropout else False}
    todo = [s for s in sides if not results.find({**key, "side": s})]
    if not todo or not env.time_left(f"GLUE {task_name} seed {seed}"):
        return
    task = glue_data.get_task(task_name)
    data_dir = glue_data_dir(env, task_name)
    train = glue_train_args(seed)
    if env.smoke:
        train.max_steps = 3

    class RecordedGlueJob(GlueJob):
        """bertforge's GLUE job, keeping the weights training starts from."""

        initial: dict[str, torch.Tensor] | None = None

        def prepare_model(self, loaded) -> None:
            super().prepare_model(loaded)
            if not dropout:
                for module in loaded.model.modules():
                    if isinstance(module, torch.nn.Dropout):
                        module.p = 0.0
                    if hasattr(module, "dropout_p"):
                        module.dropout_p = 0.0
            self.initial = {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}

    out = env.workdir / "glue" / f"{task_name}_seed{seed}_{env.precision}{'' if dropout else '_nodropout'}"
    cfg = GlueRun(output_dir=str(out), overwrite_output_dir=True, do_train=True, do_eval=True,
                  data=GlueData(task_name=task_name, data_dir=str(data_dir), max_seq_length=128),
                  model=ModelArgs(init_checkpoint=str(env.model_dir)), train=train,
                  runtime=RuntimeArgs(device=env.device, precision=env.precision, compile=env.compile))
    job = RecordedGlueJob(cfg)
    t0 = time.perf_counter()
    ours = run(job, progress=False)
    seconds = time.perf_counter() - t0
    common = {**key, "train_file": str(data_dir / "train.tsv"), "lr": train.learning_rate}
    curve = loss_curve(out / "metrics.jsonl")
    if "bertforge" in todo:
        results.add({**common, "side": "bertforge", **ours["eval"], "steps": ours["train"]["steps"],
                     "seconds": seconds, "loss_curve": curve})
    if "transformers" not in todo:
        return
    # The SQuAD comparison rebuilds a run's initial weights rather than recording them (its
    # bertforge side is a child process): check here that the rebuild is exact.
    rebuilt = bertforge_initial_weights(env, "classification", seed, task.num_labels)
    same_start = all(torch.equal(rebuilt[k], v) for k, v in job.initial.items())
    t0 = time.perf_counter()
    tokenizer = WordPieceTokenizer(env.model_dir / "vocab.txt", do_lower_case=True)

    def features(split: str):
        examples = glue_data.read_split(task, data_dir, split)
        f = glue_data.encode_examples(examples, tokenizer, 128, task)
        return f, {"input_ids": f.input_ids, "token_type_ids": f.token_type_ids,
                   "attention_mask": f.attention_mask, "labels": f.labels}

    _, arrays = features("train")
    loader = ArrayStepLoader(arrays, StepPlan(train.train_batch_size, 1, 1), 0, seed)
    steps = train.total_steps(loader.steps_per_epoch)
    model = hf_model(env, "BertForSequenceClassification", job.initial, num_labels=task.num_labels,
                     **({} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    losses = hf_train(env, model, loader, steps, train, ("input_ids", "token_type_ids", "attention_mask", "labels"),
                      seed)
    dev, dev_arrays = features("dev")
    (logits,) = hf_forward_all(env, model, dev_arrays, ("logits",), per_token=False)
    metrics = independent_glue_metrics(task_name, logits.argmax(-1), dev.labels)
    # The same predictions through bertforge's metric code: the two must agree.
    assert all(abs(v - compute_metrics(task, logits, dev.labels)[k]) < 1e-12 for k, v in metrics.items())
    results.add({**common, "side": "transformers", **metrics, "steps": steps, "same_initial_weights": same_start,
                 "seconds": time.perf_counter() - t0,
                 "loss_curve": window_means(losses, [s for s, _ in curve])})


def independent_glue_metrics(task_name: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """GLUE's metrics straight from scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task_name == "cola":
        return {"mcc": float(matthews_corrcoef(labels, preds))}
    metrics = {"accuracy": float(accuracy_score(labels, preds))}
    if task_name == "mrpc":
        metrics["f1"] = float(f1_score(labels, preds))
    return metrics


def run_glue(env: Env, results: Results, tasks: list[str], seeds: list[int], sides: list[str],
             dropout: bool = True) -> None:
    for seed in seeds:
        for task_name in tasks:
            glue_pair(env, results, task_name, seed, sides, dropout)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="+", default=list(GLUE_TASKS), choices=GLUE_TASKS)
    parser.add_argument("--glue_seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--glue_dropout", choices=["on", "off"], default="on",
                        help="off: a diagnostic, both sides without dropout")


def run(env: Env, results: Results, args: argparse.Namespace) -> None:
    run_glue(env, results, args.tasks, args.glue_seeds, ["bertforge", "transformers"], args.glue_dropout == "on")


def report(rows: list[dict]) -> list[str]:
    out: list[str] = []
    glue = latest(rows, lambda r: r.get("comparison") == "glue")
    if glue:
        out += ["| device | precision | task | seed | dropout | metric | bertforge | transformers | difference | allowed "
                "| within |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        pairs: dict[tuple, dict] = {}
        for r in glue:
            key = (r["device"], r["precision"], r["task"], r["seed"], "off" if r.get("dropout") is False else "on")
            pairs.setdefault(key, {})[r["side"]] = r
        for (device, precision, task, seed, dropout), sides in sorted(pairs.items()):
            if len(sides) < 2:
                continue
            for metric in ("accuracy", "f1", "mcc"):
                if metric not in sides["bertforge"]:
                    continue
                ours, theirs = 100 * sides["bertforge"][metric], 100 * sides["transformers"][metric]
                allowed = GLUE_TOLERANCE[metric]
                out.append(f"| {device} | {precision} | {task} | {seed} | {dropout} | {metric} | {ours:.2f} | {theirs:.2f} | "
                           f"{ours - theirs:+.2f} | {allowed} | {'yes' if abs(ours - theirs) <= allowed else 'NO'} |")
        out.append("")
    return out
