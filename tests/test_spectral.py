"""Spectral split: exact reconstruction, K allocation, and the branch the runtime computes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specquant_gguf.convert import spectral


def _w(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n", [64, 96, 65])
def test_all_frequencies_reconstruct_exactly(n: int) -> None:
    w = _w(7, n).double()
    k = spectral.n_freqs(n)
    coef = spectral.coefficients(w, k)
    rec = spectral.synthesize(coef, torch.full((7,), k), n)
    assert torch.allclose(rec, w, atol=1e-10)


@pytest.mark.parametrize("axis", ["in", "out"])
def test_split_plus_residual_is_w_and_branch_matches(axis: str) -> None:
    w = _w(48, 64, seed=1)
    channels = 48 if axis == "in" else 64  # in: one per output row; out: one per input column
    ks = torch.randint(0, 7, (channels,), generator=torch.Generator().manual_seed(2))
    coef, ks16, resid = spectral.split(w, ks, axis)
    assert coef.dtype == torch.float16 and ks16.dtype == torch.int16
    assert coef.shape == (channels, int(ks.max()), 2)
    # zero past each channel's K
    mask = torch.arange(coef.shape[1])[None, :] >= ks[:, None]
    assert (coef[mask] == 0).all()
    x = torch.randn(5, 64)
    y_branch = spectral.branch(x, coef, ks16, axis, 48)
    assert torch.allclose(y_branch + x @ resid.t(), x @ w.t(), atol=1e-4)


def test_branch_formula_axis_in_matches_format_md() -> None:
    """y_F[o] = Σ_k a_ok c_k + b_ok s_k with c_k = Σ_j x_j cos(2πkj/N) (FORMAT.md §3.2), written out."""
    rng = np.random.default_rng(0)
    n, rows, k = 32, 3, 4
    coef = rng.standard_normal((rows, k, 2)).astype(np.float16)
    ks = np.array([4, 2, 0], dtype=np.int16)
    x = rng.standard_normal(n)
    expect = np.zeros(rows)
    for o in range(rows):
        for kk in range(ks[o]):
            c = sum(x[j] * np.cos(2 * np.pi * kk * j / n) for j in range(n))
            s = sum(x[j] * np.sin(2 * np.pi * kk * j / n) for j in range(n))
            expect[o] += float(coef[o, kk, 0]) * c + float(coef[o, kk, 1]) * s
    got = spectral.branch(torch.from_numpy(x).float()[None], torch.from_numpy(coef), torch.from_numpy(ks), "in", rows)
    assert np.allclose(got.numpy()[0], expect, atol=1e-4)


def test_low_frequency_signal_is_captured() -> None:
    n = 128
    j = torch.arange(n, dtype=torch.float64)
    w = (3 * torch.cos(2 * torch.pi * j / n) + 0.5 + 2 * torch.sin(2 * torch.pi * 2 * j / n)).unsqueeze(0)
    coef, ks, resid = spectral.split(w.float(), torch.tensor([3]), "in")
    assert resid.abs().max() < 1e-2  # fp16 coefficients
    assert abs(float(coef[0, 0, 0]) - 0.5) < 1e-3 and abs(float(coef[0, 1, 0]) - 3) < 1e-2
    assert abs(float(coef[0, 2, 1]) - 2) < 1e-2


def test_allocate_k_budget_and_cap() -> None:
    imp = torch.tensor([10.0, 1.0, 1.0, 1.0, 0.5, 0.1])
    flat = spectral.allocate_k(imp, 4, 10, "flat")
    assert flat.tolist() == [4] * 6
    soft = spectral.allocate_k(imp, 4, 10, "softmax", temperature=0.5)
    assert int(soft.sum()) == 24 and int(soft.max()) <= 10
    assert int(soft[0]) == 10  # the dominant channel gets the cap
    assert spectral.allocate_k(imp, 0, 10).sum() == 0
    hot = spectral.allocate_k(imp, 4, 10, "softmax", temperature=100.0)
    assert (hot - 4).abs().max() <= 1  # high temperature -> nearly flat
