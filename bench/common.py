"""Small helpers shared by the bench scripts: paths, machine description, file facts, test tokens."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # bench/ scripts run as files from anywhere; import the project
    sys.path.insert(0, str(REPO))

OUT_DIR = REPO / "bench" / "out"


def cache_dir() -> Path:
    return Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))


def models_dir() -> Path:
    """Converted/quantized SmolLM2 files live outside the repo (they must never be committed)."""
    return cache_dir() / "bench-models"


def shared_data() -> Path | None:
    for base in (Path.cwd(), REPO):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return None


def machine_info() -> dict[str, Any]:
    """CPU model name (lscpu), online cores, memory, OS, date: an absolute time means little without it."""
    info: dict[str, Any] = {"cores": os.cpu_count(), "platform": platform.platform(),
                            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
        flags = re.search(r"^Flags:\s*(.+)$", out, re.M)
        if flags:
            f = flags.group(1).split()
            info["simd"] = [x for x in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if x in f]
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    try:
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def file_facts(path: Path) -> dict[str, Any]:
    """File size, parameter count, bits per weight and the weight bytes one decode step reads, plus
    the linear layers' own bits per weight, the spectral branch's share and the calibration source.

    bits/weight = file bytes * 8 / parameters (llama.cpp's convention: metadata included; SpecQuant's
    side tensors such as spectral coefficients are counted as bytes but not as parameters).
    Decode reads every tensor once per token except the embedding table, of which it reads one
    row, unless the output head is tied to it (no output.weight), in which case the head reads it all."""
    from specquant_gguf.gguf import read_model

    size = path.stat().st_size
    with read_model(path) as mf:
        tensors = list(mf)
        calibration = mf.metadata.get("specquant.calibration.source", "none")
    names = {t.name for t in tensors}
    side = {t.name for t in tensors if t.name.endswith((".spectral", ".spectral_k"))}
    params = sum(t.n_elements for t in tensors if t.name not in side)
    read = sum(t.nbytes // max(1, t.ne[-1]) if t.name == "token_embd.weight" and "output.weight" in names
               else t.nbytes for t in tensors)
    linears = [t for t in tensors if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2]
    lin_bytes, branch = sum(t.nbytes for t in linears), sum(t.nbytes for t in tensors if t.name in side)
    types: dict[str, int] = {}
    for t in tensors:
        types[t.type_name] = types.get(t.type_name, 0) + 1
    return {"file_bytes": size, "params": params, "bits_per_weight": size * 8 / params,
            "bytes_per_token": read, "tensor_types": types,
            "bpw_linears": round(8 * (lin_bytes + branch) / max(1, sum(t.n_elements for t in linears)), 3),
            "branch_pct": round(100 * branch / max(lin_bytes, 1), 2), "calibration": calibration}


def ppl_windows(path: Path, n_windows: int, ctx: int = 512) -> list[list[int]]:
    """specquant_gguf.eval.perplexity's WikiText-2 test windows, tokenized by the file's own tokenizer
    (BOS only if the model wants it); perplexity.score_window scores positions 1..n-1 of each."""
    from specquant_gguf.eval import perplexity
    from specquant_gguf.eval.scoring import NativeScorer

    data = shared_data()
    if data is None:
        raise RuntimeError("no ../shared/data: WikiText-2 test is needed for perplexity")
    be = NativeScorer(path, n_ctx=ctx, threads=1)
    ids = be.tokenize(perplexity.load_eval_text(data / "wikitext-2-raw" / "wiki.test.raw"))
    return perplexity.make_windows(ids, ctx, n_windows, be.bos_id if be.add_bos else None)


def ppl_native(path: Path, windows: list[list[int]], threads: int, desc: str | None = None) -> tuple[float, float]:
    """(perplexity, seconds) of our runtime on the given windows."""
    from specquant_gguf.eval.perplexity import perplexity
    from specquant_gguf.eval.scoring import NativeScorer

    be = NativeScorer(path, n_ctx=max(len(w) for w in windows), threads=threads)
    t0 = time.perf_counter()
    ppl = perplexity(be, windows, progress=desc is not None, desc=desc or "ppl")[0]
    return ppl, time.perf_counter() - t0


def wiki_text() -> str | None:
    d = shared_data()
    f = d / "wikitext-2-raw" / "wiki.test.raw" if d else None
    return f.read_text(encoding="utf-8") if f and f.is_file() else None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def report(obj: Any, table: str, as_json: bool) -> None:
    """A script's result: the JSON object on stdout for scripts (the table then goes to stderr, so
    that stdout parses), else the human table on stdout."""
    if as_json:
        print(table, file=sys.stderr)
        print(json.dumps(obj, indent=2))
    else:
        print(table)


def peak_rss_kb() -> int:
    """This process's peak resident set (VmHWM), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
