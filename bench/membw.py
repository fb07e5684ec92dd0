"""The machine's memory read bandwidth (GB/s), the ceiling that decode speed is compared with.

    python bench/membw.py [--mib 1024] [--threads 2] [--reps 5] [--json]

Compiles bench/membw.c once (cached by source hash under $SPECQUANT_CACHE/bin, default
~/.cache/specquant/bin) and runs it: a streaming sum over a buffer far larger than the caches,
best of N passes, for 1..T threads. Without a C compiler it falls back to numpy (a sum over the
same buffer size), which is labelled as such because numpy's reduction is slower than the memory.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "membw.c"


def cache_dir() -> Path:
    return Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))


def build_tool() -> Path | None:
    """Path of the compiled tool, building it when the source changed; None without a compiler."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    exe = cache_dir() / "bin" / f"membw-{digest}"
    if exe.is_file():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(".tmp")
    for flags in (["-O2", "-march=native"], ["-O2"]):  # -march=native may be unknown (non-GCC)
        r = subprocess.run([cc, *flags, "-pthread", str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
        if r.returncode == 0:
            tmp.replace(exe)
            return exe
    return None


def measure_c(exe: Path, mib: int, threads: int, reps: int) -> list[dict]:
    r = subprocess.run([str(exe), str(mib), str(threads), str(reps)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"membw failed: {r.stderr.strip()}")
    return [dict(json.loads(line), method="c-stream-sum") for line in r.stdout.splitlines() if line.strip()]


def measure_numpy(mib: int, reps: int) -> list[dict]:
    import numpy as np

    a = np.arange((mib << 20) // 8, dtype=np.uint64)
    best = float("inf")
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t0)
    return [{"threads": 1, "gb_per_s": round(a.nbytes / best / 1e9, 3), "bytes": a.nbytes, "reps": reps,
             "method": "numpy-sum (a lower bound)"}]


def measure(mib: int = 1024, threads: int = 2, reps: int = 5) -> list[dict]:
    """One dict per thread count: threads, gb_per_s (best of reps), bytes, reps, method."""
    exe = build_tool()
    if exe is not None:
        return measure_c(exe, mib, threads, reps)
    return measure_numpy(mib, reps)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=1024, help="buffer size in MiB (default 1024)")
    ap.add_argument("--threads", type=int, default=2, help="measure 1..N threads (default 2)")
    ap.add_argument("--reps", type=int, default=5, help="passes per thread count; the best is kept")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.mib < 64 or a.threads < 1 or a.reps < 1:
        print("membw: --mib >= 64, --threads >= 1, --reps >= 1", file=sys.stderr)
        return 2
    rows = measure(a.mib, a.threads, a.reps)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['threads']} thread(s): {r['gb_per_s']:.2f} GB/s read ({r['method']}, {r['bytes'] >> 20} MiB, best of {r['reps']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
