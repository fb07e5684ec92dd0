"""llama.cpp (through llama-cpp-python) in its own cached venv, for side-by-side measurements.

    python bench/llama_cpp_env.py setup            # create/build once (~10 min on 2 cores)
    python bench/llama_cpp_env.py info             # version and CPU features llama.cpp sees
    python bench/llama_cpp_env.py quantize F16.gguf OUT.gguf Q4_0

The venv lives in $SPECQUANT_CACHE/llama-venv (default ~/.cache/specquant/llama-venv), apart from
the project's environment, so llama.cpp's Python package never mixes with ours. llama-cpp-python
compiles llama.cpp from source with -DGGML_NATIVE=ON (the build uses this CPU's instructions,
as our runtime does). Work runs in that venv as a subprocess (bench/llama_worker.py) with JSON in
and out; token ids always come from our tokenizer, so both sides read identical tokens.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
WORKER = HERE / "llama_worker.py"
# the worker reaches into Llama.n_tokens / Llama.scores: pin the version it was written against
LLAMA_CPP_SPEC = os.environ.get("SPECQUANT_LLAMA_CPP_SPEC", "llama-cpp-python==0.3.36")
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF")
QUANT_TYPES = ("Q4_0", "Q4_K_M", "Q8_0")


class LlamaEnvError(RuntimeError):
    """The venv cannot be built or a worker call failed (message is one line)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))


def venv_dir() -> Path:
    return cache_dir() / "llama-venv"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def is_ready() -> bool:
    """True when the venv exists and imports llama_cpp, gguf and numpy."""
    py = venv_python()
    if not py.is_file():
        return False
    r = subprocess.run([str(py), "-c", "import llama_cpp, gguf, numpy"], capture_output=True)
    return r.returncode == 0


def ensure(log: Path | None = None, quiet: bool = False) -> Path:
    """Creates the venv and builds llama-cpp-python once; returns the venv's python.

    A lock file keeps two processes from building at once (the second waits, then finds it ready).
    """
    if is_ready():
        return venv_python()
    cache_dir().mkdir(parents=True, exist_ok=True)
    log = log or cache_dir() / "llama-build.log"
    with open(cache_dir() / "llama-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready():
            return venv_python()
        if not quiet:
            print(f"[llama.cpp] building {LLAMA_CPP_SPEC} into {venv_dir()} (log: {log}); ~10 min on 2 cores",
                  file=sys.stderr)
        base = getattr(sys, "_base_executable", sys.executable)
        _run([base, "-m", "venv", str(venv_dir())], log)
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS,
                   CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2"))
        _run([str(venv_python()), "-m", "pip", "install", "-v", LLAMA_CPP_SPEC, "gguf", "numpy", "tqdm"], log, env)
        if not is_ready():
            raise LlamaEnvError(f"llama-cpp-python installed but does not import; see {log}")
    return venv_python()


def _run(cmd: Sequence[str], log: Path, env: dict | None = None) -> None:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(list(cmd), stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise LlamaEnvError(f"'{' '.join(cmd[:4])} ...' failed (exit {r.returncode}); see {log}")


def call(op: str, timeout: float | None = None, stderr=None, **fields: Any) -> dict:
    """Runs one worker op in the llama venv; returns its JSON reply (raises LlamaEnvError on error).

    The reply's peak_rss_kb is the worker process's own high-water mark (VmHWM)."""
    py = ensure()
    req = json.dumps(dict(fields, op=op))
    t0 = time.perf_counter()
    # llama.cpp runs with its defaults (OpenMP wait policy included): what a user of it gets
    r = subprocess.run([str(py), str(WORKER)], input=req, capture_output=True, text=True, timeout=timeout)
    if stderr is not None and r.stderr:
        stderr.write(r.stderr)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise LlamaEnvError(f"llama worker '{op}' failed (exit {r.returncode}): {tail}")
    reply = json.loads(lines[-1])
    if "error" in reply:
        raise LlamaEnvError(f"llama worker '{op}': {reply['error']}")
    reply["wall_s"] = time.perf_counter() - t0
    return reply


# -- the operations, typed -------------------------------------------------------------------


def quantize(src: Path, dst: Path, ftype: str, nthread: int = 2) -> Path:
    """llama.cpp's own quantization (llama_model_quantize) of an F16 GGUF file into dst."""
    if ftype not in QUANT_TYPES:
        raise LlamaEnvError(f"unknown llama.cpp type {ftype} (use {', '.join(QUANT_TYPES)})")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    call("quantize", src=str(src), dst=str(tmp), ftype=ftype, nthread=nthread)
    tmp.replace(dst)
    return dst


def perplexity(model: Path, windows: Sequence[Sequence[int]], score_from: int, n_threads: int = 2) -> dict:
    """Sum of NLL per window over positions score_from.. (our token ids); reply has 'ppl'."""
    return call("ppl", model=str(model), windows=[list(map(int, w)) for w in windows],
                score_from=int(score_from), n_threads=n_threads)


def zeroshot_scores(model: Path, item_requests, n_ctx: int = 2048, n_threads: int = 2) -> dict:
    """Scores our token requests with our scoring code on llama.cpp's logits (logits_all)."""
    items = [[[list(map(int, c)), list(map(int, x))] for c, x in reqs] for reqs in item_requests]
    return call("zeroshot", model=str(model), items=items, n_ctx=n_ctx, n_threads=n_threads)


def speed(model: Path, prompt: Sequence[int], gen: Sequence[int], threads: Sequence[int] = (1, 2), reps: int = 3) -> dict:
    """Prefill/decode timing (best of reps) at each thread count; see the worker's docstring."""
    return call("speed", model=str(model), prompt=list(map(int, prompt)), gen=list(map(int, gen)),
                threads=list(threads), reps=reps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="llama.cpp side-by-side environment")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="create the venv and build llama-cpp-python (once)")
    sub.add_parser("info", help="llama.cpp version and system info")
    q = sub.add_parser("quantize", help="quantize an F16 GGUF with llama.cpp")
    q.add_argument("src")
    q.add_argument("dst")
    q.add_argument("ftype", choices=QUANT_TYPES)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "setup":
            print(ensure())
        elif a.cmd == "info":
            r = call("info")
            print(f"llama-cpp-python {r['llama_cpp_version']}: {r['system_info']}")
        else:
            quantize(Path(a.src), Path(a.dst), a.ftype)
            print(a.dst)
    except LlamaEnvError as exc:
        print(f"llama_cpp_env: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
