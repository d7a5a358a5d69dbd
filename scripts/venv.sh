# Sourced by demo.sh and test.sh with VENV (the environment's directory) and EXTRAS (bertforge's
# extras to install, comma-separated, or empty) set: makes the virtual environment if needed and
# installs bertforge into it. torch goes first, pinned: a loose `torch` requirement resolved by
# pip would pick the default build of the platform, on Linux a CUDA build of several GB.
# TORCH_INSTALL overrides the pin (e.g. TORCH_INSTALL="torch --index-url https://download.pytorch.org/whl/cpu").
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC2086  # TORCH_INSTALL is a list of pip arguments
"$VENV/bin/pip" install -q ${TORCH_INSTALL:-torch==2.13.0}
"$VENV/bin/pip" install -q -e ".${EXTRAS:+[$EXTRAS]}"
