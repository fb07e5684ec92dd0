"""Smoothing: λ formula, GQA tie, and folding that leaves the float model's logits unchanged."""
from __future__ import annotations

import pytest
import torch

from specquant_gguf.convert.calibrate import block_stats, sample_plan
from specquant_gguf.convert.block import SMOOTH_ORDER
from specquant_gguf.convert.smooth import GROUPS, fold, group_scales_for, kv_rows, smooth_scales

from oracle.tinyllama import MemorySource, float_logits, tiny_config


def test_smooth_scales_formula() -> None:
    act = torch.tensor([1.0, 4.0, 9.0])
    w1 = torch.tensor([[1.0, -2.0, 0.5]])
    w2 = torch.tensor([[0.5, 1.0, -3.0]])
    lam = smooth_scales(act, [w1, w2], 0.5)
    expect = act.sqrt() / torch.tensor([1.0, 2.0, 3.0]).sqrt()
    assert torch.allclose(lam, expect)
    assert torch.allclose(smooth_scales(act, [w1], 1.0), act)
    assert torch.allclose(smooth_scales(act, [w1], 0.0), 1.0 / torch.tensor([1.0, 2.0, 0.5]))


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("alpha", [0.3, 0.8])
def test_folded_model_has_the_same_logits(qkv_bias: bool, alpha: float) -> None:
    cfg = tiny_config(n_layer=2, n_head=4, n_head_kv=2, qkv_bias=qkv_bias)
    src = MemorySource(cfg, seed=2)
    tokens = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    ref = float_logits(src, tokens)
    x = src.token_embd()[tokens]
    folded = []
    for i in range(cfg.n_layer):
        blk = src.block(i)
        stats, x = block_stats(x, blk, cfg, sample_plan(2, 24, 16, 0))
        for group in SMOOTH_ORDER:
            lam = group_scales_for(group, stats[group].absmax, blk, alpha, cfg)
            assert lam.min() > 0 and torch.isfinite(lam).all()
            fold(blk, group, lam, cfg)
        folded.append(blk)
    out = float_logits(src, tokens, folded)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()


def test_attn_output_scales_are_tied_across_query_heads() -> None:
    cfg = tiny_config(n_head=4, n_head_kv=2)
    src = MemorySource(cfg, seed=3)
    blk = src.block(0)
    act = torch.rand(cfg.q_dim) * 5
    lam = group_scales_for("attn_out", act, blk, 0.5, cfg)
    per_head = lam.reshape(cfg.n_head, cfg.head_dim)
    rep = cfg.n_head // cfg.n_head_kv
    for kv in range(cfg.n_head_kv):
        for r in range(1, rep):
            assert torch.equal(per_head[kv * rep], per_head[kv * rep + r])
    assert kv_rows(lam, cfg).shape == (cfg.kv_dim,)


def test_smoothing_flattens_activation_outliers() -> None:
    cfg = tiny_config(n_layer=1)
    src = MemorySource(cfg, seed=4, outliers=3, outlier_scale=30.0)
    x = src.token_embd()[torch.randint(0, cfg.vocab_size, (4, 32))]
    blk = src.block(0)
    stats, _ = block_stats(x, blk, cfg, sample_plan(4, 32, 64, 0))
    st = stats["attn"]
    lam = group_scales_for("attn", st.absmax, blk, 0.5, cfg)
    before = st.absmax.max() / st.absmax.median()
    after = (st.absmax / lam).max() / (st.absmax / lam).median()
    assert after < before / 2  # α = 0.5: roughly the square root of the spread
    assert set(GROUPS) == set(SMOOTH_ORDER)
