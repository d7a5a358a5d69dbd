#!/usr/bin/env bash
# Pack the GPU suite for a machine without network access (benchmarks/pack_suite.py, whose
# options this passes on) with a Python that has torch and bertforge's requirements: the one
# named by PYTHON, else the project's .venv (of this checkout, or of the main checkout when this
# is a git worktree), else python3 or python from PATH. One that cannot import torch is passed over.
#
#   benchmarks/prepare_device.sh [--out .bench] [--target_python 3.12 --target_platform manylinux_2_28_x86_64 ...]
#   PYTHON=/path/to/venv/bin/python benchmarks/prepare_device.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
candidates+=("$repo/.venv/bin/python")
if common="$(git -C "$repo" rev-parse --path-format=absolute --git-common-dir 2>/dev/null)"; then
    candidates+=("$(dirname "$common")/.venv/bin/python")
fi
candidates+=(python3 python)
for candidate in "${candidates[@]}"; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch, bertforge" >/dev/null 2>&1; then
        exec "$candidate" "$repo/benchmarks/pack_suite.py" "$@"
    fi
done
echo "prepare_device.sh: no Python that imports torch and bertforge among: ${candidates[*]}; pass PYTHON=/path/to/bin/python (the environment bertforge is developed in)" >&2
exit 1
