"""Residual-stream rotation (convert/residual.py): the rotated source is the same model, tensor by
tensor, and a converted file with it runs in the runtime like any other."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from specquant_gguf.cli import main
from specquant_gguf.convert.residual import ResidualRotated, residual_matrix, rotate_residual, suppressed_channels
from specquant_gguf.errors import SpecQuantError
from specquant_gguf.gguf import read_model

from oracle.tinyllama import MemorySource, float_logits, tiny_config, write_gguf


@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("n", [64, 96, 576])
def test_matrices_are_orthogonal_and_seeded(kind: str, n: int) -> None:
    r = residual_matrix(kind, n, seed=3)
    assert torch.allclose(r @ r.t(), torch.eye(n, dtype=r.dtype), atol=1e-12)
    assert torch.equal(r, residual_matrix(kind, n, seed=3))
    assert not torch.equal(r, residual_matrix(kind, n, seed=4))


def test_hadamard_spreads_every_channel_evenly() -> None:
    r = residual_matrix("hadamard", 128, seed=0)  # a power of two: a pure signed Hadamard
    assert torch.allclose(r.abs(), torch.full_like(r, 128 ** -0.5))


@pytest.mark.parametrize("kind", ["hadamard", "random"])
@pytest.mark.parametrize("tied,qkv_bias", [(True, False), (False, False), (True, True)])
def test_rotated_source_computes_the_same_logits(kind: str, tied: bool, qkv_bias: bool) -> None:
    src = MemorySource(tiny_config(n_layer=2, n_embd=96, n_head=4, n_head_kv=2, n_ff=192, tied=tied,
                                   qkv_bias=qkv_bias), seed=1)
    rot = rotate_residual(src, kind, seed=0)
    tokens = torch.arange(0, 40) * 7 % src.config.vocab_size
    want = float_logits(src, tokens[None])
    got = float_logits(rot, tokens[None])
    assert rot.output() is not None and rot.config.tied is False  # a tied head is written untied
    assert torch.allclose(rot.output_norm(), torch.ones(src.config.n_embd))
    # the embedding columns of the source are outliers (x20): the rotation spreads them
    assert rot.token_embd().abs().max() < 0.5 * src.token_embd().abs().max()
    rel = ((got - want).abs().max() / want.abs().max()).item()
    assert rel < 1e-5, rel


def test_silenced_channels_stay_where_they_are() -> None:
    src = MemorySource(tiny_config(n_layer=2, n_embd=96, n_head=4, n_head_kv=2, n_ff=192), seed=2)
    for blk in src.blocks:  # channel 5 is silenced by every norm (a massive-activation channel)
        blk["attn_norm"][5] = 1e-3
        blk["ffn_norm"][5] = 1e-3
    src.blocks[0]["attn_norm"][9] = 1e-3  # one norm only: not silenced
    assert suppressed_channels(src) == [5]
    rot = rotate_residual(src, "random", seed=0)
    assert torch.equal(rot.token_embd()[:, 5], src.token_embd()[:, 5])
    assert not torch.allclose(rot.token_embd()[:, 9], src.token_embd()[:, 9])
    tokens = torch.arange(0, 24)[None]
    want = float_logits(src, tokens)
    assert ((float_logits(rot, tokens) - want).abs().max() / want.abs().max()).item() < 1e-5


def test_none_is_the_source_itself() -> None:
    src = MemorySource(tiny_config(), seed=0)
    assert rotate_residual(src, "none") is src


def test_refused_with_post_norms_and_unknown_kinds() -> None:
    src = MemorySource(tiny_config(), seed=0)
    with pytest.raises(SpecQuantError, match="not one of"):
        rotate_residual(src, "learned")
    src.config = dataclasses.replace(src.config, arch="gemma2")
    with pytest.raises(SpecQuantError, match="post-norms"):
        ResidualRotated(src, residual_matrix("hadamard", src.config.n_embd, 0))


def test_converted_file_is_untied_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from oracle.reference import ReferenceModel

    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path / "cache"))
    src = MemorySource(tiny_config(n_layer=2), seed=0)
    path = write_gguf(src, tmp_path / "tiny.f32.gguf")
    out = tmp_path / "rot.sq4.gguf"
    fast = ["--calib-windows", "2", "--calib-len", "32", "--threads", "1", "--quiet"]
    assert main(["convert", str(path), "--out", str(out), "--residual-rotation", "hadamard", *fast]) == 0
    m = read_model(out)
    assert "output.weight" in m.tensors
    assert m.metadata["specquant.residual_rotation"] == "hadamard"
    tokens = list(range(3, 40))
    ref = ReferenceModel(out).forward(tokens)
    want = float_logits(src, torch.tensor(tokens)[None])[0].numpy()
    # W4A4 of a tiny random model: close to the float model, not equal
    assert np.corrcoef(ref.ravel(), want.ravel())[0, 1] > 0.9
    from specquant_gguf import Model

    with Model(out, n_threads=1, act_bits=4, kv_type="f32") as model:
        logits = model.eval(tokens)
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-3


def test_bad_flag_value_exits_2(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["convert", "x", "--out", str(tmp_path / "o.gguf"), "--residual-rotation", "spin"])
    assert e.value.code == 2


@pytest.mark.parametrize("kind", ["gguf", "hf"])
def test_sources_read_the_norms_alone_like_the_block(tmp_path: Path, kind: str) -> None:
    """ModelSource.norms (what suppressed_channels reads) equals the norms of block(i)."""
    from specquant_gguf.convert.sources import open_source
    from oracle.hf_models import save_hf_folder, tiny_hf_model

    if kind == "gguf":
        path = write_gguf(MemorySource(tiny_config(n_layer=2), seed=0), tmp_path / "tiny.f32.gguf")
    else:
        path = save_hf_folder(tiny_hf_model("llama", seed=1), tmp_path / "hf")
    src = open_source(str(path), None)
    for i in range(src.config.n_layer):
        blk = src.block(i)
        norms = src.norms(i)
        assert sorted(norms) == ["attn_norm", "ffn_norm"]
        for name, g in norms.items():
            assert torch.equal(g, blk[name])
