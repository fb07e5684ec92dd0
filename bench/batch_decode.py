"""Aggregate decode speed of several sequences in one forward pass (runtime.batch, native/src/batch.c).

    .venv/bin/python bench/batch_decode.py MODEL.gguf [--threads 2] [--steps 64] [--seqs 1 2 4 8]
    .venv/bin/python bench/batch_decode.py --synthetic-8b 2 --steps 16     # Llama-3.1-8B-shaped blocks

For each n: n sequences each prefilled with its own prompt, then `steps` greedy decode steps of all
n, one Batch.eval call per step. Prints decode tok/s over all sequences, ms per step and the
speed-up over one sequence, and checks that every sequence's greedy tokens equal those of a lone
Model fed the same prompt (the parity of tests/test_batch.py). Writes the rows as JSON (--json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import common  # noqa: E402
from specquant_gguf import Model  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, there was", "def fibonacci(n):",
           "The three primary colors are", "In 1969, the first man on the moon", "Water boils at",
           "My favourite recipe for pancakes", "The quick brown fox"]


def prompt_ids(model: Model, i: int) -> list[int]:
    """Prompt i as token ids; files without a tokenizer (synthetic shapes) get fixed random ids."""
    text = PROMPTS[i % len(PROMPTS)]
    try:
        ids = model.tokenize(text, add_bos=True)
    except Exception:  # noqa: BLE001  (no tokenizer in the file)
        ids = []
    if not ids:
        rng = np.random.default_rng(i)
        ids = rng.integers(0, model.n_vocab, size=8).tolist()
    return ids


def lone_greedy(path: str, prompt: list[int], steps: int, threads: int, act_bits: int | None) -> list[int]:
    """Greedy tokens of one sequence on a Model of its own (the parity reference)."""
    with Model(path, n_threads=threads, act_bits=act_bits) as m:
        logits = m.eval(prompt)[-1]
        out = []
        for _ in range(steps):
            t = int(np.argmax(logits))
            out.append(t)
            logits = m.eval([t])[-1]
    return out


def run_batch(path: str, n: int, steps: int, threads: int, act_bits: int | None) -> dict:
    """n sequences decoded together: tok/s over all, ms/step, and every sequence's greedy tokens."""
    with Model(path, n_threads=threads, n_seq=n, act_bits=act_bits) as m:
        b = m.batch
        prompts = [prompt_ids(m, i) for i in range(n)]
        seq = [s for s, p in enumerate(prompts) for _ in p]
        logits = b.eval(seq, [t for p in prompts for t in p])  # one prefill call: the last row of each
        toks: list[list[int]] = [[] for _ in range(n)]
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = [int(np.argmax(row)) for row in logits]
            for s, t in enumerate(nxt):
                toks[s].append(t)
            logits = b.eval(list(range(n)), nxt)
        secs = time.perf_counter() - t0
    return {"seqs": n, "steps": steps, "seconds": secs, "tok_s": n * steps / secs, "ms_step": 1e3 * secs / steps,
            "prompts": prompts, "tokens": toks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", help="a .gguf file (or --synthetic-8b N)")
    ap.add_argument("--synthetic-8b", type=int, default=0, metavar="N",
                    help="N random blocks of Llama-3.1-8B's shape as an SQ4 file (made once, cached)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--seqs", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--act-bits", type=int, choices=(4, 8), default=None, help="default: the runtime's auto")
    ap.add_argument("--json", type=Path, default=common.REPO / "bench" / "out" / "batch_decode.json")
    a = ap.parse_args(argv)
    if a.synthetic_8b > 0:
        from speed import synthetic_8b
        path = str(synthetic_8b(a.synthetic_8b, common.models_dir()))
    elif a.model:
        path = a.model
    else:
        ap.error("give a MODEL file or --synthetic-8b N")
    if a.threads < 1 or a.steps < 1 or min(a.seqs) < 1:
        ap.error("--threads, --steps and --seqs must be >= 1")
    rows, base = [], None
    for n in a.seqs:
        r = run_batch(path, n, a.steps, a.threads, a.act_bits)
        same = all(r["tokens"][s] == lone_greedy(path, r["prompts"][s], a.steps, a.threads, a.act_bits)
                   for s in range(n))
        base = base or r["tok_s"]
        rows.append({k: r[k] for k in ("seqs", "steps", "tok_s", "ms_step")} | {"speedup": r["tok_s"] / base,
                                                                               "same_tokens_as_alone": same})
        print(f"  {n} seq: {r['tok_s']:.1f} tok/s", file=sys.stderr)
    print(f"\nbatched decode, {Path(path).name}, {a.threads} threads, {a.steps} steps\n")
    print("| sequences | decode tok/s (all) | vs 1 | ms / step | tokens = lone model's |")
    print("|---:|---:|---:|---:|:---:|")
    for r in rows:
        print(f"| {r['seqs']} | {r['tok_s']:.1f} | {r['speedup']:.2f}x | {r['ms_step']:.2f} | "
              f"{'yes' if r['same_tokens_as_alone'] else 'NO'} |")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"machine": common.machine_info(), "model": path, "threads": a.threads,
                                  "rows": rows}, indent=2))
    print(f"\nwrote {a.json}")
    return 0 if all(r["same_tokens_as_alone"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
