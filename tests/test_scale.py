"""The large-model code paths on tiny models (issue 15): bfloat16 self-generation, a streaming writer
whose peak memory stays flat as blocks are added, resumable conversion. The 8B-shaped run itself is
a benchmark (bench/scale.py), not a test."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specquant_gguf.arch import ModelConfig
from specquant_gguf.convert import calibrate
from specquant_gguf.convert.calibrate import generate_windows, model_dtype

from oracle.tinyllama import MemorySource, tiny_config


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path_factory.getbasetemp() / "specquant-cache"))


def llama3_8b_config(n_layer: int = 32) -> ModelConfig:
    return ModelConfig(arch="llama", name="llama3-8b-shape", n_layer=n_layer, n_embd=4096, n_ff=14336, n_head=32,
                       n_head_kv=8, head_dim=128, rope_base=500000.0, rms_eps=1e-5, vocab_size=128256,
                       ctx_len=8192, tied=False, qkv_bias=False)


def test_large_models_generate_in_bfloat16() -> None:
    assert model_dtype(llama3_8b_config()) == torch.bfloat16
    assert model_dtype(tiny_config()) == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_self_generation_runs_in_every_dtype(dtype: torch.dtype) -> None:
    """The 8B crash: bf16 blocks with float32 RoPE tables broke scaled_dot_product_attention."""
    cfg = tiny_config(n_layer=2)
    src = MemorySource(cfg, seed=8)
    cal = generate_windows(src, n=3, length=10, seed=0, segments=2, dtype=dtype)
    assert cal.tokens.shape == (3, 10)
    assert int(cal.tokens.min()) >= 0 and int(cal.tokens.max()) < cfg.vocab_size


def test_default_dtype_follows_the_size_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """dtype=None picks by size: with the threshold at 0 a tiny model takes the large-model branch
    (what smollm2-1.7b and 8B models take) and converts end to end through the CLI."""
    monkeypatch.setattr(calibrate, "BIG_MODEL_PARAMS", 0)
    assert model_dtype(tiny_config()) == torch.bfloat16
    src = MemorySource(tiny_config(n_layer=1), seed=2)
    f32 = generate_windows(src, n=2, length=8, seed=1, dtype=torch.float32)
    auto = generate_windows(src, n=2, length=8, seed=1)
    assert auto.tokens.shape == f32.tokens.shape


def test_large_model_branch_converts_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oracle.tinyllama import write_gguf
    from specquant_gguf.cli import main
    from specquant_gguf.gguf import read_model

    monkeypatch.setattr(calibrate, "BIG_MODEL_PARAMS", 0)
    drafts: list[tuple[int, int]] = []
    native = calibrate.generate_windows_native

    def spy(path, n, length, *a, **kw):  # the large-model text comes from the runtime, on a draft file
        assert Path(path).is_file() and read_model(path).metadata["specquant.method"] == "rtn"
        cal = native(path, n, length, *a, **kw)
        drafts.append(tuple(cal.tokens.shape))
        return cal

    monkeypatch.setattr(calibrate, "generate_windows_native", spy)
    path = write_gguf(MemorySource(tiny_config(n_layer=2), seed=0), tmp_path / "tiny.gguf")
    out = tmp_path / "tiny.sq4.gguf"
    assert main(["convert", str(path), "--out", str(out), "--calib-windows", "2", "--calib-len", "32",
                 "--threads", "1", "--quiet", "--no-calib-cache"]) == 0
    assert read_model(out).metadata["specquant.calibration.source"] == "self-generated"
    assert drafts == [(2, 32)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.gguf", "tiny.sq4.gguf"]  # the draft is gone


def test_native_generation_is_seeded_and_in_vocabulary(tmp_path: Path) -> None:
    """generate_windows_native: n windows of `length` tokens, each `segments` texts decoded as one
    batch of sequences; the same seed gives the same text, another seed another text."""
    from oracle.tinyllama import write_gguf

    cfg = tiny_config(n_layer=2)
    path = write_gguf(MemorySource(cfg, seed=0), tmp_path / "tiny.gguf")
    a = calibrate.generate_windows_native(path, 3, 16, seed=5, vocab_size=cfg.vocab_size, segments=2, threads=1)
    b = calibrate.generate_windows_native(path, 3, 16, seed=5, vocab_size=cfg.vocab_size, segments=2, threads=1)
    c = calibrate.generate_windows_native(path, 3, 16, seed=6, vocab_size=cfg.vocab_size, segments=2, threads=1)
    assert a.tokens.shape == (3, 16) and a.tokens.dtype == torch.int64
    assert int(a.tokens.min()) >= 0 and int(a.tokens.max()) < cfg.vocab_size
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    # each window joins two texts of 8 tokens: their first tokens are the uniform draws (ids >= 256 where the vocabulary allows)
    assert len(set(a.tokens[:, 8].tolist())) > 1


# -- the writer streams --------------------------------------------------------------------------

def test_streaming_writer_matches_gguf_writer_bytes(tmp_path: Path) -> None:
    """ModelWriter streams tensor data to a spool file; the file is byte for byte what the gguf
    package's own GGUFWriter writes for the same metadata and tensors."""
    import gguf
    import numpy as np

    from specquant_gguf.gguf import ModelWriter, Q8_0Weight
    from specquant_gguf.gguf.constants import ALIGNMENT

    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
               "b.weight": rng.standard_normal((7, 64)).astype(np.float16),
               "c.weight": Q8_0Weight.from_float(rng.standard_normal((4, 64)).astype(np.float32)),
               "d": np.arange(11, dtype=np.int32)}
    ours = tmp_path / "ours.gguf"
    with ModelWriter(ours) as w:
        w.add_kv("general.name", "x")
        w.add_kv("some.count", 3)
        for name, t in tensors.items():
            w.add_tensor(name, t)
    ref = gguf.GGUFWriter(str(tmp_path / "ref.gguf"), "llama")
    ref.add_key_value("general.alignment", ALIGNMENT, gguf.GGUFValueType.UINT32)
    ref.data_alignment = ALIGNMENT
    ref.add_key_value("general.name", "x", gguf.GGUFValueType.STRING)
    ref.add_key_value("some.count", 3, gguf.GGUFValueType.UINT32)
    for name, t in tensors.items():
        if isinstance(t, Q8_0Weight):
            ref.add_tensor(name, t.raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            ref.add_tensor(name, t)
    ref.write_header_to_file()
    ref.write_kv_data_to_file()
    ref.write_tensors_to_file()
    ref.close()
    assert ours.read_bytes() == (tmp_path / "ref.gguf").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.gguf", "ref.gguf"]  # no spool left


def _peak_of_conversion(n_layer: int) -> int:
    """tracemalloc peak (numpy payloads are traced) of converting a synthetic model to f16."""
    import tempfile
    import tracemalloc

    from specquant_gguf.convert.driver import convert_blocks, write_blocks
    from specquant_gguf.convert.recipe import method_defaults

    src = MemorySource(tiny_config(n_layer=n_layer, n_embd=256, n_ff=1024, vocab=320), seed=1)
    r = method_defaults("f16")
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        try:
            write_blocks(src, r, None, Path(d) / "m.gguf", convert_blocks(src, None, r, src.token_embd()))
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()


def test_writer_memory_stays_flat_as_blocks_are_added() -> None:
    """Holding every payload until the end (the old writer) grows by a block's f16 bytes (1.5 MB here)
    per block; streaming keeps the peak at about one block's worth whatever the depth."""
    block_f16 = 2 * (256 * 256 * 2 + 2 * 128 * 256 + 3 * 256 * 1024)
    p2, p8 = _peak_of_conversion(2), _peak_of_conversion(8)
    assert p8 - p2 < block_f16, (p2, p8)


# -- resumable conversion ------------------------------------------------------------------------

def test_interrupted_conversion_resumes_at_the_next_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oracle.tinyllama import write_gguf
    from specquant_gguf.cli import main
    from specquant_gguf.convert import driver

    path = write_gguf(MemorySource(tiny_config(n_layer=4), seed=0), tmp_path / "tiny.gguf")
    args = ["--calib-windows", "2", "--calib-len", "32", "--threads", "1", "--quiet", "--no-calib-cache",
            "--group-size", "32"]
    ref = tmp_path / "ref.gguf"
    assert main(["convert", str(path), "--out", str(ref), "--no-resume", *args]) == 0

    real = driver.quantize_block
    calls: list[int] = []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops it in block 2
        return real(*a, **k)

    monkeypatch.setattr(driver, "quantize_block", failing)
    out = tmp_path / "out.gguf"
    assert main(["convert", str(path), "--out", str(out), *args]) != 0  # "specquant: interrupted"
    assert not out.exists()
    work = [p for p in tmp_path.iterdir() if p.name.startswith(".out.gguf.work-")]
    assert len(work) == 1 and (work[0] / "block1.pt").is_file()
    calls.clear()
    assert main(["convert", str(path), "--out", str(out), *args]) == 0
    assert len(calls) == 2  # blocks 2 and 3 only
    assert out.read_bytes() == ref.read_bytes()
    assert not work[0].exists()  # removed on success


@pytest.mark.parametrize("method", ["f16", "q8"])
def test_uncalibrated_conversions_keep_no_work_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       method: str) -> None:
    """f16/q8 blocks are redone faster than saved: no work folder, whose copy of every block would
    need the output's size again on disk (an 8B f16 file: 16 GB more)."""
    from oracle.tinyllama import write_gguf
    from specquant_gguf.cli import main
    from specquant_gguf.convert import driver

    path = write_gguf(MemorySource(tiny_config(n_layer=2), seed=0), tmp_path / "tiny.gguf")
    saved: list[int] = []
    monkeypatch.setattr(driver.WorkDir, "save_block", lambda self, i, *a: saved.append(i))
    out = tmp_path / "out.gguf"
    assert main(["convert", str(path), "--out", str(out), "--method", method, "--quiet"]) == 0
    assert out.is_file() and saved == []
    assert not [p for p in tmp_path.iterdir() if ".work-" in p.name]


def test_large_models_get_the_cheap_alpha_search() -> None:
    """The α search's shortcut (recipe.LARGE_MODEL_SEARCH) applies to large models' default recipe only;
    a small model keeps the full search, and a recipe's own settings are never overridden."""
    from specquant_gguf.convert.driver import large_model_search
    from specquant_gguf.convert.recipe import LARGE_MODEL_SEARCH, Recipe

    small, big = tiny_config(n_layer=2), llama3_8b_config()
    assert large_model_search(Recipe(), small, None) == Recipe()
    fast = large_model_search(Recipe(), big, None)
    assert (fast.search_rows, fast.search_ratios) == (LARGE_MODEL_SEARCH["search_rows"], LARGE_MODEL_SEARCH["search_ratios"])
    assert large_model_search(Recipe(), small, True).search_rows == LARGE_MODEL_SEARCH["search_rows"]
    own = Recipe(search_rows=0)
    assert large_model_search(own, big, None) == own
