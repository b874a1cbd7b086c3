#!/usr/bin/env bash
# The embed-kd demo on BEIR SciFact with offline defaults: score-teacher -> train -> eval.
# Sets up .venv on first use.
#
#   1. score-teacher: BM25 + MiniLM candidates for the 809 SciFact TRAIN queries, scored by the
#      TEACHER used offline: the BM25 + all-MiniLM-L6-v2 z-score ensemble (no pretrained
#      cross-encoder is available offline; online, pass --teacher ce:cross-encoder/ms-marco-MiniLM-L6-v2).
#   2. train: a 3-layer student cut out of MiniLM-L6 (layers 0,3,5), Margin-MSE on the ensemble's
#      scores + alignment to MiniLM's embeddings, a fixed number of steps (eval/configs/demo.yaml;
#      no wall-clock budget, so a busy machine takes longer but learns the same student).
#   3. eval on SciFact TEST: BM25, the MiniLM embedding teacher, the ensemble score teacher, and
#      the student in asymmetric mode (its queries against MiniLM's document embeddings); each eval
#      times its query encoding, and the table shows the student's nDCG@10 and speed as ratios to
#      MiniLM's, then one line saying what was distilled from what.
#
# -q everywhere: progress bars (per batch, with rate and ETA) and the final table only.
#
# First run ≈ 10-15 min on a 2-core CPU (measured on a clean clone with an empty cache: 12.5 min at
# load ~3, eval/results/demo.md; MiniLM encodes the 5,183 abstracts once, most of that time, cached
# in $EMBED_KD_CACHE, default ~/.cache/embed_kd); later runs skip that.
# Data: $EMBED_KD_DATA (default ../shared/data when present), else BEIR's public URL.
# Outputs: demo-output/ (the teacher scores are reused on a rerun; the rest is replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${EMBED_KD_DATA:-}" ] && [ -d ../shared/data ]; then export EMBED_KD_DATA="$(cd ../shared/data && pwd)"; fi
export TOKENIZERS_PARALLELISM=false
OUT=demo-output
LOG="$OUT/logs"  # each step's own summary (stdout) goes here: the terminal shows the bars and the final table
mkdir -p "$OUT" "$LOG"
DATA=${DEMO_DATA:-scifact}
SECONDS=0

echo "==> [1/3] score-teacher: BM25 + MiniLM candidates on the train queries, scored by the"
echo "          BM25 + MiniLM z-score ensemble teacher (offline: no pretrained cross-encoder)"
if python -c "from embed_kd.teachers.store import open_scores; open_scores('$OUT/teacher-scores')" 2>/dev/null; then
  echo "    $OUT/teacher-scores is complete: reused (delete it to rescore)"
else  # a missing or interrupted store: score-teacher (re)starts and resumes committed chunks
  embed-kd score-teacher run --data "$DATA" --split train \
    --candidates bm25:30 --candidates dense:minilm-l6:30 \
    --teacher bm25 --teacher minilm-l6 --ensemble zscore -o "$OUT/teacher-scores" -q > "$LOG/score-teacher.txt"
fi

STEPS=$(python -c "import yaml; print(yaml.safe_load(open('eval/configs/demo.yaml'))['train']['max_steps'])")
echo "==> [2/3] train: 3-layer student cut out of MiniLM-L6 (Margin-MSE + embedding alignment, $STEPS steps)"
embed-kd train eval/configs/demo.yaml --data "$DATA" --scores "$OUT/teacher-scores" \
  -o "$OUT/student" --overwrite -q > "$LOG/train.txt"

echo "==> [3/3] eval on the test split"
embed-kd eval --data "$DATA" --split test --model bm25 -o "$OUT/bm25.json" --overwrite -q > "$LOG/eval-bm25.txt"
embed-kd eval --data "$DATA" --split test --model minilm-l6 -o "$OUT/teacher-minilm-l6.json" --overwrite -q \
  > "$LOG/eval-teacher-minilm-l6.txt"
embed-kd eval --data "$DATA" --split test --ensemble eval/configs/ensemble-bm25-minilm.yaml \
  -o "$OUT/teacher-ensemble.json" --overwrite -q > "$LOG/eval-teacher-ensemble.txt"
embed-kd eval --data "$DATA" --split test --query-model "$OUT/student" --doc-model minilm-l6 \
  --loyalty-teacher minilm-l6 -o "$OUT/student-asym.json" --overwrite -q > "$LOG/eval-student-asym.txt"

echo
echo "==> results (SciFact test; demo took ${SECONDS}s; each step's summary is in $LOG/)"
embed-kd report "$OUT"/bm25.json "$OUT"/teacher-minilm-l6.json "$OUT"/teacher-ensemble.json "$OUT"/student-asym.json \
  --teacher "$OUT"/teacher-minilm-l6.json -q
