"""Weight types: one entry per tensor type the project writes or reads (FORMAT.md §3).

`block_info(type_id)` is the one place that knows how many values a block of a type holds and how
many bytes it takes; SQ4 (our own type) also packs and unpacks here. Payload classes (SQ4Weight,
Q8_0Weight, RawTensor, or a plain numpy array) are what gguf.writer.ModelWriter.add_tensor takes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import gguf
from gguf import GGMLQuantizationType

from ..errors import FormatError
from .constants import (SQ4_TYPE_ID, TYPE_F16, TYPE_F32, TYPE_I8, TYPE_I16, TYPE_I32)

# plain (block size 1) types and their numpy dtypes
PLAIN_DTYPES: dict[int, np.dtype] = {
    TYPE_F32: np.dtype("<f4"),
    TYPE_F16: np.dtype("<f2"),
    TYPE_I8: np.dtype("i1"),
    TYPE_I16: np.dtype("<i2"),
    TYPE_I32: np.dtype("<i4"),
    int(GGMLQuantizationType.I64): np.dtype("<i8"),
    int(GGMLQuantizationType.F64): np.dtype("<f8"),
}
# what ModelWriter stores from a plain numpy array (64-bit types are readable but never written)
NUMPY_TO_TYPE: dict[np.dtype, int] = {PLAIN_DTYPES[t]: t for t in (TYPE_F32, TYPE_F16, TYPE_I8, TYPE_I16, TYPE_I32)}


def type_name(type_id: int) -> str:
    """'SQ4', 'F16', 'Q8_0', ... or 'type#N' for an id nobody knows."""
    if type_id == SQ4_TYPE_ID:
        return "SQ4"
    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return f"type#{type_id}"


def block_info(type_id: int, group_size: int | None = None) -> tuple[int, int]:
    """(values per block, bytes per block) of a tensor type. SQ4 needs the file's group size."""
    if type_id == SQ4_TYPE_ID:
        if group_size is None:
            raise FormatError("SQ4 tensor but the file has no specquant.group_size")
        return group_size, sq4_block_bytes(group_size)
    try:
        return gguf.GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise FormatError(f"unknown tensor type id {type_id}") from None


def sq4_block_bytes(group_size: int) -> int:
    return 2 + group_size // 2


# ---------------------------------------------------------------------------------------------
# SQ4 packing (FORMAT.md §3.1)

def _check_group_size(group_size: int) -> None:
    if not isinstance(group_size, (int, np.integer)) or group_size < 2 or group_size % 2:
        raise FormatError(f"SQ4 group size must be an even integer >= 2, got {group_size!r}")


def pack_sq4(q: np.ndarray, d: np.ndarray, group_size: int) -> np.ndarray:
    """int4 values q (rows, K) in [-8, 7] and fp16 scales d (rows, K/G) -> SQ4 bytes (rows, K/G*(2+G/2)).

    Each block is the fp16 scale (little-endian) then G/2 bytes; byte i holds value i in its low
    nibble and value i + G/2 in its high nibble, two's complement.
    """
    _check_group_size(group_size)
    q = np.asarray(q)
    d = np.asarray(d)
    if q.ndim != 2:
        raise FormatError(f"SQ4 values must be 2-D (rows, K), got shape {q.shape}")
    rows, k = q.shape
    if k % group_size:
        raise FormatError(f"SQ4 row length {k} is not a multiple of the group size {group_size}")
    nb = k // group_size
    if d.shape != (rows, nb):
        raise FormatError(f"SQ4 scales must have shape {(rows, nb)}, got {d.shape}")
    if q.size and (int(q.min()) < -8 or int(q.max()) > 7):
        raise FormatError("SQ4 values must lie in [-8, 7]")
    if d.dtype != np.float16:
        raise FormatError(f"SQ4 scales must be float16, got {d.dtype}")
    blocks = q.astype(np.int8).reshape(rows, nb, group_size).view(np.uint8)
    half = group_size // 2
    nibbles = (blocks[..., :half] & 0x0F) | ((blocks[..., half:] & 0x0F) << 4)
    scale_bytes = d.astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    return np.concatenate([scale_bytes, nibbles.astype(np.uint8)], axis=2).reshape(rows, nb * (2 + half))


def unpack_sq4(raw: np.ndarray, k: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """SQ4 bytes (rows, K/G*(2+G/2)) or flat -> (q int8 (rows, K), d float16 (rows, K/G))."""
    _check_group_size(group_size)
    if k <= 0 or k % group_size:
        raise FormatError(f"SQ4 row length {k} is not a positive multiple of the group size {group_size}")
    nb = k // group_size
    row_bytes = nb * sq4_block_bytes(group_size)
    raw = np.ascontiguousarray(raw, dtype=np.uint8).reshape(-1)
    if raw.size % row_bytes:
        raise FormatError(f"SQ4 data of {raw.size} bytes is not a whole number of {row_bytes}-byte rows")
    rows = raw.size // row_bytes
    blocks = raw.reshape(rows, nb, sq4_block_bytes(group_size))
    d = np.ascontiguousarray(blocks[..., :2]).view("<f2").reshape(rows, nb).astype(np.float16)
    nib = blocks[..., 2:]
    lo = (nib & 0x0F).astype(np.int8)
    hi = (nib >> 4).astype(np.int8)
    # two's-complement nibble -> int8: (v ^ 8) - 8 maps 0..7 -> 0..7 and 8..15 -> -8..-1
    lo = (lo ^ 8) - 8
    hi = (hi ^ 8) - 8
    q = np.concatenate([lo, hi], axis=2).reshape(rows, k).astype(np.int8)
    return q, d


# ---------------------------------------------------------------------------------------------
# payloads accepted by ModelWriter.add_tensor

@dataclass
class SQ4Weight:
    """An SQ4 matrix: q int8 (rows=C_out, K=C_in) in [-8, 7], d float16 (rows, K/G)."""
    q: np.ndarray
    d: np.ndarray
    group_size: int

    def pack(self) -> np.ndarray:
        return pack_sq4(self.q, self.d, self.group_size)

    def dequantize(self) -> np.ndarray:
        rows, k = self.q.shape
        g = self.group_size
        d = self.d.astype(np.float32)
        return (self.q.reshape(rows, k // g, g).astype(np.float32) * d[..., None]).reshape(rows, k)


@dataclass
class Q8_0Weight:
    """A Q8_0 matrix as ggml bytes: raw uint8 (rows, K/32*34); shape is (rows, K)."""
    raw: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def from_float(cls, w: np.ndarray) -> "Q8_0Weight":
        w = np.asarray(w, dtype=np.float32)
        if w.ndim < 1 or w.shape[-1] % 32:
            raise FormatError(f"Q8_0 needs a row length that is a multiple of 32, got shape {w.shape}")
        return cls(raw=gguf.quants.quantize(w, GGMLQuantizationType.Q8_0), shape=tuple(w.shape))

    def dequantize(self) -> np.ndarray:
        return gguf.quants.dequantize(self.raw, GGMLQuantizationType.Q8_0).reshape(self.shape)


@dataclass
class RawTensor:
    """Any ggml-typed tensor given as its bytes (e.g. a Q4_1 tensor copied from a source file).

    shape is the numpy shape (reversed ne): (rows, K) for a matrix.
    """
    type_id: int
    raw: np.ndarray
    shape: tuple[int, ...]


Payload = Union[np.ndarray, SQ4Weight, Q8_0Weight, RawTensor]
