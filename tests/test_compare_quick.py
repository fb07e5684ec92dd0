"""Integration: `bench/compare.py --quick` end to end on the real SmolLM2-135M.

The CI smoke run of the comparison: it converts three files with a cheap calibration into a
temporary cache (so llama.cpp's venv is absent there and its rows are skipped, as in a fresh CI
checkout), then measures perplexity, zero-shot accuracy and speed through the native runtime.
The numbers are not results (4 windows, 20 items per task); the test checks that every measurement
is there and sane, and that the methods come out in their known order.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import smollm2_path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import common  # noqa: E402

pytestmark = pytest.mark.slow


def test_compare_quick_measures_every_row(tmp_path: Path) -> None:
    src = smollm2_path()
    if src is None:
        pytest.skip("SmolLM2-135M GGUF not available on this machine")
    if common.shared_data() is None:
        pytest.skip("../shared/data not available (WikiText-2 and the zero-shot tasks)")
    out = tmp_path / "quick.json"
    env = {**os.environ, "SPECQUANT_CACHE": str(tmp_path / "cache"), "SPECQUANT_SMOLLM2_GGUF": str(src)}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--quick", "--source", str(src),
                        "--out", str(out), "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert json.loads(out.read_text())["rows"] == res["rows"]
    rows = {row["name"]: row for row in res["rows"]}
    assert list(rows) == ["f16", "rtn", "specquant"]  # no llama.cpp venv in the temporary cache
    for row in rows.values():
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1
        assert set(row["zeroshot"]) == {"piqa", "arc_easy", "hellaswag"}
        assert all(t["n"] == 20 and 0 <= t["acc"] <= 1 for t in row["zeroshot"].values())
        assert [x["threads"] for x in row["speed"]] == [1, 2]
        assert all(x["prefill_tok_s"] > 0 and x["decode_tok_s"] > 0 for x in row["speed"])
        assert row["peak_rss_kb"] > 0 and row["file_bytes"] > 0
    assert rows["f16"]["ppl"] < rows["specquant"]["ppl"] < rows["rtn"]["ppl"]
    assert rows["specquant"]["bits_per_weight"] < 0.5 * rows["f16"]["bits_per_weight"]
    assert any(t["target"].startswith("specquant zero-shot avg within 2 points") for t in res["targets"])
    assert res["cost"]["conversion_s"] > 0 and res["cost"]["total_s"] >= res["cost"]["ppl_s"]
