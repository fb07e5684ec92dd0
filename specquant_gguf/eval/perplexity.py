"""Perplexity of a model on a text file (`specquant ppl FILE --data TEXTFILE`).

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

The model is any eval.scoring.ScoringModel: by default the native runtime (NativeScorer); the
tests run the PyTorch oracle and the benchmarks llama.cpp through the same code.
The helpers (load_eval_text, wikitext_join, make_windows, score_window, perplexity, evaluate_ppl)
are reused by the benchmarks.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import SpecQuantError, UsageError
from ..progress import Progress
from .scoring import NativeScorer, ScoringModel

TEXT_MODES = ("auto", "wikitext", "plain")


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
    act_bits: int | None = None  # SQ4 activation bits the native runtime ran (None: no SQ4 layer / not native)
    a8_linears: tuple[str, ...] = ()  # linear kinds that ran at 8 bits although act_bits was 4 (Model.a8_linears)

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(model: ScoringModel, windows: Sequence[Sequence[int]], progress: bool = True,
               desc: str = "ppl") -> tuple[float, float, int, list[float]]:
    """Scores every window from an empty state: (ppl, mean nll, scored tokens, per-window ppl)."""
    total, count, per = 0.0, 0, []
    with Progress(len(windows), desc, quiet=not progress, unit="win") as bar:
        for w in windows:
            model.reset()
            s, c = score_window(np.asarray(model.eval(list(w)), dtype=np.float32), w)
            total += s
            count += c
            per.append(math.exp(s / c))
            bar.update()
            bar.postfix(ppl=f"{math.exp(total / count):.3f}")
    nll = total / count
    return math.exp(nll), nll, count, per


def evaluate_ppl(path: str | os.PathLike[str], data: str | os.PathLike[str], ctx: int = 512,
                 windows: int | None = None, model: ScoringModel | None = None, threads: int | None = None,
                 text_mode: str = "auto", progress: bool = True, act_bits: int | None = None) -> PplResult:
    """The whole protocol of this module's docstring for one model file and one text file.
    model: any ScoringModel (default: the native runtime on `path`, its SQ4 activations at act_bits:
    4, 8 or None = the runtime's auto)."""
    check_ctx(ctx, windows)
    text = load_eval_text(data, text_mode)
    if model is None:
        if not Path(path).is_file():
            raise UsageError(f"model file {str(path)!r} does not exist")
        model = NativeScorer(path, n_ctx=ctx, threads=threads, act_bits=act_bits)
    t0 = time.perf_counter()
    ids = model.tokenize(text)
    bos = model.bos_id if model.add_bos else None
    if model.add_bos and bos is None:
        raise SpecQuantError("the model asks for BOS but the file has no tokenizer.ggml.bos_token_id")
    wins = make_windows(ids, ctx, windows, bos)
    ppl, nll, count, per = perplexity(model, wins, progress=progress, desc=f"ppl {Path(path).name}")
    native = getattr(model, "model", None)  # the runtime's Model behind a NativeScorer
    return PplResult(ppl=ppl, nll=nll, tokens=count, ctx=ctx, windows=len(wins), backend=model.name,
                     seconds=time.perf_counter() - t0, text_tokens=len(ids), add_bos=model.add_bos,
                     file=str(path), data=str(data), window_ppl=per,
                     act_bits=getattr(native, "act_bits", None), a8_linears=getattr(native, "a8_linears", ()))
