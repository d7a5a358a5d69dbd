"""What every task needs besides its model (`bertforge.loading`): the batch plan in the log,
inference timings in metrics.jsonl, and JSON results."""

from __future__ import annotations

import logging
from dataclasses import asdict, is_dataclass
from pathlib import Path

from bertforge.fileio import atomic_write_json
# Model loading lives in bertforge.loading, below the tasks and the API that both use it;
# scripts that import these names from here keep working.
from bertforge.loading import LoadedModel, load_model, model_inputs
from bertforge.runconfig import TrainArgs
from bertforge.train.runtime import Runtime

log = logging.getLogger(__name__)


def log_batch_plan(train: TrainArgs, runtime: Runtime, accumulation: int, steps: int,
                   steps_per_epoch: int) -> None:
    global_batch = train.train_batch_size * runtime.world_size * accumulation
    log.info(f"global batch {global_batch} = {train.train_batch_size} per device x {runtime.world_size} "
             f"device(s) x {accumulation} accumulation step(s); learning rate {train.learning_rate:g} "
             f"applies to the global batch; {steps} optimizer steps ({steps / steps_per_epoch:.2f} epochs "
             f"of {steps_per_epoch} steps); device {runtime.device}, precision {runtime.precision}")


def report_inference(out: Path, stats, runtime: Runtime, split: str) -> dict:
    """Log a prediction's throughput and latency (an infer.InferenceStats of rank 0's share),
    append it to metrics.jsonl, and return it for the run's results."""
    from bertforge.train.loop import MetricsLog

    record = stats.as_dict()
    if runtime.is_main:
        MetricsLog(out / "metrics.jsonl").write({"split": split, "world_size": runtime.world_size, **record})
        log.info("%s: %d sequences in %.2f s on rank 0 (%.1f sequences/s); batch latency p50 %.1f ms, "
                 "p99 %.1f ms", split, record["sequences"], record["seconds"], record["sequences_per_second"] or 0.0,
                 record["latency_ms_p50"], record["latency_ms_p99"])
    return record


def write_json(path: Path, data) -> Path:
    """Atomically (temp file + rename), so a crash never leaves half a results file."""
    if is_dataclass(data):
        data = asdict(data)
    return atomic_write_json(path, data)


__all__ = ["LoadedModel", "load_model", "log_batch_plan", "model_inputs", "report_inference", "write_json"]
