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
    safe = torch.where(d > 0, d, torch.ones_like(d)).unsqueeze(-1)  # broadcast over each group
    q = w.reshape(rows, c_in // group, group) / safe  # the only full-size float temporary
    return q.round_().clamp_(QMIN, QMAX).to(torch.int8).reshape(rows, c_in)


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


def gptq_factor(hess: torch.Tensor, damp: float = 0.01, perm: torch.Tensor | None = None) -> torch.Tensor | None:
    """GPTQ's error-feedback matrix A for the columns in the order `perm` (None: as they are): the
    damped Hessian H = V·Vᵀ with V upper triangular, A = V with each column j divided by V_jj.

    GPTQ (Frantar et al.) is usually written with the upper Cholesky factor U of H⁻¹; since U = V⁻¹,
    its update w_j ← w_j − Σ_{i<j} e_i·U_ij with e_i = (w_i − q_i)/U_ii equals w_j ← w_j + Σ_{i<j}
    r_i·A_ij with r_i = (original w_i) − q_i. V is one Cholesky factorisation of the Hessian with its
    rows and columns reversed (V = P·chol(P·H·P)·P), so no inverse is ever formed: a third of the
    work of the factor/invert/factor chain and no n x n float64 matrices (8B's down_proj: n = 14336).
    float32, retried in float64 when float32 is not positive definite; None when neither is."""
    n = hess.shape[0]
    rev = torch.arange(n - 1, -1, -1) if perm is None else perm.flip(0)
    h = hess.flip((0, 1)) if perm is None else hess[rev][:, rev]  # both are new tensors
    h = h.to(torch.float32)
    diag = h.diagonal()
    diag[diag == 0] = 1.0  # inputs that are always zero: their columns are zeroed by gptq()
    diag.add_(damp * diag.mean())
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        lower, info = torch.linalg.cholesky_ex(h.double())
        if int(info) != 0:
            return None
        lower = lower.float()
    del h
    a = lower.flip((0, 1))
    del lower
    a.div_(a.diagonal().clone().unsqueeze(0))
    return a


def _compensated(w_t: torch.Tensor, orig_t: torch.Tensor, a: torch.Tensor, j: int, group: int) -> torch.Tensor:
    """The group of columns j..j+G-1 as the textbook GPTQ holds them when it reaches column j (each
    compensated for the errors of all columns before j), which is what its scale is chosen on.
    w_t holds w + Σ_{i<j} r_i·A_i,: (exact for column j, not for the later ones); with A_GG the
    group's unit upper triangular block, the textbook's values are orig + (w − orig)·A_GG⁻¹."""
    a_gg = a[j:j + group, j:j + group]
    eye = torch.eye(a_gg.shape[0], dtype=a.dtype, device=a.device)
    a_inv = torch.linalg.solve_triangular(a_gg, eye, upper=True)
    o = orig_t[j:j + group]
    return o + a_inv.t() @ (w_t[j:j + group] - o)


def gptq(w: torch.Tensor, hess: torch.Tensor, group: int, ratios: tuple[float, ...] = CLIP_RATIOS,
         damp: float = 0.01, act_order: bool = False, block: int = 32,
         device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ with per-group clipping search. w (rows, C_in), hess = XᵀX (C_in, C_in) of the inputs the
    weight meets (rows sharing one input may be stacked: they share the Hessian). Without act-order
    each group's scale is chosen when GPTQ reaches the group (on the error-compensated weights);
    with act-order the scales are fixed up front ("static groups"), because the columns of a group
    are then visited out of order. Works on the transposed weight (one input column = one contiguous
    row of C_out values), `block` columns at a time with the lazy-batch update between blocks; all
    float32 (see gptq_factor). Returns (q int8 (rows, C_in), d fp16 (rows, C_in/G))."""
    rows, n = w.shape
    if n % group:
        raise ValueError(f"row length {n} is not a multiple of the group size {group}")
    dev = device or compute_device()
    dead = torch.diagonal(hess) == 0
    perm = torch.argsort(torch.diagonal(hess), descending=True) if act_order else None
    a = gptq_factor(hess, damp, perm)
    if a is None:  # numerically singular even after damping: round to nearest
        return rtn(w, group, ratios)
    a = a.to(dev)
    w_t = w.t().to(dev, torch.float32).contiguous()  # (C_in, rows): a copy, one column per row
    w_t[dead] = 0.0
    scales = torch.zeros(rows, n // group, dtype=torch.float32, device=dev)
    if act_order:
        scales = group_scales(w_t.t().reshape(rows, n // group, group), ratios)
        w_t = w_t[perm]
    orig_t = w_t.clone()  # r_i = original w_i - q_i (see gptq_factor)
    q_t = torch.empty(n, rows, dtype=torch.int8, device=dev)
    order = perm.tolist() if act_order else list(range(n))
    if not act_order:
        block = max(1, block) if group % block == 0 else group  # a group starts at a block start
    s = inv = scales[:, 0]
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w_t[i1:i2]  # a view: updated in place
        r1 = torch.empty(i2 - i1, rows, dtype=torch.float32, device=dev)
        for k in range(i2 - i1):
            col = order[i1 + k]
            g = col // group
            if not act_order and col % group == 0:  # entering a group: pick its scale now
                scales[:, g] = group_scales(_compensated(w_t, orig_t, a, i1 + k, group).t(), ratios)
            if act_order or col % group == 0:
                s = scales[:, g]
                inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
            q = torch.round(w1[k] * inv).clamp_(QMIN, QMAX)
            q_t[i1 + k] = q.to(torch.int8)
            torch.sub(orig_t[i1 + k], q.mul_(s), out=r1[k])
            if k + 1 < i2 - i1:
                w1[k + 1:].addr_(a[i1 + k, i1 + k + 1:i2], r1[k])
        if i2 < n:
            w_t[i2:].addmm_(a[i1:i2, i2:].t(), r1)
    if act_order:
        q_t = q_t[torch.argsort(perm)]
    return q_t.t().contiguous().cpu(), scales.to(torch.float16).cpu()


def fake_quant_act(x: torch.Tensor, group: int, bits: int = 4, straight_through: bool = False) -> torch.Tensor:
    """Per-token, per-group asymmetric activation quantization of FORMAT.md §4.2, dequantized again.

    Bit-for-bit the runtime's rounding (fp32, round half to even, zero always in range); the value
    returned is (q − z)·d, which is what the integer dot product multiplies. straight_through: the
    rounding passes gradients unchanged (the range and so d stay differentiable), for training
    through the quantizer (tune.py); the values are the same up to fp32 rounding."""
    shape = x.shape
    levels = float(2 ** bits - 1)
    v = x.float().reshape(*shape[:-1], shape[-1] // group, group)
    mn = torch.clamp(v.amin(-1, keepdim=True), max=0.0)
    mx = torch.clamp(v.amax(-1, keepdim=True), min=0.0)
    d = (mx - mn) / levels
    inv = torch.where(d > 0, 1.0 / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(d))
    z = torch.round(-mn * inv).detach()
    t = v * inv
    q = torch.clamp(torch.round(t) + z, 0.0, levels)
    if straight_through:
        q = (t + z) + (q - (t + z)).detach()
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

