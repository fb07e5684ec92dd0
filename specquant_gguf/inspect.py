"""`specquant inspect FILE`: a GGUF file's metadata, tensor table and size totals.

    specquant inspect smol.sq4.gguf            # human-readable
    specquant inspect smol.sq4.gguf --json     # one JSON object
    specquant inspect smol.sq4.gguf --no-tensors
"""
from __future__ import annotations

import argparse
import json
import re
from typing import Any

import numpy as np
from gguf import GGUFValueType

from .format import LINEAR_PARTS, SQ4_TYPE_ID, ModelFile, read_model

_LINEAR_RE = re.compile(r"^blk\.\d+\.(" + "|".join(LINEAR_PARTS) + r")\.weight$")
_SPECTRAL_RE = re.compile(r"^blk\.\d+\.(" + "|".join(LINEAR_PARTS) + r")\.spectral(_k)?$")
_ARRAY_SHOWN = 8  # arrays up to this length are printed whole


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a .gguf file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--no-tensors", action="store_true", help="leave out the tensor table")
    p.add_argument("--full", action="store_true", help="print long metadata arrays and strings whole")


def summarize_value(value: Any, full: bool = False, f32: bool = False) -> Any:
    """Long arrays become '[49152 strings]'; long strings are cut (unless full); f32 values print
    in their shortest float32 form (1e-05, not 9.999999747378752e-06)."""
    if f32 and isinstance(value, float):
        return float(str(np.float32(value)))
    if isinstance(value, list):
        if full or len(value) <= _ARRAY_SHOWN:
            return value
        kind = "strings" if value and isinstance(value[0], str) else "values"
        return f"[{len(value)} {kind}]"
    if isinstance(value, str) and not full and len(value) > 120:
        return value[:100].replace("\n", "\\n") + f"... ({len(value)} chars)"
    return value


def totals(m: ModelFile) -> dict[str, Any]:
    """Sizes that matter for the method: bits per weight of the block linears, spectral bytes."""
    linear_bytes = linear_weights = sq4_bytes = spectral_bytes = 0
    by_type: dict[str, int] = {}
    for t in m:
        by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
        if _LINEAR_RE.match(t.name):
            linear_bytes += t.nbytes
            linear_weights += t.n_elements
            if t.type_id == SQ4_TYPE_ID:
                sq4_bytes += t.nbytes
        elif _SPECTRAL_RE.match(t.name):
            spectral_bytes += t.nbytes
    return {
        "n_tensors": len(m.tensors),
        "tensor_bytes": sum(t.nbytes for t in m),
        "bytes_by_type": by_type,
        "linear_weights": linear_weights,
        "linear_bytes": linear_bytes,
        "linear_bits_per_weight": 8.0 * linear_bytes / linear_weights if linear_weights else None,
        "linear_bits_per_weight_with_spectral":
            8.0 * (linear_bytes + spectral_bytes) / linear_weights if linear_weights else None,
        "sq4_bytes": sq4_bytes,
        "spectral_bytes": spectral_bytes,
        "spectral_pct_of_sq4": 100.0 * spectral_bytes / sq4_bytes if sq4_bytes else None,
    }


def describe(m: ModelFile, full: bool = False, tensors: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "file": str(m.path),
        "gguf_version": m.version,
        "alignment": m.alignment,
        "metadata": {k: summarize_value(v, full, m.kv_types[k][0] == GGUFValueType.FLOAT32)
                     for k, v in m.metadata.items()},
        "totals": totals(m),
    }
    if tensors:
        out["tensors"] = [{"name": t.name, "type": t.type_name, "type_id": t.type_id, "shape": list(t.ne),
                           "bytes": t.nbytes, "offset": t.offset} for t in m]
    return out


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
