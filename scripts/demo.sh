#!/usr/bin/env bash
# The embed-kd demo on BEIR SciFact with offline defaults. Sets up .venv on first use.
#
# Stages so far: eval of the BM25 baseline and of the bundled MiniLM-L6 bi-encoder (the teacher
# that later stages distil). The document embeddings are cached ($EMBED_KD_CACHE), so a second
# run only encodes queries.
#
# Data: $EMBED_KD_DATA (default ../shared/data when present); otherwise SciFact is downloaded
# from BEIR's public URL. Outputs: demo-output/ (replaced on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${EMBED_KD_DATA:-}" ] && [ -d ../shared/data ]; then export EMBED_KD_DATA="$(cd ../shared/data && pwd)"; fi
export TOKENIZERS_PARALLELISM=false
OUT=demo-output
mkdir -p "$OUT"
DATA=${DEMO_DATA:-scifact}

echo "==> [1/2] BM25 baseline (bm25s, k1=0.9, b=0.4, English stemmer + stop words)"
embed-kd eval --data "$DATA" --split test --model bm25 -o "$OUT/bm25.json" --overwrite -q

echo "==> [2/2] teacher bi-encoder: all-MiniLM-L6-v2 (bundled offline; ~6 min on 2 cores the first time)"
embed-kd eval --data "$DATA" --split test --model minilm-l6 -o "$OUT/minilm-l6.json" --overwrite -q

echo
echo "==> results (SciFact test)"
embed-kd report "$OUT"/bm25.json "$OUT"/minilm-l6.json
