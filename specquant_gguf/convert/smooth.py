"""SmoothQuant-style smoothing (DESIGN.md §2, stage 1) and its folding into neighbouring tensors.

For the input channels j of a linear group sharing one input (q/k/v, gate/up, o, down):
    λ_j = max|X_j|^α / max|W_:,j|^(1−α),   X' = X·diag(λ)⁻¹,   W' = W·diag(λ).
X' costs nothing at run time: 1/λ is folded into the op that produces X (attn_norm for q/k/v,
ffn_norm for gate/up, the rows of attn_v for attn_output, the rows of ffn_up for ffn_down).
"""
from __future__ import annotations

import torch

from ..arch import LINEAR_GROUPS, ModelConfig
from .sources import Block

EPS = 1e-5
# The linear groups (arch.LINEAR_GROUPS); fold() says which tensor absorbs 1/λ of each.
GROUPS = LINEAR_GROUPS


def smooth_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """λ (C_in,) for one linear group. act_max: max|X_j| over calibration tokens."""
    w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0)
    a = act_max.float().clamp(min=EPS)
    b = w_max.float().clamp(min=EPS)
    lam = a.pow(alpha) / b.pow(1.0 - alpha)
    return lam.clamp(min=EPS)


def gqa_tie(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Per-channel values over attn_output's inputs (n_head·hd) -> max over the query heads sharing
    a KV head, broadcast back: λ for attn_output must be a function of (kv head, dim) only, because
    it is folded into the rows of attn_v (n_head_kv·hd)."""
    rep = cfg.n_head // cfg.n_head_kv
    t = x.reshape(cfg.n_head_kv, rep, cfg.head_dim).amax(1, keepdim=True)
    return t.expand(cfg.n_head_kv, rep, cfg.head_dim).reshape(-1)


def kv_rows(lam_o: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """λ over attn_output's inputs (GQA-tied) -> the λ of each attn_v row."""
    rep = cfg.n_head // cfg.n_head_kv
    return lam_o.reshape(cfg.n_head_kv, rep, cfg.head_dim)[:, 0, :].reshape(-1)


def attn_out_scales(act_max: torch.Tensor, w_o: torch.Tensor, alpha: float, cfg: ModelConfig) -> torch.Tensor:
    """λ for attn_output with the GQA constraint (equal across query heads of one KV head)."""
    a = gqa_tie(act_max.float(), cfg)
    b = gqa_tie(w_o.abs().amax(0), cfg)
    lam = a.clamp(min=EPS).pow(alpha) / b.clamp(min=EPS).pow(1.0 - alpha)
    return lam.clamp(min=EPS)


def fold(blk: Block, group: str, lam: torch.Tensor, cfg: ModelConfig) -> None:
    """Apply λ of `group` in place: scale the group's weight columns by λ and divide the producer by λ."""
    for name in GROUPS[group]:
        blk[name] = blk[name] * lam.unsqueeze(0)
    if group == "attn":
        blk["attn_norm"] = blk["attn_norm"] / lam
    elif group == "ffn":
        blk["ffn_norm"] = blk["ffn_norm"] / lam
    elif group == "attn_out":
        lv = kv_rows(lam, cfg)
        blk["attn_v"] = blk["attn_v"] / lv.unsqueeze(1)
        if "attn_v_bias" in blk:
            blk["attn_v_bias"] = blk["attn_v_bias"] / lv
    elif group == "ffn_down":
        blk["ffn_up"] = blk["ffn_up"] / lam.unsqueeze(1)
    else:
        raise ValueError(group)


def group_scales_for(group: str, act_max: torch.Tensor, blk: Block, alpha: float, cfg: ModelConfig) -> torch.Tensor:
    if group == "attn_out":
        return attn_out_scales(act_max, blk["attn_output"], alpha, cfg)
    return smooth_scales(act_max, [blk[n] for n in GROUPS[group]], alpha)
