"""The only code that writes GGUF files: ModelWriter (atomic: temp file + rename).

The header, metadata and tensor table go through the `gguf` package's GGUFWriter; our SQ4 type (id
0x5130) is unknown to it, so an SQ4 tensor is registered as its raw bytes (an int8 vector) and the
tensor-info entry (type id and element shape) is patched before the header is written. That patch
touches GGUFWriter's tensor-info records, so pyproject.toml pins the gguf versions it was checked on.

Tensor data is streamed: add_tensor writes each tensor's bytes (aligned) to a spool file next to the
output at once and keeps only its name, type and shape, so the writer never holds the payloads of a
model (the 8B conversion must fit in 10 GiB). finish() writes the header and the tensor table to the
temporary output and appends the spooled data in kernel space (copy_file_range); the bytes are the
ones GGUFWriter itself would write for the same tensors.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import gguf
from gguf import GGUFValueType

from ..errors import FormatError
from .constants import ALIGNMENT, SQ4_TYPE_ID, TYPE_Q8_0
from .types import NUMPY_TO_TYPE, Payload, Q8_0Weight, RawTensor, SQ4Weight, block_info, type_name

if TYPE_CHECKING:
    from .reader import ModelFile

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

    The output appears only when the `with` block ends without an exception (or finish() is called);
    on any error the temporary files are removed, so an interrupted conversion leaves nothing.
    Tensors are written in the order they were added, each to the spool file when added (the
    payload is not kept).
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
        self._spool: Any = None  # data of the tensors added so far (aligned), in the output folder
        self.data_bytes = 0  # bytes of tensor data (with alignment padding) written so far

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
            if dtype not in NUMPY_TO_TYPE or payload.ndim == 0 or payload.ndim > 4:
                raise FormatError(f"tensor {name!r}: cannot store a {payload.ndim}-D {payload.dtype} array "
                                  "(use float32/float16/int8/int16/int32, 1-4 dims)")
            self._check_shape(name, payload.shape)
            arr = np.ascontiguousarray(payload, dtype=dtype)  # little-endian, as the file stores it
            self._write_call(name, lambda: self._writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes))
            self._spool_write(arr)
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
        self._write_call(name, lambda: self._writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes))
        info = self._writer.tensors[-1][name]
        info.shape = tuple(int(s) for s in shape)  # numpy order; GGUFWriter reverses it into ne
        info.dtype = type_id  # type: ignore[assignment]  # packed with struct "I", any int works
        self._spool_write(data)

    def _spool_write(self, arr: np.ndarray) -> None:
        """The tensor's bytes (little-endian, as GGUFWriter writes them) and the alignment padding."""
        if self._done:
            raise FormatError("the file is already finished")
        if self._spool is None:
            try:
                self._spool = tempfile.NamedTemporaryFile(prefix=self.path.name + ".data-",
                                                          dir=self.path.parent or ".", delete=False)
            except OSError as exc:
                raise FormatError(f"cannot write next to {str(self.path)!r}: {exc.strerror or exc}") from None
        try:
            self._spool.write(memoryview(np.ascontiguousarray(arr)).cast("B"))
            pad = _pad(arr.nbytes) - arr.nbytes
            if pad:
                self._spool.write(bytes(pad))
        except OSError as exc:
            raise FormatError(f"cannot write next to {str(self.path)!r}: {exc.strerror or exc}") from None
        self.data_bytes += arr.nbytes + pad

    def _drop_spool(self) -> None:
        if self._spool is not None:
            self._spool.close()
            Path(self._spool.name).unlink(missing_ok=True)
            self._spool = None

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
        try:
            self._check_group_size()
        except BaseException:
            self.abort()
            raise
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=self.path.name + ".tmp-", dir=self.path.parent or ".")
        except OSError as exc:
            self._writer.close()
            self._drop_spool()
            self._done = True
            raise FormatError(f"cannot write {str(self.path)!r}: {exc.strerror or exc}") from None
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            w = self._writer
            w.open_output_file(tmp)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_ti_data_to_file()
            assert w.fout is not None and len(w.fout) == 1
            f = w.fout[0]
            w.write_padding(f, f.tell())
            f.flush()
            if self._spool is not None:
                self._spool.flush()
                _append_file(self._spool.fileno(), f.fileno(), self.data_bytes)
            os.fsync(f.fileno())
            w.close()
            os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
            os.replace(tmp, self.path)
        except BaseException as exc:
            self._writer.close()
            tmp.unlink(missing_ok=True)
            self._drop_spool()
            if isinstance(exc, OSError):
                raise FormatError(f"cannot write {str(self.path)!r}: {exc.strerror or exc}") from None
            raise
        finally:
            self._done = True
        self._drop_spool()
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._drop_spool()
        self._done = True

    def __enter__(self) -> "ModelWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def _pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _append_file(src_fd: int, dst_fd: int, nbytes: int) -> None:
    """Appends the first nbytes of src to dst (at dst's position), in kernel space where possible."""
    os.lseek(src_fd, 0, os.SEEK_SET)
    left = nbytes
    while left > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, min(left, 1 << 30))
        except (AttributeError, OSError):  # no copy_file_range (other OS, other file systems)
            n = -1
        if n <= 0:
            break
        left -= n
    while left > 0:
        chunk = os.read(src_fd, min(left, 1 << 24))
        if not chunk:
            raise OSError(f"spool file ended {left} bytes early")
        os.write(dst_fd, chunk)
        left -= len(chunk)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask

