"""The converter: MODEL -> .gguf (SQ4 W4A4, or the standard f16 / q8 references).

The model is processed block by block, like GPTQ: the calibration hidden states go through block i
(loaded alone in fp32 from the memory-mapped source), the statistics of its linear inputs decide
its smoothing and quantization, its converted tensors go to the writer, and it is dropped before
block i+1 is loaded. Peak memory: one block in fp32, the embeddings, the calibration hidden states
and the (already quantized) output.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from .. import __version__ as _pkg_version
from ..arch import ARCHS, LINEARS, ModelConfig
from ..errors import SpecQuantError, UsageError
from ..gguf.constants import FORMAT_VERSION, SQ4_TYPE_ID
from ..paths import inside, writable_output
from ..progress import Progress
from .block import QBlock, quantize_block
from .calibrate import (Calibration, block_stats, cache_path, generate_windows, load_cached, read_texts, sample_plan,
                        save_cached, windows_from_texts)
from .forward import block_forward
from .qlinear import QLinear, SimLinear, sim_linear_fn
from .recipe import Recipe
from .hub import resolve
from .sources import ModelSource, open_source

CONVERTER_VERSION = f"specquant-gguf {_pkg_version} converter 1"
DEFAULT_CALIB_WINDOWS = 16
DEFAULT_CALIB_LEN = 512
# self-generated windows are joined from this many texts (see calibrate.generate_windows): the same
# tokens in half the decoding steps
CALIB_SEGMENTS = 2


# ------------------------------------------------------------------------------------ the driver

def embed(tokens: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    return emb[tokens]


def sim_block(qb: QBlock, r: Recipe) -> tuple[dict[str, torch.Tensor], Callable]:
    """The converted block as a forward.block_forward (weights, linear function) pair."""
    sims = {n: SimLinear(ql, r.act_bits, r.rotation == "wht") for n, ql in qb.linears.items()}
    return dict(qb.norms), sim_linear_fn(sims)


def next_hidden(qb: QBlock, r: Recipe, cfg: ModelConfig, x: torch.Tensor, x_float: torch.Tensor) -> torch.Tensor:
    """The calibration hidden states after a block: the float block's output (x_float), or with
    r.propagate == "quant" the converted block's output on x."""
    if r.propagate != "quant":
        return x_float
    norms, lin = sim_block(qb, r)
    with torch.no_grad():
        return torch.cat([block_forward(x[c:c + 8], norms, cfg, lin=lin) for c in range(0, x.shape[0], 8)])


def convert_blocks(source: ModelSource, calib: Calibration | None, r: Recipe, emb: torch.Tensor,
                   seed: int = 0, on_block: Callable[[int], None] | None = None) -> Iterator[tuple[int, QBlock]]:
    """Yields each converted block in order, holding one source block at a time."""
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
        stats, x_float = block_stats(x, blk, cfg, mask)
        qb = quantize_block(blk, stats, cfg, r)
        del blk, stats
        x = next_hidden(qb, r, cfg, x, x_float)
        if on_block:
            on_block(i)
        yield i, qb


def check_output(out: str | Path, source_path: Path) -> None:
    """The output must never replace or land inside the input (a folder, a GGUF file, or the cached
    file a short name stands for), and must be writable before any work starts."""
    if source_path.is_dir() and inside(out, source_path):
        raise UsageError(f"--out {out} lies inside the input model folder {source_path}: write it elsewhere")
    if source_path.exists() and Path(out).resolve() == source_path.resolve():
        raise UsageError(f"--out {out} is the input model itself ({source_path}): write it elsewhere")
    writable_output(out)


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
    from ..gguf import Q8_0Weight

    arr = np.ascontiguousarray(w.float().numpy())
    return Q8_0Weight.from_float(arr) if head_type == "q8_0" else arr.astype(np.float16)


def _linear_payloads(prefix: str, ql: QLinear) -> list[tuple[str, Any]]:
    from ..gguf import Q8_0Weight, SQ4Weight

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
    a = ARCHS[c.arch].written_as  # q/k are stored for interleaved RoPE whatever the source family
    ftype = {"f16": int(gguf.LlamaFileType.MOSTLY_F16), "q8": int(gguf.LlamaFileType.MOSTLY_Q8_0)}.get(r.method, SQ4_TYPE_ID)
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

def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CalibOptions:
    """Where calibration text comes from: a file (text or .jsonl), else the model itself."""

    file: str | None = None
    windows: int = DEFAULT_CALIB_WINDOWS
    length: int = DEFAULT_CALIB_LEN
    use_cache: bool = True  # reuse self-generated text of the same model from the cache folder


def make_calibration(source: ModelSource, calib_file: str | None, n: int, length: int, seed: int,
                     use_cache: bool = True, quiet: bool = False) -> Calibration:
    """Calibration windows: from calib_file, else text the model writes itself (cached on disk
    when use_cache, so converting the same model again skips the generation)."""
    if calib_file is not None:
        texts = read_texts(calib_file)
        return windows_from_texts(source.encoder(), texts, n, length, seed, Path(calib_file).name)
    segments = CALIB_SEGMENTS if length % CALIB_SEGMENTS == 0 else 1
    cached = cache_path(source, n, length, seed, segments) if use_cache else None
    tokens = load_cached(cached, (n, length), source.config.vocab_size)
    if tokens is not None:
        log(f"calibration text: self-generated earlier, reused from {cached}", quiet)
        return Calibration(tokens, "self-generated")
    with Progress(n * (length - segments), "calibration text (self-generated)", quiet, unit="tok") as bar:
        calib = generate_windows(source, n, length, seed, segments=segments, progress=bar.update)
    if cached is not None:
        save_cached(calib.tokens, cached)
    return calib


def write_blocks(source: ModelSource, r: Recipe, calib: Calibration | None, out: str | Path,
                 blocks: Iterable[tuple[int, QBlock]], emb: torch.Tensor | None = None) -> Summary:
    """Writes the file from converted blocks (atomically: nothing is left behind on error)."""
    from ..gguf import ModelWriter

    emb = source.token_embd() if emb is None else emb
    head = source.output()
    summary = Summary(alphas=[])
    with torch.no_grad(), ModelWriter(out, arch=ARCHS[source.config.arch].written_as) as w:
        w.add_tensor("token_embd.weight", _head_payload(emb, r.head_type))
        for i, qb in blocks:
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
        w.add_tensor("output_norm.weight", np.ascontiguousarray(source.output_norm().float().numpy()))
        if head is not None:
            w.add_tensor("output.weight", _head_payload(head, r.head_type))
        write_metadata(w, source, r, calib, summary)
    return summary


def write_converted(source: ModelSource, r: Recipe, calib: Calibration | None, out: str | Path, seed: int = 0,
                    quiet: bool = True) -> Summary:
    """Converts every block and writes the file, with a progress bar over the blocks."""
    emb = source.token_embd()
    with Progress(source.config.n_layer, f"{r.method} blocks", quiet, unit="blk") as bar:
        blocks = convert_blocks(source, calib, r, emb, seed, on_block=lambda _: bar.update())
        return write_blocks(source, r, calib, out, blocks, emb)


def convert(model: str, out: str | Path, r: Recipe, calib_opts: CalibOptions = CalibOptions(), seed: int = 0,
            threads: int | None = None, quiet: bool = True) -> Summary:
    """The whole conversion of MODEL (folder, GGUF file or short name) into `out`."""
    t0 = time.time()
    check_output(out, resolve(model))
    if threads:  # None or 0: torch's default, every core
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    source = open_source(model)
    cfg = source.config
    check_model(cfg, r, calib_opts.length)
    log(f"{source.description}: {cfg.arch}, {cfg.n_layer} blocks, hidden {cfg.n_embd}, "
        f"{cfg.n_head}/{cfg.n_head_kv} heads, vocab {cfg.vocab_size}", quiet)
    calib = None
    if r.needs_calibration:
        calib = make_calibration(source, calib_opts.file, calib_opts.windows, calib_opts.length, seed,
                                 calib_opts.use_cache, quiet)
        log(f"calibration: {calib.source}, {calib.tokens.shape[0]} x {calib.tokens.shape[1]} tokens "
            f"({time.time() - t0:.0f} s)", quiet)
    return write_converted(source, r, calib, out, seed, quiet)
