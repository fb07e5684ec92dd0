"""`specquant convert`: MODEL -> .gguf (SQ4 W4A4, or the standard f16 / q8 references).

The model is processed block by block, like GPTQ: the calibration hidden states go through block i
(loaded alone in fp32 from the memory-mapped source), the statistics of its linear inputs decide
its smoothing and quantization, its converted tensors go to the writer, and it is dropped before
block i+1 is loaded. Peak memory: one block in fp32, the embeddings, the calibration hidden states
and the (already quantized) output.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import __version__ as _pkg_version
from .calibrate import (Calibration, block_stats, cache_path, generate_windows, load_cached, read_texts, sample_plan,
                        save_cached, windows_from_texts)
from .errors import SpecQuantError, UsageError
from .forward import block_forward
from .models import LINEARS, ModelConfig, ModelSource, open_source
from .recipe import METHODS, QBlock, Recipe, method_defaults, quantize_block
from .rotation import is_power_of_two
from .simulate import QLinear, SimLinear, sim_linear_fn

CONVERTER_VERSION = f"specquant-gguf {_pkg_version} converter 1"
FORMAT_VERSION = 1


# ------------------------------------------------------------------------------------ the driver

def embed(tokens: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return emb[tokens]


def sim_block(qb: QBlock, r: Recipe) -> tuple[dict[str, torch.Tensor], Callable]:
    """The converted block as a forward.block_forward (weights, linear function) pair."""
    sims = {n: SimLinear(ql, r.act_bits, r.rotation == "wht") for n, ql in qb.linears.items()}
    return dict(qb.norms), sim_linear_fn(sims)


StatsFn = Callable[[int, dict, torch.Tensor, torch.Tensor], tuple[dict, torch.Tensor]]


def convert_blocks(source: ModelSource, calib: Calibration | None, r: Recipe, emb: torch.Tensor,
                   seed: int = 0, on_block: Callable[[int], None] | None = None,
                   stats_fn: StatsFn | None = None) -> Iterator[tuple[int, QBlock]]:
    """Yields each converted block in order, holding one source block at a time.

    stats_fn(i, blk, x, sample_mask) -> (stats, x_out) replaces calibrate.block_stats (the research
    tools cache the float statistics, which do not depend on the recipe)."""
    cfg = source.config
    if not r.quantized or calib is None:
        for i in range(cfg.n_layer):
            qb = quantize_block(source.block(i), {}, cfg, r)
            if on_block:
                on_block(i)
            yield i, qb
        return
    x = embed(calib.tokens, emb)
    mask = sample_plan(*calib.tokens.shape, r.search_tokens, seed)
    for i in range(cfg.n_layer):
        blk = source.block(i)
        if stats_fn is not None and r.propagate == "float":
            stats, x_float = stats_fn(i, blk, x, mask)
        else:
            stats, x_float = block_stats(x, blk, cfg, mask)
        qb = quantize_block(blk, stats, cfg, r)
        del blk, stats
        if r.propagate == "quant":
            norms, lin = sim_block(qb, r)
            with torch.no_grad():
                x = torch.cat([block_forward(x[c:c + 8], norms, cfg, lin=lin) for c in range(0, x.shape[0], 8)])
        else:
            x = x_float
        if on_block:
            on_block(i)
        yield i, qb


# ------------------------------------------------------------------------------------- options

GROUP_SIZES = (0, 32, 64, 128)
DEFAULT_CALIB_WINDOWS = 16
DEFAULT_CALIB_LEN = 512
# self-generated windows are joined from this many texts (see calibrate.generate_windows): the same
# tokens in half the decoding steps
CALIB_SEGMENTS = 2


def _alpha_arg(text: str) -> float | str:
    if text.lower() == "search":
        return "search"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'search', got {text!r}") from None
    if not (0.0 <= v <= 1.0) or math.isnan(v):
        raise argparse.ArgumentTypeError(f"alpha must be in [0, 1], got {text}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Convert a model to a GGUF file: SpecQuant W4A4 (SQ4 tensors) or the standard f16 / q8 types.\n\n"
        "MODEL is a local Hugging Face folder (config.json + *.safetensors + tokenizer), a GGUF file of\n"
        "any type the gguf package can dequantize, or a short name (smollm2-135m, qwen2.5-0.5b,\n"
        "llama3-8b, mistral-7b, ...; downloaded once into $SPECQUANT_CACHE or ~/.cache/specquant).\n\n"
        "Default recipe (--method specquant): per-layer smoothing (alpha searched), in-group\n"
        "Walsh-Hadamard rotation, GPTQ int4 weights with a clipping search, groups of 64 (4.25 bits\n"
        "per weight), per-token asymmetric int4 activations, self-generated calibration text\n"
        "(16 windows of 512 tokens, each two 256-token texts the model writes, joined; cached in the\n"
        "cache folder so that converting the same model again skips the generation).\n"
        "Measured choices and alternatives: docs/RESULTS.md (Converter).")
    p.add_argument("model", metavar="MODEL", help="HF folder, GGUF file or short name")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="output .gguf file")
    p.add_argument("--method", choices=METHODS, default="specquant",
                   help="specquant (default) | smoothquant (smoothing only, RTN) | rtn (plain int4) | "
                        "f16 / q8 (standard F16 / Q8_0 linears, loadable by llama.cpp)")
    p.add_argument("--preset", choices=("default", "paper"), default="default",
                   help="paper: the paper's literal reading (per-row weight scales, per-token activation "
                        "scales, alpha 0.5, fixed K=16, axis in, no rotation, no GPTQ)")
    p.add_argument("--act-bits", type=int, choices=(4, 8), default=None, help="activation bits (default 4)")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="weight/activation group size: 32, 64 (default), 128, or 0 = one group per row")
    p.add_argument("--alpha", type=_alpha_arg, default=None, metavar="A",
                   help="smoothing strength in [0, 1], or 'search' (default: searched per layer group)")
    p.add_argument("--spectral-k", type=int, default=None, metavar="K",
                   help="low-frequency branch: mean kept DFT frequencies per channel (default 0 = no branch)")
    p.add_argument("--spectral-axis", choices=("in", "out"), default=None, help="axis of the DFT (default in)")
    p.add_argument("--spectral-rule", choices=("flat", "softmax"), default=None,
                   help="per-channel K: flat, or the paper's activation-aware softmax shares (default flat)")
    p.add_argument("--spectral-temp", type=float, default=None, metavar="T", help="softmax temperature (default 1)")
    p.add_argument("--rotation", choices=("wht", "none"), default=None,
                   help="in-group Walsh-Hadamard rotation of weights and activations (default wht)")
    p.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ error compensation of the int4 weights (default on)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ in order of decreasing input energy (default off)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clipping search of each weight group's scale (default on)")
    p.add_argument("--calib", metavar="FILE", default=None,
                   help="calibration text: a text file or .jsonl with a \"text\" field "
                        "(default: text the model generates itself; no data set needed)")
    p.add_argument("--calib-windows", type=int, default=DEFAULT_CALIB_WINDOWS, metavar="N",
                   help=f"calibration windows (default {DEFAULT_CALIB_WINDOWS})")
    p.add_argument("--calib-len", type=int, default=DEFAULT_CALIB_LEN, metavar="L",
                   help=f"tokens per calibration window (default {DEFAULT_CALIB_LEN})")
    p.add_argument("--calib-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse self-generated calibration text of the same model, windows, length and seed "
                        "from the cache folder (default on)")
    p.add_argument("--threads", "-t", type=int, default=None, metavar="N", help="torch threads (default: all cores)")
    p.add_argument("--head-type", choices=("q8_0", "f16"), default=None,
                   help="type of token_embd/output (default q8_0; f16 for --method f16)")
    p.add_argument("--seed", type=int, default=0, help="seed of calibration sampling (default 0)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def build_recipe(args: argparse.Namespace) -> Recipe:
    """Flags -> Recipe, rejecting combinations that make no sense (UsageError)."""
    r = method_defaults(args.method, args.preset)
    if args.preset == "paper" and args.method != "specquant":
        raise UsageError("--preset paper applies to --method specquant only")
    quant_flags = {"--act-bits": args.act_bits, "--group-size": args.group_size, "--alpha": args.alpha,
                   "--spectral-k": args.spectral_k, "--spectral-axis": args.spectral_axis,
                   "--spectral-rule": args.spectral_rule, "--spectral-temp": args.spectral_temp,
                   "--rotation": args.rotation, "--gptq/--no-gptq": args.gptq,
                   "--act-order/--no-act-order": args.act_order, "--clip/--no-clip": args.clip}
    if not r.quantized:
        given = [k for k, v in quant_flags.items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} do not apply to --method {args.method}")
        if args.calib is not None:
            raise UsageError(f"--calib does not apply to --method {args.method} (no calibration needed)")
        return replace(r, head_type=args.head_type or ("f16" if args.method == "f16" else "q8_0"))
    if args.method == "rtn" and args.alpha is not None:
        raise UsageError("--alpha does not apply to --method rtn (no smoothing); use smoothquant or specquant")
    if args.method != "specquant" and args.spectral_k:
        raise UsageError("--spectral-k needs --method specquant")
    kw: dict[str, Any] = {}
    if args.act_bits is not None:
        kw["act_bits"] = args.act_bits
    if args.group_size is not None:
        if args.group_size not in GROUP_SIZES:
            raise UsageError(f"--group-size must be one of 32, 64, 128 or 0 (per row), got {args.group_size}")
        kw["group_size"] = args.group_size
    if args.alpha is not None:
        kw["alpha"] = None if args.alpha == "search" else float(args.alpha)
    if args.spectral_k is not None:
        if args.spectral_k < 0:
            raise UsageError(f"--spectral-k must be >= 0, got {args.spectral_k}")
        kw["spectral_k"] = args.spectral_k
    for flag, field_ in (("spectral_axis", "spectral_axis"), ("spectral_rule", "spectral_rule"),
                         ("rotation", "rotation"), ("gptq", "gptq"), ("act_order", "act_order"), ("clip", "clip")):
        if getattr(args, flag) is not None:
            kw[field_] = getattr(args, flag)
    if args.spectral_temp is not None:
        if not (args.spectral_temp > 0) or math.isinf(args.spectral_temp):
            raise UsageError(f"--spectral-temp must be a positive number, got {args.spectral_temp}")
        kw["spectral_temp"] = args.spectral_temp
    if args.head_type is not None:
        kw["head_type"] = args.head_type
    r = replace(r, **kw)
    if r.rotation == "wht" and not is_power_of_two(r.group_size):
        raise UsageError("--rotation wht needs a power-of-two group size (32, 64, 128); "
                         "per-row groups (--group-size 0) need --rotation none")
    if r.act_order and not r.gptq:
        raise UsageError("--act-order needs --gptq")
    if (args.spectral_axis or args.spectral_rule or args.spectral_temp) and not r.spectral_k:
        raise UsageError("--spectral-axis/--spectral-rule/--spectral-temp need --spectral-k > 0")
    return r


def check_args(args: argparse.Namespace) -> None:
    if args.calib_windows <= 0:
        raise UsageError(f"--calib-windows must be > 0, got {args.calib_windows}")
    if args.calib_len < 16:
        raise UsageError(f"--calib-len must be >= 16, got {args.calib_len}")
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads must be > 0, got {args.threads}")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder")
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        raise UsageError(f"--out {args.out}: folder {out.parent} does not exist")
    src = Path(args.model).expanduser()
    if src.exists() and src.resolve() == out.resolve():
        raise UsageError("--out must differ from the input model")


def check_model(cfg: ModelConfig, r: Recipe, calib_len: int) -> None:
    """Checks that need the model's shapes."""
    if not r.quantized:
        for name, (c_out, c_in) in cfg.linear_shapes().items():
            if r.method == "q8" and c_in % 32:
                raise SpecQuantError(f"{name}: row length {c_in} is not a multiple of 32 (Q8_0 blocks)")
        return
    for name, (c_out, c_in) in cfg.linear_shapes().items():
        g = r.group_for(c_in)
        if c_in % g:
            raise UsageError(f"--group-size {g} does not divide the input size {c_in} of {name}")
        if g % 2:
            raise UsageError(f"{name}: per-row group of odd length {c_in} cannot be stored in SQ4")
        n = c_in if r.spectral_axis == "in" else c_out
        if r.spectral_k > n // 2 + 1:
            raise UsageError(f"--spectral-k {r.spectral_k} exceeds the {n // 2 + 1} frequencies of {name}")
    if r.head_type == "q8_0" and cfg.n_embd % 32:
        raise SpecQuantError(f"embedding size {cfg.n_embd} is not a multiple of 32: use --head-type f16")
    if calib_len > cfg.ctx_len:
        raise UsageError(f"--calib-len {calib_len} exceeds the model's context length {cfg.ctx_len}")


# --------------------------------------------------------------------------------------- writing

@dataclass
class Summary:
    alphas: list[float]
    k_max: int = 0
    int4_bytes: int = 0
    branch_bytes: int = 0
    linear_bytes: int = 0
    linear_weights: int = 0


def _head_payload(w: torch.Tensor, head_type: str) -> Any:
    from .format import Q8_0Weight

    arr = np.ascontiguousarray(w.float().numpy())
    return Q8_0Weight.from_float(arr) if head_type == "q8_0" else arr.astype(np.float16)


def _linear_payloads(prefix: str, ql: QLinear) -> list[tuple[str, Any]]:
    from .format import Q8_0Weight, SQ4Weight

    out: list[tuple[str, Any]] = []
    if ql.kind == "sq4":
        out.append((f"{prefix}.weight", SQ4Weight(ql.q.numpy(), ql.d.numpy(), ql.group)))
        if ql.k_max > 0:
            out.append((f"{prefix}.spectral", np.ascontiguousarray(ql.coef.numpy().astype(np.float16))))
            out.append((f"{prefix}.spectral_k", np.ascontiguousarray(ql.ks.numpy().astype(np.int16))))
    elif ql.kind == "q8_0":
        out.append((f"{prefix}.weight", Q8_0Weight.from_float(np.ascontiguousarray(ql.weight.numpy()))))
    else:
        out.append((f"{prefix}.weight", np.ascontiguousarray(ql.weight.numpy().astype(np.float16))))
    if ql.bias is not None:
        out.append((f"{prefix}.bias", np.ascontiguousarray(ql.bias.float().numpy())))
    return out


def write_metadata(w: Any, source: ModelSource, r: Recipe, calib: Calibration | None, summary: Summary) -> None:
    import gguf

    c = source.config
    a = "llama"  # qwen2 too: q/k are permuted for interleaved RoPE and the biases are optional tensors
    ftype = {"f16": 1, "q8": 7}.get(r.method, 0x5130)
    w.add_kv("general.type", "model")
    w.add_kv("general.name", c.name)
    w.add_kv("general.file_type", ftype)
    if r.method == "q8":
        w.add_kv("general.quantization_version", 2)
    for key, value in (("context_length", c.ctx_len), ("embedding_length", c.n_embd), ("block_count", c.n_layer),
                       ("feed_forward_length", c.n_ff), ("attention.head_count", c.n_head),
                       ("attention.head_count_kv", c.n_head_kv), ("rope.dimension_count", c.head_dim),
                       ("vocab_size", c.vocab_size)):
        w.add_kv(f"{a}.{key}", int(value))
    if c.head_dim * c.n_head != c.n_embd:
        w.add_kv(f"{a}.attention.key_length", c.head_dim)
        w.add_kv(f"{a}.attention.value_length", c.head_dim)
    w.add_kv(f"{a}.rope.freq_base", float(c.rope_base))
    w.add_kv(f"{a}.attention.layer_norm_rms_epsilon", float(c.rms_eps))
    for key, (value, vtype) in source.tokenizer_kv().items():
        if isinstance(value, (list, tuple)) and len(value) == 0:
            continue  # GGUF cannot store empty arrays
        if isinstance(vtype, tuple):
            w.add_kv(key, list(value), vtype[0], vtype[1])
        else:
            w.add_kv(key, value, vtype)
    g = r.group_size if r.quantized else 0
    spectral_on = r.quantized and summary.k_max > 0
    keys: dict[str, tuple[Any, Any]] = {
        "specquant.version": (FORMAT_VERSION, gguf.GGUFValueType.UINT32),
        "specquant.converter": (CONVERTER_VERSION, None),
        "specquant.method": (r.method, None),
        "specquant.preset": (r.preset, None),
        "specquant.group_size": (g, gguf.GGUFValueType.UINT32),
        "specquant.act_bits": (r.act_bits if r.quantized else (8 if r.method == "q8" else 16), gguf.GGUFValueType.UINT32),
        "specquant.act_group_size": (g, gguf.GGUFValueType.UINT32),
        "specquant.rotation": (r.rotation if r.quantized else "none", None),
        "specquant.rotation.block": (g if r.quantized and r.rotation == "wht" else 0, gguf.GGUFValueType.UINT32),
        "specquant.spectral.axis": (r.spectral_axis, None),
        "specquant.spectral.k_max": (summary.k_max if spectral_on else 0, gguf.GGUFValueType.UINT32),
        "specquant.spectral.tau": (1.0, gguf.GGUFValueType.FLOAT32),
        "specquant.smooth.alpha": (r.mean_alpha(summary.alphas) if r.smoothing else 0.0, gguf.GGUFValueType.FLOAT32),
        "specquant.calibration.source": (calib.source if calib is not None else "none", None),
        "specquant.calibration.tokens": (calib.n_tokens if calib is not None else 0, gguf.GGUFValueType.UINT32),
    }
    for key, (value, vtype) in keys.items():
        w.add_kv(key, value, vtype)
    if r.smoothing and summary.alphas:
        w.add_kv("specquant.smooth.alphas", [float(x) for x in summary.alphas], gguf.GGUFValueType.ARRAY,
                 gguf.GGUFValueType.FLOAT32)


# ------------------------------------------------------------------------------------------ run

class _Progress:
    """tqdm when available and wanted, else silent."""

    def __init__(self, total: int, desc: str, quiet: bool, unit: str = "it") -> None:
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def make_calibration(source: ModelSource, args: argparse.Namespace, quiet: bool) -> Calibration:
    n, length = args.calib_windows, args.calib_len
    if args.calib is not None:
        texts = read_texts(args.calib)
        return windows_from_texts(source.encoder(), texts, n, length, args.seed, Path(args.calib).name)
    segments = CALIB_SEGMENTS if length % CALIB_SEGMENTS == 0 else 1
    cached = cache_path(source, n, length, args.seed, segments) if args.calib_cache else None
    tokens = load_cached(cached, (n, length), source.config.vocab_size)
    if tokens is not None:
        log(f"calibration text: self-generated earlier, reused from {cached}", quiet)
        return Calibration(tokens, "self-generated")
    bar = _Progress(n * (length - segments), "calibration text (self-generated)", quiet, unit="tok")
    try:
        calib = generate_windows(source, n, length, args.seed, segments=segments, progress=bar.update)
    finally:
        bar.close()
    if cached is not None:
        save_cached(calib.tokens, cached)
    return calib


def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)


def write_converted(source: ModelSource, r: Recipe, calib: Calibration | None, out: str | Path, seed: int = 0,
                    quiet: bool = True, blocks: list[QBlock] | None = None) -> Summary:
    """Converts every block and writes the file (atomically: nothing is left behind on error).
    blocks: already converted blocks (tests), instead of converting here."""
    from .format import ModelWriter

    cfg = source.config
    emb = source.token_embd()
    head = source.output()
    summary = Summary(alphas=[])
    with torch.no_grad(), ModelWriter(out, arch="llama") as w:
        w.add_tensor("token_embd.weight", _head_payload(emb, r.head_type))
        bar = _Progress(cfg.n_layer, f"{r.method} blocks", quiet, unit="blk")
        try:
            it = enumerate(blocks) if blocks is not None else \
                convert_blocks(source, calib, r, emb, seed, on_block=lambda _: bar.update())
            for i, qb in it:
                w.add_tensor(f"blk.{i}.attn_norm.weight", np.ascontiguousarray(qb.norms["attn_norm"].numpy()))
                w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ascontiguousarray(qb.norms["ffn_norm"].numpy()))
                for name in LINEARS:
                    ql = qb.linears[name]
                    for tname, payload in _linear_payloads(f"blk.{i}.{name}", ql):
                        w.add_tensor(tname, payload)
                    summary.k_max = max(summary.k_max, ql.k_max)
                    summary.int4_bytes += ql.int4_bytes()
                    summary.linear_bytes += ql.nbytes()
                    summary.linear_weights += ql.shape[0] * ql.shape[1]
                summary.alphas += [qb.alphas[k] for k in sorted(qb.alphas)]
        finally:
            bar.close()
        w.add_tensor("output_norm.weight", np.ascontiguousarray(source.output_norm().float().numpy()))
        if head is not None:
            w.add_tensor("output.weight", _head_payload(head, r.head_type))
        write_metadata(w, source, r, calib, summary)
    return summary


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    r = build_recipe(args)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    source = open_source(args.model)
    cfg = source.config
    check_model(cfg, r, args.calib_len)
    q = args.quiet
    log(f"{source.description}: {cfg.arch}, {cfg.n_layer} blocks, hidden {cfg.n_embd}, "
        f"{cfg.n_head}/{cfg.n_head_kv} heads, vocab {cfg.vocab_size}", q)
    calib = None
    if r.needs_calibration:
        calib = make_calibration(source, args, q)
        log(f"calibration: {calib.source}, {calib.tokens.shape[0]} x {calib.tokens.shape[1]} tokens "
            f"({time.time() - t0:.0f} s)", q)
    summary = write_converted(source, r, calib, args.out, args.seed, q)
    size = Path(args.out).stat().st_size
    bpw = 8 * summary.linear_bytes / max(summary.linear_weights, 1)
    extra = ""
    if summary.k_max:
        pct = 100 * (summary.linear_bytes - summary.int4_bytes) / max(summary.int4_bytes, 1)
        extra = f", spectral branch {pct:.1f}% of the int4 bytes"
    alpha = f", mean alpha {r.mean_alpha(summary.alphas):.2f}" if r.smoothing else ""
    log(f"wrote {args.out}: {size / 2**20:.1f} MiB, linears {bpw:.2f} bits/weight{extra}{alpha}, "
        f"{time.time() - t0:.0f} s", q)
    return 0
