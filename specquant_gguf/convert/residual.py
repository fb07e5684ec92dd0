"""Rotation of the residual stream, merged into the weights offline (QuaRot's / SpinQuant's R1).

Every block reads the residual stream x through an RMSNorm and writes back into it through
attn_output and ffn_down. With an orthogonal R (n_embd × n_embd) the model that carries x·R instead
of x computes the same logits when
  - the embedding rows become E·R,
  - each norm's gain g moves into the linears that read it (W -> W·diag(g)·R, the norm becomes
    all ones: RMS(x·R) = RMS(x) because R keeps lengths),
  - the writers turn their outputs: attn_output and ffn_down W -> Rᵀ·W,
  - the head becomes H·diag(g_out)·R (so a tied head is written untied).
Nothing changes at run time: the file has the same tensors (plus an output head when the source
tied it). What it is meant to buy (QuaRot, SpinQuant): the residual stream's outlier channels spread
over all channels before the smoothing and the in-group Walsh–Hadamard rotation see them, for the
4-bit activations of q/k/v and gate/up. Measured on SmolLM2-135M it loses (W4A4, 64 windows: 42.00
against 38.17 without; docs/RESULTS.md, issue 16), so it is an option (--residual-rotation), not
the default: the smoothing already silences those channels, and a random R spreads the weights'
large columns (norm gains folded in) over every group instead. Gemma 2's post-norms (a gain after
attn_output / ffn_down, before the residual add) do not commute with R, so it is refused there.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..errors import SpecQuantError
from .recipe import RESIDUAL_ROTATIONS
from .rotation import hadamard
from .sources import Block, ModelSource

READERS: dict[str, tuple[str, ...]] = {"attn_norm": ("attn_q", "attn_k", "attn_v"), "ffn_norm": ("ffn_gate", "ffn_up")}
WRITERS: tuple[str, ...] = ("attn_output", "ffn_down")


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian, signs fixed so the draw is uniform)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None, :]).contiguous()


def randomized_hadamard(n: int, gen: torch.Generator) -> torch.Tensor:
    """diag(±1)·(H_{2^k} ⊗ Q_m)/√2^k for n = 2^k·m: a Hadamard transform over the largest power-of-two
    factor (every entry of equal size: the most even spreading of an outlier) and a random orthogonal
    Q over the odd rest (m = 9 for 576, 7 for 3584, 1 for 4096)."""
    k = (n & -n).bit_length() - 1
    m = n >> k
    h = hadamard(1 << k) / math.sqrt(1 << k)
    q = random_orthogonal(m, gen) if m > 1 else torch.ones(1, 1, dtype=torch.float64)
    signs = torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1
    return signs[:, None] * torch.kron(h, q)


def residual_matrix(kind: str, n: int, seed: int) -> torch.Tensor:
    """The n × n orthogonal R of `kind` (float64), the same for the same seed."""
    gen = torch.Generator().manual_seed(0x5EED + seed)
    if kind == "hadamard":
        return randomized_hadamard(n, gen)
    if kind == "random":
        return random_orthogonal(n, gen)
    raise SpecQuantError(f"residual rotation {kind!r} is not one of {', '.join(RESIDUAL_ROTATIONS)}")


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a·b in float32: its rounding (~1e-6 relative over 4096-long sums) is far below the int4
    grid's, and float64 would add ~30 min to an 8B conversion (1.2 TFLOP per block)."""
    return a.to(torch.float32) @ b.to(torch.float32)


class ResidualRotated(ModelSource):
    """`source` with its residual stream rotated by R: the same model, tensor by tensor (module doc)."""

    def __init__(self, source: ModelSource, rot: torch.Tensor) -> None:
        if source.config.family.post_norms:
            raise SpecQuantError(f"{source.description}: a residual rotation is not possible with "
                                 f"{source.config.arch}'s post-norms (use --residual-rotation none)")
        if tuple(rot.shape) != (source.config.n_embd,) * 2:
            raise SpecQuantError(f"residual rotation of shape {tuple(rot.shape)} for n_embd {source.config.n_embd}")
        self.inner = source
        self.rot = rot.to(torch.float32)
        self.config = dataclasses.replace(source.config, tied=False)
        self.description = source.description

    def __getattr__(self, name: str) -> Any:  # tokenizer, paths, ... of the wrapped source
        return getattr(self.inner, name)

    def token_embd(self) -> torch.Tensor:
        return _matmul(self.inner.token_embd(), self.rot)

    def output_norm(self) -> torch.Tensor:
        return torch.ones(self.config.n_embd)

    def output(self) -> torch.Tensor:
        head = self.inner.output()
        head = self.inner.token_embd() if head is None else head
        return _matmul(head.float() * self.inner.output_norm().float()[None, :], self.rot)

    def block(self, i: int) -> Block:
        blk = self.inner.block(i)
        for norm, readers in READERS.items():
            gain = blk[norm].to(torch.float32)
            for name in readers:
                blk[name] = _matmul(blk[name] * gain[None, :], self.rot)
            blk[norm] = torch.ones_like(blk[norm])
        for name in WRITERS:
            blk[name] = _matmul(self.rot.t(), blk[name])
        return blk

    def tokenizer_kv(self) -> dict[str, tuple[Any, Any]]:
        return self.inner.tokenizer_kv()

    def encoder(self) -> Any:
        return self.inner.encoder()

    @property
    def bos_id(self) -> int | None:
        return self.inner.bos_id


def suppressed_channels(source: ModelSource, rel: float = 0.1, min_norms: int = 2) -> list[int]:
    """Residual channels whose norm gain is below rel × the norm's median in at least min_norms norms:
    the channels of the massive activations, which the model itself silences before every linear.
    Reads the norm tensors alone (ModelSource.norms)."""
    counts = torch.zeros(source.config.n_embd, dtype=torch.int64)
    for i in range(source.config.n_layer):
        for g in source.norms(i).values():
            counts += (g.abs() < rel * g.abs().median()).to(torch.int64)
    return torch.nonzero(counts >= min_norms).flatten().tolist()


def rotation_keeping(rot_rest: torch.Tensor, keep: list[int], n: int) -> torch.Tensor:
    """An n × n orthogonal matrix that leaves the channels `keep` alone and turns the others by rot_rest."""
    kept = set(keep)
    rest = [c for c in range(n) if c not in kept]
    r = torch.zeros(n, n, dtype=torch.float64)
    r[keep, keep] = 1.0
    idx = torch.tensor(rest)
    r[idx[:, None], idx[None, :]] = rot_rest
    return r


def rotate_residual(source: ModelSource, kind: str, seed: int = 0) -> ModelSource:
    """`source` itself for kind "none", else the rotated view of it. The channels the model silences
    (suppressed_channels) stay where they are: turned into every channel, a massive activation would
    swamp the others before any gain could silence it (SmolLM2, 64 windows, W4A4: 48.05 rotating
    all 576 channels, 42.00 keeping its 3 silenced ones; docs/RESULTS.md)."""
    if kind == "none":
        return source
    n = source.config.n_embd
    keep = suppressed_channels(source)
    return ResidualRotated(source, rotation_keeping(residual_matrix(kind, n - len(keep), seed), keep, n))
