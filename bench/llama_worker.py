"""Runs inside the llama-cpp-python venv (bench/llama_cpp_env.py starts it); never imported by us.

Reads one JSON request on stdin, writes one JSON reply on stdout (logs go to stderr):
  {"op": "info"}
  {"op": "quantize", "src": F16_FILE, "dst": FILE, "ftype": "Q4_0"|"Q8_0"|"Q4_K_M", "nthread": 2}
  {"op": "ppl", "model": FILE, "windows": [[ids...], ...], "score_from": S, "n_threads": T}
      -> per window: sum of -log p(token) over window positions S.. and how many (same windows,
         same token ids as our side: the tokens are ours, llama.cpp's tokenizer is never used)
  {"op": "zeroshot", "model": FILE, "items": [[[ctx ids], [cont ids]], ...]..., "n_ctx": N, "n_threads": T}
      -> [[loglik, greedy, n_tokens], ...] per item, scored by specquant_gguf.eval.zeroshot.score_requests
  {"op": "speed", "model": FILE, "prompt": [ids], "gen": [ids], "threads": [1, 2], "reps": 3}
      -> prefill seconds of the prompt (one batch) and decode seconds of the gen tokens (one
         token per call, from an empty cache like llama-bench's tg), best of reps, per thread count
Every reply carries "peak_rss_kb" (VmHWM of this process) and "llama_cpp_version".
"""
from __future__ import annotations

import ctypes
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

import llama_cpp

REPO = Path(__file__).resolve().parents[1]

FTYPES = {"Q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
          "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}


def peak_rss_kb() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def load(path: str, n_ctx: int, n_threads: int, logits_all: bool) -> llama_cpp.Llama:
    return llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512, n_threads=n_threads,
                           n_threads_batch=n_threads, logits_all=logits_all, verbose=False, seed=1)


class LlamaScoring:
    """llama_cpp.Llama behind the part of specquant_gguf.eval.scoring.ScoringModel that zero-shot
    scoring uses (n_ctx, eval, eval_last, set_n_past, reset). Llama.eval drops KV positions >= n_tokens before it runs, so rewinding is
    setting n_tokens."""

    def __init__(self, llm: llama_cpp.Llama) -> None:
        self.llm = llm
        self.n_ctx = llm.n_ctx()

    def eval(self, ids):
        start = self.llm.n_tokens
        self.llm.eval([int(i) for i in ids])
        return self.llm.scores[start:self.llm.n_tokens].copy()  # later evals overwrite the buffer

    def eval_last(self, ids):
        return self.eval(ids)[-1]

    def set_n_past(self, n: int) -> None:
        if not 0 <= n <= self.llm.n_tokens:
            raise ValueError(f"n_past {n} outside [0, {self.llm.n_tokens}]")
        self.llm.n_tokens = n

    def reset(self) -> None:
        self.llm.n_tokens = 0

    @property
    def n_past(self) -> int:
        return self.llm.n_tokens


def op_info(req: dict) -> dict:
    return {"system_info": llama_cpp.llama_print_system_info().decode(errors="replace")}


def op_quantize(req: dict) -> dict:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[req["ftype"]]
    params.nthread = int(req.get("nthread", 2))
    t0 = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(req["src"].encode(), req["dst"].encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return {"seconds": time.perf_counter() - t0}


def _nll_rows(rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    mx = rows.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.exp(rows - mx).sum(axis=1))
    return lse - rows[np.arange(len(targets)), targets]


def op_ppl(req: dict) -> dict:
    windows = req["windows"]
    s = int(req["score_from"])
    n_ctx = max(len(w) for w in windows)
    llm = load(req["model"], n_ctx, int(req["n_threads"]), logits_all=True)
    out = []
    t0 = time.perf_counter()
    for w in windows:
        llm.reset()
        llm.eval(w)
        rows = llm.scores[s - 1:len(w) - 1]
        nll = _nll_rows(rows, np.asarray(w[s:], dtype=np.int64))
        out.append([float(nll.sum()), int(len(nll))])
        print(f"ppl window {len(out)}/{len(windows)}", file=sys.stderr, flush=True)
    total = sum(o[0] for o in out)
    count = sum(o[1] for o in out)
    return {"windows": out, "ppl": math.exp(total / count), "seconds": time.perf_counter() - t0}


def op_zeroshot(req: dict) -> dict:
    sys.path.insert(0, str(REPO))
    from specquant_gguf.eval.zeroshot import ScoreStats, score_requests

    llm = load(req["model"], int(req["n_ctx"]), int(req["n_threads"]), logits_all=True)
    model = LlamaScoring(llm)
    stats = ScoreStats()
    out = []
    t0 = time.perf_counter()
    items = req["items"]
    for k, reqs in enumerate(items):
        scored = score_requests(model, [(list(c), list(x)) for c, x in reqs], stats)
        out.append([[s.loglik, s.greedy, s.n_tokens] for s in scored])
        if (k + 1) % 200 == 0:
            print(f"zeroshot {k + 1}/{len(items)}", file=sys.stderr, flush=True)
    return {"scores": out, "seconds": time.perf_counter() - t0, "tokens_evaluated": stats.tokens_evaluated}


def op_speed(req: dict) -> dict:
    prompt, gen, reps = req["prompt"], req["gen"], int(req.get("reps", 3))
    rows = []
    for t in req["threads"]:
        llm = load(req["model"], len(prompt) + len(gen) + 8, int(t), logits_all=False)
        llm.eval(prompt[:8])  # warm-up: first-touch of the weights, thread pool start
        pre, dec = [], []
        for _ in range(reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            pre.append(time.perf_counter() - t0)
            llm.reset()
            t0 = time.perf_counter()
            for tok in gen:
                llm.eval([tok])
            dec.append(time.perf_counter() - t0)
        rows.append({"threads": int(t), "prefill_s": min(pre), "decode_s": min(dec),
                     "prefill_tok_s": len(prompt) / min(pre), "decode_tok_s": len(gen) / min(dec)})
        del llm
    return {"rows": rows}


OPS = {"info": op_info, "quantize": op_quantize, "ppl": op_ppl, "zeroshot": op_zeroshot, "speed": op_speed}


def main() -> int:
    req = json.load(sys.stdin)
    op = OPS.get(req.get("op"))
    if op is None:
        print(json.dumps({"error": f"unknown op {req.get('op')!r}"}))
        return 2
    try:
        reply = op(req)
    except Exception as exc:  # reported to the caller as one line
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    reply.update(peak_rss_kb=peak_rss_kb(), llama_cpp_version=getattr(llama_cpp, "__version__", "?"))
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
