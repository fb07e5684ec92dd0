"""A small PyTorch llama-family forward pass over blocks in GGUF row order (the RoPE layout of the
family the converter writes, arch.stored_rope: interleaved pairs for "llama" files, half-split for
Gemma 2), with Gemma 2's extra parts (post-norms, GELU-tanh, soft-capping, sliding window).

The converter uses it to propagate calibration activations block by block and to measure layer
errors; the research tools use it with simulated (fake-quant) linears. It is not the oracle of the
file format (that is reference.py, which reads the file); it shares no code with it on purpose.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..arch import ModelConfig, stored_rope
from .sources import Block

# linear(name, x) -> y ; lets a caller substitute quantized/simulated matmuls for blk[name]
LinearFn = Callable[[str, torch.Tensor], torch.Tensor]
# capture(point, x): called with the input of each linear group: "attn", "attn_out", "ffn", "ffn_down"
CaptureFn = Callable[[str, torch.Tensor], None]


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(positions: torch.Tensor, head_dim: int, base: float, freqs: tuple[float, ...] | None = None,
                scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the RoPE angles; freqs (rope_freqs, per-pair divisors) and scale (linear factor)
    are the model's RoPE scaling, as the runtime applies them."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim) / scale
    if freqs is not None:
        inv = inv / torch.tensor(freqs, dtype=torch.float64)
    ang = positions.to(torch.float64).unsqueeze(-1) * inv
    return torch.cos(ang).float(), torch.sin(ang).float()


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, hd); rotates pairs (2i, 2i+1) of each head (llama.cpp's 'normal' RoPE)."""
    x2 = x.reshape(*x.shape[:-1], -1, 2)
    a, b = x2[..., 0], x2[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), -1).reshape(x.shape)


def rope_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, T, H, hd); rotates pairs (i, i + hd/2) of each head (NEOX RoPE, Hugging Face's order)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat((a * c - b * s, a * s + b * c), -1)


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """cap·tanh(x/cap) (Gemma 2's soft-capping); cap 0: x unchanged."""
    return torch.tanh(x / cap) * cap if cap else x


def embed_tokens(tokens: torch.Tensor, emb: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Embedding rows as float32, times sqrt(n_embd) for families that scale them (Gemma)."""
    x = emb[tokens].float()
    return x * float(cfg.n_embd) ** 0.5 if cfg.family.embd_scale else x


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig, layer: int,
               pos0: int) -> torch.Tensor:
    """softmax(cap(q·kᵀ·scale) + mask)·v for q (B, H, T, hd), k/v (B, Hkv, S, hd), S = pos0 + T: causal,
    and limited to the layer's sliding window (Gemma 2's local layers; every layer of a llama-family model
    with one: Mistral v0.1, Phi-3). Without caps, window or scale of its own, through SDPA, as before."""
    window = cfg.window(layer)
    t, s = q.shape[2], k.shape[2]
    if not (cfg.attn_softcap or window or cfg.attn_scale):
        return F.scaled_dot_product_attention(q, k, v, is_causal=s == t or t > 1,
                                              enable_gqa=cfg.n_head != cfg.n_head_kv)
    rep = cfg.n_head // cfg.n_head_kv
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = softcap((q @ k.transpose(-1, -2)).float() * cfg.scale, cfg.attn_softcap)
    qpos = torch.arange(pos0, pos0 + t)[:, None]
    kpos = torch.arange(s)[None, :]
    allowed = (kpos <= qpos) & ((kpos > qpos - window) if window else True)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, -1).to(v.dtype) @ v)


def plain_linear(blk: Block) -> LinearFn:
    def lin(name: str, x: torch.Tensor) -> torch.Tensor:
        y = x @ blk[name].t()
        bias = blk.get(f"{name}_bias")
        return y + bias if bias is not None else y
    return lin


class KVCache:
    """Per-block key/value cache for incremental decoding (self-generated calibration), allocated
    once for the whole length: growing it by concatenation would copy it at every token."""

    def __init__(self, batch: int, length: int, n_head_kv: int, head_dim: int, dtype: torch.dtype) -> None:
        self.k = torch.zeros(batch, length, n_head_kv, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.n = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[1]
        self.k[:, self.n:self.n + t] = k
        self.v[:, self.n:self.n + t] = v
        self.n += t
        return self.k[:, :self.n], self.v[:, :self.n]


def block_forward(x: torch.Tensor, blk: Block, cfg: ModelConfig, lin: LinearFn | None = None,
                  capture: CaptureFn | None = None, pos0: int = 0, cache: KVCache | None = None,
                  layer: int = 0) -> torch.Tensor:
    """One decoder block on x (B, T, n_embd) -> (B, T, n_embd). layer: the block's index (which
    Gemma 2 layers are local, sliding-window ones)."""
    lin = lin or plain_linear(blk)
    b, t, _ = x.shape
    h = rms_norm(x, blk["attn_norm"], cfg.rms_eps)
    if capture:
        capture("attn", h)
    q = lin("attn_q", h).reshape(b, t, cfg.n_head, cfg.head_dim)
    k = lin("attn_k", h).reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    v = lin("attn_v", h).reshape(b, t, cfg.n_head_kv, cfg.head_dim)
    cos, sin = rope_tables(torch.arange(pos0, pos0 + t), cfg.head_dim, cfg.rope_base, cfg.rope_freqs, cfg.rope_scale)
    if q.dtype != cos.dtype:  # bf16/f16 blocks: the tables follow (float32 promotes nothing: unchanged)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    rope = rope_neox if stored_rope(cfg.arch) == "neox" else rope_interleaved
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    if cache is not None:
        k, v = cache.append(k, v)
    # query head h reads KV head h // (n_head / n_head_kv); a cache is only used from position 0
    att = _attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), cfg, layer,
                     0 if cache is None else cache.n - t)
    a = att.transpose(1, 2).reshape(b, t, cfg.q_dim)
    if capture:
        capture("attn_out", a)
    x = x + _post_norm(lin("attn_output", a), blk, "post_attention_norm", cfg)
    h = rms_norm(x, blk["ffn_norm"], cfg.rms_eps)
    if capture:
        capture("ffn", h)
    act = F.gelu(lin("ffn_gate", h), approximate="tanh") if cfg.family.gelu else F.silu(lin("ffn_gate", h))
    m = act * lin("ffn_up", h)
    if capture:
        capture("ffn_down", m)
    return x + _post_norm(lin("ffn_down", m), blk, "post_ffw_norm", cfg)


def _post_norm(y: torch.Tensor, blk: Block, name: str, cfg: ModelConfig) -> torch.Tensor:
    """Gemma 2 normalizes each branch's output before its residual add; other families do not."""
    return rms_norm(y, blk[name], cfg.rms_eps) if cfg.family.post_norms else y


def head_logits(x: torch.Tensor, norm: torch.Tensor, head: torch.Tensor, eps: float,
                cap: float = 0.0) -> torch.Tensor:
    """Final norm and output head; cap: Gemma 2's final logit soft-capping (0 = none)."""
    return softcap(rms_norm(x, norm, eps) @ head.t(), cap)
