"""Side-by-side comparison: our methods and llama.cpp on SmolLM2-135M-Instruct, one command.

    python bench/compare.py            # full: <= ~60 min on 2 cores once files are converted
    python bench/compare.py --quick    # CI-safe smoke run (small limits, few rows), ~5 min

Rows: our converter's f16, q8 (W8A8), rtn, smoothquant, specquant --preset paper and specquant
(run by our runtime), and llama.cpp's F16 (our f16 file as is), Q8_0, Q4_K_M and Q4_0 (made by
llama_model_quantize from our f16 file, not from the Q4_1 source) run by llama-cpp-python.
Every row sees the same token ids: WikiText-2 test perplexity on identical windows
(specquant_gguf.evaluate's protocol), zero-shot accuracy on identical requests
(specquant_gguf.eval.zeroshot's lm-eval tokenization and scoring, on each engine's logits),
prefill/decode tok/s at 1 and 2 threads (bench/speed.py), file size, bits per weight, peak RSS.
Converted files are cached in $SPECQUANT_CACHE/bench-models; finished measurements are cached in
bench/out/cache (keyed by file size/mtime and settings), so a run that stopped resumes.
Full mode writes docs/RESULTS.md's "Comparison" and "Speed" sections, bench/out/compare.json and
docs/img/*.png; --quick writes bench/out/compare-quick.json only.
"""
from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
# timed processes (ours and llama.cpp's workers inherit this) must not share the cores with numpy's
# idle OpenBLAS threads, which spin after start-up
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import common  # noqa: E402  (adds the repo to sys.path)
import llama_cpp_env  # noqa: E402
import plots  # noqa: E402
import speed  # noqa: E402

from specquant_gguf.eval import zeroshot as zs  # noqa: E402

SOURCE = "smollm2-135m"
TASKS = ("piqa", "arc_easy", "hellaswag")


@dataclass(frozen=True)
class Row:
    name: str
    engine: str                 # "ours" | "llama.cpp"
    method: str | None = None   # our converter's --method
    preset: str | None = None   # our converter's --preset
    llama_type: str | None = None  # llama.cpp quant type ("F16" = our f16 file as is)
    tag: str = ""               # file-name tag of a variant (quick mode's cheap conversions)

    @property
    def path(self) -> Path:
        d, t = common.models_dir(), self.tag and f"-{self.tag}"
        if self.engine == "ours":
            return d / f"smollm2-{self.name}{t}.gguf"
        if self.llama_type == "F16":
            return d / f"smollm2-f16{t}.gguf"
        return d / f"smollm2-llama-{self.llama_type}{t}.gguf"


OURS = [Row("f16", "ours", "f16"), Row("q8", "ours", "q8"), Row("rtn", "ours", "rtn"),
        Row("smoothquant", "ours", "smoothquant"), Row("paper", "ours", "specquant", "paper"),
        Row("specquant", "ours", "specquant")]
LLAMA = [Row("llama.cpp F16", "llama.cpp", llama_type="F16"), Row("llama.cpp Q8_0", "llama.cpp", llama_type="Q8_0"),
         Row("llama.cpp Q4_K_M", "llama.cpp", llama_type="Q4_K_M"), Row("llama.cpp Q4_0", "llama.cpp", llama_type="Q4_0")]
ALL_ROWS = {r.name: r for r in OURS + LLAMA}


@dataclass(frozen=True)
class Settings:
    mode: str
    rows: tuple[str, ...]
    ctx: int = 512
    ppl_windows: int = 64
    zs_limits: tuple[tuple[str, int | None], ...] = (("piqa", None), ("arc_easy", None), ("hellaswag", 2000))
    zs_rows: tuple[str, ...] = ()        # rows that get zero-shot (all when empty)
    threads: tuple[int, ...] = (1, 2)
    eval_threads: int = 2
    speed_reps: int = 3
    speed: bool = True
    convert_args: tuple[str, ...] = ()   # extra converter flags (quick mode: a cheap calibration)
    file_tag: str = ""
    convert_only: bool = False           # make the files, measure nothing
    source: str = SOURCE                 # the converter's MODEL argument (a short name or the GGUF file)


ZS_PRIORITY = ("specquant", "f16", "rtn", "smoothquant", "llama.cpp Q4_0", "paper", "q8",
               "llama.cpp Q4_K_M", "llama.cpp Q8_0", "llama.cpp F16")


# zero-shot at these sizes costs 11 (W4A4) to 30 (f16, llama.cpp) min per row on 2 cores: the rows
# the targets name and llama.cpp's Q4_0 get it by default (--zs-all-rows for every row); perplexity
# and speed run on every row
FULL = Settings("full", tuple(ALL_ROWS),
                zs_rows=("f16", "rtn", "smoothquant", "specquant", "llama.cpp Q4_0"))
# a smoke test of the whole pipeline: a cheap calibration (its own cached files, tagged "quick"),
# 4 perplexity windows, 20 items per task, one speed rep; the numbers are not results
QUICK = Settings("quick", ("f16", "rtn", "specquant", "llama.cpp Q4_0"), ppl_windows=4,
                 zs_limits=(("piqa", 20), ("arc_easy", 20), ("hellaswag", 20)), speed_reps=1,
                 convert_args=("--calib-windows", "4", "--calib-len", "256", "--tune-steps", "0"), file_tag="quick")


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# files


def _run_measured(cmd: Sequence[str], log_file: Path) -> tuple[int, float, int, str]:
    """Runs a command (stderr to log_file); returns (exit code, wall seconds, the child's own peak
    RSS in KiB from wait4, the log's last line)."""
    t0 = time.perf_counter()
    with open(log_file, "w") as lf:
        p = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=lf)
        _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in log_file.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    return p.returncode, time.perf_counter() - t0, int(usage.ru_maxrss), (lines[-1] if lines else "")


def converter_hash() -> str:
    """Hash of the converter's sources: a cached file made by another converter is flagged as stale."""
    h = hashlib.sha1()
    pkg = common.REPO / "specquant_gguf"
    for f in sorted([*pkg.glob("*.py"), *(pkg / "convert").glob("*.py"), *(pkg / "gguf").glob("*.py")]):
        h.update(str(f.relative_to(pkg)).encode() + f.read_bytes())
    return h.hexdigest()[:12]


def _display(arg: str) -> str:
    """Paths as a reader of RESULTS.md would type them (repo-relative, ../shared/data/...)."""
    data = common.shared_data()
    if data is not None and arg.startswith(str(data)):
        return "../shared/data" + arg[len(str(data)):]
    return Path(arg).name if arg.endswith((".gguf", "convert.py")) else arg


def _same_bytes(a: Path, b: Path) -> bool:
    return filecmp.cmp(a, b, shallow=False)


def convert(row: Row, calib: Path | None, reconvert: bool = False, extra: Sequence[str] = (),
            source: str = SOURCE) -> dict:
    """Our converter's file for a row (cached), with its conversion time and peak RSS."""
    path, meta = row.path, row.path.with_suffix(".gguf.json")
    info = json.loads(meta.read_text()) if path.is_file() and meta.is_file() else None
    if info is not None and info.get("source", SOURCE) != source:
        log(f"{path.name} was made from {info.get('source', SOURCE)}, not {source}: converting again")
    elif info is not None and not reconvert:
        if info.get("converter") != converter_hash():
            log(f"note: {path.name} was made by another version of the converter (use --reconvert {row.name})")
        return info
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part.gguf")
    cmd = [sys.executable, str(common.REPO / "convert.py"), source, "--out", str(tmp), "--method", row.method]
    if row.preset:
        cmd += ["--preset", row.preset]
    if calib is not None and row.method not in ("f16", "q8"):
        cmd += ["--calib", str(calib)]
    if row.method not in ("f16", "q8"):
        cmd += list(extra)
    log(f"converting {row.name}: {' '.join(cmd[1:])}")
    rc, secs, rss, last = _run_measured(cmd, path.with_suffix(".convert.log"))
    if rc != 0 or not tmp.is_file():
        raise RuntimeError(f"conversion of {row.name} failed (exit {rc}): {last}")
    if path.is_file() and _same_bytes(path, tmp):
        tmp.unlink()  # the same file again: keep the old one, and with it its cached measurements
        log(f"{path.name}: identical to the cached file, measurements stay valid")
    else:
        tmp.replace(path)
    shown = ["python", *(_display(c) for c in cmd[1:])]
    shown[shown.index("--out") + 1] = path.name
    info = {"command": " ".join(shown), "seconds": round(secs, 1), "peak_rss_kb": rss, "converter": converter_hash(),
            "source": source}
    meta.write_text(json.dumps(info, indent=2))
    return info


def make_llama_file(row: Row, src: Path) -> dict:
    """llama.cpp's quantization of our f16 file (cached)."""
    path, meta = row.path, row.path.with_suffix(".gguf.json")
    if row.llama_type == "F16":
        return {"command": "our f16 file, loaded by llama.cpp as is"}
    if path.is_file() and meta.is_file() and path.stat().st_mtime >= src.stat().st_mtime:
        return json.loads(meta.read_text())  # made from the current f16 file
    log(f"llama.cpp quantize {src.name} -> {path.name} ({row.llama_type})")
    t0 = time.perf_counter()
    llama_cpp_env.quantize(src, path, row.llama_type)
    info = {"command": f"llama_model_quantize(smollm2-f16.gguf, {path.name}, {row.llama_type})",
            "seconds": round(time.perf_counter() - t0, 1)}
    meta.write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------------
# cached measurements


def _cache_file(row: Row, kind: str, settings: Any) -> Path:
    st = row.path.stat()
    key = json.dumps([row.name, kind, st.st_size, int(st.st_mtime), settings], sort_keys=True, default=str)
    return common.OUT_DIR / "compare-cache" / f"{row.name.replace(' ', '_')}-{kind}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def cached(row: Row, kind: str, settings: Any, fn: Callable[[], dict]) -> dict:
    f = _cache_file(row, kind, settings)
    if f.is_file():
        return json.loads(f.read_text())
    res = fn()
    common.write_json(f, res)
    return res


# ---------------------------------------------------------------------------------------------
# perplexity (specquant_gguf.eval.perplexity's windows; llama.cpp scores the same windows)


def ppl_ours(row: Row, windows: list[list[int]], score_from: int, s: Settings) -> dict:
    assert score_from == 1  # evaluate.score_window's convention
    ppl, secs = common.ppl_native(row.path, windows, s.eval_threads, desc=f"ppl {row.name}")
    return {"ppl": ppl, "seconds": secs}


def ppl_llama(row: Row, windows: list[list[int]], score_from: int, s: Settings) -> dict:
    r = llama_cpp_env.perplexity(row.path, windows, score_from, s.eval_threads)
    return {"ppl": r["ppl"], "seconds": r["seconds"]}


# ---------------------------------------------------------------------------------------------
# zero-shot (our tokenization; each engine's logits; our scoring)


def zs_requests(tokenizer_row: Row, s: Settings) -> dict[str, tuple[list[zs.Item], list]]:
    from specquant_gguf.eval.scoring import NativeScorer, prefix_token

    data = common.shared_data()
    if data is None:
        raise RuntimeError("no ../shared/data: zero-shot data is needed")
    m = NativeScorer(str(tokenizer_row.path), n_ctx=64, threads=1)
    out = {}
    for name, limit in s.zs_limits:
        items = zs.load_task(name, data, limit)
        out[name] = (items, zs.build_requests(items, m.tokenize, prefix_token(m)))
    return out


def _metrics(reqs: dict[str, tuple[list[zs.Item], list]], scores: dict[str, list]) -> dict:
    res = {}
    for name, (items, _) in reqs.items():
        sc = [[zs.Scored(float(a), bool(b), int(c)) for a, b, c in item] for item in scores[name]]
        res[name] = zs.task_metrics(name, items, sc)
    return res


def zeroshot_ours(row: Row, reqs: dict, s: Settings) -> dict:
    from specquant_gguf.eval.scoring import NativeScorer

    m = NativeScorer(str(row.path), n_ctx=2048, threads=s.eval_threads)
    scores, secs = {}, {}
    for name, (_, rq) in reqs.items():
        t0 = time.perf_counter()
        got = zs.score_items(m, rq, progress=f"{row.name} {name}")
        scores[name] = [[(x.loglik, x.greedy, x.n_tokens) for x in item] for item in got]
        secs[name] = time.perf_counter() - t0
    return {"tasks": _metrics(reqs, scores), "seconds": secs}


def zeroshot_llama(row: Row, reqs: dict, s: Settings) -> dict:
    scores, secs = {}, {}
    for name, (_, rq) in reqs.items():
        log(f"  {row.name} {name} ({len(rq)} items)")
        r = llama_cpp_env.zeroshot_scores(row.path, rq, 2048, s.eval_threads)
        scores[name], secs[name] = r["scores"], r["seconds"]
    return {"tasks": _metrics(reqs, scores), "seconds": secs}


def zs_average(tasks: dict[str, dict]) -> tuple[float, float]:
    """(mean acc, mean acc_norm) over the tasks."""
    accs = [t["acc"] for t in tasks.values()]
    norms = [t.get("acc_norm", t["acc"]) for t in tasks.values()]
    return sum(accs) / len(accs), sum(norms) / len(norms)


# ---------------------------------------------------------------------------------------------
# the run


def run(s: Settings, calib: Path | None, reconvert: Sequence[str] = ()) -> dict[str, Any]:
    t_start = time.perf_counter()
    rows = [replace(ALL_ROWS[n], tag=s.file_tag) for n in s.rows]
    f16_row = replace(ALL_ROWS["f16"], tag=s.file_tag)
    need_llama = any(r.engine == "llama.cpp" for r in rows)
    if need_llama and not llama_cpp_env.is_ready():
        log("building the llama.cpp venv (once)")
        llama_cpp_env.ensure()
    # files: f16 first (tokenizer and llama.cpp's source)
    build: dict[str, dict] = {}
    for r in [f16_row] + [r for r in rows if r.engine == "ours" and r.name != "f16"]:
        build[r.name] = convert(r, calib, r.name in reconvert, s.convert_args, s.source)
    for r in rows:
        if r.engine == "llama.cpp":
            build[r.name] = make_llama_file(r, f16_row.path)
    tok_row = f16_row

    if s.convert_only:
        paths = {r.name: r.path for r in [f16_row, *rows]}
        return {"mode": s.mode, "files": {n: {"file": paths[n].name, **b} for n, b in build.items()}}
    log("perplexity windows")
    windows, score_from = common.ppl_windows(tok_row.path, s.ppl_windows, s.ctx), 1
    ppl_key = {"ctx": s.ctx, "windows": len(windows), "score_from": score_from,
               "tokens_sha": hashlib.sha1(json.dumps(windows).encode()).hexdigest()}
    log("zero-shot requests")
    reqs = zs_requests(tok_row, s)
    zs_key = {"limits": s.zs_limits, "reqs_sha": hashlib.sha1(json.dumps([r for _, r in reqs.values()]).encode()).hexdigest()}

    # perplexity for every row first, then zero-shot (the long part) with the target rows first:
    # a run cut short still leaves the most useful numbers in the cache
    ppls = {}
    for r in rows:
        log(f"{r.name}: perplexity ({len(windows)} x {s.ctx})")
        fn = ppl_ours if r.engine == "ours" else ppl_llama
        ppls[r.name] = cached(r, "ppl", ppl_key, lambda: fn(r, windows, score_from, s))
    zs_done = {}
    for r in sorted(rows, key=lambda r: ZS_PRIORITY.index(r.name) if r.name in ZS_PRIORITY else 99):
        if not s.zs_rows or r.name in s.zs_rows:
            log(f"{r.name}: zero-shot")
            fz = zeroshot_ours if r.engine == "ours" else zeroshot_llama
            zs_done[r.name] = cached(r, "zeroshot", zs_key, lambda: fz(r, reqs, s))
    results = []
    for r in rows:
        row = {"name": r.name, "engine": r.engine, "file": r.path.name, **common.file_facts(r.path),
               "build": build.get(r.name), "ppl": ppls[r.name]["ppl"], "ppl_seconds": ppls[r.name]["seconds"]}
        zsr = zs_done.get(r.name)
        if zsr:
            acc, acc_norm = zs_average(zsr["tasks"])
            row.update(zeroshot=zsr["tasks"], zeroshot_acc_avg=acc, zeroshot_avg=acc_norm,
                       zeroshot_seconds=zsr["seconds"])
        results.append(row)

    sp: dict[str, Any] = {"machine": common.machine_info(), "settings": {}, "rows": []}
    if s.speed:
        log("speed")
        ours = {r.name: r.path for r in rows if r.engine == "ours"}
        llama = {r.name: r.path for r in rows if r.engine == "llama.cpp" and r.llama_type != "F16"}
        t_speed = time.perf_counter()
        sp = speed.run(ours, llama, s.threads, s.speed_reps)
        sp["seconds"] = time.perf_counter() - t_speed
    by_name = {x["name"]: x for x in sp["rows"]}
    for row in results:
        if row["name"] in by_name:
            row["speed"] = by_name[row["name"]]["threads"]
            row["peak_rss_kb"] = by_name[row["name"]]["peak_rss_kb"]
    out = {"mode": s.mode, "machine": sp["machine"], "membw": sp.get("membw"), "settings": {
        "source": s.source, "ppl": {"ctx": s.ctx, "windows": len(windows), "score_from": score_from,
                                  "data": "wikitext-2-raw/wiki.test.raw"},
        "zeroshot": {"tasks": dict(s.zs_limits), "average": "mean acc_norm over the tasks"},
        "speed": sp["settings"], "eval_threads": s.eval_threads, "calibration": _display(str(calib)) if calib else "converter default"},
        "zeroshot_metric": "acc_norm", "rows": results,
        "targets": targets(results), "seconds": round(time.perf_counter() - t_start, 1),
        "cost": cost(build, ppls, zs_done, sp.get("seconds"))}
    return out


def cost(build: dict[str, dict], ppls: dict[str, dict], zs_done: dict[str, dict], speed_s: float | None) -> dict:
    """What the measurements of this table took when they were made (cached ones included): the
    time a run from scratch needs, on this machine."""
    zs_rows = {n: round(sum(z["seconds"].values()), 1) for n, z in zs_done.items()}
    out = {"conversion_s": round(sum(b.get("seconds") or 0 for b in build.values()), 1),
           "ppl_s": round(sum(p["seconds"] for p in ppls.values()), 1),
           "zeroshot_s": round(sum(zs_rows.values()), 1), "zeroshot_s_per_row": zs_rows,
           "speed_s": round(speed_s, 1) if speed_s is not None else None}
    out["total_s"] = round(out["conversion_s"] + out["ppl_s"] + out["zeroshot_s"] + (out["speed_s"] or 0), 1)
    return out


# ---------------------------------------------------------------------------------------------
# targets and report


def targets(rows: list[dict]) -> list[dict]:
    """The goals, each with the measured value and by how much it is met or missed."""
    by = {r["name"]: r for r in rows}
    out = []

    def zs_points(name: str) -> float | None:
        r = by.get(name)
        return 100 * r["zeroshot_avg"] if r and r.get("zeroshot_avg") is not None else None

    sq, f16, rtn, smq = (zs_points(n) for n in ("specquant", "f16", "rtn", "smoothquant"))
    if sq is not None and f16 is not None:
        gap = f16 - sq
        out.append({"target": "specquant zero-shot avg within 2 points of f16", "value": f"{sq - f16:+.2f} points vs f16",
                    "met": gap <= 2.0, "margin": round(2.0 - gap, 2)})
    for base, val in (("rtn", rtn), ("smoothquant", smq)):
        if sq is not None and val is not None:
            d = sq - val
            out.append({"target": f"specquant zero-shot avg >= 1 point above {base}", "value": f"{d:+.2f} points",
                        "met": d >= 1.0, "margin": round(d - 1.0, 2)})
    spq, q40 = by.get("specquant", {}).get("speed"), by.get("llama.cpp Q4_0", {}).get("speed")
    if spq and q40:
        a = next((x for x in spq if x["threads"] == 2), None)
        b = next((x for x in q40 if x["threads"] == 2), None)
        if a and b:
            for key, goal, label in (("decode_tok_s", 1.2, "decode"), ("prefill_tok_s", 1.5, "prefill")):
                ratio = a[key] / b[key]
                out.append({"target": f"{label} >= {goal}x llama.cpp Q4_0 at 2 threads", "value": f"{ratio:.2f}x",
                            "met": ratio >= goal, "margin": round(ratio - goal, 2)})
    f16r, lf16 = by.get("f16"), by.get("llama.cpp F16")
    if f16r and lf16:
        rel = abs(f16r["ppl"] / lf16["ppl"] - 1) * 100
        out.append({"target": "our f16 PPL within 0.5% of llama.cpp F16 (same tokens)", "value": f"{rel:.3f}%",
                    "met": rel <= 0.5, "margin": round(0.5 - rel, 3)})
    return out


def _fmt_task(t: dict | None) -> str:
    if not t:
        return "–"
    return f"{100 * t['acc']:.1f} / {100 * t['acc_norm']:.1f}" if "acc_norm" in t else f"{100 * t['acc']:.1f}"


def comparison_md(res: dict[str, Any], command: str) -> str:
    s, m = res["settings"], res["machine"]
    lim = ", ".join(f"{k} {'all' if v is None else f'first {v}'}" for k, v in s["zeroshot"]["tasks"].items())
    lines = [
        f"Measured {m['date'][:10]} on {m.get('cpu', '?')} ({m['cores']} cores, {m.get('mem_gib', '?')} GiB), "
        f"mode `{res['mode']}`. Model: SmolLM2-135M-Instruct "
        f"(`{s['source']}`; its Q4_1 GGUF dequantized is the full-precision reference).",
        "",
        f"- Perplexity: WikiText-2 test, ctx {s['ppl']['ctx']}, the first {s['ppl']['windows']} windows "
        f"(specquant_gguf.eval.perplexity's windows; tokens scored from position {s['ppl']['score_from']} of each window); "
        "every row reads the same token ids (our tokenizer), llama.cpp included.",
        f"- Zero-shot: {lim}; lm-eval prompts and scoring (specquant_gguf.eval.zeroshot) on each engine's logits; "
        "cells are acc / acc_norm in %; **avg** is the mean acc_norm over the three tasks.",
        (f"- Speed: {s['speed']['protocol']}, {s['speed']['reps']} reps; tok/s at 1 and 2 threads; "
         "peak RSS of the speed run's process (VmHWM)." if s["speed"] else "- Speed: not measured in this run."),
        f"- bpw: file bytes x 8 / parameters (metadata and side tensors included). Evaluation threads: {s['eval_threads']}.",
        "",
        "| row | engine | MB | bpw | PPL | piqa | arc_easy | hellaswag | avg | pp t/s 1T | pp t/s 2T | tg t/s 1T | tg t/s 2T | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["rows"]:
        sp = {x["threads"]: x for x in r.get("speed", [])}

        def sv(t: int, k: str) -> str:
            return f"{sp[t][k]:.0f}" if t in sp else "–"

        z = r.get("zeroshot", {})
        avg = f"{100 * r['zeroshot_avg']:.2f}" if r.get("zeroshot_avg") is not None else "–"
        rss = f"{r['peak_rss_kb'] / 1024:.0f}" if r.get("peak_rss_kb") else "–"
        lines.append(f"| {r['name']} | {r['engine']} | {r['file_bytes'] / 1e6:.1f} | {r['bits_per_weight']:.2f} | "
                     f"{r['ppl']:.2f} | {_fmt_task(z.get('piqa'))} | {_fmt_task(z.get('arc_easy'))} | "
                     f"{_fmt_task(z.get('hellaswag'))} | {avg} | {sv(1, 'prefill_tok_s')} | {sv(2, 'prefill_tok_s')} | "
                     f"{sv(1, 'decode_tok_s')} | {sv(2, 'decode_tok_s')} | {rss} |")
    lines += ["", "Targets (avg in points = percentage points of mean acc_norm; one task's standard error is "
              "about 1 point at these sizes, the average's about 0.6):", ""]
    for t in res["targets"]:
        lines.append(f"- {'met' if t['met'] else '**missed**'}: {t['target']}: {t['value']} "
                     f"({'margin' if t['met'] else 'missed by'} {abs(t['margin'])})")
    conv = [f"- {r['name']}: `{r['build']['command']}`" + (f" ({r['build']['seconds']} s" + (
        f", peak RSS {r['build']['peak_rss_kb'] / 1024:.0f} MB)" if r['build'].get('peak_rss_kb') else ")")
        if r['build'].get('seconds') is not None else "") for r in res["rows"] if r.get("build")]
    lines += ["", "Files (converted once, then cached):", "", *conv, "", *cost_md(res), "", "Reproduce:", "", "```",
              command, "```", "", "![accuracy vs bits per weight](img/accuracy_vs_bpw.png)", "",
              "![perplexity](img/ppl.png)"]
    return "\n".join(lines)


def cost_md(res: dict[str, Any]) -> list[str]:
    """How long the table takes to make from scratch: each measurement's own time, cached or not."""
    c = res.get("cost")
    if not c:
        return []
    per_row = ", ".join(f"{n} {v / 60:.1f}" for n, v in c["zeroshot_s_per_row"].items())
    speed = f", speed {c['speed_s'] / 60:.1f}" if c.get("speed_s") is not None else ""
    return [f"Cost of the whole table from scratch on this machine (each measurement's own time, also when this "
            f"run took it from the cache): {c['total_s'] / 60:.0f} min = conversions {c['conversion_s'] / 60:.1f} "
            f"+ perplexity {c['ppl_s'] / 60:.1f} + zero-shot {c['zeroshot_s'] / 60:.1f} ({per_row}){speed} min. "
            f"This run: {res['seconds'] / 60:.1f} min."]


def speed_md(res: dict[str, Any]) -> str:
    if not res["settings"]["speed"]:
        return "Not measured in this run (python bench/compare.py without --no-speed, or bench/speed.py)."
    bw = {x["threads"]: x["gb_per_s"] for x in res.get("membw") or []}
    lines = ["Prefill: one 512-token prompt as one batch; decode: 128 tokens one per call, both from an "
             "empty cache (llama-bench's pp512/tg128 protocol), same token ids on both engines, best of "
             f"{res['settings']['speed']['reps']}. Decode GB/s = weight bytes read per token x tokens/s "
             "(the embedding table counts once per token only when it is also the output head).",
             "", "Memory read bandwidth (bench/membw.c, 1 GiB streaming sum, best of 5): " +
             (", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in sorted(bw.items())) or "not measured") + ".",
             "", "| row | threads | prefill t/s | decode t/s | decode GB/s | % of read bw | prefill vs Q4_0 | decode vs Q4_0 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    q40 = {x["threads"]: x for r in res["rows"] if r["name"] == "llama.cpp Q4_0" for x in r.get("speed", [])}
    for r in res["rows"]:
        for x in r.get("speed", []):
            t = x["threads"]
            pct = f"{100 * x['decode_gb_s'] / bw[t]:.0f}%" if t in bw else "–"
            rp = f"{x['prefill_tok_s'] / q40[t]['prefill_tok_s']:.2f}x" if t in q40 else "–"
            rd = f"{x['decode_tok_s'] / q40[t]['decode_tok_s']:.2f}x" if t in q40 else "–"
            lines.append(f"| {r['name']} | {t} | {x['prefill_tok_s']:.1f} | {x['decode_tok_s']:.1f} | "
                         f"{x['decode_gb_s']:.2f} | {pct} | {rp} | {rd} |")
    lines += ["", "![speed](img/speed.png)", "", "Reproduce the speed table alone: `python bench/speed.py` "
              "(uses the files compare.py cached)."]
    return "\n".join(lines)


MARK = "<!-- bench/compare.py:{}:{} -->"


def update_results_md(path: Path, sections: dict[str, str]) -> None:
    """Replaces (or appends) only our sections, between markers; other sections stay untouched."""
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Results\n"
    for title, body in sections.items():
        key = title.lower()
        begin, end = MARK.format(key, "begin"), MARK.format(key, "end")
        block = f"{begin}\n{body}\n{end}"
        if begin in text and end in text:
            a, b = text.index(begin), text.index(end) + len(end)
            text = text[:a] + block + text[b:]
        else:
            text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def summary(res: dict[str, Any]) -> str:
    lines = [f"{'row':<18}{'bpw':>6}{'PPL':>9}{'zs avg':>8}{'pp 2T':>8}{'tg 2T':>8}"]
    for r in res["rows"]:
        sp = {x["threads"]: x for x in r.get("speed", [])}
        zsa = f"{100 * r['zeroshot_avg']:.2f}" if r.get("zeroshot_avg") is not None else "-"
        pp = f"{sp[2]['prefill_tok_s']:.0f}" if 2 in sp else "-"
        tg = f"{sp[2]['decode_tok_s']:.0f}" if 2 in sp else "-"
        lines.append(f"{r['name']:<18}{r['bits_per_weight']:>6.2f}{r['ppl']:>9.2f}{zsa:>8}{pp:>8}{tg:>8}")
    for t in res["targets"]:
        lines.append(f"{'MET   ' if t['met'] else 'MISSED'} {t['target']}: {t['value']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="ours vs llama.cpp on SmolLM2-135M: quality, speed, size")
    ap.add_argument("--quick", action="store_true", help="small CI-safe run; writes bench/out/compare-quick.json only")
    ap.add_argument("--source", default=SOURCE, help="the converter's MODEL: SmolLM2-135M-Instruct's short name "
                    "or its GGUF file (default %(default)s)")
    ap.add_argument("--out", default=None, help="result JSON (default bench/out/compare.json, or compare-quick.json)")
    ap.add_argument("--rows", help=f"comma-separated subset of: {', '.join(ALL_ROWS)}")
    ap.add_argument("--calib", default=None, help="calibration file passed to the converter (default: the "
                    "converter's own default, self-generated text, as `python convert.py` does)")
    ap.add_argument("--zs-all-rows", action="store_true", help="zero-shot on every row (default: the rows "
                    "the targets name, plus llama.cpp Q4_0)")
    ap.add_argument("--reconvert", default="", help="comma-separated rows to convert again (or 'all')")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed runs (e.g. on a busy machine)")
    ap.add_argument("--no-docs", action="store_true", help="do not touch docs/RESULTS.md and docs/img")
    ap.add_argument("--convert-only", action="store_true", help="make (or re-make, with --reconvert) the files, "
                    "then stop; a re-made file identical to the cached one keeps its cached measurements")
    ap.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout")
    a = ap.parse_args(argv)
    s = QUICK if a.quick else FULL
    names = tuple(n.strip() for n in a.rows.split(",") if n.strip()) if a.rows else s.rows
    bad = [n for n in names if n not in ALL_ROWS]
    if bad:
        print(f"compare: unknown rows {bad} (known: {', '.join(ALL_ROWS)})", file=sys.stderr)
        return 2
    if a.quick and not llama_cpp_env.is_ready():  # CI: no 10-minute llama.cpp build in a smoke run
        log("llama.cpp venv not built: quick mode skips the llama.cpp rows (python bench/llama_cpp_env.py setup)")
        names = tuple(n for n in names if ALL_ROWS[n].engine == "ours")
    s = replace(s, rows=names, speed=s.speed and not a.no_speed, convert_only=a.convert_only, source=a.source,
                zs_rows=() if a.zs_all_rows else s.zs_rows)
    calib = Path(a.calib) if a.calib else None
    if calib is not None and not calib.is_file():
        print(f"compare: no calibration file {calib}", file=sys.stderr)
        return 2
    try:
        reconv = tuple(ALL_ROWS) if a.reconvert == "all" else tuple(x for x in a.reconvert.split(",") if x)
        if set(reconv) - set(ALL_ROWS):
            print(f"compare: unknown rows in --reconvert: {sorted(set(reconv) - set(ALL_ROWS))}", file=sys.stderr)
            return 2
        res = run(s, calib, reconv)
    except (RuntimeError, llama_cpp_env.LlamaEnvError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    if s.convert_only:
        common.report(res, "\n".join(f"{n}: {f['file']}" for n, f in res["files"].items()), a.json)
        return 0
    command = "python bench/compare.py" + (" --quick" if a.quick else "") + (f" --rows {a.rows}" if a.rows else "")
    res["command"] = command
    out = Path(a.out) if a.out else common.OUT_DIR / ("compare-quick.json" if a.quick else "compare.json")
    common.write_json(out, res)
    common.report(res, summary(res), a.json)
    if not a.quick and not a.no_docs:
        plots.make_all(res, common.REPO / "docs" / "img")
        update_results_md(common.REPO / "docs" / "RESULTS.md",
                          {"Comparison: ours vs llama.cpp (issue #6)": comparison_md(res, command),
                           "Speed of every row": speed_md(res)})
        log("wrote docs/RESULTS.md (the comparison and speed sections) and docs/img/*.png")
    log(f"wrote {out} in {res['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
