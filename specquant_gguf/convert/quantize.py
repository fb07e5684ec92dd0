"""Weight and activation quantization: symmetric int4 groups, clipping search, GPTQ (FORMAT.md §3.1, §4.2).

Weights: q in [-8, 7], one fp16 scale d per group of G inputs; the weight meant is d·q. The scale of
each group is the least-squared-error choice over a small grid of clipping ratios (1.0 … 0.55), not
simply max|w|/7. GPTQ (Frantar et al.) quantizes column by column and pushes each column's error
onto the columns not yet quantized, through the inverse Hessian of the layer's inputs.
Activations (simulated here; computed by the runtime): per token, per group, asymmetric.
"""
from __future__ import annotations

import torch

from .recipe import CLIP_RATIOS

QMIN, QMAX = -8, 7


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """Round to fp16 and back: the scale the file stores is the one used to round."""
    return x.to(torch.float16).to(torch.float32)


GROUP_SCALES_CHUNK = 1 << 22  # values of wg searched at a time (bounds the temporaries to ~16 MB each)


def group_scales(wg: torch.Tensor, ratios: tuple[float, ...] = CLIP_RATIOS,
                 importance: torch.Tensor | None = None) -> torch.Tensor:
    """Best fp16-representable scale per group. wg: (..., G). importance: (G,) or (..., G) weights of
    the squared error (e.g. E[x²] of each input), None = plain squared error. Returns (...,).

    The candidates are searched over chunks of rows with in-place temporaries: the same operations in
    the same order as one pass over the whole tensor (bit-identical), without the full-size copies
    per candidate that made this search allocation-bound on 8B layers."""
    amax = wg.abs().amax(-1)
    best_d = _fp16(amax / QMAX)
    if len(ratios) == 1 and ratios[0] == 1.0:
        return best_d
    g = wg.shape[-1]
    flat = wg.reshape(-1, g)
    n = flat.shape[0]
    imp = None
    if importance is not None:
        imp = importance if importance.dim() == 1 else importance.expand(wg.shape).reshape(-1, g)
    out = best_d.reshape(-1).clone()
    step = max(1, GROUP_SCALES_CHUNK // g)
    if importance is not None and importance.dim() > 1:  # importance per group position: keep it aligned
        step = n
    for r0 in range(0, n, step):
        out[r0:r0 + step] = _group_scales_chunk(flat[r0:r0 + step], ratios,
                                                imp if imp is None or imp.dim() == 1 else imp[r0:r0 + step])
    return out.reshape(best_d.shape)


def _group_scales_chunk(wg: torch.Tensor, ratios: tuple[float, ...], importance: torch.Tensor | None) -> torch.Tensor:
    amax = wg.abs().amax(-1)
    best_d = _fp16(amax / QMAX)
    best_err = torch.full_like(amax, float("inf"))
    # candidates: r·max/7 for each ratio, plus max/8 when the extreme value is negative (uses -8)
    smax = wg.gather(-1, wg.abs().argmax(-1, keepdim=True)).squeeze(-1)
    cands = [amax * r / QMAX for r in ratios] + [torch.where(smax < 0, amax / 8, amax / QMAX)]
    e = torch.empty_like(wg)
    for d in cands:
        d = _fp16(d)
        safe = torch.where(d > 0, d, torch.ones_like(d))
        torch.div(wg, safe.unsqueeze(-1), out=e)
        e.round_().clamp_(QMIN, QMAX).mul_(d.unsqueeze(-1)).sub_(wg)
        e.mul_(e)
        if importance is not None:
            e.mul_(importance)
        err = e.sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_d = torch.where(better, d, best_d)
    return best_d


def quantize_with_scales(w: torch.Tensor, d: torch.Tensor, group: int) -> torch.Tensor:
    """w (rows, C_in), d (rows, C_in/G) -> q int8 (rows, C_in)."""
    rows, c_in = w.shape
    dd = d.repeat_interleave(group, dim=1)
    safe = torch.where(dd > 0, dd, torch.ones_like(dd))
    return torch.clamp(torch.round(w / safe), QMIN, QMAX).to(torch.int8)


def rtn(w: torch.Tensor, group: int, ratios: tuple[float, ...] = CLIP_RATIOS,
        importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest int4 with per-group clipping search. Returns (q int8 (rows, C_in), d fp16 (rows, C_in/G))."""
    rows, c_in = w.shape
    if c_in % group:
        raise ValueError(f"row length {c_in} is not a multiple of the group size {group}")
    wg = w.float().reshape(rows, c_in // group, group)
    imp = None if importance is None else importance.float().reshape(c_in // group, group)
    d = group_scales(wg, ratios, imp)
    q = quantize_with_scales(w.float(), d, group)
    return q, d.to(torch.float16)


def dequantize(q: torch.Tensor, d: torch.Tensor, group: int) -> torch.Tensor:
    return q.float() * d.float().repeat_interleave(group, dim=1)


def compute_device() -> torch.device:
    """GPTQ's O(n³) work goes to a CUDA GPU when torch has one."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def gptq(w: torch.Tensor, hess: torch.Tensor, group: int, ratios: tuple[float, ...] = CLIP_RATIOS,
         damp: float = 0.01, act_order: bool = False, block: int = 128,
         device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ with per-group clipping search. w (rows, C_in), hess = XᵀX (C_in, C_in) of the inputs the
    weight meets (rows sharing one input may be stacked: they share the Hessian). Without act-order
    each group's scale is chosen when GPTQ reaches the group (on the error-compensated weights);
    with act-order the scales are fixed up front ("static groups"), because the columns of a group
    are then visited out of order. The inverse Hessian is factored in float64, the column sweep runs
    in float32. Returns (q int8, d fp16)."""
    rows, n = w.shape
    if n % group:
        raise ValueError(f"row length {n} is not a multiple of the group size {group}")
    dev = device or compute_device()
    w = w.to(dev, torch.float32, copy=True)
    h = hess.to(dev, torch.float64, copy=True)
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(damp * torch.diag(h).mean())  # in place: an n x n identity is 1.6 GB at n = 14336
    scales = torch.zeros(rows, n // group, dtype=torch.float32, device=dev)
    perm = torch.arange(n, device=dev)
    if act_order:
        scales = group_scales(w.reshape(rows, n // group, group), ratios)
        perm = torch.argsort(torch.diag(h), descending=True)
        w, h = w[:, perm], h[perm][:, perm]
    try:  # the upper Cholesky factor of h⁻¹; each step replaces h, so at most two n x n float64
        # matrices live at once (8B's down_proj: n = 14336, 1.6 GB each), not four
        h = torch.linalg.cholesky(h)
        h = torch.cholesky_inverse(h)
        h = torch.linalg.cholesky(h, upper=True)
    except torch.linalg.LinAlgError:  # numerically singular even after damping: fall back to RTN
        return rtn(w[:, torch.argsort(perm)].cpu(), group, ratios)
    hinv = h.float()
    del h
    block = max(group, (block // group) * group) if not act_order else block
    q_out = torch.zeros(rows, n, dtype=torch.float32, device=dev)
    order = perm.tolist()
    s = inv = scales[:, 0]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            g = order[i1 + i] // group
            if not act_order and order[i1 + i] % group == 0:  # entering a group: pick its scale now
                scales[:, g] = group_scales(w1[:, i:i + group], ratios)  # (blocks hold whole groups)
            if act_order or order[i1 + i] % group == 0:
                s = scales[:, g]
                inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
            q = torch.clamp(torch.round(w1[:, i] * inv), QMIN, QMAX)
            q_out[:, i1 + i] = q
            e = (w1[:, i] - q * s) / hinv1[i, i]
            w1[:, i:].addr_(e, hinv1[i, i:], alpha=-1.0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    q_final = q_out[:, torch.argsort(perm)] if act_order else q_out
    return q_final.to(torch.int8).cpu(), scales.to(torch.float16).cpu()


def fake_quant_act(x: torch.Tensor, group: int, bits: int = 4) -> torch.Tensor:
    """Per-token, per-group asymmetric activation quantization of FORMAT.md §4.2, dequantized again.

    Bit-for-bit the runtime's rounding (fp32, round half to even, zero always in range); the value
    returned is (q − z)·d, which is what the integer dot product multiplies."""
    shape = x.shape
    levels = float(2 ** bits - 1)
    v = x.float().reshape(*shape[:-1], shape[-1] // group, group)
    mn = torch.clamp(v.amin(-1, keepdim=True), max=0.0)
    mx = torch.clamp(v.amax(-1, keepdim=True), min=0.0)
    d = (mx - mn) / levels
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    z = torch.round(-mn * inv)
    q = torch.clamp(torch.round(v * inv) + z, 0.0, levels)
    return ((q - z) * d).reshape(shape)


def fake_quant_q8_0(x: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 blocks of 32 for Q8_0 matrices (FORMAT.md §4.5 as the runtime does it):
    d = amax/127 in fp32, q = rint(x·(1/d))."""
    shape = x.shape
    v = x.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    d = v.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    q = torch.round(v * inv)
    return (q * d).reshape(shape)


def q8_0_weight(w: torch.Tensor) -> torch.Tensor:
    """Weight rounded through ggml's Q8_0 (blocks of 32, fp16 scale), dequantized: what a q8 file holds."""
    import gguf
    import numpy as np

    data = gguf.quants.quantize(np.ascontiguousarray(w.float().numpy()), gguf.GGMLQuantizationType.Q8_0)
    return torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape).copy())

