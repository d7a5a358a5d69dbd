"""bundle: copy what an offline GPU machine needs for these comparisons (data, the MiniLM weights
in fp16, the CLI's pure-Python wheels) into one folder."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from .common import REPO, Env, Results
from .glue import GLUE_DIRS, SST2_TRAIN_ROWS

NAME = "bundle"
HELP = "copy data, MiniLM (fp16) and wheels for an offline machine into one folder"
IN_ALL = False


BUNDLE_WHEELS = ("jsonargparse==4.53.0", "docstring-parser==0.18.0")  # bertforge's CLI needs them


def bundle(env: Env, target: Path) -> None:
    """What an offline GPU machine needs, in one folder to copy: the data sets used here, the
    MiniLM checkpoint with its weights stored in fp16 (loaded back as fp32, so both sides start
    from the same rounded weights; half the size), and wheels of the pure-Python packages
    bertforge's CLI needs."""
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", type=Path)


def run(env: Env, results: Results, args: argparse.Namespace) -> None:
    bundle(env, args.target)


def report(rows: list[dict]) -> list[str]:
    return []
