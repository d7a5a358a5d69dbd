"""`bertforge plot`: training curves of one or more runs, overlaid, from their metrics.jsonl.

One panel each for the loss, the learning rate and the throughput (sequences/s), then one per
evaluation metric the runs logged (SQuAD F1 and EM, GLUE accuracy, MLM accuracy, ...), all
against the optimizer step, one colour per run. Needs matplotlib (the `[plot]` extra).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from bertforge.errors import ConfigError, DataError
from bertforge.optional import require

# Training panels: (record key, title)
TRAIN_PANELS = (("loss", "training loss"), ("lr", "learning rate"), ("seq_per_s", "throughput (sequences/s)"))
# Keys of an eval record that are not metrics
NOT_METRICS = {"step", "split", "seconds", "samples"}


@dataclass
class PlotArgs:
    """Plot training curves (loss, learning rate, seq/s, eval metrics) of runs, overlaid."""

    runs: list[str]
    """Run directories (each holding metrics.jsonl) or metrics.jsonl files."""
    out: str = "curves.png"
    """The PNG to write."""


@dataclass
class RunMetrics:
    name: str
    train: list[dict]  # training records, in step order
    eval: list[dict]  # evaluation records


def read_run(path: str | Path) -> RunMetrics:
    """A run's training and eval records; a DataError naming the file and line when it is not a
    metrics.jsonl bertforge wrote."""
    path = Path(path)
    file = path if path.suffix == ".jsonl" else path / "metrics.jsonl"
    if not file.is_file():
        raise DataError(f"no metrics.jsonl at {file}: give a run directory of bertforge finetune/pretrain")
    train, evals = [], []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}:{n}: not a JSON record ({e.msg})") from None
        if not isinstance(record, dict) or "event" in record or "step" not in record:
            continue  # resume, overflow and preemption events are not curves
        (evals if record.get("split") == "eval" else train).append(record)
    if not train and not evals:
        raise DataError(f"{file} holds no training or evaluation records")
    # A resumed run logs the steps after its checkpoint again: the later record of a step wins.
    train = list({r["step"]: r for r in train}.values())
    train.sort(key=lambda r: r["step"])
    name = (path.parent if path.suffix == ".jsonl" else path).name or str(path)
    return RunMetrics(name, train, evals)


def eval_metrics(runs: list[RunMetrics]) -> list[str]:
    """The eval metrics any run logged, in the order first seen."""
    keys: dict[str, None] = {}
    for run in runs:
        for r in run.eval:
            for k, v in r.items():
                if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                    keys.setdefault(k)
    return list(keys)


def plot_runs(runs: list[RunMetrics], out: str | Path):
    """Write the curves of `runs` to the PNG `out`; returns the matplotlib Figure."""
    matplotlib = require("matplotlib", "plot", "bertforge plot")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(key, title, "train") for key, title in TRAIN_PANELS]
    panels += [(key, f"eval {key}", "eval") for key in eval_metrics(runs)]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend = {}  # run name -> a line of it
    for ax, (key, title, split) in zip(axes.flat, panels):
        for i, run in enumerate(runs):
            records = [r for r in (run.train if split == "train" else run.eval) if r.get(key) is not None]
            if records:
                (line,) = ax.plot([r["step"] for r in records], [r[key] for r in records],
                                  color=colours[i % len(colours)], marker="o" if split == "eval" else None,
                                  markersize=3)
                legend.setdefault(run.name, line)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        fig.delaxes(ax)
    fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(len(legend), 4) or 1,
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return fig


def plot(args: PlotArgs) -> Path:
    if not args.runs:
        raise ConfigError("give at least one run directory to plot")
    if not args.out.lower().endswith(".png"):
        raise ConfigError(f"--out {args.out}: plots are written as PNG; name the file *.png")
    runs = [read_run(p) for p in args.runs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # runs/a/run and runs/b/run: tell them apart by their paths
        for run, path in zip(runs, args.runs):
            run.name = str(path)
    fig = plot_runs(runs, args.out)
    print(f"{len(fig.axes)} panels of {len(runs)} run(s) written to {args.out}")
    return Path(args.out)
