"""`specquant convert` end to end on tiny synthetic models: files, metadata, agreement with the
reference oracle, bad command lines, and block-by-block memory."""
from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from specquant_gguf.arch import LINEARS
from specquant_gguf.convert.calibrate import Calibration
from specquant_gguf.cli import main
from specquant_gguf.gguf import SQ4_TYPE_ID, TYPE_F16, TYPE_F32, TYPE_Q8_0, read_model
from specquant_gguf.convert.sources import GGUFSource
from specquant_gguf.convert.forward import block_forward, head_logits, rms_norm
from specquant_gguf.convert.driver import convert_blocks, sim_block, write_blocks
from specquant_gguf.convert.quantize import fake_quant_q8_0, q8_0_weight
from specquant_gguf.convert.recipe import Recipe

from oracle.tinyllama import MemorySource, float_logits, tiny_config, write_gguf

FAST = ["--calib-windows", "2", "--calib-len", "32", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> tuple[MemorySource, Path]:
    src = MemorySource(tiny_config(n_layer=2), seed=0)
    return src, write_gguf(src, tmp_path_factory.mktemp("src") / "tiny.f32.gguf")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Self-generated calibration text is cached in the cache folder: keep the tests' out of the user's."""
    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path_factory.getbasetemp() / "specquant-cache"))


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "calib.jsonl"
    lines = ['{"text": "<t%d> <t%d> hello world number %d and more words"}' % (i, i + 7, i) for i in range(40)]
    p.write_text("\n".join(lines) + "\n")
    return p


def _convert(src_path: Path, out: Path, *extra: str) -> int:
    return main(["convert", str(src_path), "--out", str(out), *FAST, *extra])


def _ref_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from oracle.reference import ReferenceModel

    return ReferenceModel(path).forward(tokens)


def test_default_conversion_writes_a_complete_file(tiny_src, tmp_path: Path) -> None:
    src, path = tiny_src
    out = tmp_path / "tiny.sq4.gguf"
    assert _convert(path, out, "--group-size", "32") == 0
    m = read_model(out)
    md = m.metadata
    for key in ("specquant.version", "specquant.converter", "specquant.method", "specquant.preset",
                "specquant.group_size", "specquant.act_bits", "specquant.act_group_size", "specquant.rotation",
                "specquant.rotation.block", "specquant.spectral.axis", "specquant.spectral.k_max",
                "specquant.spectral.tau", "specquant.smooth.alpha", "specquant.calibration.source",
                "specquant.calibration.tokens", "llama.block_count", "llama.embedding_length",
                "llama.attention.head_count_kv", "llama.rope.freq_base", "tokenizer.ggml.tokens",
                "tokenizer.ggml.bos_token_id"):
        assert key in md, key
    assert md["general.architecture"] == "llama"
    assert md["specquant.method"] == "specquant" and md["specquant.group_size"] == 32
    assert md["specquant.rotation"] == "wht" and md["specquant.rotation.block"] == 32
    assert md["specquant.calibration.source"] == "self-generated"
    assert md["specquant.calibration.tokens"] == 64
    assert 0.0 <= md["specquant.smooth.alpha"] <= 1.0
    assert md["tokenizer.ggml.tokens"] == src.tokenizer_kv()["tokenizer.ggml.tokens"][0]
    types = {t.name: t.type_id for t in m}
    for i in range(2):
        for part in LINEARS:
            assert types[f"blk.{i}.{part}.weight"] == SQ4_TYPE_ID
        assert types[f"blk.{i}.attn_norm.weight"] == TYPE_F32
    assert types["token_embd.weight"] == TYPE_Q8_0 and "output.weight" not in types
    assert not list(tmp_path.glob("*.tmp*"))


def test_file_matches_simulation_and_approximates_float(tiny_src, tmp_path: Path, calib_file: Path) -> None:
    """The reference oracle (reading the file) agrees with the converter's own simulated forward,
    and the W4A4 model stays close to the float model: specquant closer than plain RTN."""
    src, path = tiny_src
    tokens = list(range(5, 60, 3))
    ref_fp = float_logits(src, torch.tensor([tokens]))[0].numpy()
    errs = {}
    for method in ("specquant", "rtn"):
        out = tmp_path / f"{method}.gguf"
        assert _convert(path, out, "--method", method, "--group-size", "32", "--calib", str(calib_file)) == 0
        got = _ref_logits(out, tokens)
        errs[method] = float(np.abs(got - ref_fp).mean() / np.abs(ref_fp).mean())
    md = read_model(tmp_path / "specquant.gguf").metadata
    assert md["specquant.calibration.source"] == "file:calib.jsonl" and md["specquant.calibration.tokens"] == 64
    assert errs["specquant"] < errs["rtn"]
    assert errs["specquant"] < 0.25, errs


def test_simulation_equals_reference_oracle(tiny_src, tmp_path: Path) -> None:
    """What the research tools measure (convert/qlinear.py) is what the file computes (oracle/reference.py)."""
    _, path = tiny_src
    source = GGUFSource(path)
    cfg = source.config
    calib = Calibration(torch.randint(3, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1)), "test")
    emb = source.token_embd()
    tokens = list(range(4, 40))
    for n, recipe in enumerate((Recipe(group_size=32), Recipe(group_size=64, spectral_k=3, spectral_axis="out"),
                                Recipe(group_size=32, act_bits=8, spectral_k=2, spectral_rule="softmax"),
                                Recipe(group_size=32, a8_linears=("attn_output", "ffn_down")))):
        qblocks = [qb for _, qb in convert_blocks(source, calib, recipe, emb)]
        blocks = [sim_block(qb, recipe) for qb in qblocks]
        out = tmp_path / f"sim{n}.gguf"
        write_blocks(source, recipe, calib, out, enumerate(qblocks))
        ref = _ref_logits(out, tokens)
        emb_q = q8_0_weight(emb)  # token_embd is stored as Q8_0
        x = emb_q[torch.tensor([tokens])]
        for norms, lin in blocks:
            x = block_forward(x, norms, cfg, lin=lin)
        h = rms_norm(x, source.output_norm(), cfg.rms_eps)
        sim = (fake_quant_q8_0(h) @ emb_q.t())[0].numpy()
        # only the fp32 summation order differs, but an activation that lands on the other side of
        # an int4 rounding boundary moves the next layer (docs/FORMAT.md §4.3): measured 7e-4 here;
        # a wrong formula or layout gives errors of order 1
        rel = np.linalg.norm(sim - ref) / np.linalg.norm(ref)
        assert rel < 5e-3, rel


@pytest.mark.parametrize("method,wtype", [("f16", TYPE_F16), ("q8", TYPE_Q8_0)])
def test_standard_types(tiny_src, tmp_path: Path, method: str, wtype: int) -> None:
    src, path = tiny_src
    out = tmp_path / f"{method}.gguf"
    assert _convert(path, out, "--method", method) == 0
    m = read_model(out)
    assert {t.type_id for t in m} <= {TYPE_F32, TYPE_F16, TYPE_Q8_0}
    assert m.tensor("blk.0.attn_q.weight").type_id == wtype
    assert m.metadata["specquant.method"] == method
    assert m.metadata["general.file_type"] == (1 if method == "f16" else 7)
    tokens = list(range(3, 30))
    ref_fp = float_logits(src, torch.tensor([tokens]))[0].numpy()
    got = _ref_logits(out, tokens)
    tol = 2e-2 if method == "f16" else 5e-2
    assert np.abs(got - ref_fp).max() < tol * np.abs(ref_fp).max()


def test_paper_preset_and_per_row_groups(tiny_src, tmp_path: Path) -> None:
    src, path = tiny_src
    out = tmp_path / "paper.gguf"
    assert _convert(path, out, "--preset", "paper") == 0
    m = read_model(out)
    md = m.metadata
    assert md["specquant.preset"] == "paper" and md["specquant.group_size"] == 0
    assert md["specquant.rotation"] == "none" and md["specquant.spectral.k_max"] == 16
    assert abs(md["specquant.smooth.alpha"] - 0.5) < 1e-6
    q, d = m.sq4("blk.0.ffn_down.weight")
    assert d.shape == (128, 1)  # one scale per row
    assert m.tensor("blk.0.attn_q.spectral").shape == (128, 16, 2)
    assert m.array("blk.0.attn_q.spectral_k").dtype == np.int16


def _fails(capsys, argv: list[str], code: int, needle: str) -> None:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own checks (types, choices) exit directly with 2
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == code, (rc, err)
    assert needle in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("extra,needle", [
    (["--group-size", "48"], "--group-size"),
    (["--alpha", "1.5"], "alpha"),
    (["--alpha", "strong"], "alpha"),
    (["--calib-windows", "0"], "--calib-windows"),
    (["--calib-len", "4"], "--calib-len"),
    (["--threads", "-1"], "--threads"),
    (["--rotation", "wht", "--group-size", "0"], "power-of-two"),
    (["--method", "rtn", "--alpha", "0.5"], "--alpha"),
    (["--method", "f16", "--group-size", "32"], "--group-size"),
    (["--method", "q8", "--calib", "x.txt"], "--calib"),
    (["--method", "smoothquant", "--spectral-k", "4"], "--spectral-k"),
    (["--spectral-k", "-1"], "--spectral-k"),
    (["--spectral-k", "100"], "--spectral-k"),
    (["--spectral-axis", "out"], "--spectral-k"),
    (["--act-bits", "3"], "--act-bits"),
    (["--no-gptq", "--act-order"], "--act-order"),
    (["--calib", "/nonexistent/calib.txt"], "no such file"),
    (["--preset", "paper", "--method", "rtn"], "--preset"),
])
def test_bad_command_lines_exit_2(tiny_src, tmp_path: Path, capsys, extra: list[str], needle: str) -> None:
    _, path = tiny_src
    out = tmp_path / "x.gguf"
    _fails(capsys, ["convert", str(path), "--out", str(out), *FAST, *extra], 2, needle)
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))


def test_group_size_must_divide_every_input(tmp_path: Path, capsys) -> None:
    src = MemorySource(tiny_config(n_layer=1, n_embd=96, n_head=3, n_head_kv=1, n_ff=192), seed=1)
    path = write_gguf(src, tmp_path / "odd.gguf")
    _fails(capsys, ["convert", str(path), "--out", str(tmp_path / "o.gguf"), *FAST, "--group-size", "64"], 2,
           "does not divide")


def test_bad_models_exit_1_or_2(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "o.gguf")
    _fails(capsys, ["convert", "no-such-model-xyz", "--out", out], 2, "not a known short name")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a model at all" * 10)
    _fails(capsys, ["convert", str(junk), "--out", out], 1, "not a GGUF file")
    empty_dir = tmp_path / "hf"
    empty_dir.mkdir()
    _fails(capsys, ["convert", str(empty_dir), "--out", out], 1, "config.json")
    (empty_dir / "config.json").write_text('{"model_type": "gpt_neox"}')
    _fails(capsys, ["convert", str(empty_dir), "--out", out], 1, "not supported")
    _fails(capsys, ["convert", str(junk), "--out", str(tmp_path / "nofolder" / "o.gguf")], 2, "does not exist")
    assert not (tmp_path / "o.gguf").exists()


def test_unsupported_gguf_architecture(tmp_path: Path, capsys) -> None:
    from specquant_gguf.gguf import ModelWriter

    p = tmp_path / "gpt2.gguf"
    with ModelWriter(p, arch="gpt2") as w:
        w.add_tensor("token_embd.weight", np.zeros((8, 32), np.float32))
    _fails(capsys, ["convert", str(p), "--out", str(tmp_path / "o.gguf")], 1, "not supported")


class _CountingSource(MemorySource):
    """Tracks how many source blocks are alive (weak references to their tensors)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.alive: list[weakref.ref] = []
        self.peak = 0

    def block(self, i: int):
        gc.collect()
        self.alive = [r for r in self.alive if r() is not None]
        blk = super().block(i)
        self.alive += [weakref.ref(t) for t in blk.values()]
        n_blocks = len(self.alive) / len(blk)
        self.peak = max(self.peak, n_blocks)
        return blk


def test_conversion_holds_one_block_at_a_time() -> None:
    cfg = tiny_config(n_layer=6)
    src = _CountingSource(cfg, seed=5)
    calib = Calibration(torch.randint(3, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)), "t")
    emb = src.token_embd()
    n = 0
    for i, qb in convert_blocks(src, calib, Recipe(group_size=32), emb):
        n += 1
        assert all(ql.kind == "sq4" for ql in qb.linears.values())
    assert n == 6 and src.loads == 6
    assert src.peak <= 1.0  # when block i is loaded, no earlier fp32 block is alive


def test_quantized_propagation_runs() -> None:
    cfg = tiny_config(n_layer=2)
    src = MemorySource(cfg, seed=6)
    calib = Calibration(torch.randint(3, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0)), "t")
    blocks = list(convert_blocks(src, calib, Recipe(group_size=32, propagate="quant"), src.token_embd()))
    assert len(blocks) == 2


def test_head_logits_helper_matches_manual() -> None:
    cfg = tiny_config(n_layer=1)
    src = MemorySource(cfg, seed=7)
    tokens = torch.tensor([[5, 6, 7]])
    x = src.token_embd()[tokens]
    x = block_forward(x, src.block(0), cfg)
    out = head_logits(x, src.output_norm(), src.token_embd(), cfg.rms_eps)
    assert torch.allclose(out, float_logits(src, tokens), atol=1e-5)


def test_self_generated_calibration_matches_full_forward() -> None:
    """Incremental decoding with the KV cache gives the logits of a full forward pass."""
    from specquant_gguf.convert.calibrate import generate_windows
    from specquant_gguf.convert.forward import KVCache

    cfg = tiny_config(n_layer=2)
    src = MemorySource(cfg, seed=8)
    cal = generate_windows(src, n=3, length=12, seed=0)
    assert cal.tokens.shape == (3, 12) and cal.source == "self-generated"
    assert int(cal.tokens.min()) >= 0 and int(cal.tokens.max()) < cfg.vocab_size
    assert torch.equal(cal.tokens, generate_windows(src, n=3, length=12, seed=0).tokens)  # seeded
    blocks = [src.block(i) for i in range(cfg.n_layer)]
    caches = [KVCache(3, 12, cfg.n_head_kv, cfg.head_dim, torch.float32) for _ in blocks]
    emb = src.token_embd()
    with torch.no_grad():
        for pos in range(12):
            x = emb[cal.tokens[:, pos:pos + 1]]
            for blk, cache in zip(blocks, caches):
                x = block_forward(x, blk, cfg, pos0=pos, cache=cache)
            step = head_logits(x, src.output_norm(), emb, cfg.rms_eps)[:, 0]
            full = float_logits(src, cal.tokens[:, :pos + 1])[:, -1]
            assert torch.allclose(step, full, atol=1e-4, rtol=1e-4)


def test_calibration_text_files(tmp_path: Path) -> None:
    from specquant_gguf.convert.calibrate import read_texts, windows_from_texts
    from specquant_gguf.errors import UsageError

    txt = tmp_path / "c.txt"
    txt.write_text("word " * 500)
    assert read_texts(txt) == ["word " * 500]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"text": "a b c"}\n\n{"text": "d e"}\n')
    assert read_texts(jl) == ["a b c", "d e"]
    for content, needle in (('{"txt": "x"}\n', "no string field"), ("not json\n", "not valid JSON"),
                            ('{"text": "   "}\n', "no text")):
        jl.write_text(content)
        with pytest.raises(UsageError, match=needle):
            read_texts(jl)
    enc = lambda s: [ord(c) % 50 for c in s]  # noqa: E731
    cal = windows_from_texts(enc, ["x" * 1000, "y" * 1000], n=4, length=64, seed=0, name="c.txt")
    assert cal.tokens.shape == (4, 64) and cal.source == "file:c.txt"
    short = windows_from_texts(enc, ["abc" * 30], n=5, length=64, seed=0, name="s")  # overlapping windows
    assert short.tokens.shape == (5, 64)
    from specquant_gguf.errors import SpecQuantError
    with pytest.raises(SpecQuantError, match="fewer than one window"):
        windows_from_texts(enc, ["tiny"], n=1, length=64, seed=0, name="t")


def test_self_generated_segments_are_joined_texts() -> None:
    """A window of 2 segments is two independently generated texts end to end."""
    from specquant_gguf.convert.calibrate import generate_windows

    src = MemorySource(tiny_config(n_layer=1), seed=3)
    joined = generate_windows(src, n=2, length=12, seed=5, segments=2)
    parts = generate_windows(src, n=4, length=6, seed=5)
    assert torch.equal(joined.tokens, parts.tokens.reshape(2, 12))


def test_alpha_search_finds_the_grid_minimum() -> None:
    """The coarse-to-fine α search returns the α an exhaustive search over the grid picks."""
    from specquant_gguf.convert.calibrate import block_stats, sample_plan
    from specquant_gguf.convert.block import group_error, search_alpha
    from specquant_gguf.convert.recipe import method_defaults
    from specquant_gguf.convert.smooth import group_scales_for

    cfg = tiny_config(n_layer=1)
    src = MemorySource(cfg, seed=11)
    tokens = torch.randint(0, cfg.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    x = src.token_embd()[tokens]
    stats, _ = block_stats(x, src.block(0), cfg, sample_plan(4, 32, 64, 0))
    r = method_defaults("specquant")
    blk = src.block(0)
    for group in ("attn", "attn_out", "ffn", "ffn_down"):
        a, e = search_alpha(group, blk, stats[group], cfg, r)
        full = {b: group_error(group, blk, stats[group], group_scales_for(group, stats[group].absmax, blk, b, cfg), r)
                for b in r.alpha_grid}
        assert e == pytest.approx(full[a], rel=1e-6)
        assert e <= min(full.values()) * 1.05  # unimodal in practice: within 5% of the grid minimum


def test_self_generated_calibration_is_cached(tiny_src, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A second conversion of the same model reuses the generated text (same tokens, same file);
    --no-calib-cache generates again, and a corrupt cache entry is regenerated, not trusted."""
    import os

    _, path = tiny_src
    cache = Path(os.environ["SPECQUANT_CACHE"]) / "calib"
    a, b, c = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "c.gguf"
    assert main(["convert", str(path), "--out", str(a), "--calib-windows", "2", "--calib-len", "32", "--alpha", "0.5",
                 "--no-gptq"]) == 0
    entries = list(cache.glob("*.pt"))
    assert len(entries) == 1
    capsys.readouterr()
    assert main(["convert", str(path), "--out", str(b), "--calib-windows", "2", "--calib-len", "32", "--alpha", "0.5",
                 "--no-gptq"]) == 0
    assert "reused" in capsys.readouterr().err
    assert a.read_bytes() == b.read_bytes()
    entries[0].write_bytes(b"garbage")
    assert main(["convert", str(path), "--out", str(c), "--calib-windows", "2", "--calib-len", "32", "--alpha", "0.5",
                 "--no-gptq", "--no-calib-cache"]) == 0
    assert a.read_bytes() == c.read_bytes()
    assert main(["convert", str(path), "--out", str(c), "--calib-windows", "2", "--calib-len", "32", "--alpha", "0.5",
                 "--no-gptq"]) == 0
    assert a.read_bytes() == c.read_bytes() and entries[0].read_bytes() != b"garbage"
