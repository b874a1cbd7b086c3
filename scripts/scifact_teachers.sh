#!/usr/bin/env bash
# Run the SciFact teacher comparison (eval/results/scifact-teachers.*). Heavy: run it through the lock,
#   nohup flock /tmp/embed_kd_heavy.lock bash scripts/scifact_teachers.sh runs/teachers [CE_DIR] > log 2>&1 &
# Each step is skipped when its result file exists (re-run to resume).
set -euo pipefail
OUT=${1:-runs/teachers}
CE=${2:-}
mkdir -p "$OUT"
export EMBED_KD_DATA=${EMBED_KD_DATA:-/work/shared/data} EMBED_KD_CACHE=${EMBED_KD_CACHE:-/work/cache} HF_HUB_OFFLINE=1
EK=".venv/bin/embed-kd"
declare -A CMD
CMD[bm25]="embed-kd eval --data scifact --split test --model bm25"
CMD[minilm]="embed-kd eval --data scifact --split test --model minilm-l6"
CMD[fusion-equal]="embed-kd eval --data scifact --split test --ensemble eval/configs/ensemble-bm25-minilm.yaml"
CMD[fusion-rrf]="embed-kd eval --data scifact --split test --ensemble eval/configs/ensemble-bm25-minilm-rrf.yaml"
CMD[fusion-fit]="embed-kd eval --data scifact --split test --ensemble eval/configs/ensemble-bm25-minilm-fit.yaml --save-weights eval/results/scifact-ensemble-weights.json --overwrite"
if [ -n "$CE" ]; then
  CMD[ce-rerank]="embed-kd eval --data scifact --split test --ensemble eval/configs/ensemble-bm25-minilm.yaml --rerank $CE --rerank-depth 20"
  CMD[fusion-fit-ce]="embed-kd eval --data scifact --split test --ensemble eval/configs/ensemble-bm25-minilm-ce.yaml"
fi
python3 - "$OUT" <<PY
import json, sys
json.dump({$(for k in "${!CMD[@]}"; do printf '"%s": "%s", ' "$k" "${CMD[$k]}"; done)}, open(sys.argv[1] + "/commands.json", "w"), indent=1)
PY
for key in bm25 minilm fusion-equal fusion-rrf fusion-fit ce-rerank fusion-fit-ce; do
  [ -n "${CMD[$key]:-}" ] || continue
  [ -f "$OUT/$key.json" ] && { echo "skip $key"; continue; }
  echo "== $key: ${CMD[$key]}"
  ${CMD[$key]/embed-kd/$EK} -o "$OUT/$key.json" --no-progress
done
.venv/bin/python scripts/scifact_teachers.py "$OUT"
