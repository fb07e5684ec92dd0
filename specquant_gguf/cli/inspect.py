"""`specquant inspect FILE`: a GGUF file's metadata, tensor table and size totals.

    specquant inspect smol.sq4.gguf            # human-readable
    specquant inspect smol.sq4.gguf --json     # one JSON object
    specquant inspect smol.sq4.gguf --no-tensors
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..gguf import read_model
from ..gguf.describe import describe


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-tensors", action="store_true", help="leave out the tensor table")
    p.add_argument("--full", action="store_true", help="print long metadata arrays and strings whole")


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _print_text(d: dict[str, Any], tensors: bool) -> None:
    print(f"{d['file']}: GGUF v{d['gguf_version']}, alignment {d['alignment']}")
    print(f"\nmetadata ({len(d['metadata'])} keys):")
    width = max((len(k) for k in d["metadata"]), default=0)
    for k, v in d["metadata"].items():
        print(f"  {k:<{width}}  {v}")
    if tensors:
        rows = d["tensors"]
        print(f"\ntensors ({len(rows)}):")
        nw = max((len(r["name"]) for r in rows), default=4)
        print(f"  {'name':<{nw}}  {'type':<6}  {'shape':<20}  {'bytes':>12}")
        for r in rows:
            print(f"  {r['name']:<{nw}}  {r['type']:<6}  {str(r['shape']):<20}  {r['bytes']:>12}")
    t = d["totals"]
    print("\ntotals:")
    print(f"  tensor data          {_fmt_bytes(t['tensor_bytes'])} in {t['n_tensors']} tensors")
    for name, b in sorted(t["bytes_by_type"].items(), key=lambda kv: -kv[1]):
        print(f"    {name:<8} {_fmt_bytes(b)}")
    if t["linear_weights"]:
        print(f"  block linears        {t['linear_weights']} weights, {_fmt_bytes(t['linear_bytes'])}, "
              f"{t['linear_bits_per_weight']:.3f} bits/weight "
              f"({t['linear_bits_per_weight_with_spectral']:.3f} with the spectral branch)")
    if t["spectral_pct_of_sq4"] is not None:
        print(f"  spectral branch      {_fmt_bytes(t['spectral_bytes'])} = {t['spectral_pct_of_sq4']:.2f}% of the SQ4 bytes")


def run(args: argparse.Namespace) -> int:
    m = read_model(args.file)
    d = describe(m, full=args.full, tensors=not args.no_tensors)
    if args.json:
        print(json.dumps(d, ensure_ascii=False, default=str))
    else:
        _print_text(d, tensors=not args.no_tensors)
    return 0
