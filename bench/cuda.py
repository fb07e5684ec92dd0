"""GPU speed of one 8B-shaped decoder layer: W4A4 through our CUDA backend vs fp16 cuBLAS (torch).

    python bench/cuda.py [--build build/cuda] [--tokens 512,2048] [--ctx 512] [--out bench/out/cuda.json]

1. writes a synthetic llama layer with specquant_gguf.gguf (hidden 4096, ffn 14336, 32 query /
   8 KV heads, SQ4 weights with G = 64, in-group Walsh–Hadamard, 4-bit activations: Llama-3-8B's
   shapes; random int4 values, which time the same as real ones);
2. times it with native/tools/bench_cuda.c (built here as the `bench_cuda` CMake target): the
   4 activation quantizations + 7 W4A4 matmuls ("linear") and the whole layer with norms, RoPE,
   KV cache and attention ("layer"), for each prompt length and for one decode token;
3. times the same 7 matmuls in fp16 with torch (cuBLAS) on the same GPU;
4. prints a table and writes JSON. Model-level tok/s multiply one layer by 32 (embeddings and the
   output head left out).

Without a GPU (or without an NVIDIA driver) it prints one line saying so and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/common.py: paths, machine info)
from specquant_gguf.arch import LINEARS  # noqa: E402

N_LAYERS_8B = 32
PARTS = LINEARS  # the seven linears of a block (specquant_gguf.arch)
NO_GPU = 2


def layer_shapes(hidden: int, ffn: int, heads: int, kv_heads: int) -> dict[str, tuple[int, int]]:
    """(out, in) of each linear weight of a llama block."""
    kv = kv_heads * (hidden // heads)
    return {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
            "attn_output": (hidden, hidden), "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden),
            "ffn_down": (hidden, ffn)}


def write_layer(path: Path, hidden: int, ffn: int, heads: int, kv_heads: int, group: int, bits: int,
                seed: int = 0) -> None:
    """A one-block llama file with random SQ4 weights (only what bench_cuda reads)."""
    import numpy as np

    from specquant_gguf.gguf import ModelWriter, SQ4Weight

    rng = np.random.default_rng(seed)
    with ModelWriter(path) as w:  # atomic: a temporary file renamed into place
        w.add_kv("general.name", "cuda-bench-layer")
        w.add_kv("llama.embedding_length", hidden)
        w.add_kv("llama.feed_forward_length", ffn)
        w.add_kv("llama.block_count", 1)
        w.add_kv("llama.attention.head_count", heads)
        w.add_kv("llama.attention.head_count_kv", kv_heads)
        w.add_kv("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add_kv("specquant.version", 1)
        w.add_kv("specquant.method", "specquant")
        w.add_kv("specquant.group_size", group)
        w.add_kv("specquant.act_bits", bits)
        w.add_kv("specquant.act_group_size", group)
        w.add_kv("specquant.rotation", "wht")
        w.add_kv("specquant.rotation.block", group)
        for norm in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.0.{norm}.weight", (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        for part, (rows, cols) in layer_shapes(hidden, ffn, heads, kv_heads).items():
            q = rng.integers(-8, 8, size=(rows, cols), dtype=np.int8)
            d = (0.002 + 0.01 * rng.random((rows, cols // group))).astype(np.float16)
            w.add_tensor(f"blk.0.{part}.weight", SQ4Weight(q=q, d=d, group_size=group))


def build_bench(build: Path) -> Path:
    """Configures (CUDA on) if needed and builds the bench_cuda target; returns the binary."""
    if not (build / "CMakeCache.txt").exists():
        subprocess.run(["cmake", "-S", str(common.REPO), "-B", str(build), "-DSPECQUANT_CUDA=ON",
                        "-DCMAKE_BUILD_TYPE=Release"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "bench_cuda", "-j", str(os.cpu_count() or 2)],
                   check=True, stdout=subprocess.DEVNULL)
    return build / "native" / "bench_cuda"


def run_ours(binary: Path, layer: Path, tokens: list[int], ctx: int, reps: int,
             path: str | None) -> dict[str, Any] | None:
    """bench_cuda's JSON, or None when it finds no CUDA device (its exit status 3)."""
    cmd = [str(binary), str(layer), "-n", ",".join(map(str, tokens)), "-c", str(ctx), "-r", str(reps)]
    if path:
        cmd += ["--path", path]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode == 3:
        return None
    if res.returncode != 0:
        raise RuntimeError(f"bench_cuda failed ({res.returncode}): {res.stderr.strip()}")
    return json.loads(res.stdout)


def run_torch(shapes: dict[str, tuple[int, int]], tokens: list[int], reps: int) -> dict[str, Any]:
    """Median time of the layer's 7 fp16 matmuls (x @ W.T through cuBLAS) per token count."""
    import torch

    dev = torch.device("cuda")
    ws = {p: torch.randn(r, c, device=dev, dtype=torch.float16) * 0.02 for p, (r, c) in shapes.items()}
    hidden, ffn = shapes["attn_q"][1], shapes["ffn_down"][1]
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "linear_ms": {}}
    for n in tokens:
        x = torch.randn(n, hidden, device=dev, dtype=torch.float16)
        h = torch.randn(n, ffn, device=dev, dtype=torch.float16)

        def step() -> None:
            for p in PARTS[:-1]:  # every linear that reads the hidden size
                x @ ws[p].T
            h @ ws["ffn_down"].T

        for _ in range(3):
            step()
        times = []
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            step()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        out["linear_ms"][str(n)] = statistics.median(times)
    return out


def gpu_check() -> str | None:
    """None when a CUDA GPU is usable, else the reason."""
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidiactl").exists():
        return "no NVIDIA driver on this machine (nvidia-smi not found)"
    try:
        import torch
    except ImportError:
        return None  # our own binary decides; the fp16 baseline is skipped
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def table(ours: dict[str, Any], base: dict[str, Any] | None) -> str:
    def ratio(n: int, ms: float) -> str:
        if not base:
            return "-"
        t = base["linear_ms"].get(str(n))
        return f"{t:9.3f} {t / ms:7.2f}x" if t else "-"

    lines = [f"GPU: {ours['device']}  path {ours['path']}  G {ours['group_size']}  act bits {ours['act_bits']}",
             f"{'':14} {'W4A4 lin ms':>11} {'fp16 ms':>9} {'speedup':>8} {'layer ms':>9} {'8B tok/s':>9}"]
    for row in ours["prefill"]:
        n, lin, lay = row["n_tok"], row["linear_ms"], row["layer_ms"]
        tps = n / (N_LAYERS_8B * lay / 1e3)
        lines.append(f"prefill {n:<6} {lin:11.3f} {ratio(n, lin):>18} {lay:9.3f} {tps:9.0f}")
    d = ours["decode"]
    tps = 1 / (N_LAYERS_8B * d["layer_ms"] / 1e3)
    lines.append(f"decode @{d['ctx']:<5} {d['linear_ms']:11.3f} {ratio(1, d['linear_ms']):>18} {d['layer_ms']:9.3f} "
                 f"{tps:9.1f}   (weights {d['weight_gbps']:.0f} GB/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="W4A4 CUDA layer vs fp16 cuBLAS on an 8B-shaped layer")
    ap.add_argument("--build", default=str(common.REPO / "build" / "cuda"), help="CMake build dir with CUDA")
    ap.add_argument("--tokens", default="512,2048", help="prompt lengths to time")
    ap.add_argument("--ctx", type=int, default=512, help="cached positions before the decode token")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--path", choices=("int4", "int8"), help="force the SQ4 prefill kernel family")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ffn", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--layer", help="layer file to use/write (default: in the specquant cache)")
    ap.add_argument("--no-torch", action="store_true", help="skip the fp16 cuBLAS baseline")
    ap.add_argument("--out", default=str(common.OUT_DIR / "cuda.json"))
    args = ap.parse_args(argv)
    tokens = [int(t) for t in args.tokens.split(",") if t]
    if not tokens or min(tokens) < 1 or args.hidden % args.heads or args.heads % args.kv_heads:
        ap.error("bad --tokens or head counts")

    reason = gpu_check()
    if reason:
        print(f"bench/cuda.py: no GPU to benchmark: {reason}")
        return NO_GPU
    layer = Path(args.layer) if args.layer else (
        common.models_dir() / f"cuda-layer-h{args.hidden}-f{args.ffn}-g{args.group}-a{args.bits}.sq4.gguf")
    if not layer.exists():
        layer.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {layer} ...", flush=True)
        write_layer(layer, args.hidden, args.ffn, args.heads, args.kv_heads, args.group, args.bits)
    binary = build_bench(Path(args.build))
    ours = run_ours(binary, layer, tokens, args.ctx, args.reps, args.path)
    if ours is None:
        print("bench/cuda.py: no GPU to benchmark: bench_cuda found no CUDA device")
        return NO_GPU
    base = None
    if not args.no_torch:
        try:
            base = run_torch(layer_shapes(args.hidden, args.ffn, args.heads, args.kv_heads), tokens + [1], args.reps)
        except (ImportError, RuntimeError) as exc:  # no torch / no CUDA torch: report ours alone
            print(f"(fp16 baseline skipped: {exc})")
    print(table(ours, base))
    res = {"machine": common.machine_info(), "layer_file": str(layer), "ours": ours, "fp16_cublas": base,
           "n_layers_for_tok_s": N_LAYERS_8B}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
