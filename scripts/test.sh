#!/usr/bin/env bash
# The test suite, from a fresh clone: installs bertforge with every extra and the test
# dependencies (CPU torch) into .venv and runs pytest. Needs ../shared/data beside the repository
# (the real data sets). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv EXTRAS=test
source scripts/venv.sh
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that proves nothing, so this counts as a failure" >&2
  exit 1
fi
exit "$status"
