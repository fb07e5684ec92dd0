"""specquant_gguf.gguf: SQ4 packing, bit-exact write/read round trips, strict rejection of bad files."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from specquant_gguf.errors import FormatError, SpecQuantError
from specquant_gguf.gguf import (SQ4_TYPE_ID, TYPE_Q4_0, TYPE_Q4_1, ModelWriter, Q8_0Weight, RawTensor,
                                   SQ4Weight, pack_sq4, read_model, unpack_sq4)


def _rand_sq4(rng: np.random.Generator, rows: int, k: int, g: int) -> tuple[np.ndarray, np.ndarray]:
    q = rng.integers(-8, 8, size=(rows, k), dtype=np.int8)
    d = (rng.standard_normal((rows, k // g)) * 0.01).astype(np.float16)
    return q, d


# -- SQ4 packing ---------------------------------------------------------------------------------

def test_sq4_byte_layout_matches_format_md() -> None:
    """FORMAT.md §3.1 by hand: fp16 d, then byte i = value i (low nibble) | value i+G/2 (high)."""
    g = 8
    q = np.array([[0, 1, 7, -8, -1, 2, -3, 4]], dtype=np.int8)
    d = np.array([[1.5]], dtype=np.float16)
    raw = pack_sq4(q, d, g)
    assert raw.shape == (1, 2 + g // 2)
    assert raw[0, :2].tobytes() == struct.pack("<e", 1.5)
    expect = [(int(q[0, i]) & 0xF) | ((int(q[0, i + 4]) & 0xF) << 4) for i in range(4)]
    assert raw[0, 2:].tolist() == expect
    assert raw[0, 2] == 0xF0  # value 0 = 0 (low), value 4 = -1 = 0xF (high)


@pytest.mark.parametrize("g", [2, 32, 64, 128, 576])
def test_sq4_pack_unpack_round_trip(g: int) -> None:
    rng = np.random.default_rng(g)
    k = g * 3
    q, d = _rand_sq4(rng, 5, k, g)
    raw = pack_sq4(q, d, g)
    assert raw.shape == (5, 3 * (2 + g // 2))
    q2, d2 = unpack_sq4(raw, k, g)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(d2.view(np.uint16), d.view(np.uint16))


def test_sq4_pack_rejects_bad_input() -> None:
    q = np.zeros((2, 64), np.int8)
    d = np.zeros((2, 2), np.float16)
    with pytest.raises(FormatError, match="\\[-8, 7\\]"):
        pack_sq4(q + 8, d, 32)
    with pytest.raises(FormatError, match="multiple"):
        pack_sq4(q[:, :40], d, 32)
    with pytest.raises(FormatError, match="shape"):
        pack_sq4(q, d[:, :1], 32)
    with pytest.raises(FormatError, match="float16"):
        pack_sq4(q, d.astype(np.float32), 32)
    with pytest.raises(FormatError, match="even"):
        pack_sq4(q, d, 3)


# -- round trip of every tensor type ------------------------------------------------------------

def _write_all_types(path: Path, rng: np.random.Generator) -> dict:
    g = 32
    q, d = _rand_sq4(rng, 48, 128, g)
    w_q8 = rng.standard_normal((16, 64)).astype(np.float32)
    w_q4 = rng.standard_normal((8, 64)).astype(np.float32)
    payloads = {
        "f32": rng.standard_normal((3, 7)).astype(np.float32),
        "f16": rng.standard_normal((4, 32)).astype(np.float16),
        "i16": rng.integers(-30000, 30000, size=(9,), dtype=np.int16),
        "i32": rng.integers(-2**31, 2**31 - 1, size=(2, 3), dtype=np.int32),
        "i8": rng.integers(-128, 127, size=(5,), dtype=np.int8),
        "spec": rng.standard_normal((6, 4, 2)).astype(np.float16),
        "sq4": SQ4Weight(q, d, g),
        "q8": Q8_0Weight.from_float(w_q8),
        "q4_0": RawTensor(TYPE_Q4_0, gguf.quants.quantize(w_q4, gguf.GGMLQuantizationType.Q4_0), w_q4.shape),
        "q4_1": RawTensor(TYPE_Q4_1, gguf.quants.quantize(w_q4, gguf.GGMLQuantizationType.Q4_1), w_q4.shape),
    }
    with ModelWriter(path) as w:
        w.add_kv("specquant.group_size", g)
        w.add_kv("k.u32", 7)
        w.add_kv("k.i32", -7)
        w.add_kv("k.u8", 200, gguf.GGUFValueType.UINT8)
        w.add_kv("k.i64", -2**40)
        w.add_kv("k.u64", 2**40, gguf.GGUFValueType.UINT64)
        w.add_kv("k.f32", 0.5)
        w.add_kv("k.f64", 0.1, gguf.GGUFValueType.FLOAT64)
        w.add_kv("k.bool", True)
        w.add_kv("k.str", "héllo")
        w.add_kv("k.strs", ["a", "bb", "ccc ü"])
        w.add_kv("k.ints", [1, -2, 3])
        w.add_kv("k.floats", np.array([0.25, 1.5], np.float32))
        w.add_kv("k.bools", [True, False])
        w.add_kv("k.u8s", [1, 2, 255], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8)
        for name, p in payloads.items():
            w.add_tensor(name, p)
    return payloads


def test_round_trip_every_type_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "all.gguf"
    p = _write_all_types(path, rng)
    m = read_model(path)
    assert m.version == 3 and m.alignment == 32
    md = m.metadata
    assert md["general.architecture"] == "llama" and md["general.alignment"] == 32
    assert (md["k.u32"], md["k.i32"], md["k.u8"], md["k.i64"], md["k.u64"]) == (7, -7, 200, -2**40, 2**40)
    assert md["k.f32"] == 0.5 and md["k.f64"] == 0.1 and md["k.bool"] is True and md["k.str"] == "héllo"
    assert md["k.strs"] == ["a", "bb", "ccc ü"] and md["k.ints"] == [1, -2, 3]
    assert md["k.floats"] == [0.25, 1.5] and md["k.bools"] == [True, False] and md["k.u8s"] == [1, 2, 255]
    assert m.kv_types["k.u8s"] == (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8)
    for name in ("f32", "f16", "i16", "i32", "i8", "spec"):
        a = m.array(name)
        assert a.shape == p[name].shape and a.dtype == p[name].dtype.newbyteorder("<")
        assert a.tobytes() == p[name].tobytes(), name
    t = m.tensors["spec"]
    assert t.ne == (2, 4, 6) and t.type_name == "F16"
    sq = m.tensors["sq4"]
    assert sq.type_id == SQ4_TYPE_ID and sq.type_name == "SQ4" and sq.ne == (128, 48)
    assert sq.nbytes == 48 * 4 * 18
    q, d = m.sq4("sq4")
    np.testing.assert_array_equal(q, p["sq4"].q)
    np.testing.assert_array_equal(d.view(np.uint16), p["sq4"].d.view(np.uint16))
    np.testing.assert_array_equal(m.dequantize("sq4"), p["sq4"].dequantize())
    assert m.tensors["q8"].raw.tobytes() == p["q8"].raw.tobytes()
    np.testing.assert_array_equal(m.dequantize("q8"), p["q8"].dequantize())
    for name, qt in (("q4_0", gguf.GGMLQuantizationType.Q4_0), ("q4_1", gguf.GGMLQuantizationType.Q4_1)):
        assert m.tensors[name].raw.tobytes() == p[name].raw.tobytes()
        np.testing.assert_array_equal(m.dequantize(name), gguf.quants.dequantize(p[name].raw, qt))
    np.testing.assert_array_equal(m.dequantize("f16"), p["f16"].astype(np.float32))
    for t in m:
        assert t.offset % 32 == 0


def test_standard_files_open_in_gguf_reader(tiny_f16, tiny_q8) -> None:
    """f16/q8 files hold only ggml types: the gguf package's own reader must agree with ours."""
    for tm in (tiny_f16, tiny_q8):
        ours = read_model(tm.path)
        theirs = gguf.GGUFReader(tm.path)
        assert {t.name for t in theirs.tensors} == set(ours.tensors)
        for t in theirs.tensors:
            o = ours.tensors[t.name]
            assert int(t.tensor_type) == o.type_id and tuple(int(x) for x in t.shape) == o.ne
            assert t.data_offset == o.offset and bytes(t.data.tobytes()) == o.raw.tobytes()
        assert theirs.fields["tokenizer.ggml.tokens"].contents() == ours.metadata["tokenizer.ggml.tokens"]


def test_sq4_file_header_patched_correctly(tiny_sq4) -> None:
    """The tensor-info entry of an SQ4 tensor carries id 0x5130 and ne = [C_in, C_out]."""
    raw = tiny_sq4.path.read_bytes()
    name = b"blk.0.ffn_down.weight"
    at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims, ne0, ne1, type_id = struct.unpack_from("<IQQI", raw, at)
    assert (n_dims, ne0, ne1, type_id) == (2, 256, 128, SQ4_TYPE_ID)


def test_copy_kv_from_keeps_types(tmp_path: Path, tiny_sq4) -> None:
    src = read_model(tiny_sq4.path)
    with ModelWriter(tmp_path / "copy.gguf") as w:
        n = w.copy_kv_from(src)
        w.add_tensor("x", np.zeros(4, np.float32))
    assert n == sum(k.startswith("tokenizer.") for k in src.metadata)
    dst = read_model(tmp_path / "copy.gguf")
    for k, v in src.metadata.items():
        if k.startswith("tokenizer."):
            assert dst.metadata[k] == v and dst.kv_types[k] == src.kv_types[k]
    assert "specquant.method" not in dst.metadata


# -- writer errors and atomicity -------------------------------------------------------------------

def test_writer_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecQuantError, match="does not exist"):
        ModelWriter(tmp_path / "nope" / "x.gguf")


def test_writer_error_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    with pytest.raises(RuntimeError):
        with ModelWriter(target) as w:
            w.add_tensor("a", np.zeros(4, np.float32))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_during_write_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.gguf"
    with pytest.raises(FormatError, match="group_size"):  # SQ4 without the group-size key
        with ModelWriter(target) as w:
            q, d = _rand_sq4(np.random.default_rng(0), 2, 64, 32)
            w.add_tensor("a", SQ4Weight(q, d, 32))
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_payloads(tmp_path: Path) -> None:
    with ModelWriter(tmp_path / "x.gguf") as w:
        w.add_kv("specquant.group_size", 32)
        with pytest.raises(FormatError, match="float64"):
            w.add_tensor("a", np.zeros(4, np.float64))
        with pytest.raises(FormatError, match="twice"):
            w.add_kv("specquant.group_size", 64)
        with pytest.raises(FormatError, match="empty"):
            w.add_kv("k.empty", [])
        with pytest.raises(FormatError, match="fit"):
            w.add_kv("k.u8", 300, gguf.GGUFValueType.UINT8)
        w.add_tensor("b", np.zeros(4, np.float32))
        with pytest.raises(FormatError, match="Duplicated"):
            w.add_tensor("b", np.zeros(4, np.float32))
        with pytest.raises(FormatError, match="bytes"):
            w.add_tensor("c", RawTensor(TYPE_Q4_0, np.zeros(10, np.uint8), (1, 32)))
        with pytest.raises(FormatError, match="Q8_0"):
            Q8_0Weight.from_float(np.zeros((2, 20)))
    with pytest.raises(FormatError, match="group size 64"):
        with ModelWriter(tmp_path / "y.gguf") as w:
            w.add_kv("specquant.group_size", 32)
            q, d = _rand_sq4(np.random.default_rng(0), 2, 128, 64)
            w.add_tensor("a", SQ4Weight(q, d, 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"]


# -- strict reading ---------------------------------------------------------------------------------

def _reject(path: Path, data: bytes, match: str | None = None) -> str:
    path.write_bytes(data)
    with pytest.raises(FormatError, match=match) as info:
        read_model(path)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


def test_truncated_files_rejected_everywhere(tmp_path: Path, tiny_sq4_spectral) -> None:
    data = tiny_sq4_spectral.path.read_bytes()
    m = read_model(tiny_sq4_spectral.path)
    header_end = m.data_offset
    last_end = max(t.offset + t.nbytes for t in m)
    assert last_end == len(data)
    cuts = sorted(set(list(range(0, 64)) + list(range(64, header_end, 97)) + [header_end - 1, header_end]
                      + [t.offset + 1 for t in m] + [last_end - 1]))
    bad = tmp_path / "cut.gguf"
    for n in cuts:
        if n == 0:
            bad.write_bytes(b"")
            with pytest.raises(FormatError, match="empty"):
                read_model(bad)
            continue
        _reject(bad, data[:n])


def test_bad_magic_version_and_counts(tmp_path: Path, tiny_sq4) -> None:
    data = bytearray(tiny_sq4.path.read_bytes())
    bad = tmp_path / "bad.gguf"
    _reject(bad, b"GGUX" + bytes(data[4:]), "magic")
    _reject(bad, bytes(data[:4]) + struct.pack("<I", 1) + bytes(data[8:]), "version")
    _reject(bad, bytes(data[:4]) + struct.pack("<I", 99) + bytes(data[8:]), "version")
    _reject(bad, bytes(data[:8]) + struct.pack("<Q", 2**62) + bytes(data[16:]), "exceed")
    _reject(bad, bytes(data[:16]) + struct.pack("<Q", 2**40) + bytes(data[24:]), "exceed")
    with pytest.raises(FormatError, match="no such file"):
        read_model(tmp_path / "missing.gguf")
    with pytest.raises(FormatError, match="is a directory"):
        read_model(tmp_path)


def _tensor_info_at(data: bytes, name: str) -> int:
    """Byte position just after a tensor-info entry's name (n_dims follows)."""
    enc = name.encode()
    return data.index(struct.pack("<Q", len(enc)) + enc) + 8 + len(enc)


def test_bad_tensor_info_rejected(tmp_path: Path, tiny_sq4) -> None:
    data = tiny_sq4.path.read_bytes()
    bad = tmp_path / "bad.gguf"
    at = _tensor_info_at(data, "blk.0.ffn_down.weight")  # n_dims=2, ne0, ne1, type, offset

    def patched(off: int, fmt: str, *vals: int) -> bytes:
        b = bytearray(data)
        struct.pack_into(fmt, b, at + off, *vals)
        return bytes(b)

    _reject(bad, patched(0, "<I", 7), "dimensions")
    _reject(bad, patched(4, "<Q", 0), "shape")
    _reject(bad, patched(4, "<Q", 250), "multiple")  # 250 % 32 != 0
    _reject(bad, patched(20, "<I", 12345), "unknown tensor type")
    _reject(bad, patched(24, "<Q", 3), "offset")  # not aligned
    _reject(bad, patched(24, "<Q", 2**40), "past the end")
    _reject(bad, patched(24, "<Q", 0), "overlap")
    _reject(bad, patched(12, "<Q", 2**47))  # huge shape: too big or past the end


def test_bad_metadata_rejected(tmp_path: Path, tiny_sq4) -> None:
    data = tiny_sq4.path.read_bytes()
    bad = tmp_path / "bad.gguf"
    key = b"specquant.group_size"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    b = bytearray(data)
    struct.pack_into("<I", b, at, 77)  # unknown value type
    _reject(bad, bytes(b), "unknown value type")
    b = bytearray(data)
    struct.pack_into("<I", b, at + 4, 24)  # G = 24: 256 % 24 != 0
    _reject(bad, bytes(b), "multiple")
    b = bytearray(data)
    struct.pack_into("<I", b, at + 4, 7)  # odd group size
    _reject(bad, bytes(b), "even")
    key = b"tokenizer.ggml.tokens"
    at = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    b = bytearray(data)
    struct.pack_into("<Q", b, at + 8, 2**50)  # array length
    _reject(bad, bytes(b))
    b = bytearray(data)
    struct.pack_into("<Q", b, at + 16, 2**60)  # first string's length
    _reject(bad, bytes(b))
    b = bytearray(data)
    b[at + 24] = 0xFF  # invalid UTF-8 in the first token
    _reject(bad, bytes(b), "UTF-8")


def test_random_corruption_never_leaks_other_exceptions(tmp_path: Path, tiny_sq4) -> None:
    """Flip bytes all over the header: the reader either accepts the file or raises FormatError."""
    data = tiny_sq4.path.read_bytes()
    header_end = read_model(tiny_sq4.path).data_offset
    rng = np.random.default_rng(1)
    bad = tmp_path / "bad.gguf"
    for _ in range(300):
        b = bytearray(data)
        for pos in rng.integers(0, header_end, size=3):
            b[pos] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(b))
        try:
            read_model(bad)
        except FormatError as exc:
            assert "\n" not in str(exc)


def test_sq4_access_errors(tiny_sq4) -> None:
    m = read_model(tiny_sq4.path)
    with pytest.raises(FormatError, match="not SQ4"):
        m.sq4("output_norm.weight")
    with pytest.raises(FormatError, match="no tensor"):
        m.dequantize("nope")
    with pytest.raises(FormatError, match="not a plain type"):
        m.array("blk.0.attn_q.weight")


def test_smollm2_source_reads(tmp_path: Path) -> None:
    from conftest import smollm2_path
    p = smollm2_path()
    if p is None:
        pytest.skip("SmolLM2 GGUF not available")
    m = read_model(p)
    assert m.metadata["llama.block_count"] == 30 and len(m.metadata["tokenizer.ggml.tokens"]) == 49152
    w = m.dequantize("blk.0.attn_k.weight")
    assert w.shape == (192, 576) and np.isfinite(w).all()
    assert os.path.getsize(p) == max(t.offset + t.nbytes for t in m)
