"""The PyTorch oracle as an eval.scoring.ScoringModel: perplexity and zero-shot through the same code
as the native runtime, for tests and benchmarks (it reads any GGUF type, e.g. the Q4_1 source)."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from specquant_gguf.gguf.vocab import TextTokenizer

from .reference import ReferenceModel


class ReferenceScorer:
    """reference.ReferenceModel + a `tokenizers` tokenizer built from the file's metadata.

    exact=False (default here): the fast GEMM path; the quantized activations are bit-identical to
    the integer path, only the fp32 summation order differs. The oracle has no KV cache: the tokens
    of the current state are kept and the whole sequence is run again on each call."""

    name = "reference"

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, exact: bool = False,
                 spectral_tau: float = 1.0, n_ctx: int | None = None, act_bits: int | None = None) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = ReferenceModel(path, exact=exact, spectral_tau=spectral_tau, act_bits=act_bits)
        self.tok = TextTokenizer(self.model.file.metadata, path)
        self.add_bos = self.tok.add_bos
        self.bos_id = self.tok.bos_id
        eos = self.model.file.metadata.get("tokenizer.ggml.eos_token_id")
        self.eos_id = int(eos) if eos is not None else None
        self.n_ctx_train = self.model.hp.context_length
        self.n_ctx = n_ctx or self.n_ctx_train
        self._state: list[int] = []

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text, add_bos=False)

    def eval(self, ids: Sequence[int]) -> np.ndarray:
        n = len(ids)
        self._state += [int(t) for t in ids]
        return self.model.forward(self._state)[-n:]

    def eval_last(self, ids: Sequence[int]) -> np.ndarray:
        return self.eval(ids)[-1]

    def set_n_past(self, n: int) -> None:
        del self._state[n:]

    def reset(self) -> None:
        self._state = []
