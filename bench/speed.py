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

    python bench/speed.py --act-bits [--ours NAME=FILE ...] [--synthetic-8b N] [--threads 2]

Activation bits (issue 16): pp512 / tg128 of the same files at act_bits 4 and 8, for every kernel set
(SQ_ISA) this CPU runs. The two Models live in one process and their runs alternate (A4, A8, then
A8, A4, ...), best of --reps (--scalar-reps for the portable kernels), so a busy machine hits both
alike. --synthetic-8b N adds N random blocks of Llama-3.1-8B's shape (hidden 4096, ffn 14336, 32/8
heads, head dim 128; G 64, WHT; a 300-token vocabulary, so the layer stack is what is timed),
written by tests/oracle/synthetic.py. --kernels BIN adds the kernels alone (native/tools/bench_kernels
-b 4 / -b 8, SmolLM2's and --8b shapes, one thread, fastest call in thread CPU time: what a busy
machine cannot blur). Writes bench/out/speed_act_bits.json.
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
from specquant_gguf.convert.recipe import DEFAULT_A8_LINEARS  # noqa: E402

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


def _time_act_bits(path: str, prompt: list[int], gen: list[int], threads: int, reps: int,
                   bits: Sequence[int]) -> dict:
    """pp / tg of one file at each act_bits, the runs interleaved (see the module docstring)."""
    from specquant_gguf.runtime import Model

    models = {b: Model(path, n_ctx=len(prompt) + len(gen) + 8, n_threads=threads, act_bits=b) for b in bits}
    for m in models.values():
        m.eval_last(prompt[:8])  # warm-up
    pre: dict[int, list[float]] = {b: [] for b in bits}
    dec: dict[int, list[float]] = {b: [] for b in bits}
    cpu: dict[int, list[float]] = {b: [0.0, 0.0] for b in bits}  # process CPU seconds: prefill, decode
    for r in range(reps):
        order = list(bits) if r % 2 == 0 else list(bits)[::-1]
        for b in order:
            m = models[b]
            m.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            m.eval_last(prompt)
            pre[b].append(time.perf_counter() - t0)
            cpu[b][0] += time.process_time() - c0
        for b in order:
            m = models[b]
            m.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            for tok in gen:
                m.eval_last([tok])
            dec[b].append(time.perf_counter() - t0)
            cpu[b][1] += time.process_time() - c0
    rows = [{"act_bits": models[b].act_bits, "isa": models[b].isa, "threads": threads,
             "prefill_tok_s": len(prompt) / min(pre[b]), "decode_tok_s": len(gen) / min(dec[b]),
             "prefill_s_all": pre[b], "decode_s_all": dec[b],
             "prefill_cpu_s_mean": cpu[b][0] / reps, "decode_cpu_s_mean": cpu[b][1] / reps} for b in bits]
    for m in models.values():
        m.close()
    return {"rows": rows}


def run_ours(path: Path, prompt: list[int], gen: list[int], threads: Sequence[int], reps: int,
             act_bits: Sequence[int] | None = None, isa: str | None = None) -> dict:
    req = json.dumps({"file": str(path), "prompt": prompt, "gen": gen, "threads": list(threads), "reps": reps,
                      "act_bits": list(act_bits) if act_bits else None})
    env = dict(os.environ, **({"SQ_ISA": isa} if isa else {}))
    r = subprocess.run([sys.executable, __file__, "--worker"], input=req, capture_output=True, text=True, env=env)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"speed worker for {path.name} failed: {tail}")
    return json.loads(lines[-1])


def _worker() -> int:
    req = json.load(sys.stdin)
    if req.get("act_bits"):
        print(json.dumps(_time_act_bits(req["file"], req["prompt"], req["gen"], req["threads"][0], req["reps"],
                                        req["act_bits"])))
        return 0
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


# -- activation bits (issue 16) ---------------------------------------------------------------

ISAS = ("scalar", "avx2", "avx512", "avx512-mix", "neon")


def runnable_isas(probe: Path) -> list[str]:
    """The kernel sets this machine runs (SQ_ISA=name loads), in the order of ISAS."""
    from specquant_gguf.runtime import Model, UnsupportedError

    out, old = [], os.environ.get("SQ_ISA")
    try:
        for isa in ISAS:
            os.environ["SQ_ISA"] = isa
            try:
                Model(str(probe), n_ctx=16, n_threads=1).close()
                out.append(isa)
            except UnsupportedError:
                pass
    finally:
        if old is None:
            os.environ.pop("SQ_ISA", None)
        else:
            os.environ["SQ_ISA"] = old
    return out


def synthetic_8b(n_blocks: int, folder: Path, a8_linears: Sequence[str] = ()) -> Path:
    """n_blocks random blocks of Llama-3.1-8B's shape as an SQ4 file (cached by block count);
    a8_linears: the kinds whose inputs stay 8-bit at act_bits 4 (the default conversion: ffn_down)."""
    tag = "".join(f"-a8{k}" for k in a8_linears)
    path = folder / f"synthetic-8b-shape-{n_blocks}blk{tag}.sq4.gguf"
    if not path.is_file():
        sys.path.insert(0, str(common.REPO / "tests"))
        from oracle.synthetic import make_tiny_llama_gguf

        folder.mkdir(parents=True, exist_ok=True)
        make_tiny_llama_gguf(path, n_layers=n_blocks, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=300,
                             group_size=64, act_bits=4, rotation="wht", context_length=1024, seed=16,
                             a8_linears=list(a8_linears) or None)
    return path


def run_act_bits(files: dict[str, Path], threads: int = 2, reps: int = 3, scalar_reps: int = 1,
                 isas: Sequence[str] | None = None, log=sys.stderr) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": common.machine_info(),
                           "settings": {"prompt_tokens": PROMPT_LEN, "gen_tokens": GEN_LEN, "threads": threads,
                                        "reps": reps, "scalar_reps": scalar_reps,
                                        "protocol": "pp512/tg128 from an empty cache, A4/A8 interleaved, best of reps"},
                           "rows": []}
    for name, path in files.items():
        prompt, gen = bench_tokens(path)
        for isa in runnable_isas(path):
            if isas and isa not in isas:
                continue
            n = scalar_reps if isa == "scalar" else reps
            print(f"[speed] {name} SQ_ISA={isa} A4/A8 x{n}", file=log, flush=True)
            res = run_ours(path, prompt, gen, [threads], n, act_bits=(4, 8), isa=isa)
            for r in res["rows"]:
                out["rows"].append({"name": name, "file": str(path), **r})
    return out


KERNEL_LINE = r"^([\w-]+)\s+(sq4|q8_0)\s+(\d+) x (\d+)\s+(\d+)\s+(\d+)\s+([\d.]+) us\s+([\d.]+) GOPS"


def run_kernels(binary: Path, isas: Sequence[str], log=sys.stderr) -> list[dict[str, Any]]:
    """bench_kernels at -b 4 and -b 8 for each ISA on SmolLM2's and Llama-3.1-8B's shapes
    (scalar: 64-token batches instead of 512, whose scalar runs take minutes)."""
    import re

    rows = []
    for isa in isas:
        ntok = "1,64" if isa == "scalar" else "1,512"
        for shapes in ([], ["--8b"]):
            for bits in (4, 8):
                print(f"[speed] kernels {isa} A{bits} {' '.join(shapes) or 'smollm2'}", file=log, flush=True)
                r = subprocess.run([str(binary), "-b", str(bits), "-i", isa, "-n", ntok, "--quick", *shapes],
                                   capture_output=True, text=True, check=True)
                for line in r.stdout.splitlines():
                    m = re.match(KERNEL_LINE, line)
                    if m and m.group(2) == "sq4":
                        rows.append({"isa": isa, "act_bits": bits, "rows": int(m.group(3)), "k": int(m.group(4)),
                                     "n_tok": int(m.group(6)), "us": float(m.group(7)), "gops": float(m.group(8)),
                                     "shapes": "llama-3.1-8b" if shapes else "smollm2-135m"})
    return rows


def format_kernels(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'kernel (1 thread, CPU time)':<28}{'isa':>7}{'ntok':>5}{'A4 us':>11}{'A8 us':>11}{'A8/A4 time':>11}"]
    keys = dict.fromkeys((r["shapes"], r["rows"], r["k"], r["isa"], r["n_tok"]) for r in rows)
    for sh, rr, k, isa, nt in keys:
        by = {r["act_bits"]: r for r in rows if (r["shapes"], r["rows"], r["k"], r["isa"], r["n_tok"]) == (sh, rr, k, isa, nt)}
        if 4 in by and 8 in by:
            lines.append(f"{sh[:12] + ' ' + str(rr) + 'x' + str(k):<28}{isa:>7}{nt:>5}{by[4]['us']:>11.1f}"
                         f"{by[8]['us']:>11.1f}{by[8]['us'] / by[4]['us']:>11.2f}")
    return "\n".join(lines)


def format_act_bits(res: dict[str, Any]) -> str:
    rows = res["rows"]
    w = max([26, *(len(r["name"]) + 1 for r in rows)])
    lines = [f"{'model':<{w}}{'isa':>11}{'thr':>4}{'A4 pp512':>10}{'A8 pp512':>10}{'A8/A4':>7}"
             f"{'A4 tg128':>10}{'A8 tg128':>10}{'A8/A4':>7}"]
    for name in dict.fromkeys(r["name"] for r in rows):
        for isa in dict.fromkeys(r["isa"] for r in rows if r["name"] == name):
            by = {r["act_bits"]: r for r in rows if r["name"] == name and r["isa"] == isa}
            if 4 not in by or 8 not in by:
                continue
            a4, a8 = by[4], by[8]
            lines.append(f"{name:<{w}}{isa:>11}{a4['threads']:>4}{a4['prefill_tok_s']:>10.1f}{a8['prefill_tok_s']:>10.1f}"
                         f"{a8['prefill_tok_s'] / a4['prefill_tok_s']:>7.2f}{a4['decode_tok_s']:>10.1f}"
                         f"{a8['decode_tok_s']:>10.1f}{a8['decode_tok_s'] / a4['decode_tok_s']:>7.2f}")
    if res.get("kernels"):
        lines += ["", format_kernels(res["kernels"])]
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
    ap.add_argument("--act-bits", action="store_true",
                    help="A4 vs A8 of our files for every ISA this CPU runs (bench/out/speed_act_bits.json)")
    ap.add_argument("--synthetic-8b", type=int, default=0, metavar="N",
                    help="with --act-bits: also N random blocks of Llama-3.1-8B's shape")
    ap.add_argument("--scalar-reps", type=int, default=1, help="with --act-bits: reps of SQ_ISA=scalar [1]")
    ap.add_argument("--kernels", metavar="BIN", help="with --act-bits: also time native/tools/bench_kernels BIN")
    ap.add_argument("--isas", help="with --act-bits: only these kernel sets (comma-separated; default: all this CPU runs)")
    a = ap.parse_args(argv)
    if a.act_bits:
        ours = _pairs(a.ours, "--ours") if a.ours is not None else {
            k: v for k, v in default_files()[0].items() if k == "specquant"}
        if a.synthetic_8b > 0:
            ours[f"8B-shape x{a.synthetic_8b} blocks"] = synthetic_8b(a.synthetic_8b, common.models_dir())
            # the default conversion's layout: ffn_down's input 8-bit also when the rest runs at 4
            ours[f"8B-shape x{a.synthetic_8b} blocks, ffn_down 8-bit"] = synthetic_8b(
                a.synthetic_8b, common.models_dir(), DEFAULT_A8_LINEARS)
        if not ours:
            print("speed: no files (pass --ours NAME=FILE or --synthetic-8b N)", file=sys.stderr)
            return 2
        threads = [int(t) for t in a.threads.split(",") if t.strip()]
        isas = [i for i in (a.isas or "").split(",") if i] or None
        res = run_act_bits(ours, max(threads), a.reps, a.scalar_reps, isas)
        if a.kernels:
            res["kernels"] = run_kernels(Path(a.kernels), isas or runnable_isas(next(iter(ours.values()))))
        out = Path(a.out) if a.out != str(common.OUT_DIR / "speed.json") else common.OUT_DIR / "speed_act_bits.json"
        common.write_json(out, res)
        common.report(res, format_act_bits(res), a.json)
        print(f"wrote {out}", file=sys.stderr)
        return 0
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
