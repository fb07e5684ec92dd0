"""Prefill and decode speed: our runtime's files next to llama.cpp's, same tokens, same threads.

    python bench/speed.py [--ours NAME=FILE ...] [--llama NAME=FILE ...] [--threads 1,2] [--reps 3]

Prefill: one 512-token prompt evaluated as one batch from an empty cache (only the last position's
logits are computed, on both sides). Decode: 128 tokens fed one per call from an empty cache (like
llama-bench's pp512 / tg128); the tokens are fixed WikiText-2 test tokens (teacher forcing), so no
sampler runs. Each number is the best of --reps runs after a short warm-up; every file runs in its
own subprocess (its peak RSS is that process's VmHWM), one after another, never concurrently.
Also measured: the machine's memory read bandwidth (bench/membw.c) and each row's effective decode
bandwidth = weight bytes read per token x tokens/s. Our side goes through
specquant_gguf.runtime.Model: one eval_last call per token, no other Python work in the timed loop.
Writes bench/out/speed.json and prints a table. Default files: bench-models cache of compare.py.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
# timed processes (ours and llama.cpp's workers inherit this) must not share the cores with numpy's
# idle OpenBLAS threads, which spin after start-up
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import common  # noqa: E402  (adds the repo to sys.path)
import llama_cpp_env  # noqa: E402
import membw  # noqa: E402

PROMPT_LEN, GEN_LEN = 512, 128


# -- our side, in a subprocess ------------------------------------------------------------------


def _time_ours(path: str, prompt: list[int], gen: list[int], threads: Sequence[int], reps: int) -> dict:
    from specquant_gguf.runtime import Model

    rows = []
    for t in threads:
        m = Model(path, n_ctx=len(prompt) + len(gen) + 8, n_threads=int(t))
        m.eval_last(prompt[:8])  # warm-up: page in the weights, start the thread pool
        pre, dec = [], []
        for _ in range(reps):
            m.reset()
            t0 = time.perf_counter()
            m.eval_last(prompt)
            pre.append(time.perf_counter() - t0)
            m.reset()
            t0 = time.perf_counter()
            for tok in gen:
                m.eval_last([tok])
            dec.append(time.perf_counter() - t0)
        rows.append({"threads": int(t), "prefill_s": min(pre), "decode_s": min(dec),
                     "prefill_tok_s": len(prompt) / min(pre), "decode_tok_s": len(gen) / min(dec)})
        del m
    return {"rows": rows, "peak_rss_kb": common.peak_rss_kb()}


def run_ours(path: Path, prompt: list[int], gen: list[int], threads: Sequence[int], reps: int) -> dict:
    req = json.dumps({"file": str(path), "prompt": prompt, "gen": gen, "threads": list(threads), "reps": reps})
    r = subprocess.run([sys.executable, __file__, "--worker"], input=req, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"speed worker for {path.name} failed: {tail}")
    return json.loads(lines[-1])


def _worker() -> int:
    req = json.load(sys.stdin)
    print(json.dumps(_time_ours(req["file"], req["prompt"], req["gen"], req["threads"], req["reps"])))
    return 0


# -- tokens ---------------------------------------------------------------------------------


def bench_tokens(tokenizer_file: Path | None, n_prompt: int = PROMPT_LEN, n_gen: int = GEN_LEN) -> tuple[list[int], list[int]]:
    """512 + 128 WikiText-2 test tokens from our tokenizer (any of our files: they share it)."""
    text = common.wiki_text()
    if tokenizer_file is not None and text:
        from specquant_gguf.runtime import Model

        m = Model(str(tokenizer_file), n_ctx=64, n_threads=1)
        ids = list(m.tokenize(text[:40000], add_bos=False))
        del m
        if len(ids) >= n_prompt + n_gen:
            return ids[:n_prompt], ids[n_prompt:n_prompt + n_gen]
    import numpy as np  # no text or no tokenizer: fixed pseudo-random ids (timing does not care)

    ids = np.random.default_rng(0).integers(100, 10000, n_prompt + n_gen).tolist()
    return ids[:n_prompt], ids[n_prompt:]


# -- one run --------------------------------------------------------------------------------


def measure_row(name: str, engine: str, path: Path, prompt: list[int], gen: list[int],
                threads: Sequence[int], reps: int) -> dict[str, Any]:
    facts = common.file_facts(path)
    if engine == "ours":
        res = run_ours(path, prompt, gen, threads, reps)
    else:
        res = llama_cpp_env.speed(path, prompt, gen, threads, reps)
    for r in res["rows"]:
        r["decode_gb_s"] = facts["bytes_per_token"] * r["decode_tok_s"] / 1e9
    return {"name": name, "engine": engine, "file": str(path), **facts, "threads": res["rows"],
            "peak_rss_kb": res.get("peak_rss_kb")}


def run(ours: dict[str, Path], llama: dict[str, Path], threads: Sequence[int] = (1, 2), reps: int = 3,
        with_membw: bool = True, log=sys.stderr) -> dict[str, Any]:
    tok_file = next(iter(ours.values()), None)
    prompt, gen = bench_tokens(tok_file)
    out: dict[str, Any] = {"machine": common.machine_info(),
                           "settings": {"prompt_tokens": len(prompt), "gen_tokens": len(gen), "reps": reps,
                                        "threads": list(threads), "protocol": "pp512/tg128 from an empty cache, best of reps"},
                           "rows": []}
    if with_membw:
        print("[speed] memory bandwidth", file=log, flush=True)
        out["membw"] = membw.measure(1024, max(threads), 5)
    for engine, files in (("ours", ours), ("llama.cpp", llama)):
        for name, path in files.items():
            print(f"[speed] {name} ({engine})", file=log, flush=True)
            out["rows"].append(measure_row(name, engine, path, prompt, gen, threads, reps))
    return out


def format_table(res: dict[str, Any]) -> str:
    bw = {m["threads"]: m["gb_per_s"] for m in res.get("membw", [])}
    ref = {r["threads"]: r for row in res["rows"] if row["name"] == "llama.cpp Q4_0" for r in row["threads"]}
    lines = [f"{'file':<22}{'MB':>7}{'bpw':>6}{'thr':>4}{'prefill t/s':>12}{'decode t/s':>11}"
             f"{'dec GB/s':>9}{'% mem bw':>9}{'pp/Q4_0':>8}{'tg/Q4_0':>8}"]
    for row in res["rows"]:
        for r in row["threads"]:
            t = r["threads"]
            pct = f"{100 * r['decode_gb_s'] / bw[t]:.0f}%" if t in bw else "-"
            q = ref.get(t)
            rp = f"{r['prefill_tok_s'] / q['prefill_tok_s']:.2f}x" if q else "-"
            rd = f"{r['decode_tok_s'] / q['decode_tok_s']:.2f}x" if q else "-"
            lines.append(f"{row['name']:<22}{row['file_bytes'] / 1e6:>7.1f}{row['bits_per_weight']:>6.2f}{t:>4}"
                         f"{r['prefill_tok_s']:>12.1f}{r['decode_tok_s']:>11.1f}{r['decode_gb_s']:>9.2f}"
                         f"{pct:>9}{rp:>8}{rd:>8}")
    if bw:
        lines.append("memory read bandwidth: " + ", ".join(f"{t} thread(s) {g:.1f} GB/s" for t, g in sorted(bw.items())))
    return "\n".join(lines)


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Path]:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"speed: {flag} takes NAME=FILE, got {it!r}")
        k, v = it.split("=", 1)
        if not Path(v).is_file():
            raise SystemExit(f"speed: {v}: no such file")
        out[k] = Path(v)
    return out


def default_files() -> tuple[dict[str, Path], dict[str, Path]]:
    d = common.models_dir()
    ours = {n: d / f"smollm2-{n}.gguf" for n in ("specquant", "f16", "q8")}
    llama = {f"llama.cpp {q}": d / f"smollm2-llama-{q}.gguf" for q in ("Q4_0", "Q8_0")}
    return ({k: v for k, v in ours.items() if v.is_file()}, {k: v for k, v in llama.items() if v.is_file()})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return _worker()
    ap = argparse.ArgumentParser(description="prefill/decode tok/s, ours vs llama.cpp")
    ap.add_argument("--ours", nargs="*", help="NAME=FILE of our runtime's files (default: bench-models cache)")
    ap.add_argument("--llama", nargs="*", help="NAME=FILE run by llama.cpp (default: its Q4_0 and Q8_0)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-membw", action="store_true")
    ap.add_argument("--out", default=str(common.OUT_DIR / "speed.json"))
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    a = ap.parse_args(argv)
    ours, llama = _pairs(a.ours, "--ours"), _pairs(a.llama, "--llama")
    if a.ours is None and a.llama is None:
        ours, llama = default_files()
    if not ours and not llama:
        print("speed: no files (convert them with bench/compare.py, or pass --ours/--llama)", file=sys.stderr)
        return 2
    threads = [int(t) for t in a.threads.split(",") if t.strip()]
    res = run(ours, llama, threads, a.reps, not a.no_membw)
    common.write_json(Path(a.out), res)
    common.report(res, format_table(res), a.json)
    print(f"wrote {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
