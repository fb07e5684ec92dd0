"""Calibration text -> token windows -> per-block activation statistics.

Two sources of calibration tokens:
- `self-generated` (the default, needs no data): the model samples its own text, starting from a
  random token of its vocabulary (the data-free recipe of LLM-QAT), temperature 1.
- `--calib FILE`: a text file, or a .jsonl file whose lines carry a "text" field; the texts are
  joined and random windows are cut out of the token stream.
Statistics are gathered block by block: the hidden states of every window go through one block
at a time (the block is the only one in fp32), recording for each linear group's input its
per-channel max |x|, mean x², XᵀX (the GPTQ Hessian) and a random sample of token rows
(for the α search).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import SpecQuantError, UsageError
from .forward import KVCache, block_forward, embed_tokens, head_logits
from ..arch import LINEAR_GROUPS, ModelConfig
from .sources import Block, ModelSource

POINTS = tuple(LINEAR_GROUPS)  # the inputs whose statistics are gathered


@dataclass
class Calibration:
    tokens: torch.Tensor  # (n_windows, length) int64
    source: str  # "self-generated" or "file:NAME"

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.numel())


# --------------------------------------------------------------- cache of self-generated windows


def cache_path(source: ModelSource, n: int, length: int, seed: int, segments: int) -> Path | None:
    """Where self-generated calibration tokens of this model file are kept, so that converting the
    same model again (another method, another group size) skips the generation. None when the
    source is not a file or folder on disk. The key holds the file's size and mtime: a replaced
    model file gets new text."""
    from .hub import cache_dir

    where = getattr(source, "path", None) or getattr(source, "folder", None)
    if where is None:
        return None
    where = Path(where).resolve()
    files = [where] if where.is_file() else sorted(where.glob("*.safetensors"))
    ident = [str(where), n, length, seed, segments] + [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
    digest = hashlib.sha1(json.dumps(ident).encode()).hexdigest()[:16]
    return cache_dir() / "calib" / f"{where.stem}-{n}x{length}-s{seed}-{digest}.pt"


def load_cached(path: Path | None, shape: tuple[int, int], vocab_size: int) -> torch.Tensor | None:
    """The cached tokens, or None when absent, unreadable, of another shape or out of the vocabulary
    (a damaged entry is regenerated, never trusted)."""
    if path is None or not path.is_file():
        return None
    try:
        tokens = torch.load(path, weights_only=True)
    except Exception:  # noqa: BLE001  (any unreadable file: pickle, zip, I/O errors alike)
        return None
    if not isinstance(tokens, torch.Tensor) or tuple(tokens.shape) != shape or tokens.numel() == 0:
        return None
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size:
        return None
    return tokens


def save_cached(tokens: torch.Tensor, path: Path) -> None:
    """Writes atomically (a parallel conversion never reads half a file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(tokens, tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the next conversion the generation
        pass


# ------------------------------------------------------------------------------------ from a file

def read_texts(path: str | Path) -> list[str]:
    """Texts of a calibration file: .jsonl -> each line's "text"; anything else -> the whole file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--calib {path}: no such file")
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--calib {path}: unreadable as UTF-8 text ({exc})") from None
    if p.suffix.lower() == ".jsonl":
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UsageError(f"--calib {path}: line {n} is not valid JSON") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise UsageError(f"--calib {path}: line {n} has no string field \"text\"")
            texts.append(obj["text"])
    else:
        texts = [raw]
    if not any(t.strip() for t in texts):
        raise UsageError(f"--calib {path}: no text in the file")
    return texts


def windows_from_texts(encode: Callable[[str], list[int]], texts: list[str], n: int, length: int, seed: int,
                       name: str) -> Calibration:
    """n windows of `length` tokens at random offsets of the joined token stream (non-overlapping
    when the text is long enough)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=gen).tolist()
    ids: list[int] = []
    need = n * length
    for i in order:  # tokenize only as many documents as the windows need (x2 for random offsets)
        ids.extend(encode(texts[i] + "\n\n"))
        if len(ids) >= 2 * need:
            break
    if len(ids) < length + 1:
        raise SpecQuantError(f"calibration file {name}: {len(ids)} tokens, fewer than one window of {length}")
    stream = torch.tensor(ids, dtype=torch.int64)
    n_slots = len(ids) // length
    if n_slots >= n:
        slots = torch.randperm(n_slots, generator=gen)[:n]
        starts = slots * length
    else:  # short text: overlapping windows
        starts = torch.randint(0, len(ids) - length + 1, (n,), generator=gen)
    return Calibration(torch.stack([stream[s:s + length] for s in starts.tolist()]), f"file:{name}")


# -------------------------------------------------------------------------------- self-generated

BIG_MODEL_PARAMS = 1.5e9  # linear parameters above which the self-generation keeps weights in bfloat16


def linear_params(cfg: ModelConfig) -> int:
    return cfg.n_layer * sum(a * b for a, b in cfg.linear_shapes().values())


def model_dtype(cfg: ModelConfig) -> torch.dtype:
    """The dtype generate_windows holds the model's weights in by default."""
    return torch.bfloat16 if linear_params(cfg) > BIG_MODEL_PARAMS else torch.float32


def generation_block(source: ModelSource, i: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Block i as generate_windows holds it: in 16-bit a source that can map its weights without a
    copy (HF safetensors: HFSource.block_view) hands out views of the file, so an 8 B model runs from
    the page cache within a 10 GiB limit; otherwise a copy in dtype."""
    view = getattr(source, "block_view", None)
    if dtype != torch.float32 and view is not None:
        return {k: v if v.dtype == dtype else v.to(dtype) for k, v in view(i).items()}
    return {k: v.to(dtype) for k, v in source.block(i).items()}


def generate_windows(source: ModelSource, n: int, length: int, seed: int, temperature: float = 1.0,
                     batch: int = 32, segments: int = 1,
                     progress: Callable[[int], None] | None = None,
                     dtype: torch.dtype | None = None) -> Calibration:
    """The model writes its own calibration text: n windows of `length` tokens, sampled.

    segments > 1: each window is `segments` independently generated texts of length/segments tokens
    joined end to end, like windows cut from a stream of joined documents (C4-style calibration).
    Decoding is one step per token for a whole batch, so shorter texts in a wider batch give the
    same number of tokens in fewer, better-filled steps.
    Needs the whole model for autoregressive decoding; dtype None: blocks are kept in bfloat16 when
    the model is large (over BIG_MODEL_PARAMS linear parameters, see model_dtype) so that an 8 B
    model still fits in 24 GB, float32 otherwise; tests pass bfloat16 to run that path on a tiny model."""
    if segments > 1 and length % segments == 0:
        part = generate_windows(source, n * segments, length // segments, seed, temperature, batch, 1, progress,
                                dtype)
        return Calibration(part.tokens.reshape(n, length), part.source)
    cfg = source.config
    dtype = model_dtype(cfg) if dtype is None else dtype
    blocks = [generation_block(source, i, dtype) for i in range(cfg.n_layer)]
    emb = source.token_embd()
    head = source.output()
    head = (emb if head is None else head).to(dtype)
    emb = emb.to(dtype)
    norm = source.output_norm().to(dtype)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b0 in range(0, n, batch):
        nb = min(batch, n - b0)
        # first token: uniform over the vocabulary (ids below 256 are mostly bytes/specials: skip them)
        low = min(256, cfg.vocab_size - 1)
        tok = torch.randint(low, cfg.vocab_size, (nb, 1), generator=gen)
        seq = [tok]
        caches = [KVCache(nb, length, cfg.n_head_kv, cfg.head_dim, dtype) for _ in blocks]
        for pos in range(length - 1):
            x = embed_tokens(tok, emb, cfg).to(dtype)
            for i, (blk, cache) in enumerate(zip(blocks, caches)):
                x = block_forward(x, blk, cfg, pos0=pos, cache=cache, layer=i)
            logits = head_logits(x[:, -1], norm, head, cfg.rms_eps, cfg.final_softcap).float()
            # Gumbel-max: argmax(logits/T + Gumbel noise) samples softmax(logits/T) exactly, and is
            # much cheaper than torch.multinomial over a 50k vocabulary
            gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen).clamp_(1e-20, 1.0)))
            tok = torch.argmax(logits / temperature + gumbel, -1, keepdim=True)
            seq.append(tok)
            if progress:
                progress(nb)
        out.append(torch.cat(seq, 1))
    return Calibration(torch.cat(out, 0), "self-generated")


def generate_windows_native(model_path: str | os.PathLike[str], n: int, length: int, seed: int, vocab_size: int,
                            temperature: float = 1.0, segments: int = 1, threads: int | None = None,
                            progress: Callable[[int], None] | None = None) -> Calibration:
    """generate_windows through the C runtime: the model is a quick W4 file of itself (the driver's
    draft, see driver.draft_calibration), all n·segments texts are decoded together as one batch of
    sequences (runtime.Batch: the weights are read once per step for all of them). For large models
    this replaces the PyTorch generation, which reads the whole 16-bit model once per step (16 GB for
    an 8B model, from disk when it does not fit in memory beside the conversion).
    Sampling as in generate_windows: a first token uniform over the vocabulary above the first 256
    ids, then Gumbel-max at `temperature`."""
    from ..runtime import Model

    n_text = n * segments if segments > 1 and length % segments == 0 else n
    text_len = length // (n_text // n)
    gen = torch.Generator().manual_seed(seed)
    low = min(256, vocab_size - 1)
    tok = torch.randint(low, vocab_size, (n_text,), generator=gen)
    seq = [tok]
    with Model(model_path, n_ctx=text_len, n_threads=threads, n_seq=n_text) as m:
        ids = list(range(n_text))
        for _ in range(text_len - 1):
            logits = torch.from_numpy(m.batch.eval(ids, tok.tolist()))[:, :vocab_size]
            gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen).clamp_(1e-20, 1.0)))
            tok = torch.argmax(logits / temperature + gumbel, -1)
            seq.append(tok)
            if progress:
                progress(n_text)
    tokens = torch.stack(seq, 1).reshape(n, length)
    return Calibration(tokens.to(torch.int64), "self-generated")


# ---------------------------------------------------------------------------------- statistics

@dataclass
class PointStats:
    """Statistics of the input X (tokens × C) of one linear group."""

    absmax: torch.Tensor  # (C,) max |x_j|
    sqsum: torch.Tensor  # (C,) Σ x_j²
    hess: torch.Tensor  # (C, C) Σ x xᵀ, float32 (as GPTQ uses it; 0.8 GB for 8B's down_proj, not 1.6)
    count: int = 0
    samples: list[torch.Tensor] = field(default_factory=list)

    @property
    def rms(self) -> torch.Tensor:
        return (self.sqsum / max(self.count, 1)).sqrt()

    @property
    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples, 0)

    @classmethod
    def empty(cls, c: int) -> "PointStats":
        return cls(torch.zeros(c), torch.zeros(c, dtype=torch.float64), torch.zeros(c, c))

    def add(self, x: torch.Tensor, sample_rows: torch.Tensor | None) -> None:
        x2 = x.reshape(-1, x.shape[-1]).float()
        self.absmax = torch.maximum(self.absmax, x2.abs().amax(0))
        self.sqsum += x2.double().pow(2).sum(0)
        self.hess.addmm_(x2.t(), x2)  # in place: no n x n temporary
        self.count += x2.shape[0]
        if sample_rows is not None and sample_rows.numel():
            self.samples.append(x2[sample_rows].clone())


def sample_plan(n_windows: int, length: int, n_sample: int, seed: int) -> torch.Tensor:
    """Boolean mask (n_windows, length) of the token rows kept for the α search."""
    gen = torch.Generator().manual_seed(seed + 7919)
    total = n_windows * length
    mask = torch.zeros(total, dtype=torch.bool)
    mask[torch.randperm(total, generator=gen)[:min(n_sample, total)]] = True
    return mask.reshape(n_windows, length)


def block_stats(x: torch.Tensor, blk: Block, cfg: ModelConfig, sample_mask: torch.Tensor,
                chunk: int = 8, layer: int = 0) -> tuple[dict[str, PointStats], torch.Tensor]:
    """Runs the float block (block number `layer`) over hidden states x (n, L, E) in chunks of windows;
    returns the statistics of each linear group's input and the block's output hidden states."""
    shapes = cfg.linear_shapes()
    dims = {"attn": cfg.n_embd, "attn_out": shapes["attn_output"][1], "ffn": cfg.n_embd,
            "ffn_down": shapes["ffn_down"][1]}
    stats = {p: PointStats.empty(dims[p]) for p in POINTS}
    out = torch.empty_like(x)
    for c0 in range(0, x.shape[0], chunk):
        rows = sample_mask[c0:c0 + chunk].reshape(-1)

        def capture(point: str, h: torch.Tensor) -> None:
            stats[point].add(h, rows)

        with torch.no_grad():
            out[c0:c0 + chunk] = block_forward(x[c0:c0 + chunk], blk, cfg, capture=capture, layer=layer)
    return stats, out
