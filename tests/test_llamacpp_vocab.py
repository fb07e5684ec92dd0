"""Tokenizer parity with the real tokenizers, on llama.cpp's own test vocabularies (issue 14, item 3).

llama.cpp ships models/ggml-vocab-NAME.gguf (the vocabulary of a real model: Llama 2 "llama-spm",
Phi-3, Llama 3 "llama-bpe", Qwen2, GPT-2, ...) with NAME.gguf.inp (test texts, each followed by
"\\n__ggml_vocab_test__\\n") and NAME.gguf.out (one line per text: the ids the model's real Hugging
Face tokenizer gives, add_special_tokens=False). Every one whose tokenizer our runtime claims must
give exactly those ids, in the native tokenizer and in the Python reference tokenizer; the others
must be refused at load. The files come from the llama-cpp-python source distribution, fetched once
by scripts/fetch_llamacpp_converter.py into ~/.cache/specquant/llamacpp-sdist
($SPECQUANT_LLAMACPP_DIR names a llama.cpp checkout instead); without network the tests skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from specquant_gguf.gguf import read_model
from specquant_gguf.gguf.vocab import TextTokenizer
from test_tokenizer import Vocab

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))
# the vocabularies our runtime runs: SentencePiece (llama-spm, phi-3) and byte-level BPE with the
# pre-tokenizers of native/src/tokenizer.c
SUPPORTED = ("llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2", "mpt", "starcoder", "refact")


def _models_dir() -> Path | None:
    env = os.environ.get("SPECQUANT_LLAMACPP_DIR")
    if env:
        return Path(env) / "models"
    pattern = "llama_cpp_python-*/vendor/llama.cpp/models/ggml-vocab-phi-3.gguf.out"
    found = sorted((CACHE / "llamacpp-sdist").glob(pattern))
    if not found:  # fetch once (scripts/test.sh does it too); no network: skip
        subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_llamacpp_converter.py")],
                       capture_output=True, timeout=600)
        found = sorted((CACHE / "llamacpp-sdist").glob(pattern))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def models() -> Path:
    d = _models_dir()
    if d is None or not (d / "ggml-vocab-phi-3.gguf.inp").is_file():
        pytest.skip("llama.cpp's ggml-vocab-*.gguf files are not here: the llama-cpp-python sdist could not "
                    "be fetched (scripts/fetch_llamacpp_converter.py) and $SPECQUANT_LLAMACPP_DIR is unset")
    return d


def _cases(path: Path) -> list[tuple[str, list[int]]]:
    texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    assert texts[-1] == "", "the .inp file ends with a separator"
    texts = texts[:-1]
    lines = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(lines) >= len(texts) and not any(lines[len(texts):])
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize("name", SUPPORTED)
def test_native_tokenizer_gives_the_real_ids(models: Path, name: str) -> None:
    path = models / f"ggml-vocab-{name}.gguf"
    cases = _cases(path)
    assert len(cases) >= 40
    v = Vocab(path)
    try:  # llama.cpp's test: no BOS, special tokens in the text are text
        bad = [t for t, ids in cases if v.encode(t, add_bos=0, special=False) != ids]
    finally:
        v.close()
    assert not bad, f"{name}: {len(bad)} of {len(cases)} texts differ, first {bad[0][:60]!r}"
    if read_model(path).metadata.get("tokenizer.ggml.model") == "llama":  # the dummy prefix was tested
        assert sum(t.startswith(" ") for t, _ in cases) >= 10


@pytest.mark.parametrize("name", ("llama-spm", "phi-3", "llama-bpe", "qwen2"))
def test_reference_tokenizer_gives_the_real_ids(models: Path, name: str) -> None:
    path = models / f"ggml-vocab-{name}.gguf"
    tok = TextTokenizer(read_model(path).metadata, path)
    bad = [t for t, ids in _cases(path) if tok.encode(t, add_bos=False) != ids]
    assert not bad, f"{name}: {len(bad)} texts differ, first {bad[0][:60]!r}"


def test_other_vocabularies_are_refused(models: Path) -> None:
    """What we do not claim must not load (and silently tokenize differently): every vocabulary with
    test texts that is not in SUPPORTED (bert-bge, command-r, deepseek-*, falcon, gemma-4, qwen35)."""
    others = sorted(p for p in models.glob("ggml-vocab-*.gguf") if p.with_name(p.name + ".inp").is_file()
                    and p.name.removeprefix("ggml-vocab-").removesuffix(".gguf") not in SUPPORTED)
    assert len(others) >= 5
    for p in others:
        with pytest.raises(RuntimeError, match="unsupported"):
            Vocab(p).close()
