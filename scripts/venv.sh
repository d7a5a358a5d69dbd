# Sourced by demo.sh and test.sh: make .venv (if needed) and install bertforge with its test
# dependencies. torch goes first and pinned to its CPU build; a looser requirement would pull
# a multi-GB CUDA build.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[test]"
