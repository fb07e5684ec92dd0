"""specquant_gguf.eval.perplexity (perplexity protocol, CLI) and `specquant inspect`."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from specquant_gguf import cli
from specquant_gguf.errors import SpecQuantError, UsageError
from specquant_gguf.eval.perplexity import (evaluate_ppl, load_eval_text, make_windows, perplexity, score_window,
                                            wikitext_join)
from specquant_gguf.gguf import read_model
from specquant_gguf.gguf.vocab import TextTokenizer, model_adds_bos
from oracle.reference import ReferenceModel
from oracle.scorer import ReferenceScorer

WIKITEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"

TEXT = ("The quick brown fox jumps over the lazy dog. " * 3 + "Robert Boulter is an English film actor. "
        "He had a guest starring role on the television series The Bill in 2000. ") * 6


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    p = tmp_path / "text.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


# -- protocol helpers ------------------------------------------------------------------------------

def test_wikitext_join_rebuilds_rows() -> None:
    raw = " \n = Title = \n \n Line one .\n Line two .\n \n"
    assert wikitext_join(raw) == "\n\n = Title = \n\n\n\n\n Line one .\n\n\n Line two .\n\n\n"
    # rows: "", " = Title = \n", "", " Line one .\n", " Line two .\n", ""


def test_wikitext_file_gives_the_published_string(tmp_path: Path) -> None:
    if not WIKITEXT.is_file():
        pytest.skip("shared/data WikiText-2 not available")
    text = load_eval_text(WIKITEXT)
    assert len(text) == 1294336
    assert hashlib.sha256(text.encode()).hexdigest() == "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
    assert load_eval_text(WIKITEXT, "plain") == WIKITEXT.read_text(encoding="utf-8")
    other = tmp_path / "w.txt"
    other.write_text(" a\n \n", encoding="utf-8")
    assert load_eval_text(other) == " a\n \n" and load_eval_text(other, "wikitext") == " a\n\n\n"


def test_make_windows() -> None:
    ids = list(range(100, 125))
    w = make_windows(ids, 8)
    assert w == [ids[0:8], ids[8:16], ids[16:24]]
    assert make_windows(ids, 8, n_windows=2) == w[:2]
    wb = make_windows(ids, 8, bos_id=1)
    assert wb[0] == [1] + ids[0:7] and wb[1] == [1] + ids[7:14] and len(wb) == 3
    with pytest.raises(UsageError):
        make_windows(ids, 1)
    with pytest.raises(UsageError):
        make_windows(ids, 8, n_windows=0)
    with pytest.raises(SpecQuantError, match="fewer than one window"):
        make_windows(ids, 26)


class _Uniform:
    """A ScoringModel whose logits are all zero: perplexity = the vocabulary size."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab

    def reset(self) -> None:
        pass

    def eval(self, ids):
        return np.zeros((len(ids), self.n_vocab), np.float32)


def test_score_window_and_perplexity() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 11)).astype(np.float32)
    window = [3, 1, 4, 1, 5]
    s, c = score_window(logits, window)
    expect = 0.0
    for i in range(4):
        p = np.exp(logits[i].astype(np.float64))
        expect -= math.log(p[window[i + 1]] / p.sum())
    assert c == 4 and s == pytest.approx(expect, rel=1e-12)
    # uniform logits: perplexity is exactly the vocabulary size
    ppl, nll, n, per = perplexity(_Uniform(50), [[0] * 9, [1] * 9], progress=False)
    assert ppl == pytest.approx(50.0) and n == 16 and per == pytest.approx([50.0, 50.0])
    with pytest.raises(SpecQuantError, match="non-finite"):
        score_window(np.full((2, 3), np.nan), [0, 1])


def test_tokenizer_from_metadata(tiny_f16) -> None:
    md = read_model(tiny_f16.path).metadata
    tok = TextTokenizer(md)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and not tok.add_bos and ids[0] != tok.bos_id
    assert len(ids) < len(TEXT.encode()) / 1.2  # merges apply
    assert tok.encode("hé<|im_end|>", add_bos=True)[0] == 1
    assert 2 not in tok.encode("<|im_end|>")  # special text is not parsed as a special token
    assert model_adds_bos({"tokenizer.ggml.model": "llama"}) and not model_adds_bos({"tokenizer.ggml.model": "gpt2"})


# -- end to end ------------------------------------------------------------------------------------

def _manual_ppl(path: Path, text: str, ctx: int, windows: int, bos: bool = False) -> float:
    ref = ReferenceModel(path, exact=False)
    tok = TextTokenizer(ref.file.metadata)
    ids = tok.encode(text, add_bos=False)
    step = ctx - 1 if bos else ctx
    total, count = 0.0, 0
    for i in range(windows):
        w = ([1] if bos else []) + ids[i * step:(i + 1) * step]
        lg = ref.forward(w).astype(np.float64)
        for j in range(len(w) - 1):
            total += np.log(np.exp(lg[j] - lg[j].max()).sum()) + lg[j].max() - lg[j, w[j + 1]]
            count += 1
    return math.exp(total / count)


def test_evaluate_ppl_reference_matches_manual(tiny_sq4, text_file) -> None:
    res = evaluate_ppl(tiny_sq4.path, text_file, ctx=32, windows=3, model=ReferenceScorer(tiny_sq4.path), progress=False)
    assert res.backend == "reference" and res.windows == 3 and res.tokens == 3 * 31 and not res.add_bos
    assert res.ppl == pytest.approx(_manual_ppl(tiny_sq4.path, TEXT, 32, 3), rel=1e-6)
    assert math.isfinite(res.ppl) and res.ppl > 1.0


def test_evaluate_ppl_with_bos(tmp_path, text_file) -> None:
    from oracle.synthetic import make_tiny_llama_gguf
    tm = make_tiny_llama_gguf(tmp_path / "bos.gguf", method="f16", add_bos=True)
    res = evaluate_ppl(tm.path, text_file, ctx=16, windows=2, model=ReferenceScorer(tm.path), progress=False)
    assert res.add_bos and res.tokens == 2 * 15
    assert res.ppl == pytest.approx(_manual_ppl(tm.path, TEXT, 16, 2, bos=True), rel=1e-6)


def test_native_and_reference_ppl_agree(tiny_f16, text_file) -> None:
    nat = evaluate_ppl(tiny_f16.path, text_file, ctx=32, windows=2, progress=False)
    ref = evaluate_ppl(tiny_f16.path, text_file, ctx=32, windows=2, model=ReferenceScorer(tiny_f16.path),
                       progress=False)
    assert nat.text_tokens == ref.text_tokens
    assert nat.ppl == pytest.approx(ref.ppl, rel=1e-3)


# -- CLI -------------------------------------------------------------------------------------------

def test_cli_ppl_json(tiny_sq4, text_file, capsys) -> None:
    rc = cli.main(["ppl", str(tiny_sq4.path), "--data", str(text_file), "--ctx", "32", "--windows", "2",
                   "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    d = json.loads(out)
    for key in ("ppl", "tokens", "ctx", "windows", "backend", "seconds"):
        assert key in d
    assert d["ctx"] == 32 and d["windows"] == 2 and d["tokens"] == 62 and d["backend"] == "native"


def test_cli_ppl_text(tiny_sq4, text_file, capsys) -> None:
    rc = cli.main(["ppl", str(tiny_sq4.path), "--data", str(text_file), "--ctx", "64", "--windows", "1"])
    assert rc == 0 and capsys.readouterr().out.startswith("ppl = ")


@pytest.mark.parametrize("extra,code,msg", [
    (["--ctx", "1"], 2, "--ctx"),
    (["--windows", "0"], 2, "--windows"),
    (["--threads", "-1"], 2, "--threads"),
    (["--ctx", "100000"], 2, "exceeds the model's context length"),
])
def test_cli_ppl_errors(tiny_sq4, text_file, capsys, extra, code, msg) -> None:
    rc = cli.main(["ppl", str(tiny_sq4.path), "--data", str(text_file)] + extra)
    err = capsys.readouterr().err
    assert rc == code and msg in err and err.count("\n") == 1


def test_cli_ppl_missing_files(tiny_sq4, text_file, tmp_path, capsys) -> None:
    assert cli.main(["ppl", str(tiny_sq4.path), "--data", str(tmp_path / "nope.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 10)
    assert cli.main(["ppl", str(bad), "--data", str(text_file)]) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and err.count("\n") == 1
    assert cli.main(["ppl", str(tmp_path / "none.gguf"), "--data", str(text_file)]) == 2


def test_cli_inspect(tiny_sq4_spectral, capsys) -> None:
    assert cli.main(["inspect", str(tiny_sq4_spectral.path)]) == 0
    out = capsys.readouterr().out
    assert "[300 strings]" in out and "SQ4" in out and "blk.1.ffn_down.spectral_k" in out
    assert "4.500 bits/weight" in out and "% of the SQ4 bytes" in out
    assert cli.main(["inspect", str(tiny_sq4_spectral.path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    t = d["totals"]
    m = read_model(tiny_sq4_spectral.path)
    spec = sum(x.nbytes for x in m if ".spectral" in x.name)
    sq4 = sum(x.nbytes for x in m if x.type_name == "SQ4")
    assert t["spectral_bytes"] == spec and t["sq4_bytes"] == sq4
    assert t["spectral_pct_of_sq4"] == pytest.approx(100 * spec / sq4)
    assert d["metadata"]["tokenizer.ggml.tokens"] == "[300 strings]"
    assert any(r["name"] == "blk.0.attn_q.weight" and r["type"] == "SQ4" and r["shape"] == [128, 128]
               for r in d["tensors"])


def test_cli_inspect_errors(tmp_path, capsys) -> None:
    assert cli.main(["inspect", str(tmp_path / "none.gguf")]) == 1
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" * 10)
    assert cli.main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "magic" in err and "Traceback" not in err


def test_ppl_of_a_file_the_runtime_cannot_run(tiny_f16, text_file, tmp_path, capsys) -> None:
    """A file with Q4_1 layers (like the SmolLM2 source): one-line error from `specquant ppl`; the oracle
    (tests/oracle) still scores it through the same protocol."""
    import gguf

    from specquant_gguf.gguf import TYPE_Q4_1, ModelWriter, RawTensor
    src = read_model(tiny_f16.path)
    out = tmp_path / "q4_1.gguf"
    with ModelWriter(out) as w:
        w.copy_kv_from(src, prefixes=("llama.", "tokenizer.", "specquant.", "general.name"))
        for t in src:
            a = src.dequantize(t.name)
            if t.name.startswith("blk.") and a.ndim == 2:
                raw = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q4_1)
                w.add_tensor(t.name, RawTensor(TYPE_Q4_1, raw, a.shape))
            else:
                w.add_tensor(t.name, src.array(t.name).copy())
    assert cli.main(["ppl", str(out), "--data", str(text_file), "--ctx", "32", "--windows", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    res = evaluate_ppl(out, text_file, ctx=32, windows=1, model=ReferenceScorer(out), progress=False)
    assert res.backend == "reference" and math.isfinite(res.ppl)
