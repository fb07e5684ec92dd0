"""The one scoring protocol: what perplexity and zero-shot evaluation need of a model.

runtime.Model is wrapped by NativeScorer; the tests' PyTorch oracle and the benchmarks' llama.cpp
adapter implement the same protocol, so every evaluation runs the same code on every backend.
"""
from __future__ import annotations

import os
from typing import Protocol, Sequence

import numpy as np


class ScoringModel(Protocol):
    name: str           # shown in results ("native", "reference", "llama.cpp")
    n_ctx: int          # the longest sequence one state holds
    add_bos: bool       # the model expects BOS at the start of a document
    bos_id: int | None
    eos_id: int | None

    def tokenize(self, text: str) -> list[int]: ...             # never adds BOS
    def eval(self, ids: Sequence[int]) -> np.ndarray: ...       # (n, n_vocab) logits, from the KV position
    def eval_last(self, ids: Sequence[int]) -> np.ndarray: ...  # (n_vocab,) logits of the last token
    def set_n_past(self, n: int) -> None: ...                   # rewind the KV cache to n tokens
    def reset(self) -> None: ...                                # empty the KV cache


def prefix_token(model: ScoringModel) -> int | None:
    """The token an empty context starts from (lm-eval: BOS, else EOS)."""
    for t in (model.bos_id, model.eos_id):
        if isinstance(t, (int, np.integer)) and t >= 0:
            return int(t)
    return None


class NativeScorer:
    """runtime.Model (the C runtime and its own tokenizer) as a ScoringModel."""

    name = "native"

    def __init__(self, path: str | os.PathLike[str], n_ctx: int, threads: int | None = None, **model_kw) -> None:
        from ..gguf import read_model
        from ..gguf.vocab import model_adds_bos
        from ..runtime.model import Model

        self.model = Model(path, n_ctx=n_ctx, n_threads=threads, **model_kw)
        md = read_model(path).metadata
        self.add_bos = model_adds_bos(md)
        self.bos_id = md.get("tokenizer.ggml.bos_token_id")
        self.eos_id = md.get("tokenizer.ggml.eos_token_id")
        self.n_ctx = self.model.n_ctx
        self.advance = self.model.advance  # runs tokens without computing logits (zero-shot uses it)

    def tokenize(self, text: str) -> list[int]:
        return list(self.model.tokenize(text, add_bos=False))

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.eval(ids)

    def eval_last(self, ids: Sequence[int]) -> np.ndarray:
        return self.model.eval_last(ids)

    def set_n_past(self, n: int) -> None:
        self.model.set_n_past(n)

    def reset(self) -> None:
        self.model.reset()

    def close(self) -> None:
        self.model.close()
