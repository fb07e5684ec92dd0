"""A GGUF file's metadata, tensor table and size totals as one dict (what `specquant inspect` prints)."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
from gguf import GGUFValueType

from ..arch import LINEARS
from .constants import SQ4_TYPE_ID
from .reader import ModelFile

_LINEAR_RE = re.compile(r"^blk\.\d+\.(" + "|".join(LINEARS) + r")\.weight$")
_SPECTRAL_RE = re.compile(r"^blk\.\d+\.(" + "|".join(LINEARS) + r")\.spectral(_k)?$")
_ARRAY_SHOWN = 8  # arrays up to this length are printed whole


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
