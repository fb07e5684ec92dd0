"""The converter: MODEL -> .gguf (SQ4 W4A4, or the standard f16 / q8 references).

The model is processed block by block, like GPTQ: the calibration hidden states go through block i
(loaded alone in fp32 from the memory-mapped source), the statistics of its linear inputs decide
its smoothing and quantization, its converted tensors go to the writer, and it is dropped before
block i+1 is loaded. Peak memory: one block in fp32, the embeddings, the calibration hidden states
and the (already quantized) output. The exception is the end-to-end tuning of small models
(tune.py, on by default up to tune.TUNE_MAX_PARAMS): it holds the converted blocks and the float
model together, then writes the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import dataclasses
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
from ..progress import Progress, StageClock
from .block import QBlock, quantize_block
from . import calibrate
from .calibrate import (Calibration, linear_params, block_stats, cache_path, generate_windows, load_cached, read_texts, sample_plan,
                        save_cached, windows_from_texts)
from .forward import block_forward, embed_tokens
from .qlinear import QLinear, SimLinear, sim_linear_fn
from .recipe import LARGE_MODEL_SEARCH, Recipe
from .residual import rotate_residual
from .tune import CHECK_WINDOWS, auto_steps, tune_memory_bytes, tune_scales
from .hub import resolve
from .sources import ModelSource, open_source

CONVERTER_VERSION = f"specquant-gguf {_pkg_version} converter 1"
DEFAULT_CALIB_WINDOWS = 16
DEFAULT_CALIB_LEN = 512
# self-generated windows are joined from this many texts (see calibrate.generate_windows): the same
# tokens in half the decoding steps
CALIB_SEGMENTS = 2
# Models over calibrate.BIG_MODEL_PARAMS linear parameters (8B: 7e9): self-generated calibration is
# 16 windows of 256 tokens, each 8 texts of 32 tokens, decoded as one batch of 128 (31 steps through
# the whole model instead of 255): generating through a 32-block 8B model costs ~30 s of 2-core CPU per
# step, so the text must come from few, wide steps; 4096 tokens also halve the per-block statistics.
BIG_CALIB_WINDOWS = 16
BIG_CALIB_LEN = 256
BIG_CALIB_SEGMENTS = 8


# ------------------------------------------------------------------------------------ the driver

def embed(tokens: torch.Tensor, emb: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Rows of the embedding (kept in the source's precision) as float32, scaled as the family does."""
    return embed_tokens(tokens, emb, cfg)


def sim_block(qb: QBlock, r: Recipe) -> tuple[dict[str, torch.Tensor], Callable]:
    """The converted block as a forward.block_forward (weights, linear function) pair."""
    sims = {n: SimLinear(ql, r.act_bits_of(n), r.rotation == "wht") for n, ql in qb.linears.items()}
    return dict(qb.norms), sim_linear_fn(sims)


def next_hidden(qb: QBlock, r: Recipe, cfg: ModelConfig, x: torch.Tensor, x_float: torch.Tensor,
                layer: int = 0) -> torch.Tensor:
    """The calibration hidden states after block `layer`: the float block's output (x_float), or with
    r.propagate == "quant" the converted block's output on x."""
    if r.propagate != "quant":
        return x_float
    norms, lin = sim_block(qb, r)
    with torch.no_grad():
        return torch.cat([block_forward(x[c:c + 8], norms, cfg, lin=lin, layer=layer) for c in range(0, x.shape[0], 8)])


def convert_blocks(source: ModelSource, calib: Calibration | None, r: Recipe, emb: torch.Tensor | None = None,
                   seed: int = 0, on_block: Callable[[int], None] | None = None,
                   clock: StageClock | None = None, work: "WorkDir | None" = None) -> Iterator[tuple[int, QBlock]]:
    """Yields each converted block in order, holding one source block at a time. clock: times the
    stages; work: a work folder where each finished block (and the hidden states after it) is kept,
    so that a conversion interrupted after block i restarts at block i + 1. emb: the embedding
    matrix, or None to read it from the source only for the moment the calibration tokens are
    embedded (an 8B model's is 1 GB that need not stay in memory during the blocks)."""
    cfg = source.config
    clock = clock or StageClock()
    x = None
    start = 0
    if work is not None:
        start, x = work.resume_point(need_hidden=r.quantized and calib is not None)
        for i in range(start):
            with clock.stage("resumed blocks"):
                qb = work.load_block(i)
            if on_block:
                on_block(i)
            yield i, qb
    if not r.quantized or calib is None:
        for i in range(start, cfg.n_layer):
            with clock.stage("read block"):
                blk = source.block(i)
            with clock.stage("f16/q8 rounding" if not r.quantized else "RTN"):
                qb = quantize_block(blk, {}, cfg, r)
            del blk
            if work is not None:
                with clock.stage("work folder"):
                    work.save_block(i, qb, None)
            if on_block:
                on_block(i)
            yield i, qb
        return
    if x is None:
        x = embed(calib.tokens, source.token_embd() if emb is None else emb, cfg)
    mask = sample_plan(*calib.tokens.shape, r.search_tokens, seed)
    for i in range(start, cfg.n_layer):
        with clock.stage("read block"):
            blk = source.block(i)
        with clock.stage("block statistics"):
            stats, x_float = block_stats(x, blk, cfg, mask, layer=i)
        qb = quantize_block(blk, stats, cfg, r, clock, consume=True)  # blk is ours (ModelSource.block)
        del blk, stats
        if r.propagate == "quant":
            with clock.stage("quantized propagation"):
                x = next_hidden(qb, r, cfg, x, x_float, layer=i)
        else:
            x = x_float
        del x_float
        if work is not None:
            with clock.stage("work folder"):
                work.save_block(i, qb, x)
        if on_block:
            on_block(i)
        yield i, qb


# ------------------------------------------------------------------------- resumable conversion

def _pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    u = q.to(torch.uint8) & 0x0F
    return u[:, 0::2] | (u[:, 1::2] << 4)


def _unpack_nibbles(p: torch.Tensor) -> torch.Tensor:
    lo = (p & 0x0F).to(torch.int8)
    hi = (p >> 4).to(torch.int8)
    lo, hi = (lo ^ 8) - 8, (hi ^ 8) - 8
    return torch.stack((lo, hi), -1).reshape(p.shape[0], -1)


def _qblock_state(qb: QBlock) -> dict[str, Any]:
    lins = {}
    for name, ql in qb.linears.items():
        d = {"kind": ql.kind, "shape": list(ql.shape), "group": ql.group, "axis": ql.axis}
        for key in ("d", "weight", "coef", "ks", "bias"):
            v = getattr(ql, key)
            if v is not None:
                d[key] = v
        if ql.q is not None:
            d["q4"] = _pack_nibbles(ql.q)  # int4 values two to a byte: half the disk of int8
        lins[name] = d
    return {"norms": qb.norms, "linears": lins, "alphas": qb.alphas, "errors": qb.errors}


def _qblock_from_state(st: dict[str, Any]) -> QBlock:
    lins = {}
    for name, d in st["linears"].items():
        ql = QLinear(d["kind"], tuple(d["shape"]), group=d["group"], axis=d["axis"],
                     **{k: d[k] for k in ("d", "weight", "coef", "ks", "bias") if k in d})
        if "q4" in d:
            ql.q = _unpack_nibbles(d["q4"])
        lins[name] = ql
    return QBlock(dict(st["norms"]), lins, dict(st["alphas"]), dict(st["errors"]))


def source_identity(source: ModelSource) -> list[Any]:
    """What names a model's weights on disk: path, and each weights file's name, size and mtime."""
    where = getattr(source, "path", None) or getattr(source, "folder", None)
    if where is None:
        return [source.description, id(source)]  # in-memory sources never resume
    where = Path(where).resolve()
    files = [where] if where.is_file() else sorted(where.glob("*.safetensors"))
    return [str(where)] + [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]


class WorkDir:
    """Results of the finished blocks of one conversion, in a hidden folder next to the output:
    .FILE.work-KEY/, KEY = hash of the source files, the recipe, the calibration and the converter
    version (another model or recipe never picks up these results). Removed when the file is written."""

    def __init__(self, out: str | Path, key_parts: list[Any]) -> None:
        key = hashlib.sha1(json.dumps(key_parts, default=repr).encode()).hexdigest()[:16]
        out = Path(out)
        self.path = out.parent / f".{out.name}.work-{key}"

    def _save(self, obj: Any, name: str) -> None:
        self.path.mkdir(exist_ok=True)
        tmp = self.path / f"{name}.tmp{os.getpid()}"
        torch.save(obj, tmp)
        os.replace(tmp, self.path / name)

    def _load(self, name: str) -> Any:
        try:
            return torch.load(self.path / name, weights_only=True)
        except Exception:  # noqa: BLE001  (absent or damaged: the work is redone)
            return None

    def save_calibration(self, calib: Calibration) -> None:
        self._save({"tokens": calib.tokens, "source": calib.source}, "calibration.pt")

    def load_calibration(self) -> Calibration | None:
        st = self._load("calibration.pt")
        return None if st is None else Calibration(st["tokens"], st["source"])

    def save_block(self, i: int, qb: QBlock, hidden: torch.Tensor | None) -> None:
        self._save(_qblock_state(qb), f"block{i}.pt")
        if hidden is not None:  # only the latest hidden states are kept
            self._save({"after": i, "x": hidden}, "hidden.pt")

    def load_block(self, i: int) -> QBlock:
        st = self._load(f"block{i}.pt")
        if st is None:
            raise SpecQuantError(f"{self.path}: block {i} is unreadable; remove the folder and convert again")
        return _qblock_from_state(st)

    def resume_point(self, need_hidden: bool) -> tuple[int, torch.Tensor | None]:
        """(the first block still to convert, the hidden states entering it or None)."""
        if not self.path.is_dir():
            return 0, None
        done = 0
        while (self.path / f"block{done}.pt").is_file():
            done += 1
        if not need_hidden:
            return done, None
        h = self._load("hidden.pt")
        if h is None or not 0 <= int(h["after"]) < done:
            return 0, None
        return int(h["after"]) + 1, h["x"]

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


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


HEAD_CHUNK_ROWS = 8192  # rows of the embedding/head converted to float32 at a time


def _head_payload(w: torch.Tensor, head_type: str) -> Any:
    """Q8_0 or F16 of the embedding/head, converted in row chunks from the source's precision (a
    128256 x 4096 bf16 matrix is never copied whole to float32; Q8_0 and F16 are row-wise, so the
    bytes are those of converting it at once)."""
    from ..gguf import Q8_0Weight

    rows = w.shape[0]
    if head_type == "q8_0":
        raws = [Q8_0Weight.from_float(np.ascontiguousarray(w[r:r + HEAD_CHUNK_ROWS].float().numpy())).raw
                for r in range(0, rows, HEAD_CHUNK_ROWS)]
        return Q8_0Weight(np.concatenate(raws) if len(raws) > 1 else raws[0], tuple(w.shape))
    out = np.empty(tuple(w.shape), np.float16)
    for r in range(0, rows, HEAD_CHUNK_ROWS):
        out[r:r + HEAD_CHUNK_ROWS] = w[r:r + HEAD_CHUNK_ROWS].float().numpy()
    return out


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
    a = ARCHS[c.arch].written_as  # "llama" for the llama family (q/k interleaved), "gemma2" for Gemma 2
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
    if c.rope_scale != 1.0:  # linear RoPE scaling, as llama.cpp writes it
        w.add_kv(f"{a}.rope.scaling.type", "linear")
        w.add_kv(f"{a}.rope.scaling.factor", float(c.rope_scale))
    w.add_kv(f"{a}.attention.layer_norm_rms_epsilon", float(c.rms_eps))
    write_gemma2_keys(w, c, a)
    write_window_key(w, c, a)
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
        # informational (the runtime needs nothing: the rotation is inside the weights)
        "specquant.residual_rotation": (r.residual_rotation if r.quantized else "none", None),
        "specquant.spectral.axis": (r.spectral_axis, None),
        "specquant.spectral.k_max": (summary.k_max if spectral_on else 0, gguf.GGUFValueType.UINT32),
        "specquant.spectral.tau": (1.0, gguf.GGUFValueType.FLOAT32),
        "specquant.smooth.alpha": (r.mean_alpha(summary.alphas) if r.smoothing else 0.0, gguf.GGUFValueType.FLOAT32),
        "specquant.calibration.source": (calib.source if calib is not None else "none", None),
        "specquant.calibration.tokens": (calib.n_tokens if calib is not None else 0, gguf.GGUFValueType.UINT32),
        # informational: steps of end-to-end scale tuning (tune.py); 0 = none
        "specquant.tune_steps": ((r.tune_steps or 0) if calib is not None else 0, gguf.GGUFValueType.UINT32),
    }
    for key, (value, vtype) in keys.items():
        w.add_kv(key, value, vtype)
    if r.quantized and r.a8_linears:  # GGUF cannot store empty arrays: absent = none
        w.add_kv("specquant.act_bits_a8_linears", list(r.a8_linears), gguf.GGUFValueType.ARRAY,
                 gguf.GGUFValueType.STRING)
    if r.smoothing and summary.alphas:
        w.add_kv("specquant.smooth.alphas", [float(x) for x in summary.alphas], gguf.GGUFValueType.ARRAY,
                 gguf.GGUFValueType.FLOAT32)


def write_gemma2_keys(w: Any, c: ModelConfig, a: str) -> None:
    """Gemma 2's hyperparameters under llama.cpp's key names. attention.scale (query_pre_attn_scalar^-0.5)
    is llama.cpp's key name too, though its gemma2 loader derives the scale from the model size instead:
    written always, so that our runtime never has to guess."""
    if not ARCHS[c.arch].post_norms:
        return
    w.add_kv(f"{a}.attn_logit_softcapping", float(c.attn_softcap))
    w.add_kv(f"{a}.final_logit_softcapping", float(c.final_softcap))
    w.add_kv(f"{a}.attention.sliding_window", int(c.sliding_window))
    w.add_kv(f"{a}.attention.scale", float(c.scale))


def write_window_key(w: Any, c: ModelConfig, a: str) -> None:
    """A llama-family model's sliding window (Mistral v0.1, Phi-3), on every layer: the key is written
    only when there is one, so that a file without it means full attention (what the runtime and the
    oracle read for an absent key). Gemma 2's window is among its own keys."""
    if c.sliding_window and not ARCHS[c.arch].post_norms:
        w.add_kv(f"{a}.attention.sliding_window", int(c.sliding_window))


# ------------------------------------------------------------------------------------------ run

def log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class CalibOptions:
    """Where calibration text comes from: a file (text or .jsonl), else the model itself."""

    file: str | None = None
    windows: int | None = None  # None: DEFAULT_CALIB_WINDOWS, or BIG_CALIB_WINDOWS (see calib_shape)
    length: int | None = None
    use_cache: bool = True  # reuse self-generated text of the same model from the cache folder
    large: bool | None = None  # the large-model plan (see calib_shape); None: by size


def calib_shape(cfg: ModelConfig, opts: CalibOptions) -> tuple[int, int, int]:
    """(windows, tokens per window, texts per window) of the calibration: the options, with the
    defaults of the model's size where not given (self-generated text of a large model: shorter)."""
    large = opts.large if opts.large is not None else linear_params(cfg) > calibrate.BIG_MODEL_PARAMS
    big = opts.file is None and large
    n = opts.windows or (BIG_CALIB_WINDOWS if big else DEFAULT_CALIB_WINDOWS)
    length = opts.length or (BIG_CALIB_LEN if big else DEFAULT_CALIB_LEN)
    segments = BIG_CALIB_SEGMENTS if big else CALIB_SEGMENTS
    return n, length, segments if length % segments == 0 else 1


# the draft that writes a large model's calibration text: round to nearest, int4 groups of 64 in
# the rotated basis, no calibration of its own (seconds per block; see draft_calibration)
DRAFT_RECIPE = Recipe(method="rtn", preset="draft", rotation="wht", gptq=False, clip=False)


def native_runtime_available() -> bool:
    from ..runtime._native import lib

    try:
        lib()
    except SpecQuantError:
        return False
    return True


def large_model_search(r: Recipe, cfg: ModelConfig, large: bool | None) -> Recipe:
    """A large model's α search on fewer rows and clipping ratios (recipe.LARGE_MODEL_SEARCH), unless
    the recipe sets its own."""
    big = large if large is not None else linear_params(cfg) > calibrate.BIG_MODEL_PARAMS
    default = Recipe()
    if big and (r.search_rows, r.search_ratios) == (default.search_rows, default.search_ratios):
        return dataclasses.replace(r, **LARGE_MODEL_SEARCH)
    return r


def draft_calibration(source: ModelSource, n: int, length: int, seed: int, segments: int, where: Path,
                      quiet: bool = False) -> Calibration:
    """Self-generated calibration text of a large model, written by the C runtime from a quick W4
    draft of the model (DRAFT_RECIPE, a temporary file in `where`, deleted afterwards): the draft
    is a quarter of the 16-bit bytes, so it stays in memory while all n·segments texts are decoded
    as one batch; the PyTorch generation would read all 16 GB of an 8B model once per step."""
    draft = Path(where) / f".specquant-draft-{os.getpid()}.gguf"
    log("calibration text: large model, written by a W4 draft of it through the runtime", quiet)
    try:
        write_converted(source, DRAFT_RECIPE, None, draft, seed, quiet)
        with Progress(n * (length - segments), "calibration text (self-generated)", quiet, unit="tok") as bar:
            return calibrate.generate_windows_native(draft, n, length, seed, source.config.vocab_size,
                                                     segments=segments, threads=torch.get_num_threads(),
                                                     progress=bar.update)
    finally:
        draft.unlink(missing_ok=True)


def make_calibration(source: ModelSource, calib_file: str | None, n: int, length: int, seed: int,
                     use_cache: bool = True, quiet: bool = False, segments: int | None = None,
                     large: bool | None = None, draft_dir: Path | None = None) -> Calibration:
    """Calibration windows: from calib_file, else text the model writes itself (cached on disk
    when use_cache, so converting the same model again skips the generation). segments: texts per
    self-generated window (None: CALIB_SEGMENTS), all decoded in one batch for large models.
    draft_dir: where a large model's draft may be written (None: the PyTorch generation always)."""
    if calib_file is not None:
        texts = read_texts(calib_file)
        return windows_from_texts(source.encoder(), texts, n, length, seed, Path(calib_file).name)
    segments = segments or CALIB_SEGMENTS
    segments = segments if length % segments == 0 else 1
    big = large if large is not None else linear_params(source.config) > calibrate.BIG_MODEL_PARAMS
    cached = cache_path(source, n, length, seed, segments) if use_cache else None
    tokens = load_cached(cached, (n, length), source.config.vocab_size)
    if tokens is not None:
        log(f"calibration text: self-generated earlier, reused from {cached}", quiet)
        return Calibration(tokens, "self-generated")
    if big and draft_dir is not None and native_runtime_available():
        calib = draft_calibration(source, n, length, seed, segments, draft_dir, quiet)
    else:
        with Progress(n * (length - segments), "calibration text (self-generated)", quiet, unit="tok") as bar:
            calib = generate_windows(source, n, length, seed, segments=segments, progress=bar.update,
                                     batch=n * segments if big else 32, dtype=torch.bfloat16 if big else None)
    if cached is not None:
        save_cached(calib.tokens, cached)
    return calib


def write_blocks(source: ModelSource, r: Recipe, calib: Calibration | None, out: str | Path,
                 blocks: Iterable[tuple[int, QBlock]], emb: torch.Tensor | None = None,
                 clock: StageClock | None = None) -> Summary:
    """Writes the file from converted blocks (atomically: nothing is left behind on error). Each
    tensor goes to the writer's spool file as soon as its block is done (nothing is held)."""
    from ..gguf import ModelWriter

    clock = clock or StageClock()
    summary = Summary(alphas=[])
    w = ModelWriter(out, arch=ARCHS[source.config.arch].written_as)
    try:
        _write_tensors(w, source, r, calib, blocks, emb, clock, summary)
    except BaseException:
        w.abort()
        raise
    with clock.stage("finish file"):
        w.finish()
    return summary


def _write_tensors(w: Any, source: ModelSource, r: Recipe, calib: Calibration | None,
                   blocks: Iterable[tuple[int, QBlock]], emb: torch.Tensor | None, clock: StageClock,
                   summary: Summary) -> None:
    with torch.no_grad():
        with clock.stage("embeddings"):  # emb None: read for this call only (not held during the blocks)
            w.add_tensor("token_embd.weight", _head_payload(source.token_embd() if emb is None else emb, r.head_type))
        for i, qb in blocks:
            with clock.stage("write blocks"):
                for name, norm in qb.norms.items():  # attn_norm, ffn_norm (, Gemma 2's post-norms)
                    w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(norm.numpy()))
                for name in LINEARS:
                    ql = qb.linears[name]
                    for tname, payload in _linear_payloads(f"blk.{i}.{name}", ql):
                        w.add_tensor(tname, payload)
                    summary.k_max = max(summary.k_max, ql.k_max)
                    summary.int4_bytes += ql.int4_bytes()
                    summary.linear_bytes += ql.nbytes()
                    summary.linear_weights += ql.shape[0] * ql.shape[1]
                summary.alphas += [qb.alphas[k] for k in sorted(qb.alphas)]
            del qb
        with clock.stage("output head"):
            w.add_tensor("output_norm.weight", np.ascontiguousarray(source.output_norm().float().numpy()))
            head = source.output()
            if head is not None:
                w.add_tensor("output.weight", _head_payload(head, r.head_type))
            del head
            if source.config.rope_freqs is not None:  # Llama-3.1 RoPE scaling, llama.cpp's tensor
                w.add_tensor("rope_freqs.weight", np.asarray(source.config.rope_freqs, dtype=np.float32))
            write_metadata(w, source, r, calib, summary)


def write_converted(source: ModelSource, r: Recipe, calib: Calibration | None, out: str | Path, seed: int = 0,
                    quiet: bool = True, clock: StageClock | None = None, work: WorkDir | None = None) -> Summary:
    """Converts every block and writes the file, with a progress bar over the blocks (ETA). With
    r.tune_steps, all blocks are converted first, then tuned together (tune.py), then written."""
    clock = clock or StageClock()
    tuning = bool(r.tune_steps) and calib is not None
    with Progress(source.config.n_layer, f"{r.method} blocks", quiet, unit="blk") as bar:
        # the embeddings are read where they are used (written first, then the calibration tokens
        # embedded), never held while the blocks convert
        blocks = convert_blocks(source, calib, r, None, seed, on_block=lambda _: bar.update(), clock=clock, work=work)
        if not tuning:
            return write_blocks(source, r, calib, out, blocks, None, clock)
        done = [qb for _, qb in blocks]
    with clock.stage("tuning"), Progress(r.tune_steps, "tuning scales", quiet, unit="step") as bar:
        res = tune_scales(done, source, calib.tokens, r, r.tune_steps, seed=seed, progress=bar.update)
    verdict = "tuned values written" if res.kept else "no better: the GPTQ values are kept"
    log(f"tuning: KL to the float model on {CHECK_WINDOWS} calibration windows {res.kl_before:.4f} -> "
        f"{res.kl_after:.4f} nats/token ({verdict}), {res.steps} steps, {res.seconds:.0f} s", quiet)
    return write_blocks(source, r, calib, out, enumerate(done), None, clock)


def resolve_tuning(r: Recipe, cfg: ModelConfig) -> Recipe:
    """The recipe with tune_steps decided: the default for the model's size when unset (only the
    default specquant recipe tunes), and a clear refusal when forced on a model too large for it."""
    if r.tune_steps is None:
        default = r.method == "specquant" and r.preset == "default"
        return dataclasses.replace(r, tune_steps=auto_steps(cfg) if default else 0)
    if r.tune_steps:
        need = tune_memory_bytes(cfg)
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if need > have:
            raise UsageError(f"--tune-steps holds the float and the quantized model in memory (~{need / 2**30:.0f} "
                             f"GiB) and this machine has {have / 2**30:.0f} GiB: use --tune-steps 0")
    return r


def convert(model: str, out: str | Path, r: Recipe, calib_opts: CalibOptions = CalibOptions(), seed: int = 0,
            threads: int | None = None, quiet: bool = True, resume: bool = True,
            clock: StageClock | None = None, pre_tokenizer: str | None = None) -> Summary:
    """The whole conversion of MODEL (folder, GGUF file, short name or HF repo id) into `out`.
    pre_tokenizer: force tokenizer.ggml.pre of an HF folder (--pre-tokenizer).

    resume: finished blocks of a calibrated recipe are kept in a work folder next to `out` (WorkDir)
    and reused when the same conversion is started again after an interruption; the folder is
    removed on success.
    clock: receives the time and peak memory of each stage (printed at the end unless quiet)."""
    t0 = time.time()
    clock = clock if clock is not None else StageClock()
    check_output(out, resolve(model))
    if threads:  # None or 0: torch's default, every core
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    with clock.stage("open model"):
        source = open_source(model, pre_tokenizer)
        source.tokenizer_kv()  # a tokenizer problem is said now, not after the whole conversion
    cfg = source.config
    n_calib, calib_len, segments = calib_shape(cfg, calib_opts)
    check_model(cfg, r, calib_len)
    r = large_model_search(r, cfg, calib_opts.large)
    r = resolve_tuning(r, cfg)
    log(f"{source.description}: {cfg.arch}, {cfg.n_layer} blocks, hidden {cfg.n_embd}, "
        f"{cfg.n_head}/{cfg.n_head_kv} heads, vocab {cfg.vocab_size}", quiet)
    work = None
    # Only calibrated recipes keep finished blocks for a restart: an f16/q8/RTN block is one read
    # and one rounding, redone faster than saved, and saving it would need the file's size again on
    # disk (an 8B f16 conversion: 16 GB of work folder on top of the output and its spool).
    if resume and r.needs_calibration and (getattr(source, "path", None) or getattr(source, "folder", None)):
        calib_id = None
        if calib_opts.file is not None:
            f = Path(calib_opts.file)
            calib_id = [str(f.resolve()), f.stat().st_size, int(f.stat().st_mtime)] if f.is_file() else str(f)
        work = WorkDir(out, [CONVERTER_VERSION, source_identity(source), repr(r), calib_id, n_calib, calib_len,
                             segments, seed])
        if work.path.is_dir():
            log(f"resuming from {work.path}", quiet)
    calib = None
    if r.needs_calibration:
        with clock.stage("calibration text"):
            calib = work.load_calibration() if work is not None else None
            if calib is None:
                calib = make_calibration(source, calib_opts.file, n_calib, calib_len, seed,
                                         calib_opts.use_cache, quiet, segments, calib_opts.large,
                                         draft_dir=Path(out).resolve().parent)
                if work is not None:
                    work.save_calibration(calib)
        log(f"calibration: {calib.source}, {calib.tokens.shape[0]} x {calib.tokens.shape[1]} tokens "
            f"({time.time() - t0:.0f} s)", quiet)
    if r.quantized:
        source = rotate_residual(source, r.residual_rotation, seed)  # after the calibration text: same model
    summary = write_converted(source, r, calib, out, seed, quiet, clock, work)
    if work is not None:
        work.remove()
    log("stages:\n" + clock.table(), quiet)
    return summary
