"""Quantized linears as the converter produces them, and their simulated (fake-quant) forward.

A QLinear is what the converter writes for one linear weight. Its simulated forward computes the
math of FORMAT.md §4 in floating point: in-group WHT of the input, per-token per-group asymmetric
activation quantization, the dequantized int4 weights d·q (rotated basis), the spectral branch on
the unquantized input, the bias. The integer sums of the runtime equal these float products up to
fp32 summation order, so this is the fast research twin of reference.py (which reads files).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..gguf.constants import TYPE_F16, TYPE_F32, TYPE_Q8_0
from ..gguf.types import block_info, sq4_block_bytes
from . import spectral
from .forward import LinearFn
from .quantize import dequantize, fake_quant_act, fake_quant_q8_0
from .rotation import wht_groups


@dataclass
class QLinear:
    kind: str  # "sq4" | "f16" | "q8_0" | "f32"
    shape: tuple[int, int]  # (C_out, C_in)
    q: torch.Tensor | None = None  # int8 (C_out, C_in) in [-8, 7]  (sq4)
    d: torch.Tensor | None = None  # float16 (C_out, C_in/G)          (sq4)
    group: int = 0  # G of the sq4 weight (C_in when per-row)
    weight: torch.Tensor | None = None  # float32 weights as stored (f16 / q8_0 / f32 kinds)
    coef: torch.Tensor | None = None  # float16 (channels, K_max, 2)
    ks: torch.Tensor | None = None  # int16 (channels,)
    axis: str = "in"
    bias: torch.Tensor | None = None

    @property
    def k_max(self) -> int:
        return 0 if self.coef is None else int(self.coef.shape[1])

    def int4_bytes(self) -> int:
        c_out, c_in = self.shape
        return c_out * (c_in // self.group) * sq4_block_bytes(self.group) if self.kind == "sq4" else 0

    def nbytes(self) -> int:
        c_out, c_in = self.shape
        if self.kind == "sq4":
            size = self.int4_bytes()
        else:
            values, nbytes = block_info({"f16": TYPE_F16, "q8_0": TYPE_Q8_0, "f32": TYPE_F32}[self.kind])
            size = c_out * c_in // values * nbytes
        if self.coef is not None and self.k_max > 0:
            size += spectral.branch_bytes(self.coef.shape[0], self.k_max)
        return size + (0 if self.bias is None else self.bias.numel() * 4)


class SimLinear:
    """Callable x (..., C_in) -> y (..., C_out) with the file's arithmetic (dequantized)."""

    def __init__(self, ql: QLinear, act_bits: int, rotation: bool) -> None:
        self.ql, self.act_bits, self.rotation = ql, act_bits, rotation
        if ql.kind == "sq4":
            self.wt = dequantize(ql.q, ql.d, ql.group).t().contiguous()
        else:
            self.wt = ql.weight.float().t().contiguous()

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        """The activation the integer product sees (shared by q/k/v and by gate/up)."""
        if self.ql.kind == "sq4":
            xr = wht_groups(x, self.ql.group) if self.rotation else x
            return fake_quant_act(xr, self.ql.group, self.act_bits)
        if self.ql.kind == "q8_0":
            return fake_quant_q8_0(x)
        return x

    def __call__(self, x: torch.Tensor, xq: torch.Tensor | None = None) -> torch.Tensor:
        y = (self.quant_input(x) if xq is None else xq) @ self.wt
        if self.ql.k_max > 0:
            y = y + spectral.branch(x, self.ql.coef, self.ql.ks, self.ql.axis, self.ql.shape[0])
        if self.ql.bias is not None:
            y = y + self.ql.bias
        return y


# linears that read the same input as the linear called just before them (q/k/v share one input,
# gate/up another): the runtime quantizes that input once
SHARES_PREVIOUS_INPUT = ("attn_k", "attn_v", "ffn_up")


def shared_input_fn(quant: Callable[[str, torch.Tensor], torch.Tensor],
                    apply: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]) -> LinearFn:
    """A forward.LinearFn from quant(name, x) -> the activation the product sees and
    apply(name, x, xq) -> the output, quantizing an input that several linears read only once."""
    last: list[torch.Tensor | None] = [None, None]

    def lin(name: str, x: torch.Tensor) -> torch.Tensor:
        if name in SHARES_PREVIOUS_INPUT and last[0] is x:
            xq = last[1]
        else:
            xq = quant(name, x)
            last[:] = [x, xq]
        return apply(name, x, xq)

    return lin


def sim_linear_fn(linears: dict[str, SimLinear]) -> LinearFn:
    """A forward.LinearFn over simulated linears."""
    return shared_input_fn(lambda name, x: linears[name].quant_input(x), lambda name, x, xq: linears[name](x, xq))
