"""Perplexity: `specquant ppl FILE --data TEXTFILE [--ctx 512] [--windows N] [--backend ...]`.

Protocol (the usual GPTQ / QuaRot / SpinQuant one, made explicit):
1. Text. A WikiText `.raw` file is turned back into its dataset rows and joined with "\\n\\n"
   (shared/data/SOURCES.md §1: rows = [l + "\\n" if l.strip() else "" for l in lines], then
   "\\n\\n".join(rows)), which is the string `"\\n\\n".join(dataset["text"])` those papers score.
   Any other file is used as is. (--text plain / wikitext overrides the choice by suffix.)
2. Tokens. The whole text is tokenized once, without special-token parsing. BOS: only when the
   model's tokenizer.ggml.add_bos_token says so (SmolLM2: no). Then every window starts with BOS
   followed by ctx-1 text tokens, so each window looks like a document start as such models expect;
   without BOS a window is ctx text tokens.
3. Windows. Consecutive, non-overlapping windows of the token stream; the last partial window is
   dropped; --windows N keeps the first N. Each window is evaluated from an empty cache.
4. Score. Every token after a window's first is predicted from the tokens before it in the same
   window: ctx-1 predictions per window. NLL = -log softmax (fp64); PPL = exp(mean NLL over all
   scored tokens of all windows).

Backends: "native" (specquant_gguf.runtime.Model, the C library and its tokenizer) and "reference"
(the PyTorch oracle in reference.py with a `tokenizers` tokenizer built from the file's metadata).
The default, "auto", is native when the library loads and can run the file, else reference (with a
note on stderr: e.g. a Q4_1 source file, which only the reference reads).
The helpers (load_eval_text, wikitext_join, make_windows, score_window, perplexity, open_backend,
evaluate_ppl) are reused by the benchmarks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from .errors import SpecQuantError, UsageError

TEXT_MODES = ("auto", "wikitext", "plain")
BACKENDS = ("auto", "native", "reference")


# ---------------------------------------------------------------------------------------------
# text and windows


def wikitext_join(raw: str) -> str:
    """A WikiText .raw file -> "\\n\\n".join(rows) (SOURCES.md §1): blank lines are empty rows,
    every other line is a row that ends in "\\n"."""
    rows = [line + "\n" if line.strip() else "" for line in raw.split("\n")[:-1]]
    return "\n\n".join(rows)


def load_eval_text(path: str | os.PathLike[str], mode: str = "auto") -> str:
    """The text to score: WikiText .raw files rebuilt as above (mode auto/wikitext), others as is."""
    p = Path(path)
    if mode not in TEXT_MODES:
        raise UsageError(f"--text must be one of {', '.join(TEXT_MODES)}")
    if not p.is_file():
        raise UsageError(f"data file {str(p)!r} does not exist")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecQuantError(f"data file {p.name} is not UTF-8 text") from None
    except OSError as exc:
        raise SpecQuantError(f"cannot read {str(p)!r}: {exc.strerror or exc}") from None
    wikitext = mode == "wikitext" or (mode == "auto" and p.suffix == ".raw")
    return wikitext_join(raw) if wikitext else raw


def check_ctx(ctx: int, windows: int | None) -> None:
    if not isinstance(ctx, int) or ctx <= 1:
        raise UsageError(f"--ctx must be at least 2, got {ctx}")
    if windows is not None and windows <= 0:
        raise UsageError(f"--windows must be positive, got {windows}")


def make_windows(ids: Sequence[int], ctx: int, n_windows: int | None = None,
                 bos_id: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping windows of ctx tokens (with bos_id: BOS + ctx-1 text tokens).

    ids is the text's token stream, without BOS. The last partial window is dropped."""
    check_ctx(ctx, n_windows)
    step = ctx - 1 if bos_id is not None else ctx
    n = len(ids) // step
    if n == 0:
        raise SpecQuantError(f"the text has {len(ids)} tokens, fewer than one window of {ctx}")
    if n_windows is not None:
        n = min(n, n_windows)
    head = [int(bos_id)] if bos_id is not None else []
    return [head + [int(t) for t in ids[i * step:(i + 1) * step]] for i in range(n)]


def score_window(logits: np.ndarray, window: Sequence[int]) -> tuple[float, int]:
    """(sum of NLL, count) of tokens 1..n-1 of a window given its logits (n, vocab)."""
    n = len(window)
    if logits.shape[0] != n:
        raise SpecQuantError(f"got logits for {logits.shape[0]} positions, expected {n}")
    lg = np.asarray(logits[:-1], dtype=np.float64)
    if not np.isfinite(lg).all():
        raise SpecQuantError("the model produced non-finite logits")
    mx = lg.max(axis=1, keepdims=True)
    logz = mx[:, 0] + np.log(np.exp(lg - mx).sum(axis=1))
    target = np.asarray(window[1:], dtype=np.int64)
    nll = logz - lg[np.arange(n - 1), target]
    return float(nll.sum()), n - 1


@dataclass
class PplResult:
    ppl: float
    nll: float  # mean NLL per scored token
    tokens: int  # scored tokens
    ctx: int
    windows: int
    backend: str
    seconds: float
    text_tokens: int = 0  # tokens in the whole text (without BOS)
    add_bos: bool = False
    file: str = ""
    data: str = ""
    window_ppl: list[float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(evaluate: Callable[[list[int]], np.ndarray], windows: Sequence[Sequence[int]],
               progress: bool = True, desc: str = "ppl") -> tuple[float, float, int, list[float]]:
    """Runs evaluate(window) -> logits on every window: (ppl, mean nll, scored tokens, per-window ppl)."""
    total, count, per = 0.0, 0, []
    bar = _progress(len(windows), desc) if progress else None
    try:
        for w in windows:
            s, c = score_window(evaluate(list(w)), w)
            total += s
            count += c
            per.append(math.exp(s / c))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ppl=f"{math.exp(total / count):.3f}")
    finally:
        if bar is not None:
            bar.close()
    nll = total / count
    return math.exp(nll), nll, count, per


def _progress(n: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=n, desc=desc, unit="win", leave=False, disable=None)


# ---------------------------------------------------------------------------------------------
# backends


class Backend(Protocol):
    name: str
    add_bos: bool
    bos_id: int | None

    def tokenize(self, text: str) -> list[int]: ...  # without BOS

    def eval(self, window: list[int]) -> np.ndarray: ...  # fresh context each call


class ReferenceBackend:
    """reference.ReferenceModel + a `tokenizers` tokenizer from the file's metadata.

    exact=False (default here): the fast GEMM path; the quantized activations are bit-identical to
    the integer path, only the fp32 summation order differs."""

    name = "reference"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, exact: bool = False,
                 spectral_tau: float = 1.0) -> None:
        import torch

        from .hf_tokenizer import TextTokenizer
        from .reference import ReferenceModel
        if threads:
            torch.set_num_threads(threads)
        self.model = ReferenceModel(path, exact=exact, spectral_tau=spectral_tau)
        self.tok = TextTokenizer(self.model.file.metadata, path)
        self.add_bos = self.tok.add_bos
        self.bos_id = self.tok.bos_id
        self.n_ctx_train = self.model.hp.context_length

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text, add_bos=False)

    def eval(self, window: list[int]) -> np.ndarray:
        return self.model.forward(window)


class NativeBackend:
    """specquant_gguf.runtime.Model: the C runtime and its own tokenizer."""

    name = "native"

    def __init__(self, path: str | os.PathLike[str], n_ctx: int, threads: int | None = None, **model_kw) -> None:
        from .runtime import Model
        self.model = Model(str(path), n_ctx=n_ctx, n_threads=threads, **model_kw)
        from .format import read_model
        from .hf_tokenizer import model_adds_bos
        md = read_model(path).metadata
        self.add_bos = model_adds_bos(md)
        self.bos_id = md.get("tokenizer.ggml.bos_token_id")

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenize(text, add_bos=False))

    def eval(self, window: list[int]) -> np.ndarray:
        self.model.reset()
        return np.asarray(self.model.eval(window), dtype=np.float32)


def native_available() -> bool:
    try:
        from . import runtime  # noqa: F401  (loads the shared library)
    except Exception:  # ImportError, OSError from cffi, SpecQuantError: any means "not usable"
        return False
    return True


def open_backend(path: str | os.PathLike[str], backend: str = "auto", ctx: int = 512,
                 threads: int | None = None, exact: bool = False) -> Backend:
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}")
    if not Path(path).is_file():
        raise UsageError(f"model file {str(path)!r} does not exist")
    if backend == "auto" and native_available():
        try:
            return NativeBackend(path, n_ctx=ctx, threads=threads)
        except UsageError:
            raise
        except SpecQuantError as exc:  # e.g. a source file with Q4_1 layers: the oracle reads any type
            print(f"specquant: the native runtime cannot run {Path(path).name} ({exc}); using the reference backend",
                  file=sys.stderr)
    if backend == "native":
        if not native_available():
            raise SpecQuantError("the native library is not available (build it, or use --backend reference)")
        return NativeBackend(path, n_ctx=ctx, threads=threads)
    return ReferenceBackend(path, threads=threads, exact=exact)


def evaluate_ppl(path: str | os.PathLike[str], data: str | os.PathLike[str], ctx: int = 512,
                 windows: int | None = None, backend: str | Backend = "auto", threads: int | None = None,
                 text_mode: str = "auto", progress: bool = True, exact: bool = False) -> PplResult:
    """The whole protocol of this module's docstring for one model file and one text file."""
    check_ctx(ctx, windows)
    text = load_eval_text(data, text_mode)
    be = backend if not isinstance(backend, str) else open_backend(path, backend, ctx, threads, exact)
    t0 = time.perf_counter()
    ids = be.tokenize(text)
    bos = be.bos_id if be.add_bos else None
    if be.add_bos and bos is None:
        raise SpecQuantError("the model asks for BOS but the file has no tokenizer.ggml.bos_token_id")
    wins = make_windows(ids, ctx, windows, bos)
    ppl, nll, count, per = perplexity(be.eval, wins, progress=progress, desc=f"ppl {Path(path).name}")
    return PplResult(ppl=ppl, nll=nll, tokens=count, ctx=ctx, windows=len(wins), backend=be.name,
                     seconds=time.perf_counter() - t0, text_tokens=len(ids), add_bos=be.add_bos,
                     file=str(path), data=str(data), window_ppl=per)


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="model .gguf file")
    p.add_argument("--data", required=True, help="text file (WikiText .raw files are rebuilt into rows)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--windows", type=int, default=None, help="score only the first N windows (default: all)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="native (C runtime), reference (PyTorch oracle); auto: native if it loads")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the backend's own)")
    p.add_argument("--text", choices=TEXT_MODES, default="auto", dest="text_mode",
                   help="how to read --data: auto (WikiText rows for .raw files), wikitext, plain")
    p.add_argument("--exact", action="store_true",
                   help="reference backend: integer group sums (slow) instead of the fast GEMM path")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads must be positive, got {args.threads}")
    res = evaluate_ppl(args.file, args.data, ctx=args.ctx, windows=args.windows, backend=args.backend,
                       threads=args.threads, text_mode=args.text_mode, progress=not args.json, exact=args.exact)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"ppl = {res.ppl:.4f}")
        print(f"({res.tokens} tokens scored in {res.windows} windows of {res.ctx}, backend {res.backend}, "
              f"{res.seconds:.1f} s)")
    return 0
