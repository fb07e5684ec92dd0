"""Fuzz the native loader on a real model file: truncations and byte flips, none may crash.

    python bench/fuzz.py --model smol.sq4.gguf                  # 1,000 truncations + 10,000 flips
    python bench/fuzz.py --model smol.sq4.gguf --truncations 50 --flips 500

Runs the C fuzz driver (native/tests/test_fuzz.c, built by CMake as test_fuzz) on the file: each
truncated or flipped copy is loaded from memory; a load must fail with a known status and a message
or succeed and evaluate two tokens. Prints the driver's summary and writes bench/out/fuzz.json.
Build with -DSPECQUANT_SANITIZE=ON (scripts/test.sh's build/asan) to also catch silent overreads.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"


def find_driver(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    found = sorted(REPO.glob("build/*/native/test_fuzz"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        sys.exit("fuzz: no build/*/native/test_fuzz; build first: cmake -S . -B build/dev && cmake --build build/dev")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model file to corrupt (e.g. the converted SmolLM2)")
    ap.add_argument("--truncations", type=int, default=1000)
    ap.add_argument("--flips", type=int, default=10000)
    ap.add_argument("--driver", help="path of the test_fuzz binary (default: newest build/*/native/test_fuzz)")
    ap.add_argument("--json", default=str(OUT / "fuzz.json"))
    args = ap.parse_args(argv)
    if args.truncations < 0 or args.flips < 0:
        ap.error("counts must be >= 0")
    if not Path(args.model).is_file():
        ap.error(f"model file {args.model!r} does not exist")
    driver = find_driver(args.driver)
    t0 = time.time()
    proc = subprocess.run([str(driver), args.model, str(args.truncations), str(args.flips)],
                          capture_output=True, text=True)
    wall = time.time() - t0
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    summary = re.search(r"(\d+) loaded, (\d+) rejected.*?(\d+) bad", proc.stdout)
    result = {"model": str(args.model), "driver": str(driver), "truncations": args.truncations, "flips": args.flips,
              "returncode": proc.returncode, "wall_s": round(wall, 1),
              "loaded": int(summary.group(1)) if summary else None,
              "rejected": int(summary.group(2)) if summary else None,
              "bad": int(summary.group(3)) if summary else None}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if proc.returncode < 0:
        print(f"fuzz: the driver CRASHED (signal {-proc.returncode})", file=sys.stderr)
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
