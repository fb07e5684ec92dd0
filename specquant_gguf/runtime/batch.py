"""Several sequences decoded in one forward pass: `Batch` (the C sq_batch_* API, native/src/batch.c).

    m = Model("smol.sq4.gguf", n_seq=4)          # or Batch(Model(...), 4)
    b = m.batch
    b.eval([0, 0, 0, 1, 1], prompt_a + prompt_b)  # two prompts in one call (their last logits by default)
    logits = b.eval([0, 1], [tok_a, tok_b])       # one decode step of both: weights read once

Each sequence has its own KV cache (n_ctx positions) and position; its logits are the ones a Model
of its own computes for the same tokens. The Model's own cache (Model.eval) is separate. Calls hold
the Model's lock (the batch shares the model's scratch buffers); Model.close() frees the batch first.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import SpecQuantError
from ._native import ArgumentError, check, ffi, lib, raise_last

__all__ = ["Batch"]


class Batch:
    """n_seq sequences (KV slots) over one Model's weights."""

    def __init__(self, model, n_seq: int) -> None:
        if isinstance(n_seq, bool) or not isinstance(n_seq, int) or n_seq < 1:
            raise ArgumentError(f"n_seq must be an int >= 1, got {n_seq!r}")
        self._model = model
        self._b = None
        b = model._call(lambda m: lib().sq_batch_new(m, n_seq))
        if b == ffi().NULL:
            raise_last()
        self._b = b
        self.n_seq = n_seq
        self._tokens: list[list[int]] = [[] for _ in range(n_seq)]
        model._batches.append(self)

    def _free(self) -> None:
        """Called by Model.close() under the model's lock."""
        b, self._b = self._b, None
        if b is not None:
            lib().sq_batch_free(b)

    def _handle(self):
        if self._b is None or self._model.closed:
            raise SpecQuantError("the batch's model is closed")
        return self._b

    def _seq(self, seq: int) -> int:
        if isinstance(seq, bool) or not isinstance(seq, (int, np.integer)) or not 0 <= int(seq) < self.n_seq:
            raise ArgumentError(f"sequence id must be an int in 0..{self.n_seq - 1}, got {seq!r}")
        return int(seq)

    def n_past(self, seq: int) -> int:
        """Tokens in sequence seq's cache."""
        seq = self._seq(seq)
        with self._model._lock:
            return int(lib().sq_batch_n_past(self._handle(), seq))

    def tokens(self, seq: int) -> list[int]:
        """The token ids sequence seq's cache holds (a copy)."""
        with self._model._lock:
            return list(self._tokens[self._seq(seq)])

    def set_n_past(self, seq: int, n: int) -> None:
        """Rewinds sequence seq to n tokens (0 = a fresh sequence)."""
        seq = self._seq(seq)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ArgumentError(f"n_past must be an int, got {n!r}")
        with self._model._lock:
            check(lib().sq_batch_set_n_past(self._handle(), seq, int(n)))
            del self._tokens[seq][int(n):]

    def reset(self, seq: int) -> None:
        self.set_n_past(seq, 0)

    def eval(self, seq_ids: Sequence[int], tokens: Sequence[int], want: Sequence[bool] | str = "last") -> np.ndarray:
        """Appends tokens[i] to sequence seq_ids[i] (tokens of one sequence in order) in one forward
        pass. want: "last" (default: the last token of each sequence in the call), "all", or one
        flag per token. Returns the wanted logits, (k, n_vocab) float32, rows in token order."""
        s = np.ascontiguousarray(np.asarray(list(seq_ids), dtype=np.int64), dtype=np.int32)
        t = np.ascontiguousarray(np.asarray(list(tokens), dtype=np.int64), dtype=np.int32)
        if s.ndim != 1 or s.shape != t.shape or s.size == 0:
            raise ArgumentError("seq_ids and tokens must be non-empty 1-D sequences of the same length")
        if isinstance(want, str):
            if want == "all":
                w = np.ones(len(t), dtype=np.int32)
            elif want == "last":
                w = np.zeros(len(t), dtype=np.int32)
                last = {int(x): i for i, x in enumerate(s)}
                w[list(last.values())] = 1
            else:
                raise ArgumentError(f"want must be 'last', 'all' or one flag per token, got {want!r}")
        else:
            w = np.ascontiguousarray(np.asarray(list(want), dtype=bool), dtype=np.int32)
            if w.shape != t.shape:
                raise ArgumentError("want needs one flag per token")
        f = ffi()
        out = np.empty((int(w.sum()), self._model.n_vocab), dtype=np.float32)
        optr = f.cast("float *", f.from_buffer(out, require_writable=True)) if out.size else f.NULL
        with self._model._lock:
            st = lib().sq_batch_eval(self._handle(), f.cast("const int32_t *", f.from_buffer(s)),
                                     f.cast("const int32_t *", f.from_buffer(t)), len(t),
                                     f.cast("const int32_t *", f.from_buffer(w)), optr)
            if st == 0:
                for q, tok in zip(s.tolist(), t.tolist()):
                    self._tokens[q].append(tok)
        check(st)
        return out
