"""Strict GGUF reader: every number of the header is checked before it is used.

GGUFReader (the gguf package) cannot open a file holding an unknown type id such as our SQ4 and
does not validate offsets, so this parser is our own; every problem becomes a one-line FormatError.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import gguf
from gguf import GGMLQuantizationType, GGUFValueType

from ..errors import FormatError, SpecQuantError
from ..paths import regular_file
from .constants import ALIGNMENT, GGUF_MAGIC, SQ4_TYPE_ID, SUPPORTED_VERSIONS
from .types import PLAIN_DTYPES, block_info, type_name, unpack_sq4

# ---------------------------------------------------------------------------------------------
# reading

_SCALAR_FMT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_SCALAR_NP = {
    GGUFValueType.UINT8: "u1", GGUFValueType.INT8: "i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "u1", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}
_MAX_DIMS = 4
_MAX_NAME = 1 << 16


@dataclass
class TensorInfo:
    """One tensor of a file. ne[0] is the row length; shape (numpy order) = reversed ne."""
    name: str
    type_id: int
    ne: tuple[int, ...]
    offset: int  # absolute offset in the file
    nbytes: int
    raw: np.ndarray  # uint8 view into the file's memory map

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        return type_name(self.type_id)

    @property
    def n_elements(self) -> int:
        return math.prod(self.ne)


class _Cursor:
    """Bounds-checked little-endian reads from the file's bytes."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.size = int(buf.size)
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(f"file truncated: {what} at byte {self.pos} runs past the end ({self.size} bytes)")

    def scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.u64(f"{what} length")
        if limit is not None and n > limit:
            raise FormatError(f"{what} is {n} bytes long (limit {limit})")
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n].tobytes()
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{what} at byte {self.pos - n} is not valid UTF-8") from None

    def value(self, vtype: int, what: str) -> Any:
        if vtype in _SCALAR_FMT:
            return self.scalar(_SCALAR_FMT[GGUFValueType(vtype)], what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        raise FormatError(f"{what}: unknown value type {vtype}")

    def array(self, what: str) -> tuple[list[Any], int]:
        sub = self.u32(f"{what} element type")
        n = self.u64(f"{what} length")
        if sub in _SCALAR_NP:
            dt = np.dtype(_SCALAR_NP[GGUFValueType(sub)])
            self.need(n * dt.itemsize, what)
            arr = np.frombuffer(self.buf, dtype=dt, count=n, offset=self.pos) if n else np.zeros(0, dt)
            self.pos += n * dt.itemsize
            values = arr.astype(bool).tolist() if sub == GGUFValueType.BOOL else arr.tolist()
            return values, sub
        if sub == GGUFValueType.STRING:
            if n > (self.size - self.pos) // 8:  # every string takes at least its 8-byte length
                raise FormatError(f"file truncated: {what} claims {n} strings, more than the file can hold")
            return [self.string(f"{what}[{i}]") for i in range(n)], sub
        raise FormatError(f"{what}: unsupported array element type {sub}")


class ModelFile:
    """A parsed, validated GGUF file (memory-mapped). Use read_model(path)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._buf = _open_map(self.path)
        self.metadata: dict[str, Any] = {}
        self.kv_types: dict[str, tuple[GGUFValueType, GGUFValueType | None]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except FormatError as exc:
            raise FormatError(f"{self.path.name}: {exc}") from None
        except (struct.error, ValueError, OverflowError, IndexError, MemoryError) as exc:
            raise FormatError(f"{self.path.name}: corrupt GGUF file ({exc})") from None

    # -- parsing -------------------------------------------------------------------------------
    def _parse(self) -> None:
        c = _Cursor(self._buf)
        c.need(4, "magic")
        if self._buf[:4].tobytes() != GGUF_MAGIC:
            raise FormatError("not a GGUF file (bad magic)")
        c.pos = 4
        self.version = c.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            raise FormatError(f"unsupported GGUF version {self.version} (expected 3)")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("metadata count")
        # each entry takes at least 8+4(+...) bytes: absurd counts are corruption, not allocation
        if n_kv > c.size // 12 or n_tensors > c.size // 24:
            raise FormatError(f"header counts ({n_tensors} tensors, {n_kv} keys) exceed the file size")
        for i in range(n_kv):
            self._parse_kv(c, i)
        self.alignment = self._alignment()
        infos = [self._parse_tensor_info(c, i) for i in range(n_tensors)]
        data_start = _align(c.pos, self.alignment)
        if data_start > c.size and infos:
            raise FormatError("file truncated: the tensor data section is missing")
        self.data_offset = data_start
        self._place_tensors(infos, data_start)

    def _parse_kv(self, c: _Cursor, i: int) -> None:
        key = c.string(f"metadata key #{i}", limit=_MAX_NAME)
        if key in self.metadata:
            raise FormatError(f"metadata key {key!r} appears twice")
        vtype = c.u32(f"type of {key!r}")
        if vtype == GGUFValueType.ARRAY:
            value, sub = c.array(key)
            self.kv_types[key] = (GGUFValueType.ARRAY, GGUFValueType(sub))
        elif vtype in _SCALAR_FMT or vtype == GGUFValueType.STRING:
            value = c.value(vtype, key)
            self.kv_types[key] = (GGUFValueType(vtype), None)
        else:
            raise FormatError(f"metadata {key!r} has unknown value type {vtype}")
        self.metadata[key] = value

    def _alignment(self) -> int:
        a = self.metadata.get("general.alignment", ALIGNMENT)
        if not isinstance(a, int) or isinstance(a, bool) or a <= 0 or a & (a - 1) or a > 1 << 20:
            raise FormatError(f"bad general.alignment {a!r}")
        return a

    def _parse_tensor_info(self, c: _Cursor, i: int) -> tuple[str, int, tuple[int, ...], int]:
        name = c.string(f"tensor name #{i}", limit=_MAX_NAME)
        n_dims = c.u32(f"dims of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise FormatError(f"tensor {name!r} has {n_dims} dimensions (1..{_MAX_DIMS} allowed)")
        ne = tuple(c.u64(f"shape of {name!r}") for _ in range(n_dims))
        if any(n == 0 for n in ne) or math.prod(ne) >= 1 << 48:
            raise FormatError(f"tensor {name!r} has a bad shape {list(ne)}")
        type_id = c.u32(f"type of {name!r}")
        offset = c.u64(f"offset of {name!r}")
        return name, type_id, ne, offset

    def sq4_group_size(self, row_length: int | None = None) -> int:
        """G of the file's SQ4 tensors (specquant.group_size; 0 there means per-row: G = row length)."""
        g = self.metadata.get("specquant.group_size")
        if not isinstance(g, int) or isinstance(g, bool) or g < 0:
            raise FormatError("SQ4 tensor but the file has no valid specquant.group_size")
        if g == 0:
            if row_length is None:
                raise FormatError("per-row SQ4 groups need the row length")
            g = row_length
        if g < 2 or g % 2:
            raise FormatError(f"specquant.group_size {g} is not an even number >= 2")
        return g

    def _place_tensors(self, infos: list[tuple[str, int, tuple[int, ...], int]], data_start: int) -> None:
        spans: list[tuple[int, int, str]] = []
        for name, type_id, ne, offset in infos:
            if name in self.tensors:
                raise FormatError(f"tensor {name!r} appears twice")
            g = self.sq4_group_size(ne[0]) if type_id == SQ4_TYPE_ID else None
            block, block_bytes = block_info(type_id, g)
            if ne[0] % block:
                raise FormatError(f"tensor {name!r}: row length {ne[0]} is not a multiple of "
                                  f"{type_name(type_id)}'s block of {block}")
            nbytes = math.prod(ne) // block * block_bytes
            if offset % self.alignment:
                raise FormatError(f"tensor {name!r}: offset {offset} is not a multiple of {self.alignment}")
            start = data_start + offset
            if start + nbytes > self._buf.size:
                raise FormatError(f"file truncated: tensor {name!r} ({nbytes} bytes at {start}) "
                                  f"runs past the end ({self._buf.size} bytes)")
            spans.append((start, start + nbytes, name))
            raw = self._buf[start:start + nbytes]
            self.tensors[name] = TensorInfo(name, type_id, ne, start, nbytes, raw)
        # FORMAT.md §2: data in table order, no overlap (what every writer, llama.cpp's too, produces)
        for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise FormatError(f"tensor {n1!r} starts before the end of {n0!r} (overlapping or out of "
                                  "table order)")

    # -- access --------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def tensor(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise FormatError(f"{self.path.name}: no tensor {name!r}") from None

    def array(self, name: str) -> np.ndarray:
        """A plain-typed tensor (F32, F16, I8, I16, I32, ...) as a read-only numpy view, numpy shape."""
        t = self.tensor(name)
        if t.type_id not in PLAIN_DTYPES:
            raise FormatError(f"tensor {name!r} is {t.type_name}, not a plain type")
        return t.raw.view(PLAIN_DTYPES[t.type_id]).reshape(t.shape)

    def sq4(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(q int8 (rows, K), d float16 (rows, K/G)) of an SQ4 tensor."""
        t = self.tensor(name)
        if t.type_id != SQ4_TYPE_ID:
            raise FormatError(f"tensor {name!r} is {t.type_name}, not SQ4")
        q, d = unpack_sq4(t.raw, t.ne[0], self.sq4_group_size(t.ne[0]))
        return q.reshape(*t.shape[:-1], t.ne[0]), d.reshape(*t.shape[:-1], -1)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32, numpy shape ((rows, K) for a matrix). SQ4 gives d·q (rotated basis)."""
        t = self.tensor(name)
        if t.type_id == SQ4_TYPE_ID:
            q, d = self.sq4(name)
            g = self.sq4_group_size(t.ne[0])
            rows = q.reshape(-1, t.ne[0])
            w = rows.reshape(rows.shape[0], -1, g).astype(np.float32) * d.reshape(rows.shape[0], -1, 1).astype(np.float32)
            return w.reshape(t.shape)
        if t.type_id in PLAIN_DTYPES:
            return self.array(name).astype(np.float32)
        try:
            qtype = GGMLQuantizationType(t.type_id)
            block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.asarray(t.raw).reshape(-1, t.ne[0] // block * block_bytes)
            out = gguf.quants.dequantize(raw, qtype)
        except NotImplementedError:
            raise FormatError(f"tensor {name!r}: cannot dequantize type {t.type_name}") from None
        return np.asarray(out, dtype=np.float32).reshape(t.shape)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def close(self) -> None:
        """Drops the memory map (views handed out keep it alive until they are gone)."""
        self.tensors = {}
        self._buf = np.zeros(0, np.uint8)

    def __enter__(self) -> "ModelFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TensorInfo]:
        return iter(self.tensors.values())


def _align(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _open_map(path: Path) -> np.ndarray:
    try:
        regular_file(path)
    except SpecQuantError as exc:
        raise FormatError(str(exc)) from None
    try:
        size = path.stat().st_size
        if size == 0:
            raise FormatError(f"{path.name}: empty file, not a GGUF file")
        return np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as exc:
        raise FormatError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None


def read_model(path: str | os.PathLike[str]) -> ModelFile:
    """Parses and validates a GGUF file; raises FormatError with a one-line message on any problem."""
    return ModelFile(path)

