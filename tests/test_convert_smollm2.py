"""Integration: the real SmolLM2-135M converted with the default recipe (once per session), then its
perplexity read back from the file by the reference backend.

Skipped when the model is not on this machine (conftest.smollm2_path). WikiText-2 test is used for
perplexity only; calibration is the converter's default (self-generated text).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import conftest
from conftest import smollm2_path
from specquant_gguf.convert.tune import TUNE_STEPS
from specquant_gguf.gguf import SQ4_TYPE_ID, read_model

# ../shared beside the checkout (CI's layout), or $SPECQUANT_WIKITEXT
WIKI = Path(os.environ.get("SPECQUANT_WIKITEXT",
                           Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"))
N_WINDOWS = 3  # ctx 512: enough to catch a broken conversion, cheap enough for CI
PPL_RATIO_MAX = 1.6  # the target: W4A4 within 1.6x of the float model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_sq4(smollm2_sq4: Path) -> tuple[Path, Path, float | None]:
    """(source, converted file, conversion seconds or None when the file was given)."""
    src = smollm2_path()
    if src is None:
        pytest.skip("SmolLM2-135M GGUF not available on this machine")
    return src, smollm2_sq4, conftest.SMOLLM2_CONVERT_SECONDS.get("default")


def test_smollm2_file_layout(smol_sq4) -> None:
    src, out, seconds = smol_sq4
    m = read_model(out)
    md = m.metadata
    assert md["specquant.method"] == "specquant" and md["specquant.calibration.source"] == "self-generated"
    assert md["llama.block_count"] == 30 and md["tokenizer.ggml.pre"] == "smollm"
    # the session's file is the default recipe with fewer tuning steps (conftest.SMOLLM2_TUNE_STEPS);
    # a file named by $SPECQUANT_SMOLLM2_SQ4 is checked as it is
    if seconds is not None:
        assert md["specquant.tune_steps"] == conftest.SMOLLM2_TUNE_STEPS < TUNE_STEPS
    src_md = read_model(src).metadata
    for key, value in src_md.items():
        if key.startswith("tokenizer."):
            assert md[key] == value, key
    linear = [t for t in m if t.name.startswith("blk.") and t.type_id == SQ4_TYPE_ID]
    assert len(linear) == 30 * 7
    n_weights = sum(t.n_elements for t in linear)
    bpw = 8 * sum(t.nbytes for t in linear) / n_weights
    assert bpw <= 4.55, bpw
    branch = sum(t.nbytes for t in m if t.name.endswith((".spectral", ".spectral_k")))
    assert branch <= 0.10 * sum(t.nbytes for t in linear)
    took = f"converted in {seconds:.0f} s, " if seconds is not None else ""
    print(f"\n{took}{out.stat().st_size / 2**20:.1f} MiB, {bpw:.2f} bits/weight")


def test_smollm2_perplexity_target(smol_sq4) -> None:
    if not WIKI.is_file():
        pytest.skip("WikiText-2 test file not available")
    from oracle.scorer import ReferenceScorer
    from specquant_gguf.eval.perplexity import evaluate_ppl

    src, out, _ = smol_sq4
    fp = evaluate_ppl(src, WIKI, ctx=512, windows=N_WINDOWS, model=ReferenceScorer(src), progress=False)
    q = evaluate_ppl(out, WIKI, ctx=512, windows=N_WINDOWS, model=ReferenceScorer(out), progress=False)
    print(f"\nPPL ({N_WINDOWS} x 512): float source {fp.ppl:.2f}, specquant W4A4 {q.ppl:.2f} ({q.ppl / fp.ppl:.3f}x)")
    assert q.ppl < PPL_RATIO_MAX * fp.ppl
