#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests on tiny config-built models,
# doctests, and integration tests on the real bundled MiniLM + a slice of SciFact.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ -z "${EMBED_KD_DATA:-}" ] && [ -d ../shared/data ]; then export EMBED_KD_DATA="$(cd ../shared/data && pwd)"; fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export EMBED_KD_CACHE="${EMBED_KD_CACHE:-$(mktemp -d)}"
exec python -m pytest "$@"
