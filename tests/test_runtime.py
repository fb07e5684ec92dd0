"""specquant_gguf.runtime.Model: the Python API over the native library, on tiny synthetic files."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from specquant_gguf.errors import FormatError, SpecQuantError, UsageError

from specquant_gguf import runtime  # the library must be built (scripts/setup.sh): no skip
from specquant_gguf.runtime import _native
from specquant_gguf.runtime import Model


def test_library_and_header() -> None:
    assert runtime.library_path().is_file()
    src = _native._cdef_source(_native._header_path().read_text())
    assert "#" not in src and "SQ_API" not in src and "sq_model_eval" in src
    assert runtime.isa() in ("scalar", "avx2", "avx512", "avx512-mix", "neon")


def test_load_and_properties(tiny_sq4) -> None:
    with Model(tiny_sq4.path, n_threads=2) as m:
        cfg = tiny_sq4.config
        assert m.n_vocab == cfg["vocab"]
        assert m.n_ctx == 256 == m.n_ctx_train  # default: min(2048, the model's)
        assert m.n_past == 0
        assert m.isa in ("scalar", "avx2", "avx512", "avx512-mix", "neon")
        assert m.metadata("general.architecture") == "llama"
        assert m.metadata("llama.embedding_length") == str(cfg["hidden"])
        assert m.metadata("specquant.rotation") == "wht"
        assert m.metadata("tokenizer.ggml.tokens").startswith("[")
        assert m.metadata("no.such.key") is None
        assert "n_ctx=256" in repr(m)
    assert "closed" in repr(m)
    with pytest.raises(SpecQuantError, match="closed"):
        m.eval([1])
    m.close()  # idempotent


def test_eval_continues_and_rewinds(tiny_sq4) -> None:
    ids = [5, 17, 42, 99, 3, 250, 7, 8]
    m = Model(tiny_sq4.path, n_threads=1, kv_type="f32")
    full = m.eval(ids)
    assert full.shape == (8, m.n_vocab) and full.dtype == np.float32 and np.isfinite(full).all()
    assert m.n_past == 8
    m.reset()
    a = m.eval(ids[:3])
    b = m.eval(np.array(ids[3:6], dtype=np.int64))
    last = m.eval_last(ids[6:])
    assert last.shape == (m.n_vocab,)
    np.testing.assert_allclose(np.vstack([a, b]), full[:6], rtol=0, atol=1e-4 * np.abs(full).max())
    np.testing.assert_allclose(last, full[-1], rtol=0, atol=1e-4 * np.abs(full).max())
    m.set_n_past(4)  # rewind and take another path: same as a fresh context
    m.advance([77])
    alt = m.eval_last([78])
    m.reset()
    fresh = m.eval(ids[:4] + [77, 78])
    np.testing.assert_allclose(alt, fresh[-1], rtol=0, atol=1e-4 * np.abs(fresh).max())


@pytest.mark.parametrize("kv", ["f16", "q8", "q4", "f32"])
def test_kv_types(tiny_f16, kv) -> None:
    ids = list(range(10, 40))
    ref = Model(tiny_f16.path, kv_type="f32").eval(ids)
    got = Model(tiny_f16.path, kv_type=kv).eval(ids)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < {"f32": 1e-6, "f16": 2e-3, "q8": 2e-2, "q4": 1.5e-1}[kv]


def test_threads_agree(tiny_f16) -> None:
    ids = list(range(1, 50))
    one = Model(tiny_f16.path, n_threads=1).eval(ids)
    three = Model(tiny_f16.path, n_threads=3).eval(ids)
    np.testing.assert_array_equal(one, three)  # float model: identical order whatever the split


def test_errors(tiny_sq4, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot open"):
        Model(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF\x03\x00\x00\x00" + os.urandom(200))
    with pytest.raises(FormatError):
        Model(junk)
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(FormatError, match="not a GGUF file"):
        Model(junk)
    with pytest.raises(UsageError, match="exceeds the model's context length"):
        Model(tiny_sq4.path, n_ctx=100000)
    with pytest.raises(ValueError):
        Model(tiny_sq4.path, kv_type="q3")
    with pytest.raises(ValueError):
        Model(tiny_sq4.path, spectral_tau=0.0)
    with pytest.raises(runtime.BackendError):
        Model(tiny_sq4.path, backend="cuda")
    m = Model(tiny_sq4.path, n_ctx=16)
    with pytest.raises(ValueError, match="out of range"):
        m.eval([1, m.n_vocab])
    with pytest.raises(ValueError, match="non-empty"):
        m.eval([])
    with pytest.raises(ValueError):
        m.eval([1.5, 2.0])
    assert m.n_past == 0
    m.eval(list(range(16)))
    with pytest.raises(runtime.ContextFullError, match="context full"):
        m.eval([1])
    with pytest.raises(ValueError, match="n_past"):
        m.set_n_past(17)
    assert m.n_past == 16


def test_tokenizer(tiny_sq4) -> None:
    m = Model(tiny_sq4.path)
    if not hasattr(_native.lib(), "sq_tokenize"):
        pytest.skip("tokenizer not in this library build")
    text = "The quick brown fox jumps over the lazy dog."
    ids = m.tokenize(text)
    assert ids and all(0 <= i < m.n_vocab for i in ids)
    assert m.detokenize(ids) == text
    assert b"".join(m.token_to_piece(i) for i in ids).decode() == text
    assert m.tokenize(text, add_bos=True)[0] == m.bos
    assert m.tokenize("", add_bos=False) == []
    assert m.is_eog(m.eos)
