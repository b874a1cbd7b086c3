#!/usr/bin/env bash
# The GPU check of issue 16: score-teacher (cross-encoder), a short train and eval on SciFact, on the
# GPU and on the CPU -> eval/results/gpu-check.{md,json} (pairs/s, train steps/s, docs/s, nDCG@10 diff).
# Needs a CUDA GPU (fails clearly without one), SciFact under $EMBED_KD_DATA and the bundled MiniLM
# (offline). About 5 minutes on one H200 with 16 CPU cores (the CPU halves dominate). Options go to scripts/gpu_check.py
# (--queries, --cpu-queries, --steps, --cpu-steps, --work, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "Error: no CUDA GPU is visible to torch ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda)'));" \
         "gpu_check.sh needs one (nvidia-smi: $(command -v nvidia-smi >/dev/null && nvidia-smi -L 2>&1 | head -1 || echo 'not found'))" >&2
    exit 2
fi
"$PY" -c 'import embed_kd.data as d; d.resolve_dataset("scifact")' 2>/dev/null || {
    echo "Error: SciFact not found (set EMBED_KD_DATA to the folder holding beir/scifact)" >&2; exit 2; }
exec "$PY" scripts/gpu_check.py "$@"
