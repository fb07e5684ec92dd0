"""The PyTorch oracle: a llama-family forward pass that reads a written .gguf file and does exactly
the integer math of docs/FORMAT.md §4. The native runtime is tested against it.

    ref = ReferenceModel("smol.sq4.gguf")
    logits = ref.forward([1, 504, 3277])          # numpy (n_tokens, n_vocab) float32

Linear layers by weight type:
- SQ4: activations go through the in-group Walsh–Hadamard butterfly (fp32, FORMAT.md §4.1 order),
  asymmetric per-token-group quantization (§4.2, rint = half to even), exact integer group sums
  (§4.3), then the canonical epilogue y = Σ_g in group order of acc·(d_w·d_x) in fp32 (bit-identical
  to the runtime's kernels); plus the spectral branch (fp64 here: the oracle computes it more
  precisely than the fp32 runtime must) and the bias.
- Q8_0: activations quantized to Q8_0-style blocks on the fly (symmetric int8 per block of 32,
  d = amax/127 kept in fp32, q = rint(x·(1/d)) half to even), exact integer block sums,
  `isum · d_w · d_x` (§4.5).
- anything else (F16, F32, Q4_0, Q4_1, ...): dequantized to fp32 and multiplied in fp32.
Integer sums are carried in float32 tensors: every partial sum is an integer below 2^24
(|q_x| ≤ 255, |q_w| ≤ 8 or 127, at most a few thousand terms), so fp32 arithmetic is exact there.

Pure helpers (numpy in, numpy out) that the native tests compare against: wht_groups,
quantize_activations, group_sums, sq4_matmul, quantize_q8_activations, q8_matmul, spectral_branch.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from specquant_gguf.arch import ARCHS
from specquant_gguf.errors import FormatError, SpecQuantError
from specquant_gguf.gguf import SQ4_TYPE_ID, TYPE_Q8_0, ModelFile, read_model

# bound on the elements of one integer-sum intermediate (groups × tokens × rows): memory, not math
_CHUNK_ELEMS = 1 << 24

# ---------------------------------------------------------------------------------------------
# activation quantization (FORMAT.md §4.1, §4.2)


def _wht_np(v: np.ndarray, g: int) -> np.ndarray:
    """In-group unnormalised Walsh–Hadamard transform, the butterfly of FORMAT.md §4.1 in fp32.

    v (N, G) -> (N, G). Stage h pairs v[j] with v[j+h] inside blocks of 2h: v[j] = a + b,
    v[j+h] = a - b. Every output of a stage is one fp32 add of two outputs of the previous stage,
    so vectorising over rows gives bit-identical results to the scalar loop. The rows are worked
    on transposed, (G, N), so every add runs over long contiguous vectors.
    """
    if g < 1 or g & (g - 1):
        raise SpecQuantError(f"Walsh–Hadamard block {g} is not a power of two")
    n = v.shape[0]
    cur = np.ascontiguousarray(v.T, dtype=np.float32)
    nxt = np.empty_like(cur)
    h = 1
    while h < g:
        a = cur.reshape(g // (2 * h), 2, h * n)
        o = nxt.reshape(g // (2 * h), 2, h * n)
        np.add(a[:, 0], a[:, 1], out=o[:, 0])
        np.subtract(a[:, 0], a[:, 1], out=o[:, 1])
        cur, nxt = nxt, cur
        h *= 2
    return np.ascontiguousarray(cur.T)


def _quantize_act_np(x: np.ndarray, g: int, bits: int, wht: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (T, K) fp32 -> q (T, K/G, G) fp32 holding integers in [0, L], d (T, K/G) fp32, z (T, K/G) fp32 ints."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    t, k = x.shape
    if g <= 0 or k % g:
        raise SpecQuantError(f"row length {k} is not a multiple of the group size {g}")
    v = x.reshape(t * (k // g), g)
    if wht:
        v = _wht_np(v, g)
    levels = np.float32((1 << bits) - 1)
    zero = np.float32(0.0)
    mn = np.minimum(v.min(axis=1), zero)
    mx = np.maximum(v.max(axis=1), zero)
    d = (mx - mn) / levels  # fp32 division, correctly rounded as in C
    pos = d > 0
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=pos)
    z = np.rint(-mn * inv)  # rint: round half to even
    q = np.rint(v * inv[:, None])
    q += z[:, None]
    np.clip(q, zero, levels, out=q)
    nb = k // g
    return q.reshape(t, nb, g), d.reshape(t, nb), z.reshape(t, nb)


def _quantize_act_t(x: torch.Tensor, g: int, bits: int, wht: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, d, z = _quantize_act_np(x.numpy(), g, bits, wht)
    return torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(z)


def wht_groups(x: np.ndarray, group_size: int) -> np.ndarray:
    """The in-group Walsh–Hadamard transform of every group of G of every row (fp32, §4.1 order)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return _wht_np(x.reshape(-1, group_size), group_size).reshape(x.shape)


def quantize_activations(x: np.ndarray, group_size: int, bits: int = 4, wht: bool = True
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FORMAT.md §4.1–4.2 for rows x (T, K): (q uint8 (T, K), d float32 (T, K/G), z int32 (T, K/G))."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    q, d, z = _quantize_act_t(torch.from_numpy(x), group_size, bits, wht)
    return (q.reshape(x.shape).numpy().astype(np.uint8), d.numpy().copy(), z.numpy().astype(np.int32))


# ---------------------------------------------------------------------------------------------
# SQ4 matmul (FORMAT.md §4.3)


def _token_chunk(n_groups: int, rows: int) -> int:
    return max(1, _CHUNK_ELEMS // max(1, n_groups * rows))


def _group_acc_t(qx: torch.Tensor, z: torch.Tensor, qw: torch.Tensor, wsum: torch.Tensor) -> torch.Tensor:
    """acc[g, t, o] = Σ_j qx[t,g,j]·qw[g,j,o] − z[t,g]·wsum[g,o]; exact (integers < 2^24 in fp32).

    qx (T, nb, G), z (T, nb), qw (nb, G, O) float32 integers, wsum (nb, O)."""
    s = torch.bmm(qx.transpose(0, 1), qw)  # (nb, T, O)
    return s - z.transpose(0, 1)[:, :, None] * wsum[:, None, :]


def _epilogue(acc: torch.Tensor, dw: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The canonical epilogue of FORMAT.md §4.3 / kernels.h, bit for bit in fp32:
    s = d_w·d_x; y = 0; for g in order: y = y + (float)acc_g·s (separate multiply and add, no FMA).

    acc (nb, T, O) integer sums in fp32, dw (nb, O), dx (T, nb) -> y (T, O)."""
    acc.mul_(dw[:, None, :] * dx.t()[:, :, None])  # (float)acc_g · (d_w·d_x), one rounding each
    y = acc[0].clone()  # 0 + a = a exactly
    for g in range(1, acc.shape[0]):
        y.add_(acc[g])
    return y


def group_sums(q_x: np.ndarray, z: np.ndarray, q_w: np.ndarray, group_size: int) -> np.ndarray:
    """Integer group sums of FORMAT.md §4.3: acc (T, rows, K/G) int32 = Σ q_x·q_w − z·Σ q_w.

    q_x (T, K) u4/u8 values, z (T, K/G) zero points, q_w (rows, K) int4 values. Computed in int64
    (independently of the fp32 path that the model uses), as kernels.h's group_sums_sq4 lays it out.
    """
    q_x = np.asarray(q_x, dtype=np.int64)
    q_w = np.asarray(q_w, dtype=np.int64)
    t, k = q_x.shape
    rows = q_w.shape[0]
    nb = k // group_size
    xs = q_x.reshape(t, nb, group_size)
    ws = q_w.reshape(rows, nb, group_size)
    acc = np.einsum("tgj,ogj->tog", xs, ws) - np.asarray(z, np.int64)[:, None, :] * ws.sum(axis=2)[None, :, :]
    return acc.astype(np.int32)


class SQ4Linear:
    """An SQ4 matrix prepared for the oracle.

    exact=True: integer group sums (bmm over groups, exact in fp32), then the canonical epilogue
    (_epilogue): the same fp32 result as the runtime's scalar kernel, bit for bit.
    exact=False (fast, for perplexity): the same quantized activations (bit-identical q, d, z), but
    y = ((q − z)·d_x) @ (q_w·d_w)ᵀ as one fp32 GEMM: only the fp32 summation order differs
    (relative differences ~1e-6), at several times the speed.
    """

    def __init__(self, q: np.ndarray, d: np.ndarray, group_size: int, act_bits: int, wht: bool,
                 exact: bool = True) -> None:
        rows, k = q.shape
        self.rows, self.k, self.g = rows, k, group_size
        self.nb = k // group_size
        self.bits, self.wht, self.exact = act_bits, wht, exact
        qg = torch.from_numpy(q.astype(np.float32)).reshape(rows, self.nb, group_size)
        dw = torch.from_numpy(d.astype(np.float32))  # (O, nb)
        if exact:
            self.qw = qg.permute(1, 2, 0).contiguous()  # (nb, G, O): one bmm per group
            self.wsum = qg.sum(dim=2).t().contiguous()  # (nb, O), exact
            self.dw = dw.t().contiguous()  # (nb, O)
        else:
            self.wt = (qg * dw[:, :, None]).reshape(rows, k).t().contiguous()  # (K, O) = (q_w·d_w)ᵀ

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q, dx, z = _quantize_act_t(x, self.g, self.bits, self.wht)
        return self.from_quantized(q, dx, z)

    def from_quantized(self, q: torch.Tensor, dx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        t = q.shape[0]
        if not self.exact:
            xq = ((q - z[:, :, None]) * dx[:, :, None]).reshape(t, self.k)
            return xq @ self.wt
        out = torch.empty((t, self.rows), dtype=torch.float32)
        step = _token_chunk(self.nb, self.rows)
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            acc = _group_acc_t(q[t0:t1], z[t0:t1], self.qw, self.wsum)  # (nb, Tc, O)
            out[t0:t1] = _epilogue(acc, self.dw, dx[t0:t1])
        return out


def sq4_matmul(x: np.ndarray, q_w: np.ndarray, d_w: np.ndarray, group_size: int, bits: int = 4,
               wht: bool = True) -> np.ndarray:
    """y (T, rows) float32 of one SQ4 layer without branch/bias: FORMAT.md §4.1–4.3 end to end."""
    lin = SQ4Linear(np.asarray(q_w), np.asarray(d_w), group_size, bits, wht)
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    return lin(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------------------------
# Q8_0 matmul (FORMAT.md §4.5)


def _quantize_q8_t(x: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """x (T, K) -> q (T, K/32, 32) fp32 integers in [-127, 127], d (T, K/32) fp32, like llama.cpp's Q8_0:

    d = amax/127 (fp32), id = d > 0 ? 1/d : 0, q = rint(x·id) (half to even, as ggml's SIMD paths).
    Unlike ggml, the scale stays fp32 (FORMAT.md §4.5; native/src/quantize_act.c does the same)."""
    v = np.ascontiguousarray(x.numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    t, k = v.shape
    v = v.reshape(t, k // 32, 32)
    d = np.abs(v).max(axis=2) / np.float32(127.0)
    inv = np.divide(np.float32(1.0), d, out=np.zeros_like(d), where=d > 0)
    q = np.rint(v * inv[..., None])
    return torch.from_numpy(q), torch.from_numpy(d)


def quantize_q8_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q8_0-style activation blocks: (q int8 (T, K), d float32 (T, K/32))."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    q, d = _quantize_q8_t(x)
    return q.reshape(x.shape).numpy().astype(np.int8), d.numpy().copy()


def _unpack_q8_0(raw: np.ndarray, rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    blocks = np.asarray(raw, dtype=np.uint8).reshape(rows, k // 32, 34)
    d = np.ascontiguousarray(blocks[..., :2]).view("<f2").reshape(rows, k // 32)
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(rows, k)
    return q, d


class Q8Linear:
    """A Q8_0 matrix times Q8_0-quantized activations: exact integer block sums, or (exact=False)
    the same quantized activations times the dequantized matrix in one fp32 GEMM."""

    def __init__(self, raw: np.ndarray, rows: int, k: int, exact: bool = True) -> None:
        q, d = _unpack_q8_0(raw, rows, k)
        self.rows, self.k, self.nb, self.exact = rows, k, k // 32, exact
        qg = torch.from_numpy(q.astype(np.float32)).reshape(rows, self.nb, 32)
        dw = torch.from_numpy(d.astype(np.float32))  # (O, nb)
        if exact:
            self.qw = qg.permute(1, 2, 0).contiguous()  # (nb, 32, O)
            self.dw = dw.t().contiguous()  # (nb, O)
        else:
            self.wt = (qg * dw[:, :, None]).reshape(rows, k).t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        q, dx = _quantize_q8_t(x)
        t = q.shape[0]
        if not self.exact:
            return (q * dx[:, :, None]).reshape(t, self.k) @ self.wt
        out = torch.empty((t, self.rows), dtype=torch.float32)
        step = _token_chunk(self.nb, self.rows)
        for t0 in range(0, t, step):
            t1 = min(t, t0 + step)
            isum = torch.bmm(q[t0:t1].transpose(0, 1), self.qw)  # (nb, Tc, O), exact
            out[t0:t1] = _epilogue(isum, self.dw, dx[t0:t1])
        return out


def q8_matmul(x: np.ndarray, raw: np.ndarray, rows: int, k: int) -> np.ndarray:
    """y (T, rows) of a Q8_0 matrix (ggml bytes) times Q8_0-quantized x (T, k)."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    return Q8Linear(raw, rows, k)(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------------------------
# spectral branch (FORMAT.md §3.2)


def truncate_spectral(coef: np.ndarray, k: np.ndarray, tau: float) -> np.ndarray:
    """Per channel, the smallest K' ≤ K whose (a²+b²) energy reaches tau of the channel's total."""
    k = np.asarray(k, dtype=np.int64)
    if tau >= 1.0:
        return k
    c = coef.astype(np.float64)
    kk = np.arange(c.shape[1])
    e = (c ** 2).sum(axis=2) * (kk[None, :] < k[:, None])
    cum = np.cumsum(e, axis=1)
    total = cum[:, -1:]
    reach = cum >= tau * total
    first = np.where(reach.any(axis=1), reach.argmax(axis=1) + 1, k)
    return np.minimum(np.where(total[:, 0] > 0, first, 0), k)


class SpectralBranch:
    """y_F of FORMAT.md §3.2 (axis in or out), in float64 from the fp16 (a, b) coefficients."""

    def __init__(self, coef: np.ndarray, k: np.ndarray, axis: str, c_in: int, c_out: int, tau: float = 1.0) -> None:
        channels, k_max, two = coef.shape
        if two != 2:
            raise FormatError(f"spectral coefficients must have ne[0] = 2, got {two}")
        expect = c_out if axis == "in" else c_in
        if axis not in ("in", "out") or channels != expect or k.shape != (channels,):
            raise FormatError(f"spectral branch shape {coef.shape} does not fit axis {axis!r} and a {c_out}x{c_in} weight")
        k = truncate_spectral(coef, k, tau)
        if (k < 0).any() or (k > k_max).any():
            raise FormatError(f"spectral K outside 0..{k_max}")
        mask = np.arange(k_max)[None, :] < np.asarray(k)[:, None]
        c = coef.astype(np.float64) * mask[..., None]
        self.axis, self.k_max = axis, k_max
        n = c_in if axis == "in" else c_out
        ang = 2.0 * math.pi * np.outer(np.arange(k_max), np.arange(n)) / n  # (k_max, n)
        self.cos = torch.from_numpy(np.cos(ang))
        self.sin = torch.from_numpy(np.sin(ang))
        self.a = torch.from_numpy(c[:, :, 0])  # (channels, k_max)
        self.b = torch.from_numpy(c[:, :, 1])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        if self.axis == "in":
            ck, sk = x @ self.cos.t(), x @ self.sin.t()  # (T, k_max)
            y = ck @ self.a.t() + sk @ self.b.t()
        else:
            za, zb = x @ self.a, x @ self.b  # (T, k_max)
            y = za @ self.cos + zb @ self.sin
        return y.to(torch.float32)


def spectral_branch(x: np.ndarray, coef: np.ndarray, k: np.ndarray, axis: str, c_out: int, tau: float = 1.0) -> np.ndarray:
    """y_F (T, c_out) float32 of one spectral branch for inputs x (T, c_in)."""
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    br = SpectralBranch(np.asarray(coef), np.asarray(k), axis, x.shape[1], c_out, tau)
    return br(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------------------------------------
# the model


class FloatLinear:
    """F16/F32/Q4_x/... matrices: dequantized once, multiplied in fp32."""

    def __init__(self, w: np.ndarray) -> None:
        self.wt = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).t().contiguous()  # (K, O)
        self.rows = self.wt.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.wt


class Linear:
    """One linear layer: the matrix (SQ4 / Q8_0 / float), optional spectral branch and bias."""

    def __init__(self, core, branch: SpectralBranch | None = None, bias: torch.Tensor | None = None) -> None:
        self.core, self.branch, self.bias = core, branch, bias

    def __call__(self, x: torch.Tensor, quantized: tuple | None = None) -> torch.Tensor:
        if quantized is not None and isinstance(self.core, SQ4Linear):
            y = self.core.from_quantized(*quantized)  # q/k/v and gate/up share one quantized input
        else:
            y = self.core(x)
        if self.branch is not None:
            y = y + self.branch(x)
        if self.bias is not None:
            y = y + self.bias
        return y


@dataclass
class Hparams:
    arch: str
    n_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    n_rot: int
    ffn: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context_length: int
    # Gemma 2 (0 = off): soft-capping of attention scores / final logits, score scale; sliding window
    # (0 = off): Gemma 2's local layers, or every layer of a llama-family file (Mistral v0.1, Phi-3)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    sliding_window: int = 0
    attn_scale: float = 0.0


_ARCHS = tuple(name for name, a in ARCHS.items() if a.runtime)


def read_hparams(m: ModelFile) -> Hparams:
    md = m.metadata
    arch = md.get("general.architecture")
    if arch not in _ARCHS:
        raise SpecQuantError(f"unsupported architecture {arch!r} (supported: {', '.join(_ARCHS)})")

    def need(key: str) -> int:
        v = md.get(f"{arch}.{key}")
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise FormatError(f"missing or bad metadata {arch}.{key}")
        return v

    hidden, heads = need("embedding_length"), need("attention.head_count")
    kv_heads = md.get(f"{arch}.attention.head_count_kv", heads)
    if not isinstance(kv_heads, int) or kv_heads <= 0 or heads % kv_heads:
        raise FormatError(f"bad head counts: hidden {hidden}, heads {heads}, kv heads {kv_heads}")
    head_dim = md.get(f"{arch}.attention.key_length", hidden // heads)
    if not isinstance(head_dim, int) or head_dim <= 0 or md.get(f"{arch}.attention.value_length", head_dim) != head_dim:
        raise FormatError(f"bad attention.key_length / value_length {head_dim}")
    n_rot = md.get(f"{arch}.rope.dimension_count", head_dim)
    if not isinstance(n_rot, int) or n_rot <= 0 or n_rot > head_dim or n_rot % 2:
        raise FormatError(f"bad rope.dimension_count {n_rot}")
    emb = m.tensor("token_embd.weight")
    vocab = emb.ne[1]
    return Hparams(arch=arch, n_layers=need("block_count"), hidden=hidden, heads=heads, kv_heads=kv_heads,
                   head_dim=head_dim, n_rot=n_rot, ffn=need("feed_forward_length"), vocab=vocab,
                   rope_theta=float(md.get(f"{arch}.rope.freq_base", 10000.0)),
                   rms_eps=float(md.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
                   context_length=int(md.get(f"{arch}.context_length", 2048)),
                   **(_gemma2_hparams(md, arch, hidden, heads, head_dim, need("block_count"))
                      if ARCHS[arch].post_norms else _window_hparams(md, arch)))


def _gemma2_hparams(md: dict, arch: str, hidden: int, heads: int, head_dim: int, n_layers: int) -> dict:
    """A gemma2 file's keys with llama.cpp's defaults (caps 50 / 30, window 4096, the score scale
    1/sqrt(hidden/heads) for the 46-layer 27B and 1/sqrt(head_dim) otherwise)."""
    scale = md.get(f"{arch}.attention.scale")
    if scale is None:
        scale = (hidden / heads if n_layers == 46 else head_dim) ** -0.5
    return dict(attn_softcap=float(md.get(f"{arch}.attn_logit_softcapping", 50.0)),
                final_softcap=float(md.get(f"{arch}.final_logit_softcapping", 30.0)),
                sliding_window=int(md.get(f"{arch}.attention.sliding_window", 4096)), attn_scale=float(scale))


def _window_hparams(md: dict, arch: str) -> dict:
    """A llama-family file's sliding window on every layer (Mistral v0.1, Phi-3); absent: none."""
    window = md.get(f"{arch}.attention.sliding_window", 0)
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise FormatError(f"bad {arch}.attention.sliding_window {window!r}")
    return dict(sliding_window=window)


def _visible(t: int, window: int) -> torch.Tensor:
    """(T, T) bool: query i sees key j when j <= i and, with a window, i - j < window (the last
    `window` positions, itself included: transformers' sliding_window_overlay, kv > q - window)."""
    pos = torch.arange(t)
    dist = pos[:, None] - pos[None, :]
    return (dist >= 0) & ((dist < window) if window else True)


class ReferenceModel:
    """The oracle forward pass of a .gguf file (see the module docstring).

    exact: True = integer group sums as FORMAT.md §4.3 writes them (the oracle for the native tests);
    False = the same quantized activations times the dequantized matrices in one fp32 GEMM per layer
    (summation order differs, ~1e-6 relative; several times faster: what perplexity uses).
    exact_q8: Q8_0 matrices run as the runtime runs them (Q8_0 activations); False dequantizes them
    to fp32 and multiplies unquantized activations (a plain float forward of the source weights).
    spectral_tau: the runtime's load-time truncation of the spectral branch (1.0 = keep all).
    kv_type: "f32" (exact, the runtime's SQ_KV_F32, for parity tests) or "f16" (K after RoPE and V
    rounded to fp16, like the runtime's default cache).
    act_bits: bits of the SQ4 layers' activations, 4 or 8; None = the file's specquant.act_bits (what
    it was calibrated for). The runtime's act_bits is a load-time choice (auto: 8 on the CPU), so a
    parity test gives both sides the same bits.
    """

    def __init__(self, path: str | os.PathLike[str] | ModelFile, *, exact: bool = True, exact_q8: bool = True,
                 spectral_tau: float = 1.0, kv_type: str = "f32", act_bits: int | None = None) -> None:
        self.file = path if isinstance(path, ModelFile) else read_model(path)
        if not 0.0 < spectral_tau <= 1.0:
            raise SpecQuantError(f"spectral_tau must be in (0, 1], got {spectral_tau}")
        self.hp = read_hparams(self.file)
        md = self.file.metadata
        if act_bits is not None and act_bits not in (4, 8):
            raise SpecQuantError(f"act_bits must be 4, 8 or None (the file's), got {act_bits!r}")
        # checked where an SQ4 matrix needs it
        self.act_bits = act_bits if act_bits is not None else md.get("specquant.act_bits", 4)
        act_g = md.get("specquant.act_group_size", md.get("specquant.group_size"))
        if act_g is not None and md.get("specquant.group_size") is not None and act_g != md["specquant.group_size"]:
            raise FormatError("specquant.act_group_size must equal specquant.group_size")
        a8 = md.get("specquant.act_bits_a8_linears", [])
        if not isinstance(a8, (list, tuple)) or not all(isinstance(n, str) for n in a8):
            raise FormatError("specquant.act_bits_a8_linears must be an array of strings")
        # kinds whose input stays 8-bit when the SQ4 layers run at 4 (FORMAT.md §4.2)
        kinds = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        if any(n not in kinds for n in a8) or len(set(a8)) != len(a8):
            raise FormatError(f"specquant.act_bits_a8_linears {a8!r}: unknown or repeated linear kind")
        for shared in ({"attn_q", "attn_k", "attn_v"}, {"ffn_gate", "ffn_up"}):
            if shared & set(a8) and not shared <= set(a8):
                raise FormatError(f"specquant.act_bits_a8_linears {a8!r}: {sorted(shared)} share one input")
        self.a8_linears = set(a8)
        self.rotation = md.get("specquant.rotation", "none")
        if self.rotation not in ("none", "wht"):
            raise FormatError(f"unknown specquant.rotation {self.rotation!r}")
        self.axis = md.get("specquant.spectral.axis", "in")
        self.exact, self.exact_q8, self.tau = exact, exact_q8, spectral_tau
        if kv_type not in ("f32", "f16"):
            raise SpecQuantError(f"reference kv_type must be f32 or f16, got {kv_type!r}")
        self.kv_type = kv_type
        self._build()

    # -- loading ---------------------------------------------------------------------------------
    def _matrix(self, name: str, shape: tuple[int, int]):
        t = self.file.tensor(name)
        if t.shape != shape:
            raise FormatError(f"tensor {name!r} has shape {t.shape}, expected {shape}")
        if t.type_id == SQ4_TYPE_ID:
            if self.act_bits not in (4, 8):
                raise FormatError(f"specquant.act_bits must be 4 or 8 for SQ4 tensors, got {self.act_bits!r}")
            q, d = self.file.sq4(name)
            g = self.file.sq4_group_size(t.ne[0])
            wht = self.rotation == "wht"
            if wht and md_block(self.file.metadata, g) != g:
                raise FormatError("specquant.rotation.block must equal the group size")
            kind = name.split(".")[-2] if name.startswith("blk.") else None
            bits = 8 if kind in self.a8_linears else self.act_bits
            return SQ4Linear(q, d, g, bits, wht, exact=self.exact)
        if t.type_id == TYPE_Q8_0 and self.exact_q8:
            return Q8Linear(t.raw, shape[0], shape[1], exact=self.exact)
        return FloatLinear(self.file.dequantize(name).reshape(shape))

    def _fused_rows(self, prefix: str, total: int, cols: int, parts: dict[str, tuple[int, int]]) -> dict[str, Linear]:
        """Linears that are row ranges [r0, r1) of one fused matrix prefix.weight (llama.cpp's phi3:
        attn_qkv = [q; k; v], ffn_up = [gate; up]), in the type the file stores it (F32 / F16 / Q8_0)."""
        name = prefix + ".weight"
        t = self.file.tensor(name)
        if t.shape != (total, cols):
            raise FormatError(f"tensor {name!r} has shape {t.shape}, expected {(total, cols)}")
        for extra in (".bias", ".spectral", ".spectral_k"):
            if prefix + extra in self.file:
                raise FormatError(f"fused tensor {name!r} has {prefix + extra}, which the runtime does not read")
        if t.type_id == TYPE_Q8_0 and self.exact_q8:
            raw = np.asarray(t.raw, dtype=np.uint8).reshape(total, cols // 32 * 34)
            return {k: Linear(Q8Linear(np.ascontiguousarray(raw[r0:r1]).reshape(-1), r1 - r0, cols,
                                       exact=self.exact), None, None) for k, (r0, r1) in parts.items()}
        if t.type_id == SQ4_TYPE_ID:
            raise FormatError(f"fused tensor {name!r} is SQ4: row views need F32, F16 or Q8_0")
        w = self.file.dequantize(name).reshape(total, cols)
        return {k: Linear(FloatLinear(np.ascontiguousarray(w[r0:r1])), None, None) for k, (r0, r1) in parts.items()}

    def _linear(self, prefix: str, shape: tuple[int, int]) -> Linear:
        core = self._matrix(prefix + ".weight", shape)
        branch = None
        if prefix + ".spectral" in self.file:
            coef = self.file.dequantize(prefix + ".spectral")
            k = self.file.array(prefix + ".spectral_k") if prefix + ".spectral_k" in self.file else None
            if k is None:
                raise FormatError(f"{prefix}.spectral without {prefix}.spectral_k")
            branch = SpectralBranch(coef, np.asarray(k), self.axis, shape[1], shape[0], self.tau)
        bias = None
        if prefix + ".bias" in self.file:
            b = self.file.dequantize(prefix + ".bias")
            if b.shape != (shape[0],):
                raise FormatError(f"{prefix}.bias has shape {b.shape}, expected {(shape[0],)}")
            bias = torch.from_numpy(b.copy())
        return Linear(core, branch, bias)

    def _norm(self, name: str) -> torch.Tensor:
        w = self.file.dequantize(name)
        if w.shape != (self.hp.hidden,):
            raise FormatError(f"{name} has shape {w.shape}, expected {(self.hp.hidden,)}")
        return torch.from_numpy(w.copy())

    def _build(self) -> None:
        hp = self.hp
        h, hd = hp.hidden, hp.head_dim
        self.embd = torch.from_numpy(self.file.dequantize("token_embd.weight").reshape(hp.vocab, h).copy())
        head = "output.weight" if "output.weight" in self.file else "token_embd.weight"
        self.head = self._matrix(head, (hp.vocab, h))
        self.output_norm = self._norm("output_norm.weight")
        shapes = {"attn_q": (hp.heads * hd, h), "attn_k": (hp.kv_heads * hd, h), "attn_v": (hp.kv_heads * hd, h),
                  "attn_output": (h, hp.heads * hd), "ffn_gate": (hp.ffn, h), "ffn_up": (hp.ffn, h),
                  "ffn_down": (h, hp.ffn)}
        self.layers = []
        for i in range(hp.n_layers):
            p = f"blk.{i}"
            fused: dict[str, Linear] = {}
            if ARCHS[hp.arch].fused and f"{p}.attn_qkv.weight" in self.file:  # phi3: [q; k; v] rows
                q, kv = hp.heads * hd, hp.kv_heads * hd
                fused.update(self._fused_rows(f"{p}.attn_qkv", q + 2 * kv, h, {
                    "attn_q": (0, q), "attn_k": (q, q + kv), "attn_v": (q + kv, q + 2 * kv)}))
            if ARCHS[hp.arch].fused and f"{p}.ffn_gate.weight" not in self.file:  # phi3: ffn_up = [gate; up]
                fused.update(self._fused_rows(f"{p}.ffn_up", 2 * hp.ffn, h, {
                    "ffn_gate": (0, hp.ffn), "ffn_up": (hp.ffn, 2 * hp.ffn)}))
            layer = {part: fused[part] if part in fused else self._linear(f"{p}.{part}", shape)
                     for part, shape in shapes.items()}
            layer["attn_norm"] = self._norm(f"{p}.attn_norm.weight")
            layer["ffn_norm"] = self._norm(f"{p}.ffn_norm.weight")
            if ARCHS[hp.arch].post_norms:  # Gemma 2: norms of each branch's output (stored as w + 1)
                layer["post_attention_norm"] = self._norm(f"{p}.post_attention_norm.weight")
                layer["post_ffw_norm"] = self._norm(f"{p}.post_ffw_norm.weight")
            self.layers.append(layer)
        inv = hp.rope_theta ** (-torch.arange(0, hp.n_rot, 2, dtype=torch.float64) / hp.n_rot)
        # RoPE scaling as llama.cpp stores it: linear (rope.scaling.factor) and rope_freqs.weight
        # (Llama-3.1: each pair's frequency divided by its factor)
        md, arch = self.file.metadata, hp.arch
        if md.get(f"{arch}.rope.scaling.type", "none") == "linear":
            inv = inv / float(md.get(f"{arch}.rope.scaling.factor", 1.0))
        elif md.get(f"{arch}.rope.scale_linear") is not None:
            inv = inv / float(md[f"{arch}.rope.scale_linear"])
        longrope = [n for n in ("rope_factors_long.weight", "rope_factors_short.weight") if n in self.file]
        if longrope:  # Phi-3-128k
            raise SpecQuantError(f"tensor {longrope[0]!r}: LongRoPE scaling (Phi-3 128k) is not supported")
        if "rope_freqs.weight" in self.file:
            factors = np.asarray(self.file.dequantize("rope_freqs.weight"), dtype=np.float64).reshape(-1)
            if factors.shape != (hp.n_rot // 2,):
                raise FormatError(f"rope_freqs.weight has {factors.size} values, expected {hp.n_rot // 2}")
            inv = inv / torch.from_numpy(factors)
        self._inv_freq = inv  # (n_rot/2,)

    # -- forward ---------------------------------------------------------------------------------
    def _rms_norm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ms = (x * x).mean(dim=-1, keepdim=True)
        return x * torch.rsqrt(ms + self.hp.rms_eps) * w

    def _rope_tables(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (T, 1, n_rot/2) in fp32 of pos·θ^(-2i/n_rot), the angles computed in fp64."""
        ang = pos[:, None].to(torch.float64) * self._inv_freq[None, :]
        return torch.cos(ang).to(torch.float32)[:, None, :], torch.sin(ang).to(torch.float32)[:, None, :]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on the first n_rot dims of each head, in the layout the architecture stores q/k in
        (specquant_gguf.arch): "normal" rotates pairs (2i, 2i+1), "neox" pairs (i, i + n_rot/2)."""
        n_rot = self.hp.n_rot
        out = x.clone()
        if ARCHS[self.hp.arch].rope == "neox":
            x0, x1 = x[..., :n_rot // 2], x[..., n_rot // 2:n_rot]
            out[..., :n_rot // 2] = x0 * cos - x1 * sin
            out[..., n_rot // 2:n_rot] = x0 * sin + x1 * cos
            return out
        xr = x[..., :n_rot].reshape(*x.shape[:-1], n_rot // 2, 2)
        x0, x1 = xr[..., 0], xr[..., 1]
        o = out[..., :n_rot].view(*x.shape[:-1], n_rot // 2, 2)
        o[..., 0] = x0 * cos - x1 * sin
        o[..., 1] = x0 * sin + x1 * cos
        return out

    def _shared_input(self, x: torch.Tensor, layers: Sequence[Linear]) -> tuple | None:
        """Quantizes x once for the SQ4 layers that read it (q/k/v, gate/up)."""
        core = layers[0].core
        if isinstance(core, SQ4Linear):
            return _quantize_act_t(x, core.g, core.bits, core.wht)
        return None

    def _attention(self, layer: dict, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                   window: int = 0) -> torch.Tensor:
        hp = self.hp
        t = x.shape[0]
        qx = self._shared_input(x, [layer["attn_q"]])
        q = layer["attn_q"](x, qx).reshape(t, hp.heads, hp.head_dim)
        k = layer["attn_k"](x, qx).reshape(t, hp.kv_heads, hp.head_dim)
        v = layer["attn_v"](x, qx).reshape(t, hp.kv_heads, hp.head_dim)
        q, k = self._rope(q, *rope), self._rope(k, *rope)
        if self.kv_type == "f16":  # what the cache stores and attention reads back
            k, v = k.half().float(), v.half().float()
        # causal softmax(q·kᵀ/√d)·v in fp32; query head h reads KV head h // (heads / kv_heads)
        rep = hp.heads // hp.kv_heads
        k = k.transpose(0, 1).repeat_interleave(rep, dim=0)  # enable_gqa=True takes a slow path
        v = v.transpose(0, 1).repeat_interleave(rep, dim=0)
        if ARCHS[hp.arch].post_norms:
            o = self._gemma2_attention(q.transpose(0, 1), k, v, window)
        else:
            mask = _visible(t, window) if window else None  # the plain causal path as before otherwise
            o = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=mask,
                                                                 is_causal=mask is None)
        o = o.transpose(0, 1).reshape(t, hp.heads * hp.head_dim)
        return layer["attn_output"](o)

    def _gemma2_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
        """softmax(cap·tanh(q·kᵀ·scale / cap), causal and within `window` positions (0: all))·v in fp32,
        q/k/v (heads, T, hd)."""
        hp = self.hp
        s = (q @ k.transpose(1, 2)) * hp.attn_scale
        if hp.attn_softcap:
            s = torch.tanh(s / hp.attn_softcap) * hp.attn_softcap
        return torch.softmax(s.masked_fill(~_visible(q.shape[1], window), float("-inf")), dim=-1) @ v

    def _window(self, i: int) -> int:
        """The positions layer i sees (0: all): Gemma 2's local layers (i % p < p - 1, llama.cpp's pattern
        p = 2: the even ones), every layer of a llama-family file with a window (arch.swa_pattern 0)."""
        p = ARCHS[self.hp.arch].swa_pattern
        return self.hp.sliding_window if not p or i % p < p - 1 else 0

    def _ffn(self, layer: dict, x: torch.Tensor) -> torch.Tensor:
        qx = self._shared_input(x, [layer["ffn_gate"]])
        gate = layer["ffn_gate"](x, qx)
        up = layer["ffn_up"](x, qx)
        if ARCHS[self.hp.arch].gelu:  # Gemma: GELU with the tanh approximation
            return layer["ffn_down"](torch.nn.functional.gelu(gate, approximate="tanh") * up)
        return layer["ffn_down"](torch.nn.functional.silu(gate) * up)

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (n_tokens, n_vocab) float32 for a sequence starting at position 0 (no cache)."""
        ids = self._check_tokens(tokens)
        x = self.embd[ids]
        family = ARCHS[self.hp.arch]
        if family.embd_scale:  # Gemma: embeddings times sqrt(hidden), in fp32
            x = x * np.float32(math.sqrt(self.hp.hidden))
        rope = self._rope_tables(torch.arange(len(ids)))
        for i, layer in enumerate(self.layers):
            a = self._attention(layer, self._rms_norm(x, layer["attn_norm"]), rope, self._window(i))
            x = x + (self._rms_norm(a, layer["post_attention_norm"]) if family.post_norms else a)
            f = self._ffn(layer, self._rms_norm(x, layer["ffn_norm"]))
            x = x + (self._rms_norm(f, layer["post_ffw_norm"]) if family.post_norms else f)
        x = self._rms_norm(x, self.output_norm)
        logits = self.head(x)
        if self.hp.final_softcap:
            logits = torch.tanh(logits / self.hp.final_softcap) * self.hp.final_softcap
        return logits.numpy()

    def _check_tokens(self, tokens: Sequence[int]) -> torch.Tensor:
        ids = np.asarray(tokens)
        if ids.ndim != 1 or ids.size == 0:
            raise SpecQuantError("forward() needs a non-empty 1-D list of token ids")
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= self.hp.vocab:
            raise SpecQuantError(f"token ids must be integers in [0, {self.hp.vocab})")
        return torch.from_numpy(ids.astype(np.int64))

    @property
    def n_vocab(self) -> int:
        return self.hp.vocab


def md_block(md: dict, default: int) -> int:
    """specquant.rotation.block (the WHT size); files that omit it (or write 0, per-row groups) use
    the group size."""
    b = md.get("specquant.rotation.block", default)
    return int(b) if isinstance(b, int) and b > 0 else default
