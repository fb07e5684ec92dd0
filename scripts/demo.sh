#!/usr/bin/env bash
# Quick start: set up, convert SmolLM2-135M-Instruct to W4A4 SpecQuant, chat once, measure perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
MODEL=${MODEL:-smollm2-135m}
OUT=${OUT:-smol.sq4.gguf}
[ -f "$OUT" ] || specquant convert "$MODEL" --out "$OUT"
specquant inspect "$OUT" --no-tensors   # metadata and size totals (the tensor table: drop --no-tensors)
sq-chat -m "$OUT" -p "What is the capital of France?" -n 64 --temp 0 -t 2
WIKI=${WIKI:-../shared/data/wikitext-2-raw/wiki.test.raw}
if [ -f "$WIKI" ]; then
  specquant ppl "$OUT" --data "$WIKI" --ctx 512 --windows 8
fi
