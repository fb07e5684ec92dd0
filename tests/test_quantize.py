"""int4 groups, clipping search, GPTQ, activation quantization, WHT (specquant_gguf.quantize / rotation)."""
from __future__ import annotations

import pytest
import torch

from specquant_gguf.convert.quantize import dequantize, fake_quant_act, gptq, group_scales, rtn
from specquant_gguf.convert.recipe import CLIP_RATIOS, NO_CLIP
from specquant_gguf.convert.rotation import hadamard, rotate_hessian, rotate_weight, unrotate_weight, wht_groups


def _gauss(rows: int, cols: int, seed: int = 0, outliers: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    if outliers:
        w[:, torch.randperm(cols, generator=g)[:outliers]] *= 8.0
    return w


@pytest.mark.parametrize("group", [32, 64, 128])
def test_rtn_range_shape_and_error_bound(group: int) -> None:
    w = _gauss(48, 256, outliers=2)
    q, d = rtn(w, group, NO_CLIP)
    assert q.dtype == torch.int8 and d.dtype == torch.float16
    assert q.shape == w.shape and d.shape == (48, 256 // group)
    assert int(q.min()) >= -8 and int(q.max()) <= 7
    err = (dequantize(q, d, group) - w).abs().reshape(48, -1, group)
    # no clipping: every value within half a step (plus fp16 rounding of the scale times 7)
    bound = d.float().unsqueeze(-1) * 0.5 + w.abs().reshape(48, -1, group).amax(-1, keepdim=True) * 2e-3
    assert (err <= bound).all()


def test_clipping_search_never_worse_than_max_scale() -> None:
    w = _gauss(64, 256, seed=1, outliers=3)
    for group in (32, 64):
        e_plain = (dequantize(*rtn(w, group, NO_CLIP), group) - w).pow(2).reshape(64, -1, group).sum(-1)
        e_clip = (dequantize(*rtn(w, group, CLIP_RATIOS), group) - w).pow(2).reshape(64, -1, group).sum(-1)
        assert (e_clip <= e_plain + 1e-6).all()  # per group: the search includes ratio 1.0
        assert e_clip.sum() < 0.97 * e_plain.sum()  # and on Gaussian data it clearly helps


def test_group_scales_handles_zero_groups() -> None:
    w = torch.zeros(2, 4, 32)
    d = group_scales(w)
    assert (d == 0).all()
    q, d2 = rtn(torch.zeros(3, 64), 32)
    assert (q == 0).all() and (d2 == 0).all()


def test_gptq_reduces_layer_error_vs_rtn() -> None:
    g = torch.Generator().manual_seed(3)
    n = 128
    mix = torch.randn(n, n, generator=g) / n ** 0.5
    x = torch.randn(2048, n, generator=g) @ (torch.eye(n) + 2 * mix)  # correlated inputs
    x[:, :3] *= 6.0
    w = _gauss(96, n, seed=4)
    hess = (x.t() @ x).double()
    y = x @ w.t()
    for group in (32, 128):
        e_rtn = (x @ dequantize(*rtn(w, group), group).t() - y).pow(2).sum()
        e_gptq = (x @ dequantize(*gptq(w, hess, group), group).t() - y).pow(2).sum()
        e_gptq_ao = (x @ dequantize(*gptq(w, hess, group, act_order=True), group).t() - y).pow(2).sum()
        assert e_gptq < 0.8 * e_rtn
        assert e_gptq_ao < 0.8 * e_rtn


def test_gptq_output_is_valid_sq4() -> None:
    w = _gauss(16, 64, seed=5)
    q, d = gptq(w, torch.eye(64, dtype=torch.float64), 32)
    assert q.dtype == torch.int8 and int(q.min()) >= -8 and int(q.max()) <= 7
    assert d.dtype == torch.float16 and d.shape == (16, 2)
    # with an identity Hessian GPTQ has nothing to compensate: as good as RTN with the same scales
    e = (dequantize(q, d, 32) - w).pow(2).sum()
    e_rtn = (dequantize(*rtn(w, 32), 32) - w).pow(2).sum()
    assert e <= e_rtn * 1.05


def test_fake_quant_act_follows_format_rules() -> None:
    x = torch.randn(5, 128) * 3
    x[0, :64] = torch.rand(64) + 0.5  # an all-positive group: zero still in range
    x[1, :] = 0.0
    for bits, levels in ((4, 15), (8, 255)):
        y = fake_quant_act(x, 64, bits)
        v = x.reshape(5, 2, 64)
        mn = v.amin(-1).clamp(max=0)
        mx = v.amax(-1).clamp(min=0)
        step = (mx - mn) / levels
        err = (y - x).abs().reshape(5, 2, 64)
        assert (err <= step.unsqueeze(-1) * 0.5 + 1e-5).all()
        assert (y[1] == 0).all()
        # exactly L+1 representable levels in each group
        for t in range(5):
            for g in range(2):
                assert torch.unique(y.reshape(5, 2, 64)[t, g]).numel() <= levels + 1


def test_wht_butterfly_equals_sylvester_matrix_and_is_orthogonal() -> None:
    for g in (2, 8, 32, 64, 128):
        h = hadamard(g)
        assert torch.equal(h @ h.t(), g * torch.eye(g, dtype=h.dtype))
        assert torch.equal(h, h.t())
        x = torch.randn(3, 2 * g, dtype=torch.float64)
        y = wht_groups(x, g)
        expect = (x.reshape(3, 2, g) @ h).reshape(3, 2 * g)
        assert torch.allclose(y, expect, atol=1e-12)


def test_rotated_weight_preserves_products() -> None:
    w = _gauss(10, 128, seed=6).double()
    x = torch.randn(7, 128, dtype=torch.float64)
    for g in (32, 64):
        wr = rotate_weight(w.float(), g).double()
        assert torch.allclose(wht_groups(x, g) @ wr.t(), x @ w.t(), atol=1e-4)
        assert torch.allclose(unrotate_weight(wr.float(), g).double(), w, atol=1e-5)
        hess = x.t() @ x
        xr = wht_groups(x, g)
        assert torch.allclose(rotate_hessian(hess, g), xr.t() @ xr, atol=1e-8)


def test_wht_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        wht_groups(torch.zeros(2, 96), 64)
    with pytest.raises(ValueError):
        wht_groups(torch.zeros(2, 96), 48)


def _textbook_gptq(w: torch.Tensor, hess: torch.Tensor, group: int, damp: float = 0.01) -> torch.Tensor:
    """GPTQ as the paper writes it, in float64: the upper Cholesky factor U of the damped H⁻¹, one
    column at a time, each scale chosen when its group is entered. Returns the dequantized weight."""
    w = w.double().clone()
    h = hess.double().clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.zeros_like(w)
    for j in range(w.shape[1]):
        if j % group == 0:
            d = group_scales(w[:, j:j + group].float()).double()
        q = torch.clamp(torch.round(w[:, j] / d), -8, 7) * d
        out[:, j] = q
        e = (w[:, j] - q) / u[j, j]
        w[:, j + 1:] -= torch.outer(e, u[j, j + 1:])
    return out


@pytest.mark.parametrize("block", [8, 32, 64])
def test_gptq_equals_the_textbook_algorithm(block: int) -> None:
    """gptq() works on V (H = V·Vᵀ) instead of the Cholesky factor of H⁻¹, transposed and in blocks:
    the same algorithm, so the same weights up to float32 rounding (a rare tie flips one value)."""
    g = torch.Generator().manual_seed(11)
    n = 128
    x = torch.randn(4096, n, generator=g) @ (torch.eye(n) + torch.randn(n, n, generator=g) / n ** 0.5)
    w = _gauss(40, n, seed=12)
    hess = x.t() @ x
    ref = _textbook_gptq(w, hess, 32)
    q, d = gptq(w, hess, 32, block=block)
    got = dequantize(q, d, 32).double()
    assert (got == ref.float().double()).float().mean() > 0.99
    y = x.double() @ w.double().t()
    e_ref = (x.double() @ ref.t() - y).pow(2).sum()
    e_got = (x.double() @ got.t() - y).pow(2).sum()
    assert abs(float(e_got / e_ref) - 1.0) < 0.01
