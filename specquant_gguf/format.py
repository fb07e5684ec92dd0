"""GGUF files with the SpecQuant SQ4 tensor type: writing (ModelWriter) and strict reading (read_model).

The byte layout is docs/FORMAT.md. Writing goes through the `gguf` package's GGUFWriter; our SQ4
type (id 0x5130) is unknown to it, so an SQ4 tensor is handed to GGUFWriter as its raw bytes (an
int8 array of the byte shape) and the tensor-info entry (type id and element shape) is patched
before the header is written. Reading uses our own strict parser: GGUFReader cannot open a file
holding an unknown type id and does not validate offsets, so every number in the header is checked
here before it is used, and every problem becomes a one-line FormatError.
"""
from __future__ import annotations

import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np

from .errors import FormatError

try:  # the gguf package does the writing and the standard quant types
    import gguf
    from gguf import GGMLQuantizationType, GGUFValueType
except ImportError as _exc:  # pragma: no cover - gguf is a hard dependency
    raise ImportError("specquant_gguf.format needs the 'gguf' package (pip install gguf)") from _exc

# ---------------------------------------------------------------------------------------------
# types

SQ4_TYPE_ID = 0x5130  # 20784: far above ggml's range so future ggml types cannot collide

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
SUPPORTED_VERSIONS = (2, 3)  # v2 and v3 share the layout (64-bit counts); v1 is not supported

TYPE_F32 = int(GGMLQuantizationType.F32)
TYPE_F16 = int(GGMLQuantizationType.F16)
TYPE_Q4_0 = int(GGMLQuantizationType.Q4_0)
TYPE_Q4_1 = int(GGMLQuantizationType.Q4_1)
TYPE_Q8_0 = int(GGMLQuantizationType.Q8_0)
TYPE_I8 = int(GGMLQuantizationType.I8)
TYPE_I16 = int(GGMLQuantizationType.I16)
TYPE_I32 = int(GGMLQuantizationType.I32)
TYPE_BF16 = int(GGMLQuantizationType.BF16)

# plain (block size 1) types and their numpy dtypes
_PLAIN_DTYPES: dict[int, np.dtype] = {
    TYPE_F32: np.dtype("<f4"),
    TYPE_F16: np.dtype("<f2"),
    TYPE_I8: np.dtype("i1"),
    TYPE_I16: np.dtype("<i2"),
    TYPE_I32: np.dtype("<i4"),
    int(GGMLQuantizationType.I64): np.dtype("<i8"),
    int(GGMLQuantizationType.F64): np.dtype("<f8"),
}
# what ModelWriter stores from a plain numpy array (64-bit types are readable but never written)
_NUMPY_TO_TYPE: dict[np.dtype, int] = {_PLAIN_DTYPES[t]: t for t in (TYPE_F32, TYPE_F16, TYPE_I8, TYPE_I16, TYPE_I32)}


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


# ---------------------------------------------------------------------------------------------
# writing

_INT_TYPES = {GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
              GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64}
_INT_RANGES = {
    GGUFValueType.UINT8: (0, 2**8 - 1), GGUFValueType.INT8: (-(2**7), 2**7 - 1),
    GGUFValueType.UINT16: (0, 2**16 - 1), GGUFValueType.INT16: (-(2**15), 2**15 - 1),
    GGUFValueType.UINT32: (0, 2**32 - 1), GGUFValueType.INT32: (-(2**31), 2**31 - 1),
    GGUFValueType.UINT64: (0, 2**64 - 1), GGUFValueType.INT64: (-(2**63), 2**63 - 1),
}
_FLOAT_TYPES = {GGUFValueType.FLOAT32, GGUFValueType.FLOAT64}


def _infer_scalar_type(value: Any) -> GGUFValueType:
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, (int, np.integer)):
        # u32 like llama.cpp's own keys; negative or huge values get a signed/64-bit type
        v = int(value)
        if 0 <= v < 2**32:
            return GGUFValueType.UINT32
        if -(2**31) <= v < 2**31:
            return GGUFValueType.INT32
        return GGUFValueType.INT64
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32
    if isinstance(value, (str, bytes)):
        return GGUFValueType.STRING
    raise FormatError(f"cannot store a value of type {type(value).__name__} in GGUF metadata")


def _infer_array_subtype(values: Sequence[Any]) -> GGUFValueType:
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if kind == "b":
            return GGUFValueType.BOOL
        if kind in "iu":
            return GGUFValueType.INT32
        if kind == "f":
            return GGUFValueType.FLOAT32
        if kind in "SUO":
            return GGUFValueType.STRING
        raise FormatError(f"cannot store a {values.dtype} array in GGUF metadata")
    first = values[0]
    if isinstance(first, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(first, (int, np.integer)):
        return GGUFValueType.INT32  # llama.cpp stores token types as i32
    return _infer_scalar_type(first)


def _normalise_value(key: str, value: Any, vtype: GGUFValueType, sub_type: GGUFValueType | None) -> Any:
    """Check a value against its GGUF type, and convert numpy things to plain Python."""
    if vtype == GGUFValueType.ARRAY:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        value = list(value)
        if not value:
            raise FormatError(f"metadata array {key!r} is empty (GGUF cannot store empty arrays)")
        assert sub_type is not None
        return [_normalise_value(key, v, sub_type, None) for v in value]
    if vtype in _INT_TYPES:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise FormatError(f"metadata {key!r}: expected an integer, got {value!r}")
        lo, hi = _INT_RANGES[vtype]
        if not lo <= int(value) <= hi:
            raise FormatError(f"metadata {key!r}: {value} does not fit in {vtype.name}")
        return int(value)
    if vtype in _FLOAT_TYPES:
        return float(value)
    if vtype == GGUFValueType.BOOL:
        return bool(value)
    if vtype == GGUFValueType.STRING:
        if not isinstance(value, (str, bytes)):
            raise FormatError(f"metadata {key!r}: expected a string, got {type(value).__name__}")
        return value
    raise FormatError(f"metadata {key!r}: unsupported value type {vtype!r}")


class ModelWriter:
    """Writes one GGUF file atomically: to FILE.tmp-XXXX in the target folder, renamed on success.

        with ModelWriter("out.sq4.gguf") as w:
            w.add_kv("specquant.group_size", 64)
            w.add_tensor("blk.0.attn_q.weight", SQ4Weight(q, d, 64))

    Nothing is written before the `with` block ends without an exception (or finish() is called);
    on any error the temporary file is removed, so an interrupted conversion leaves nothing.
    Tensors are written in the order they were added; payloads are held (not copied) until then.
    """

    def __init__(self, path: str | os.PathLike[str], arch: str = "llama") -> None:
        self.path = Path(path)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise FormatError(f"output folder {str(folder)!r} does not exist")
        if self.path.is_dir():
            raise FormatError(f"output path {str(self.path)!r} is a folder")
        self._writer = gguf.GGUFWriter(None, arch)
        self._writer.add_key_value("general.alignment", ALIGNMENT, GGUFValueType.UINT32)
        self._writer.data_alignment = ALIGNMENT
        self._keys: set[str] = {"general.architecture", "general.alignment"}
        self._sq4_group_sizes: dict[str, int] = {}
        self._done = False

    # -- metadata ---------------------------------------------------------------------------
    def add_kv(self, key: str, value: Any, vtype: GGUFValueType | int | None = None,
               sub_type: GGUFValueType | int | None = None) -> None:
        """One metadata entry. vtype None: inferred (int -> u32 when it fits, float -> f32, list -> array
        with its element type inferred: int -> i32, float -> f32, str -> string)."""
        if not isinstance(key, str) or not key:
            raise FormatError(f"bad metadata key {key!r}")
        if key in ("general.architecture", "general.alignment") and key in self._keys:
            if key == "general.alignment" and value != ALIGNMENT:
                raise FormatError(f"only general.alignment = {ALIGNMENT} is supported")
            if key == "general.architecture":
                self._writer.add_key_value(key, str(value), GGUFValueType.STRING)
            return
        if key in self._keys:
            raise FormatError(f"metadata key {key!r} added twice")
        if vtype is None:
            is_array = isinstance(value, (list, tuple, np.ndarray))
            vtype = GGUFValueType.ARRAY if is_array else _infer_scalar_type(value)
        vtype = GGUFValueType(int(vtype))
        if vtype == GGUFValueType.ARRAY:
            if sub_type is None:
                if len(value) == 0:
                    raise FormatError(f"metadata array {key!r} is empty (GGUF cannot store empty arrays)")
                sub_type = _infer_array_subtype(value)
            sub_type = GGUFValueType(int(sub_type))
            if sub_type == GGUFValueType.ARRAY:
                raise FormatError(f"metadata {key!r}: nested arrays are not supported")
        else:
            sub_type = None
        value = _normalise_value(key, value, vtype, sub_type)
        self._writer.add_key_value(key, value, vtype, sub_type=sub_type)
        self._keys.add(key)

    def copy_kv_from(self, reader: "ModelFile", prefixes: Sequence[str] = ("tokenizer.",)) -> int:
        """Copies every metadata entry whose key starts with one of prefixes, keeping its GGUF type.
        Returns how many were copied. Keys already present here are left alone."""
        n = 0
        for key, value in reader.metadata.items():
            if not any(key.startswith(p) for p in prefixes) or key in self._keys:
                continue
            vtype, sub_type = reader.kv_types[key]
            if vtype == GGUFValueType.ARRAY and len(value) == 0:
                continue  # GGUF cannot store empty arrays; a reader treats absent like empty
            self.add_kv(key, value, vtype, sub_type)
            n += 1
        return n

    # -- tensors ----------------------------------------------------------------------------
    def add_tensor(self, name: str, payload: Payload) -> None:
        """A tensor: numpy F32/F16/I8/I16/I32 array (numpy shape = reversed ne), SQ4Weight,
        Q8_0Weight or RawTensor."""
        if not isinstance(name, str) or not name or len(name.encode()) >= 64:
            raise FormatError(f"bad tensor name {name!r} (1..63 bytes)")
        if isinstance(payload, SQ4Weight):
            self._add_sq4(name, payload)
        elif isinstance(payload, Q8_0Weight):
            self._add_raw(name, TYPE_Q8_0, payload.raw, payload.shape)
        elif isinstance(payload, RawTensor):
            self._add_raw(name, int(payload.type_id), payload.raw, payload.shape)
        elif isinstance(payload, np.ndarray):
            dtype = payload.dtype.newbyteorder("<") if payload.dtype.byteorder == ">" else payload.dtype
            if dtype not in _NUMPY_TO_TYPE or payload.ndim == 0 or payload.ndim > 4:
                raise FormatError(f"tensor {name!r}: cannot store a {payload.ndim}-D {payload.dtype} array "
                                  "(use float32/float16/int8/int16/int32, 1-4 dims)")
            self._check_shape(name, payload.shape)
            self._write_call(name, lambda: self._writer.add_tensor(name, np.ascontiguousarray(payload)))
        else:
            raise FormatError(f"tensor {name!r}: unsupported payload {type(payload).__name__}")

    def _write_call(self, name: str, fn) -> None:
        try:
            fn()
        except ValueError as exc:  # e.g. a duplicate name, reported by GGUFWriter
            raise FormatError(f"tensor {name!r}: {exc}") from None

    @staticmethod
    def _check_shape(name: str, shape: Sequence[int]) -> None:
        if not shape or len(shape) > 4 or any(int(s) <= 0 for s in shape):
            raise FormatError(f"tensor {name!r}: bad shape {tuple(shape)}")

    def _add_raw(self, name: str, type_id: int, raw: np.ndarray, shape: Sequence[int]) -> None:
        self._check_shape(name, shape)
        block, nbytes = block_info(type_id)
        if shape[-1] % block:
            raise FormatError(f"tensor {name!r}: row length {shape[-1]} is not a multiple of {type_name(type_id)}'s block {block}")
        expect = math.prod(shape) // block * nbytes
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        if raw.size != expect:
            raise FormatError(f"tensor {name!r}: {raw.size} bytes, expected {expect} for {type_name(type_id)} {tuple(shape)}")
        self._add_patched(name, raw, type_id, shape)

    def _add_sq4(self, name: str, w: SQ4Weight) -> None:
        raw = w.pack()
        self._check_shape(name, w.q.shape)
        self._sq4_group_sizes[name] = int(w.group_size)
        self._add_patched(name, raw, SQ4_TYPE_ID, w.q.shape)

    def _add_patched(self, name: str, raw: np.ndarray, type_id: int, shape: Sequence[int]) -> None:
        # GGUFWriter knows only ggml types: hand it the bytes as an I8 vector, then patch the
        # tensor-info entry (written later by write_ti_data_to_file) to the real type and shape.
        data = raw.reshape(-1).view(np.int8)
        self._write_call(name, lambda: self._writer.add_tensor(name, data))
        info = self._writer.tensors[-1][name]
        info.shape = tuple(int(s) for s in shape)  # numpy order; GGUFWriter reverses it into ne
        info.dtype = type_id  # type: ignore[assignment]  # packed with struct "I", any int works

    # -- finishing --------------------------------------------------------------------------
    def _check_group_size(self) -> None:
        if not self._sq4_group_sizes:
            return
        kv = self._writer.kv_data[0].get("specquant.group_size")
        if kv is None:
            raise FormatError("the file has SQ4 tensors but no specquant.group_size")
        file_g = int(kv.value)
        for name, g in self._sq4_group_sizes.items():
            shape = self._writer.tensors[-1][name].shape
            expect = file_g if file_g > 0 else shape[-1]  # 0 = per-row groups
            if g != expect:
                raise FormatError(f"tensor {name!r}: SQ4 group size {g} != specquant.group_size {file_g}")

    def finish(self) -> Path:
        """Writes the file (temp file + rename). Called by __exit__ when no exception occurred."""
        if self._done:
            return self.path
        self._check_group_size()
        fd, tmp_name = tempfile.mkstemp(prefix=self.path.name + ".tmp-", dir=self.path.parent or ".")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            w = self._writer
            w.open_output_file(tmp)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            assert w.fout is not None
            for f in w.fout:
                f.flush()
                os.fsync(f.fileno())
            w.close()
            os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
            os.replace(tmp, self.path)
        except BaseException as exc:
            self._writer.close()
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise FormatError(f"cannot write {str(self.path)!r}: {exc.strerror or exc}") from None
            raise
        finally:
            self._done = True
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._done = True

    def __enter__(self) -> "ModelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        spans.sort()
        for (s0, e0, n0), (s1, _e1, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise FormatError(f"tensors {n0!r} and {n1!r} overlap")

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
        if t.type_id not in _PLAIN_DTYPES:
            raise FormatError(f"tensor {name!r} is {t.type_name}, not a plain type")
        return t.raw.view(_PLAIN_DTYPES[t.type_id]).reshape(t.shape)

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
        if t.type_id in _PLAIN_DTYPES:
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
    if not path.exists():
        raise FormatError(f"{str(path)!r}: no such file")
    if not path.is_file():
        raise FormatError(f"{str(path)!r} is not a file")
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


LINEAR_PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def iter_linear_names(n_layers: int) -> Iterable[str]:
    """Names of the seven linear weights of each block, in file order."""
    for i in range(n_layers):
        for part in LINEAR_PARTS:
            yield f"blk.{i}.{part}.weight"
