"""Per-linear mixed activation bits (issue 16): specquant.act_bits_a8_linears lists the linear kinds
whose input stays 8-bit when the SQ4 layers run at 4 bits (docs/FORMAT.md §4.2).

Parity of such files with the oracle on every ISA at act_bits 4 and 8 is in tests/test_parity.py
(variants a8-down, a8-out-gu-spectral); here: what the key means bit for bit, its errors, and the
converter's flag.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oracle.reference import ReferenceModel
from oracle.synthetic import make_tiny_llama_gguf
from specquant_gguf.cli import main
from specquant_gguf.cli.convert import add_arguments, build_recipe
from specquant_gguf.convert.recipe import DEFAULT_A8_LINEARS, LINEAR_KINDS, Recipe, parse_a8_linears
from specquant_gguf.errors import SpecQuantError
from specquant_gguf.gguf import read_model
from specquant_gguf.runtime import Model

IDS = [5, 17, 99, 3, 250, 64, 8, 31, 120, 7, 44, 180, 2, 77, 15, 200]


def _eval(path: Path, bits: int) -> np.ndarray:
    with Model(path, n_threads=2, act_bits=bits, kv_type="f32") as m:
        assert m.act_bits == bits
        return m.eval(IDS)


def test_listed_linears_run_8_bit_at_a4_only(tmp_path: Path) -> None:
    """Same weights (same seed), only the key differs: at act_bits 8 every file gives the same logits
    bit for bit; at 4, listing all seven kinds is the A8 run bit for bit, ffn_down alone is neither."""
    plain = make_tiny_llama_gguf(tmp_path / "plain.gguf", seed=3).path
    down = make_tiny_llama_gguf(tmp_path / "down.gguf", seed=3, a8_linears=["ffn_down"]).path
    every = make_tiny_llama_gguf(tmp_path / "all.gguf", seed=3, a8_linears=list(LINEAR_KINDS)).path
    a8 = _eval(plain, 8)
    assert np.array_equal(_eval(down, 8), a8)
    assert np.array_equal(_eval(every, 8), a8)
    assert np.array_equal(_eval(every, 4), a8)
    a4, down4 = _eval(plain, 4), _eval(down, 4)
    assert not np.array_equal(down4, a4) and not np.array_equal(down4, a8)
    # the oracle agrees that ffn_down moved (the parity tests compare it in full)
    ref = ReferenceModel(down, act_bits=4).forward(IDS)
    assert np.abs(ref - down4).max() < np.abs(ref - a4).max()


@pytest.mark.parametrize("value,needle", [
    (["ffn_dwn"], "not a linear kind"),
    (["ffn_down", "ffn_down"], "twice"),
    (["attn_q"], "attn_q, attn_k and attn_v share one quantized input"),
    (["ffn_up", "attn_output"], "ffn_gate and ffn_up share one quantized input"),
    ([1, 2], "must be an array of strings"),
])
def test_bad_key_is_one_clear_error(tmp_path: Path, value, needle: str) -> None:
    path = make_tiny_llama_gguf(tmp_path / "bad.gguf", a8_linears=value).path
    with pytest.raises(SpecQuantError) as info:
        Model(path)
    msg = str(info.value)
    assert "specquant.act_bits_a8_linears" in msg and needle in msg and "\n" not in msg, msg
    with pytest.raises(SpecQuantError, match="specquant.act_bits_a8_linears"):
        ReferenceModel(path)


def test_model_says_which_linears_run_at_8_bits(tmp_path: Path) -> None:
    down = make_tiny_llama_gguf(tmp_path / "down.gguf", seed=3, a8_linears=["ffn_down"]).path
    plain = make_tiny_llama_gguf(tmp_path / "plain.gguf", seed=3).path
    with Model(down, n_threads=1, act_bits=4) as m:
        assert m.a8_linears == ("ffn_down",) and m.activations() == "4-bit (ffn_down 8-bit)"
    with Model(down, n_threads=1, act_bits=8) as m:
        assert m.a8_linears == () and m.activations() == "8-bit"
    with Model(plain, n_threads=1, act_bits=4) as m:
        assert m.a8_linears == () and m.activations() == "4-bit"


def test_parse_a8_linears() -> None:
    assert parse_a8_linears(["ffn_down", "attn_output"]) == ("attn_output", "ffn_down")  # file order
    assert parse_a8_linears(["ffn_up", "ffn_gate"]) == ("ffn_gate", "ffn_up")
    assert parse_a8_linears([]) == ()
    for bad in (["x"], ["attn_k", "attn_v"], ["ffn_down", "ffn_down"]):
        with pytest.raises(ValueError):
            parse_a8_linears(bad)


@pytest.fixture(scope="module")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from oracle.tinyllama import MemorySource, tiny_config, write_gguf

    src = MemorySource(tiny_config(n_layer=2), seed=0)
    return write_gguf(src, tmp_path_factory.mktemp("src") / "tiny.f32.gguf")


FAST = ["--calib-windows", "2", "--calib-len", "32", "--threads", "1", "--quiet", "--group-size", "32",
        "--alpha", "0.5"]


def test_convert_flag_round_trips(tiny_src: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "down.gguf"
    assert main(["convert", str(tiny_src), "--out", str(out), *FAST, "--a8-linears", "ffn_down,attn_output"]) == 0
    assert read_model(out).metadata["specquant.act_bits_a8_linears"] == ["attn_output", "ffn_down"]
    with Model(out, n_threads=1, act_bits=4) as m:
        assert m.metadata("specquant.act_bits_a8_linears") is not None
    none = tmp_path / "none.gguf"
    assert main(["convert", str(tiny_src), "--out", str(none), *FAST, "--a8-linears", "none"]) == 0
    assert "specquant.act_bits_a8_linears" not in read_model(none).metadata


def _recipe(*flags: str) -> Recipe:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return build_recipe(p.parse_args(["model", "--out", "x.gguf", *flags]))


def test_default_recipe_keeps_ffn_down_at_8_bits() -> None:
    """The default W4A4 recipe keeps ffn_down's input 8-bit (issue 16: 1.216x -> 1.191x f16 on
    SmolLM2 at A4); --a8-linears none is pure A4; at --act-bits 8 and for the baselines (RTN,
    SmoothQuant: what they are in the literature) nothing is listed."""
    assert DEFAULT_A8_LINEARS == ("ffn_down",)
    r = _recipe()
    assert r.a8_linears == ("ffn_down",)
    assert r.act_bits_of("ffn_down") == 8 and r.act_bits_of("ffn_gate", "ffn_up") == 4
    assert _recipe("--a8-linears", "none").a8_linears == ()
    assert _recipe("--a8-linears", "attn_output").a8_linears == ("attn_output",)
    assert _recipe("--act-bits", "8").a8_linears == ()
    for method in ("rtn", "smoothquant"):
        assert _recipe("--method", method).a8_linears == ()
    assert _recipe("--preset", "paper").a8_linears == ()
    # a wider activation grid than 8 bits (bench/ablation.py's weights-only bound) is not narrowed
    assert Recipe(act_bits=16, a8_linears=("ffn_down",)).act_bits_of("ffn_down") == 16


def test_default_conversion_records_ffn_down(tiny_src: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "default.gguf"
    assert main(["convert", str(tiny_src), "--out", str(out), *FAST, "--tune-steps", "0"]) == 0
    assert read_model(out).metadata["specquant.act_bits_a8_linears"] == ["ffn_down"]


@pytest.mark.parametrize("value,needle", [("attn_q", "share one quantized input"), ("ffn_dwn", "not a linear kind"),
                                          ("ffn_down,ffn_down", "twice")])
def test_convert_bad_flag_one_line(tiny_src: Path, tmp_path: Path, value: str, needle: str) -> None:
    r = subprocess.run([sys.executable, "-m", "specquant_gguf.cli", "convert", str(tiny_src), "--out",
                        str(tmp_path / "x.gguf"), "--a8-linears", value], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--a8-linears" in lines[0] and needle in lines[0], r.stderr


def test_convert_flag_needs_a_quantized_method(tiny_src: Path, tmp_path: Path, capsys) -> None:
    assert main(["convert", str(tiny_src), "--out", str(tmp_path / "f.gguf"), "--method", "f16",
                 "--a8-linears", "ffn_down"]) == 2
    assert "--a8-linears" in capsys.readouterr().err
