"""Running real `bertforge` command lines for the training tests.

Two halves:

- the worker (`main`): this file is the script torchrun starts (or a plain subprocess, for one
  process). It runs the command line of a job file through `bertforge.cli.main` and writes its
  exit status and error output to `<results>/rank<r>.json`. A job can ask to be killed
  (SIGKILL, no cleanup, as a crashed node or an OOM kill) right after its k-th training
  checkpoint is complete, or in the middle of writing it (after part of the files are written,
  before the directory is renamed into place).
- the launcher side, imported by the tests: `launch` starts the worker, and small builders for
  the tiny model and the data the runs use.

    python -m torch.distributed.run --standalone --nproc_per_node 2 dist_worker.py JOB.json

One job per launch: a process group cannot safely be created again in the same processes
unless every rank has finished with the previous one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

# ---- the worker ----------------------------------------------------------------------------


@dataclass
class Job:
    argv: list[str]
    """The bertforge command line, without the program name."""
    kill_at_save: int | None = None
    """SIGKILL this process at the k-th training-checkpoint save (1-based) ..."""
    kill_when: str = "after"
    """... 'after' it is complete, or 'during' the write of its model file."""


def _kill_at_save(k: int, when: str) -> None:
    """Patch bertforge's checkpoint writer so that the k-th save ends in a SIGKILL."""
    from bertforge.train import checkpoints

    saves = {"count": 0}
    save_checkpoint, save_file = checkpoints.save_training_checkpoint, checkpoints.save_file

    def counting_save(*args, **kwargs):
        saves["count"] += 1
        path = save_checkpoint(*args, **kwargs)
        if when == "after" and saves["count"] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    def truncating_save_file(tensors, filename, *args, **kwargs):
        # Only the checkpoint writer's model file goes through checkpoints.save_file.
        save_file(tensors, filename, *args, **kwargs)
        if when == "during" and saves["count"] == k:
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.save_training_checkpoint = counting_save
    checkpoints.save_file = truncating_save_file


def run_job(job: Job) -> dict:
    from bertforge.cli import main as cli_main

    if job.kill_at_save is not None:
        _kill_at_save(job.kill_at_save, job.kill_when)
    captured = io.StringIO()
    with contextlib.redirect_stderr(_Tee(sys.stderr, captured)):
        code = cli_main(job.argv)
    return {"exit_code": code, "stderr": captured.getvalue()}


class _Tee(io.TextIOBase):
    """Writes to several streams: the job's error output is both shown and kept."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def main(job_file: str) -> None:
    spec = json.loads(Path(job_file).read_text())
    result = run_job(Job(**spec["job"]))
    out = Path(spec["results"]) / f"rank{os.environ.get('RANK', 0)}.json"
    out.write_text(json.dumps(result, indent=2))


# ---- the launcher side ---------------------------------------------------------------------

@dataclass
class Launch:
    returncode: int
    output: str
    """stdout and stderr of the launch (torchrun's and every rank's)."""
    results: list[dict] = field(default_factory=list)
    """Per rank: {"exit_code", "stderr"}; ranks that did not finish (killed) are absent."""

    def check(self) -> "Launch":
        assert self.returncode == 0, f"launch failed ({self.returncode}):\n{self.output[-6000:]}"
        return self


def launch(job: Job, workdir: Path, nproc: int = 1, timeout: float = 300) -> Launch:
    """Run `job` in `nproc` worker processes (torchrun for more than one), in `workdir`."""
    workdir.mkdir(parents=True)
    results = workdir / "results"
    results.mkdir()
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps({"job": asdict(job), "results": str(results)}))
    worker = [str(Path(__file__).resolve()), str(job_file)]
    if nproc == 1:
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), *worker]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    per_rank = [json.loads(p.read_text()) for p in sorted(results.glob("rank*.json"))]
    return Launch(proc.returncode, proc.stdout + proc.stderr, per_rank)


def run_cli(argv: list[str]) -> None:
    """One bertforge command line in this process; it must succeed."""
    from bertforge.cli import main as cli_main

    code = cli_main(argv)
    assert code == 0, f"bertforge {' '.join(argv)} exited with {code}"


def write_tiny_config(path: Path, dropout: float) -> Path:
    """L=2, H=32, A=2, I=37 with BERT's uncased vocabulary (30,522 tokens)."""
    path.write_text(json.dumps({
        "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 37, "max_position_embeddings": 128, "hidden_dropout_prob": dropout,
        "attention_probs_dropout_prob": dropout}))
    return path


def prepare_wiki_pretraining(text_file: Path, vocab_file: Path, out_dir: Path, docs: int = 200) -> Path:
    """Pretraining shards (seq 128) from the first `docs` articles of a JSON-lines corpus."""
    from bertforge.data.pretraining import PrepareConfig, prepare_pretraining_data

    out_dir.mkdir(parents=True, exist_ok=True)
    subset = out_dir.parent / f"{out_dir.name}-docs.jsonl"
    with open(text_file, encoding="utf-8") as src:
        subset.write_text("".join(line for _, line in zip(range(docs), src)), encoding="utf-8")
    prepare_pretraining_data(PrepareConfig(input_file=str(subset), output_dir=str(out_dir),
                                           vocab_file=str(vocab_file), max_seq_length=128,
                                           num_workers=0, overwrite=True), progress=False)
    return out_dir


def read_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    main(sys.argv[1])
