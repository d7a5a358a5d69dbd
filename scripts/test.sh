#!/usr/bin/env bash
# The test suite, from a fresh clone: installs bertforge with its test dependencies (CPU torch)
# into .venv and runs pytest. Needs ../shared/data beside the repository (the real data sets).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test]"
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that proves nothing, so this counts as a failure" >&2
  exit 1
fi
exit "$status"
