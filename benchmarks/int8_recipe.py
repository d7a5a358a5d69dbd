"""How int8's SmoothQuant setting was chosen, without looking at answers: for each alpha and number
of calibration windows, the start/end logits' mean |difference| from fp32 (and how often the
argmax position agrees) on windows of the *training* articles 30-37 of benchmarks/ACCURACY.md's
split, for a fine-tuned QA checkpoint. The held-out articles 38-47 are scored once, afterwards,
by benchmarks/cpu_inference.py.

    python benchmarks/int8_recipe.py RUN [--windows 480] [--alphas 0.5 0.6 0.7 0.8] [--calibration 16 32 64]

Prints one JSON line per setting (and "no smoothing", 8-bit activations where the CPU has VNNI).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_inference  # noqa: E402  (the same windows and prediction loop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a fine-tuned QA checkpoint (bertforge run directory or any format)")
    parser.add_argument("--windows", type=int, default=480, help="windows of articles 30-37 compared")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--calibration", type=int, nargs="+", default=[16, 32, 64],
                        help="numbers of random calibration windows")
    args = parser.parse_args()

    from bertforge.data import squad
    from bertforge.engine.precision import activation_ranges, calibration_inputs, quantize_int8, smooth_activations
    from bertforge.runconfig import ModelArgs
    from bertforge.tasks.common import load_model

    loaded = load_model(ModelArgs(init_checkpoint=args.checkpoint), "qa", unpad=True)
    base = loaded.model.eval()
    examples, _ = squad.read_squad_examples(str(cpu_inference.DEV), is_training=False, articles=slice(30, 38))
    features = squad.convert_examples_to_features(examples[::3], loaded.tokenizer, max_seq_length=384,
                                                  doc_stride=128, max_query_length=64, is_training=False,
                                                  progress=False)
    arrays = {k: np.asarray(getattr(features, k), dtype=np.int64)[: args.windows] for k in cpu_inference.INPUTS}
    real = arrays["attention_mask"] == 1

    def logits(model):
        start, end, _, _ = cpu_inference.bertforge_runner(model, "fp32")(arrays, 32)
        return start, end

    reference = logits(base)

    def report(setting: dict, model) -> None:
        got = logits(model)
        error = np.mean([np.abs(g[real] - r[real]).mean() for g, r in zip(got, reference)])
        agree = np.mean([(np.where(real, g, -np.inf).argmax(1) == np.where(real, r, -np.inf).argmax(1)).mean()
                         for g, r in zip(got, reference)])
        print(json.dumps({**setting, "logit_mean_abs_diff": round(float(error), 4),
                          "argmax_agreement": round(float(agree), 4)}), flush=True)

    report({"smoothing": None}, quantize_int8(copy.deepcopy(base), smooth=False))
    for windows in args.calibration:
        ranges = activation_ranges(base, calibration_inputs(base.config, windows))
        for alpha in args.alphas:
            model = smooth_activations(copy.deepcopy(base), ranges, alpha)
            report({"calibration_windows": windows, "alpha": alpha}, quantize_int8(model, smooth=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
