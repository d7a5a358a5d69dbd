#!/usr/bin/env bash
# Bundle what the GPU suite needs on the device machine into .bench/ (git-ignored locally):
# the SQuAD v1.1 dev file and the BERT vocab from ../shared/data (which does not travel with the
# repository), and the sentencex wheel (imported by bertforge's pretraining data code; not
# installed there). Run here, from anywhere; then call the device tool with carry [".bench"]
# and the command printed at the end.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bundle="${1:-$repo/.bench}"
shared="$repo/../shared/data"
mkdir -p "$bundle/whl"
install -m 0644 "$shared/squad/v1.1/dev-v1.1.json" "$shared/vocab/bert-base-uncased/vocab.txt" "$bundle/"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$bundle/whl" "sentencex==1.0.32"
if [ "$bundle" = "$repo/.bench" ] && [ -d "$repo/.git" ] && ! grep -qx '/.bench/' "$repo/.git/info/exclude" 2>/dev/null; then
    echo '/.bench/' >> "$repo/.git/info/exclude"
fi
du -sh "$bundle"
cat <<'CMD'
device run (carry [".bench"], timeout_s 600):
python3 -m pip install -q --no-index --no-deps --target /tmp/site .bench/whl/*.whl && PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/run_gpu_suite.py --out $OUT
CMD
