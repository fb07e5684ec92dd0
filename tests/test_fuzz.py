"""Corrupted model files through the Python API: a clear SpecQuantError (or a model that works),
never a crash or a foreign exception. The C driver (native/tests/test_fuzz.c, run by ctest and
under ASan by scripts/test.sh; bench/fuzz.py on the real SmolLM2) does the thousands of cases;
this covers the path through the file system and the binding, SQ_FUZZ_ITERS cases (default 40)."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

from specquant_gguf.errors import SpecQuantError
from specquant_gguf.runtime import Model

ITERS = int(os.environ.get("SQ_FUZZ_ITERS", "40"))


def _load_and_run(path: Path) -> str:
    try:
        m = Model(path, n_ctx=8, n_threads=1)
    except SpecQuantError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg
        return type(exc).__name__
    with m:
        out = m.eval([0, 1])
        assert out.shape == (2, m.n_vocab)
    return "loaded"


def test_truncated_files(tiny_sq4_spectral, tmp_path: Path) -> None:
    data = tiny_sq4_spectral.path.read_bytes()
    rng = random.Random(0)
    cuts = sorted({0, 1, 4, 8, 23, 24, len(data) - 1} | {rng.randrange(len(data)) for _ in range(ITERS)})
    seen = set()
    for n in cuts:
        p = tmp_path / "cut.gguf"
        p.write_bytes(data[:n])
        result = _load_and_run(p)
        assert result != "loaded", f"a file cut at {n} of {len(data)} bytes loaded"
        seen.add(result)
    assert seen <= {"FormatError", "UnsupportedError"}


def test_flipped_bytes(tiny_sq4_spectral, tmp_path: Path) -> None:
    data = bytearray(tiny_sq4_spectral.path.read_bytes())
    rng = np.random.default_rng(1)
    results: dict[str, int] = {}
    span = min(len(data), 65536)
    for _ in range(2 * ITERS):
        b = bytearray(data)
        for pos in rng.integers(0, span, size=int(rng.integers(1, 5))):
            b[pos] ^= int(rng.integers(1, 256))
        p = tmp_path / "flip.gguf"
        p.write_bytes(bytes(b))
        r = _load_and_run(p)
        results[r] = results.get(r, 0) + 1
    assert set(results) <= {"loaded", "FormatError", "UnsupportedError", "ArgumentError"}, results


@pytest.mark.parametrize("n_ctx", [-1, 0, 10 ** 9, 2 ** 40])
def test_bad_context(tiny_sq4, n_ctx) -> None:
    with pytest.raises(ValueError):
        Model(tiny_sq4.path, n_ctx=n_ctx)
