"""A bounded load test of `specquant serve` on loopback: requests/s and time to first token.

    .venv/bin/python bench/serve_load.py MODEL.gguf [--parallel 4] [--threads 2] [--clients 1 4 8]
                                          [--requests 16] [--max-tokens 32] [--time-limit 300]

Starts the server on 127.0.0.1 (a free port), then for each client count runs a fixed number of
streaming chat requests (different questions, temperature 0) from that many concurrent clients
(plain http.client over loopback, nothing else is contacted) and prints requests/s, generated
tokens/s, and p50/p95 time to first token (first content chunk). Stops a level when the time limit
is spent (the row says how many requests finished). Prints a Markdown table for docs/RESULTS.md.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is the capital of France?", "Name three primary colors.", "What is 12 times 12?",
             "Give me a synonym for happy.", "What does a bee make?", "How many legs does a spider have?",
             "What is the boiling point of water?", "Who wrote Romeo and Juliet?"]


def start(model: str, parallel: int, threads: int, ctx: int) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "specquant_gguf.cli", "serve", model, "--port", "0", "--parallel",
                          str(parallel), "--threads", str(threads), "--ctx", str(ctx), "--log-level", "warning"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    line = p.stderr.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if not m:
        p.kill()
        raise SystemExit(f"server did not start: {line}{p.stderr.read()}")
    threading.Thread(target=p.stderr.read, daemon=True).start()
    return p, int(m.group(1))


def one(port: int, question: str, max_tokens: int) -> tuple[float, float, int]:
    """(time to first token, total time, completion tokens) of one streaming chat request."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/chat/completions", body=json.dumps({
        "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}}), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    ttft, n = None, 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            n = ev["usage"]["completion_tokens"]
        if ttft is None and ev.get("choices") and ev["choices"][0]["delta"].get("content"):
            ttft = time.perf_counter() - t0
    c.close()
    total = time.perf_counter() - t0
    return (ttft if ttft is not None else total), total, n


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def level(port: int, clients: int, n_req: int, max_tokens: int, deadline: float) -> dict:
    lock = threading.Lock()
    todo = list(range(n_req))
    res: list[tuple[float, float, int]] = []

    def worker() -> None:
        while time.perf_counter() < deadline:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            r = one(port, QUESTIONS[i % len(QUESTIONS)], max_tokens)
            with lock:
                res.append(r)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = [r[0] for r in res]
    return {"clients": clients, "done": len(res), "asked": n_req, "wall": wall, "rps": len(res) / wall,
            "tps": sum(r[2] for r in res) / wall, "p50": pct(ttfts, 0.5), "p95": pct(ttfts, 0.95)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=16, help="requests per client count")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=300, help="seconds for the whole run")
    a = ap.parse_args()
    p, port = start(a.model, a.parallel, a.threads, a.ctx)
    rows = []
    try:
        one(port, QUESTIONS[0], 4)  # warm-up
        deadline = time.perf_counter() + a.time_limit
        for c in a.clients:
            r = level(port, c, a.requests, a.max_tokens, deadline)
            rows.append(r)
            print(f"clients={c}: {r['done']}/{r['asked']} requests in {r['wall']:.1f} s: {r['rps']:.2f} req/s, "
                  f"{r['tps']:.1f} tok/s, TTFT p50 {r['p50'] * 1e3:.0f} ms p95 {r['p95'] * 1e3:.0f} ms", flush=True)
    finally:
        p.terminate()
        p.wait(10)
    print()
    print(f"| clients | requests | req/s | generated tok/s | TTFT p50 | TTFT p95 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['done']}/{r['asked']} | {r['rps']:.2f} | {r['tps']:.1f} | "
              f"{r['p50'] * 1e3:.0f} ms | {r['p95'] * 1e3:.0f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
