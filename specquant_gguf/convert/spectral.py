"""Spectral split of a smoothed weight W' = W_F + R (DESIGN.md §2 stage 2, FORMAT.md §3.2).

axis "in":  each row W'[o, :] is a signal of length N = C_in; W_F keeps its K_o lowest real-DFT
            frequencies: W_F[o, j] = Σ_{k<K_o} a_ok cos(2πkj/N) + b_ok sin(2πkj/N).
axis "out": each column W'[:, j] is a signal of length M = C_out, with K_j frequencies.
The (a, b) pairs are stored in fp16 and W_F is rebuilt from the fp16 values, so the int4 residual
R = W' − W_F absorbs the coefficients' rounding and the runtime's branch + R reproduce W' exactly
(up to R's own quantization).

Per-channel K: flat (every channel K), or the paper's activation-aware rule: an importance score per
channel (the channel's output energy under calibration inputs), softmax with a temperature, and a
budget of K·channels frequencies shared out in proportion (each channel at most k_cap).
"""
from __future__ import annotations

import math

import torch


def n_freqs(n: int) -> int:
    """Distinct real frequencies of a length-n signal: 0 … n/2 (k = n/2 is the Nyquist cosine)."""
    return n // 2 + 1


def basis(n: int, k_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos(2πkj/n), sin(2πkj/n) for k < k_max, j < n, float64, shapes (k_max, n)."""
    ang = 2.0 * math.pi * torch.outer(torch.arange(k_max, dtype=torch.float64), torch.arange(n, dtype=torch.float64)) / n
    return torch.cos(ang), torch.sin(ang)


def coefficients(signals: torch.Tensor, k_max: int) -> torch.Tensor:
    """Real-DFT synthesis coefficients (a, b) of each row of signals (C, n) for k < k_max -> (C, k_max, 2).

    w[j] = Σ_k a_k cos(2πkj/n) + b_k sin(2πkj/n) over all k ≤ n/2 reconstructs w exactly."""
    c, n = signals.shape
    if k_max > n_freqs(n):
        raise ValueError(f"k_max {k_max} exceeds the {n_freqs(n)} real frequencies of length {n}")
    spec = torch.fft.rfft(signals.to(torch.float64), dim=1)[:, :k_max]
    scale = torch.full((k_max,), 2.0 / n, dtype=torch.float64)
    scale[0] = 1.0 / n
    if n % 2 == 0 and k_max == n_freqs(n):
        scale[-1] = 1.0 / n  # Nyquist term appears once
    a = spec.real * scale
    b = -spec.imag * scale
    return torch.stack((a, b), dim=-1)


def synthesize(coef: torch.Tensor, ks: torch.Tensor, n: int) -> torch.Tensor:
    """(C, k_max, 2) coefficients, per-channel K (C,) -> signals (C, n) float64 (zero past each K)."""
    c, k_max, _ = coef.shape
    mask = (torch.arange(k_max)[None, :] < ks[:, None]).to(torch.float64)
    cos, sin = basis(n, k_max)
    co = coef.to(torch.float64)
    return (co[..., 0] * mask) @ cos + (co[..., 1] * mask) @ sin


def channel_importance(w: torch.Tensor, act_rms: torch.Tensor | None, axis: str) -> torch.Tensor:
    """Activation-aware importance of each channel (output row for axis in, input column for out)."""
    a = torch.ones(w.shape[1]) if act_rms is None else act_rms.float()
    if axis == "in":
        return ((w.float() * a.unsqueeze(0)) ** 2).sum(1).sqrt()  # RMS of the output channel
    return w.float().norm(dim=0) * a  # contribution of input channel j to the output energy


def allocate_k(importance: torch.Tensor, k: int, k_cap: int, rule: str = "flat", temperature: float = 1.0) -> torch.Tensor:
    """Per-channel K (int64) with a total budget of k·channels: flat, or softmax(importance/T) shares."""
    c = importance.numel()
    if k <= 0:
        return torch.zeros(c, dtype=torch.int64)
    if rule == "flat":
        return torch.full((c,), min(k, k_cap), dtype=torch.int64)
    if rule != "softmax":
        raise ValueError(f"unknown K rule {rule!r}")
    s = importance.double()
    s = (s - s.mean()) / (s.std() + 1e-12)  # scale-free score, so T means the same for every layer
    p = torch.softmax(s / max(temperature, 1e-6), 0)
    share = p * k * c
    ks = torch.clamp(torch.floor(share), 0, k_cap).to(torch.int64)
    # hand out what flooring/capping left over, one frequency per channel and pass, largest
    # remainder first (Hamilton's method), until the budget or every channel's room is used up
    left = min(int(k * c - ks.sum()), int((k_cap - ks).sum()))
    order = torch.argsort(share - torch.floor(share) + s * 1e-9, descending=True).tolist()
    while left > 0:
        for idx in order:
            if left <= 0:
                break
            if ks[idx] < k_cap:
                ks[idx] += 1
                left -= 1
    return ks


def split(w: torch.Tensor, ks: torch.Tensor, axis: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W' (C_out, C_in) -> (coef fp16 (channels, K_max, 2), ks int16 (channels,), residual R fp32).

    K_max = max(ks). The residual is W' − W_F(fp16 coefficients)."""
    k_max = int(ks.max()) if ks.numel() else 0
    sig = w if axis == "in" else w.t()
    if k_max == 0:
        return torch.zeros(sig.shape[0], 0, 2, dtype=torch.float16), ks.to(torch.int16), w.clone()
    coef = coefficients(sig, k_max)
    mask = (torch.arange(k_max)[None, :] < ks[:, None]).unsqueeze(-1)
    coef16 = (coef * mask).to(torch.float16)
    w_f = synthesize(coef16.to(torch.float64), ks, sig.shape[1])
    if axis == "out":
        w_f = w_f.t()
    return coef16, ks.to(torch.int16), (w.to(torch.float64) - w_f).to(torch.float32)


def branch(x: torch.Tensor, coef: torch.Tensor, ks: torch.Tensor, axis: str, c_out: int) -> torch.Tensor:
    """y_F for inputs x (..., C_in): the spectral branch as the runtime computes it (fp32 result)."""
    c, k_max, _ = coef.shape
    if k_max == 0:
        return torch.zeros(*x.shape[:-1], c_out)
    mask = (torch.arange(k_max)[None, :] < ks.long()[:, None]).to(torch.float64)
    a = coef[..., 0].to(torch.float64) * mask
    b = coef[..., 1].to(torch.float64) * mask
    xd = x.to(torch.float64)
    if axis == "in":
        cos, sin = basis(x.shape[-1], k_max)
        y = (xd @ cos.t()) @ a.t() + (xd @ sin.t()) @ b.t()
    else:
        cos, sin = basis(c_out, k_max)
        y = (xd @ a) @ cos + (xd @ b) @ sin
    return y.to(torch.float32)


def branch_bytes(channels: int, k_max: int) -> int:
    """Bytes of X.spectral (fp16 pairs) + X.spectral_k (int16)."""
    return channels * k_max * 4 + channels * 2 if k_max > 0 else 0
