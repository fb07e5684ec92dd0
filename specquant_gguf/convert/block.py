"""The quantization of one decoder block.

quantize_block() turns one block's float weights plus the statistics of its inputs into what the
file stores: smoothing folded into the norms / v rows / up rows (λ chosen per linear group, α
searched per group on calibration samples), an optional spectral branch, the in-group WHT of the
residual, and int4 groups by GPTQ (or RTN) with a clipping search.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..arch import LINEARS, NORMS, POST_NORMS, ModelConfig
from . import spectral
from .calibrate import PointStats
from .qlinear import QLinear
from .quantize import dequantize, fake_quant_act, gptq, q8_0_weight, rtn
from .recipe import Recipe
from .rotation import rotate_hessian, rotate_weight, wht_groups
from .smooth import GROUPS, fold, group_scales_for
from .sources import Block

if TYPE_CHECKING:
    from ..progress import StageClock

# smoothing order: the groups whose λ folds into another group's weights (v rows, up rows) go first
SMOOTH_ORDER = ("attn_out", "ffn_down", "attn", "ffn")


@dataclass
class QBlock:
    """One converted block: norms (fp32, smoothing folded in) and the seven QLinears."""

    norms: dict[str, torch.Tensor]
    linears: dict[str, QLinear]
    alphas: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)


def scaled_stats(st: PointStats, lam: torch.Tensor) -> PointStats:
    """Statistics of X' = X / λ."""
    inv = (1.0 / lam).double()
    inv_h = inv.to(st.hess.dtype)
    hess = st.hess * inv_h.unsqueeze(0)
    hess.mul_(inv_h.unsqueeze(1))  # one n x n temporary, not two
    return PointStats(absmax=st.absmax / lam, sqsum=st.sqsum * inv.pow(2), hess=hess, count=st.count,
                      samples=[s / lam for s in st.samples])


def quantize_group(ws: dict[str, torch.Tensor], st: PointStats | None, r: Recipe, fast: bool = False,
                   ratios: tuple[float, ...] | None = None) -> dict[str, QLinear]:
    """Smoothed linear weights that read one input (q/k/v, gate/up, or a single one) -> QLinears.

    Each weight gets its own spectral split; the rotated residuals are stacked by rows and quantized
    together (GPTQ rows are independent given the shared Hessian, so this is one GPTQ instead of
    three). fast: round-to-nearest instead of GPTQ (the α search's proxy). ratios: the clipping
    ratios (None: the recipe's)."""
    ratios = ratios or r.ratios
    parts: dict[str, tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = {}
    c_in = next(iter(ws.values())).shape[1]
    g = r.group_for(c_in)
    for name, w in ws.items():
        coef = ks = None
        resid = w
        if r.spectral_k > 0:
            c_out = w.shape[0]
            k_cap = spectral.n_freqs(c_in if r.spectral_axis == "in" else c_out)
            imp = spectral.channel_importance(w, st.rms, r.spectral_axis)
            kk = spectral.allocate_k(imp, r.spectral_k, min(k_cap, 4 * r.spectral_k), r.spectral_rule,
                                     r.spectral_temp)
            coef, ks, resid = spectral.split(w, kk, r.spectral_axis)
        parts[name] = (rotate_weight(resid, g) if r.rotation == "wht" else resid, coef, ks)
    stacked = torch.cat([p[0] for p in parts.values()])
    if r.gptq and (not fast or r.search_gptq):
        hess = rotate_hessian(st.hess, g) if r.rotation == "wht" else st.hess
        q, d = gptq(stacked, hess, g, ratios, r.damp, r.act_order)
    else:
        q, d = rtn(stacked, g, ratios)
    out: dict[str, QLinear] = {}
    row = 0
    for name, (resid, coef, ks) in parts.items():
        n = resid.shape[0]
        out[name] = QLinear("sq4", (n, c_in), q=q[row:row + n].contiguous(), d=d[row:row + n].contiguous(),
                            group=g, coef=coef, ks=ks, axis=r.spectral_axis)
        row += n
    return out


def layer_error(ql: QLinear, x: torch.Tensor, xq: torch.Tensor, y_ref: torch.Tensor) -> float:
    """Relative output error ||ŷ − y||² / ||y||² of a quantized linear on sample inputs."""
    y = xq @ dequantize(ql.q, ql.d, ql.group).t()
    if ql.k_max > 0:
        y = y + spectral.branch(x, ql.coef, ql.ks, ql.axis, ql.shape[0])
    return float(((y - y_ref) ** 2).sum() / (y_ref ** 2).sum().clamp(min=1e-30))


def quant_act(x: torch.Tensor, g: int, r: Recipe, bits: int | None = None) -> torch.Tensor:
    """x as the integer product sees it, at `bits` (None: r.act_bits)."""
    xr = wht_groups(x, g) if r.rotation == "wht" else x
    return fake_quant_act(xr, g, r.act_bits if bits is None else bits)


def group_error(group: str, blk: Block, st: PointStats, lam: torch.Tensor, r: Recipe,
                y_ref: dict[str, torch.Tensor] | None = None) -> float:
    """Mean relative output error of the group's linears, smoothed by λ and quantized (RTN proxy),
    on the sample inputs. y_ref: the float outputs, when the caller already has them."""
    x = st.sample
    xs = x / lam
    names = GROUPS[group]
    g = r.group_for(xs.shape[1])
    xq = quant_act(xs, g, r, r.act_bits_of(*names))
    sst = scaled_stats(st, lam) if (r.search_gptq or r.spectral_k) else st
    ratios = r.search_ratios if r.search_ratios is not None and r.clip else None
    qls = quantize_group({n: blk[n] * lam.unsqueeze(0) for n in names}, sst, r, fast=True, ratios=ratios)
    y_ref = y_ref or {n: x @ blk[n].t() for n in names}
    err = sum(layer_error(qls[n], xs, xq, y_ref[n]) for n in names)
    return err / len(names)


def search_rows(w: torch.Tensor, r: Recipe) -> torch.Tensor:
    """The output rows the α search measures a linear on: all, or r.search_rows evenly spaced ones
    (not with an output-axis spectral branch, whose split runs along the rows)."""
    n = w.shape[0]
    if r.search_rows <= 0 or n <= r.search_rows or (r.spectral_k and r.spectral_axis == "out"):
        return w
    return w[torch.linspace(0, n - 1, r.search_rows).round().long()]


def search_alpha(group: str, blk: Block, st: PointStats, cfg: ModelConfig, r: Recipe) -> tuple[float, float]:
    """α of the grid with the least output error of the group's quantized layers (RTN proxy).

    Coarse to fine: every other grid point first, then the unevaluated neighbours of the best one
    (the error is unimodal in α in practice), which finds the grid minimum in about 5 of 8 tries."""
    sub = {n: search_rows(blk[n], r) for n in GROUPS[group]}  # λ below still reads the whole weights
    y_ref = {n: st.sample @ sub[n].t() for n in GROUPS[group]}  # the float outputs do not depend on α
    grid = sorted(r.alpha_grid)
    errors: dict[int, float] = {}

    def error_at(i: int) -> float:
        if i not in errors:
            lam = group_scales_for(group, st.absmax, blk, grid[i], cfg)
            errors[i] = group_error(group, sub, st, lam, r, y_ref)
        return errors[i]

    coarse = list(range(0, len(grid), 2))
    if coarse[-1] != len(grid) - 1:
        coarse.append(len(grid) - 1)
    best = min(coarse, key=error_at)
    for i in (best - 1, best + 1):
        if 0 <= i < len(grid):
            error_at(i)
    best = min(errors, key=errors.__getitem__)
    return grid[best], errors[best]


def _stage(clock: "StageClock | None", name: str):
    return clock.stage(name) if clock is not None else contextlib.nullcontext()


def quantize_block(blk: Block, stats: dict[str, PointStats], cfg: ModelConfig, r: Recipe,
                   clock: "StageClock | None" = None, consume: bool = False) -> QBlock:
    """The block as the file stores it. blk is not modified, unless consume: then its tensors are
    worked on in place (the driver's own copy: an 8B block is 0.9 GB of float32 not duplicated).
    clock: times the α search and the weight quantization as two stages."""
    blk = dict(blk) if consume else {k: v.clone() for k, v in blk.items()}
    if not r.quantized:
        return float_block(blk, r)
    stats = dict(stats)
    alphas: dict[str, float] = {}
    errors: dict[str, float] = {}
    with _stage(clock, "alpha search"):
        _smooth_block(blk, stats, cfg, r, alphas, errors)
    with _stage(clock, "GPTQ" if r.gptq else "RTN"):
        return _quantize_smoothed(blk, stats, r, alphas, errors)


def _smooth_block(blk: Block, stats: dict[str, PointStats], cfg: ModelConfig, r: Recipe,
                  alphas: dict[str, float], errors: dict[str, float]) -> None:
    if r.smoothing:
        for group in SMOOTH_ORDER:
            st = stats[group]
            if r.alpha is None:
                a, e = search_alpha(group, blk, st, cfg, r)
                errors[group] = e
            else:
                a = r.alpha
            lam = group_scales_for(group, st.absmax, blk, a, cfg)
            fold(blk, group, lam, cfg)
            stats[group] = scaled_stats(st, lam)
            alphas[group] = a


def _quantize_smoothed(blk: Block, stats: dict[str, PointStats], r: Recipe, alphas: dict[str, float],
                       errors: dict[str, float]) -> QBlock:
    linears: dict[str, QLinear] = {}
    for group in ("attn", "attn_out", "ffn", "ffn_down"):
        linears.update(quantize_group({n: blk[n] for n in GROUPS[group]}, stats.get(group), r))
    for name in LINEARS:
        linears[name].bias = blk.get(f"{name}_bias")
    linears = {n: linears[n] for n in LINEARS}
    return QBlock(block_norms(blk), linears, alphas, errors)


def block_norms(blk: Block) -> dict[str, torch.Tensor]:
    """The block's norm weights the file stores: attn_norm, ffn_norm and (Gemma 2) the post-norms,
    which smoothing never touches (they scale the outputs of attn_output / ffn_down, not an input)."""
    return {n: blk[n] for n in (*NORMS, *POST_NORMS) if n in blk}


def float_block(blk: Block, r: Recipe) -> QBlock:
    """f16 / q8 methods: standard ggml types, weights rounded as the file will hold them."""
    linears = {}
    for name in LINEARS:
        w = blk[name]
        if r.method == "q8":
            linears[name] = QLinear("q8_0", tuple(w.shape), weight=q8_0_weight(w))
        else:
            linears[name] = QLinear("f16", tuple(w.shape), weight=w.to(torch.float16).float())
        linears[name].bias = blk.get(f"{name}_bias")
    return QBlock(block_norms(blk), linears)
