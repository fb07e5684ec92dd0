"""bench/ helpers that need neither llama.cpp nor the real model: RESULTS.md sections, targets,
file facts, the bandwidth tool, plots."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import compare  # noqa: E402
import membw  # noqa: E402


def test_results_md_sections_are_replaced_and_others_kept(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\n## Perplexity\n\nsomeone else's numbers\n")
    compare.update_results_md(md, {"Comparison": "table v1", "Speed": "speed v1"})
    compare.update_results_md(md, {"Comparison": "table v2", "Speed": "speed v2"})
    text = md.read_text()
    assert "someone else's numbers" in text
    assert "table v2" in text and "table v1" not in text and "speed v2" in text
    assert text.count("## Comparison") == 1 and text.count("## Speed") == 1


def _row(name, engine="ours", zs=None, ppl=30.0, pp=None, tg=None):
    r = {"name": name, "engine": engine, "ppl": ppl, "zeroshot_avg": zs, "bits_per_weight": 4.5,
         "file_bytes": 10**8}
    if pp is not None:
        r["speed"] = [{"threads": 2, "prefill_tok_s": pp, "decode_tok_s": tg, "decode_gb_s": 1.0}]
    return r


def test_targets_measure_margins():
    rows = [_row("f16", zs=0.50), _row("rtn", zs=0.47), _row("smoothquant", zs=0.485),
            _row("specquant", zs=0.49, pp=300, tg=60), _row("llama.cpp Q4_0", "llama.cpp", zs=0.48, pp=250, tg=40),
            _row("llama.cpp F16", "llama.cpp", ppl=30.1)]
    t = {x["target"]: x for x in compare.targets(rows)}
    assert t["specquant zero-shot avg within 2 points of f16"]["met"]
    assert t["specquant zero-shot avg >= 1 point above rtn"]["met"]
    sm = t["specquant zero-shot avg >= 1 point above smoothquant"]
    assert not sm["met"] and sm["margin"] == pytest.approx(-0.5)
    assert t["decode >= 1.2x llama.cpp Q4_0 at 2 threads"]["met"]           # 1.5x
    assert not t["prefill >= 1.5x llama.cpp Q4_0 at 2 threads"]["met"]      # 1.2x
    assert t["our f16 PPL within 0.5% of llama.cpp F16 (same tokens)"]["met"]  # 0.33%


def test_comparison_section_states_rows_targets_and_cost():
    task = {"acc": 0.6, "acc_norm": 0.55}
    rows = [_row("f16", zs=0.50), _row("specquant", zs=0.49, pp=300, tg=60), _row("q8")]
    for r in rows[:2]:
        r["zeroshot"] = {"piqa": task, "arc_easy": task, "hellaswag": task}
    rows[1]["build"] = {"command": "python convert.py smollm2-135m --out x.gguf", "seconds": 140.0, "peak_rss_kb": 3 << 20}
    res = {"mode": "full", "seconds": 600.0, "machine": {"date": "2026-11-23T00:00:00", "cores": 2, "cpu": "test cpu"},
           "settings": {"source": "smollm2-135m", "ppl": {"ctx": 512, "windows": 64, "score_from": 1},
                        "zeroshot": {"tasks": {"piqa": None, "arc_easy": None, "hellaswag": 2000}},
                        "speed": {"protocol": "pp512/tg128", "reps": 3}, "eval_threads": 2},
           "rows": rows, "targets": compare.targets(rows),
           "cost": compare.cost({"specquant": rows[1]["build"]}, {"f16": {"seconds": 60}, "specquant": {"seconds": 60}},
                                {"f16": {"seconds": {"piqa": 600, "arc_easy": 300}}}, 120.0)}
    md = compare.comparison_md(res, "python bench/compare.py")
    assert "| specquant | ours |" in md and "| q8 | ours |" in md and "60.0 / 55.0" in md
    assert "within 2 points of f16: -1.00 points" in md
    assert "21 min = conversions 2.3 + perplexity 2.0 + zero-shot 15.0 (f16 15.0), speed 2.0 min" in md
    assert "hellaswag first 2000" in md and "python bench/compare.py" in md


def test_file_facts_on_a_tiny_model(tiny_f16):
    f = common.file_facts(Path(tiny_f16.path))
    assert f["file_bytes"] == Path(tiny_f16.path).stat().st_size
    assert f["params"] > 0 and 16 < f["bits_per_weight"] < 40  # f16 tensors plus metadata overhead
    assert 0 < f["bytes_per_token"] <= f["file_bytes"]
    assert f["branch_pct"] == 0 and f["calibration"] == "none" and 16 <= f["bpw_linears"] < 17  # f16 linears


def test_file_facts_count_the_spectral_branch(tiny_sq4):
    f = common.file_facts(Path(tiny_sq4.path))
    assert 4 < f["bpw_linears"] < 8 and f["params"] > 0


@pytest.mark.skipif(common.shared_data() is None, reason="needs ../shared/data (WikiText-2 test)")
def test_bench_perplexity_helpers_match_the_reference_backend(tiny_f16):
    """bench's windows are eval/perplexity.py's, and the native score agrees with the torch oracle on them."""
    from oracle.scorer import ReferenceScorer
    from specquant_gguf.eval.perplexity import perplexity

    windows = common.ppl_windows(Path(tiny_f16.path), 2, ctx=24)
    assert len(windows) == 2 and all(len(w) == 24 for w in windows)
    ppl, secs = common.ppl_native(Path(tiny_f16.path), windows, threads=1)
    ref = ReferenceScorer(tiny_f16.path)
    assert secs > 0 and abs(ppl / perplexity(ref, windows, progress=False)[0] - 1) < 1e-3


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
def test_membw_tool_measures_something(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path))
    rows = membw.measure(mib=64, threads=2, reps=1)
    assert [r["threads"] for r in rows] == [1, 2]
    assert all(0.5 < r["gb_per_s"] < 2000 for r in rows)


def test_plots_are_written(tmp_path):
    import plots

    rows = [dict(_row("f16", zs=0.5, pp=100, tg=20), bits_per_weight=16.0),
            dict(_row("specquant", zs=0.48, ppl=38.0, pp=300, tg=60), bits_per_weight=4.6),
            dict(_row("llama.cpp Q4_0", "llama.cpp", zs=0.47, ppl=45.0, pp=250, tg=40), bits_per_weight=4.5)]
    made = plots.make_all({"rows": rows}, tmp_path)
    assert {p.name for p in made} == {"accuracy_vs_bpw.png", "ppl.png", "speed.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in made)


def _llama_ready() -> bool:
    import llama_cpp_env

    return llama_cpp_env.is_ready()


@pytest.mark.slow  # starts llama.cpp in its own venv: minutes on a loaded 2-core machine
@pytest.mark.skipif(not _llama_ready(), reason="llama.cpp venv not built (python bench/llama_cpp_env.py setup)")
def test_llama_worker_kv_reuse_scores_equal_from_scratch_scores(tiny_f16):
    """Our scoring on llama.cpp's logits, with rewinds between choices, equals scoring each
    request alone from an empty cache (the worker's ppl op over the continuation)."""
    import llama_cpp_env

    path = Path(tiny_f16.path)
    ctx = [5, 6, 7, 8, 9, 10]
    reqs = [(ctx, [11, 12, 13]), (ctx, [11, 14]), (ctx, [20]), ([5, 6, 7, 30], [11, 12])]
    got = llama_cpp_env.zeroshot_scores(path, [reqs], n_ctx=64, n_threads=1)["scores"][0]
    for (c, x), (ll, _greedy, n) in zip(reqs, got):
        alone = llama_cpp_env.perplexity(path, [c + x], score_from=len(c), n_threads=1)
        assert n == len(x)
        assert ll == pytest.approx(-alone["windows"][0][0], abs=1e-3)


def test_same_bytes_compares_whole_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"x" * (3 << 20))
    b.write_bytes(b"x" * (3 << 20))
    c.write_bytes(b"x" * ((3 << 20) - 1) + b"y")  # same size, last byte differs
    assert compare._same_bytes(a, b) and not compare._same_bytes(a, c)
    c.write_bytes(b"x")
    assert not compare._same_bytes(a, c)


def test_arch_matrix_measures_one_family(tmp_path):
    """bench/arch_matrix.py on one family and one check (the f16 file in both config layouts: the
    work of one test_hf_folder_f16_matches_transformers case, twice): JSON and a Markdown row."""
    import json

    import arch_matrix

    out = tmp_path / "m.json"
    assert arch_matrix.main(["--families", "llama3.1", "--checks", "f16", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    f16 = res["families"]["llama3.1"]["f16"]
    assert set(f16) == {"t4", "t5"} and all(f16[k]["rel_runtime"] < 1e-3 for k in f16)
    assert all(f16[k]["greedy_equal"] == f16[k]["greedy_n"] == 32 for k in f16)
    md = arch_matrix.markdown(res)
    assert "| llama3.1 (llama) |" in md and "/ 32/32 |" in md and "python convert.py llama3.1-8b-instruct" in md
