"""`Model`: a loaded model file (memory-mapped by the C runtime) that owns its KV cache.

    from specquant_gguf import Model
    with Model("smol.sq4.gguf", n_ctx=2048, n_threads=2) as m:
        logits = m.eval(m.tokenize("The capital of France is"))   # (n_tokens, n_vocab) float32
        nxt = int(m.eval_last([int(logits[-1].argmax())]).argmax())

Thread safety: every call into C holds the model's lock, so close() (or __del__) waits for an eval
running in another thread and later calls raise "the model is closed" instead of touching freed
memory. The model records the token ids its KV cache holds (`tokens`), so generation can reuse a
shared prefix; one generation stream at a time may use the cache (see runtime.generate).
"""
from __future__ import annotations

import json
import os
import threading
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import SpecQuantError
from ._native import BACKENDS, INT32_MIN, KV_TYPES, ArgumentError, check, ffi, lib, raise_last

__all__ = ["Model"]


def _path_arg(path: Any) -> str:
    """A model path as str: bytes, non-paths and embedded NULs are refused before C sees them."""
    if isinstance(path, (bytes, bytearray)):
        raise TypeError("model path must be a str or os.PathLike, not bytes (decode it first)")
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(f"model path must be a str or os.PathLike, not {type(path).__name__}") from None
    if not isinstance(p, str):
        raise TypeError("model path must be a str or os.PathLike[str], not a bytes path")
    if "\0" in p:
        raise ValueError("model path contains a NUL character")
    if not p:
        raise ValueError("model path is empty")
    return p


def _int_arg(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not -2 ** 31 <= int(v) < 2 ** 31:
        raise ArgumentError(f"{name} must be an int, got {v!r}")
    return int(v)


def describe_activations(act_bits: int | None, a8_linears: Sequence[str] = ()) -> str:
    """The activation bits that run, as the timing lines print them: "4-bit (ffn_down 8-bit)"."""
    if not act_bits:
        return ""
    return f"{act_bits}-bit" + (f" ({', '.join(a8_linears)} 8-bit)" if a8_linears else "")


class Model:
    """A loaded model file (mmap) with its KV cache; eval() continues from the current position.

    n_seq: > 0 adds `batch`, n_seq more sequences with caches of their own decoded together in one
    forward pass (runtime.batch.Batch). n_ctx: context of this instance (None = min(2048, the model's context length)); n_threads: None
    or 0 = every online core; kv_type: "f16" | "q8" | "q4"; spectral_tau: energy fraction of the
    spectral branch kept at load (1.0 = all); backend: "auto" (the GPU when the library has the CUDA
    backend, a device is there and the model can run on it, else the CPU) | "cpu" | "cuda" (an error,
    BackendError with the reason, when the GPU cannot be used). `backend` then reports where the model
    actually runs ("cpu" or "cuda"), `requested_backend` what was asked for. act_bits: bits of the
    W4A4 (SQ4) layers' activations at run time, 4 or 8, or None = auto: 8 on the CPU (every CPU
    dot-product instruction multiplies 8-bit codes: decode runs alike and A8 is more accurate), 4 on
    CUDA GPUs with int4 tensor cores (sm_80/86/89; 8 on sm_90, whose path is int8). The file's
    specquant.act_bits only records what it was calibrated for; `act_bits` then says what runs (None
    for files without SQ4 layers: f16, q8).
    Calls from several threads are serialised by a lock (one KV cache: one conversation at a time).
    """

    def __init__(self, path: str | os.PathLike[str], n_ctx: int | None = None, n_threads: int | None = None,
                 kv_type: str = "f16", spectral_tau: float = 1.0, backend: str = "auto", n_seq: int = 0,
                 act_bits: int | None = None) -> None:
        self._m = None
        self._batches: list = []  # runtime.batch.Batch objects on this model (freed first by close)
        self.batch = None
        self._lock = threading.RLock()
        self._tokens: list[int] = []  # what the KV cache holds, position by position
        self._stream: object | None = None  # the generation stream that owns the KV cache now
        self.path = _path_arg(path)
        if kv_type not in KV_TYPES:
            raise ArgumentError(f"kv_type must be one of {', '.join(KV_TYPES)}, got {kv_type!r}")
        if not isinstance(backend, str) or backend not in BACKENDS:
            raise ArgumentError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if act_bits is not None and (isinstance(act_bits, bool) or act_bits not in (4, 8)):
            raise ArgumentError(f"act_bits must be 4, 8 or None (auto), got {act_bits!r}")
        p = lib().sq_model_default_params()
        if n_ctx is not None and _int_arg("n_ctx", n_ctx) <= 0:
            raise ArgumentError(f"n_ctx must be >= 1 (None = min(2048, the model's)), got {n_ctx}")
        p.n_ctx = 0 if n_ctx is None else int(n_ctx)
        p.n_threads = _int_arg("n_threads", n_threads or 0)
        p.kv_type = KV_TYPES[kv_type]
        p.spectral_tau = float(spectral_tau)
        p.backend = BACKENDS[backend]
        p.act_bits = 0 if act_bits is None else int(act_bits)
        params = ffi().new("sq_model_params *", p)
        m = lib().sq_model_load(self.path.encode("utf-8", errors="surrogateescape"), params)
        if m == ffi().NULL:
            raise_last()
        self._m = m
        self.kv_type, self.spectral_tau, self.requested_backend = kv_type, float(spectral_tau), backend
        if n_seq:  # n_seq sequences decoded together: self.batch (runtime.batch.Batch)
            from .batch import Batch
            try:
                self.batch = Batch(self, n_seq)
            except BaseException:
                self.close()
                raise

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the model (idempotent); waits for a call running in another thread to finish."""
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the lock existed
            return
        with lock:
            m, self._m = self._m, None
            self._tokens = []
            for b in getattr(self, "_batches", ()):
                b._free()  # a batch lives on the model's weights and scratch: it goes first
            if m is not None:
                lib().sq_model_free(m)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(handle, *args) under the lock, on an open model."""
        with self._lock:
            if self._m is None:
                raise SpecQuantError("the model is closed")
            return fn(self._m, *args)

    @property
    def closed(self) -> bool:
        return self._m is None

    def __repr__(self) -> str:
        if self._m is None:
            return f"Model({self.path!r}, closed)"
        return f"Model({self.path!r}, n_ctx={self.n_ctx}, n_past={self.n_past}, isa={self.isa}, backend={self.backend})"

    # -- properties -------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return int(self._call(lib().sq_model_n_vocab))

    @property
    def n_ctx(self) -> int:
        return int(self._call(lib().sq_model_n_ctx))

    @property
    def n_ctx_train(self) -> int:
        return int(self._call(lib().sq_model_n_ctx_train))

    @property
    def n_past(self) -> int:
        return int(self._call(lib().sq_model_n_past))

    @property
    def tokens(self) -> list[int]:
        """The token ids the KV cache holds (a copy)."""
        with self._lock:
            return list(self._tokens)

    @property
    def isa(self) -> str:
        """The kernel set this model runs (SQ_ISA at load time, else the CPU's best)."""
        return ffi().string(self._call(lib().sq_model_isa)).decode()

    @property
    def backend(self) -> str:
        """Where this model runs: "cpu" or "cuda" (what backend="auto" chose)."""
        return ffi().string(self._call(lib().sq_model_backend)).decode()

    @property
    def act_bits(self) -> int | None:
        """Bits of the SQ4 layers' activations this model runs (4 or 8: the act_bits asked for, or
        auto's choice for the backend); None when no layer is SQ4."""
        return int(self._call(lib().sq_model_act_bits)) or None

    @property
    def a8_linears(self) -> tuple[str, ...]:
        """Linear kinds whose inputs run at 8 bits although act_bits is 4 (the file's
        specquant.act_bits_a8_linears, e.g. ("ffn_down",) in a default file); () at act_bits 8."""
        listed = self.metadata("specquant.act_bits_a8_linears") if self.act_bits == 4 else None
        return tuple(json.loads(listed)) if listed else ()

    def activations(self) -> str:
        """What runs, for timing lines: "4-bit", "4-bit (ffn_down 8-bit)", "8-bit", or "" (no SQ4)."""
        return describe_activations(self.act_bits, self.a8_linears)

    def metadata(self, key: str) -> str | None:
        """A metadata value as text (numbers printed, arrays as [a, b, ...]); None when absent."""
        p = self._call(lib().sq_model_meta, key.encode())
        return None if p == ffi().NULL else ffi().string(p).decode("utf-8", errors="replace")

    # -- evaluation -------------------------------------------------------------------------------
    @staticmethod
    def _ids(ids: Iterable[int] | np.ndarray) -> np.ndarray:
        try:
            a = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
        except TypeError as exc:
            raise ArgumentError(f"token ids must be a sequence of ints: {exc}") from exc
        if a.ndim != 1 or a.size == 0:
            raise ArgumentError("eval needs a non-empty 1-D sequence of token ids")
        if not np.issubdtype(a.dtype, np.integer):
            raise ArgumentError(f"token ids must be integers, got dtype {a.dtype}")
        if a.min() < -2 ** 31 or a.max() >= 2 ** 31:
            raise ArgumentError("token id out of the int32 range")
        return np.ascontiguousarray(a, dtype=np.int32)

    def _eval(self, ids: np.ndarray, out: np.ndarray | None, last_only: bool) -> None:
        f = ffi()
        tok = f.cast("const int32_t *", f.from_buffer(ids))
        ptr = f.NULL if out is None else f.cast("float *", f.from_buffer(out, require_writable=True))
        with self._lock:
            st = self._call(lib().sq_model_eval, tok, len(ids), ptr, 1 if last_only else 0)
            if st == 0:
                self._tokens.extend(int(t) for t in ids)
        check(st)

    def eval(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Runs the tokens from the current position; logits of every one: (n, n_vocab) float32."""
        a = self._ids(ids)
        out = np.empty((len(a), self.n_vocab), dtype=np.float32)
        self._eval(a, out, False)
        return out

    def eval_last(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Like eval, but computes only the last token's logits: (n_vocab,) float32 (decode)."""
        a = self._ids(ids)
        out = np.empty(self.n_vocab, dtype=np.float32)
        self._eval(a, out, True)
        return out

    def advance(self, ids: Sequence[int] | np.ndarray) -> None:
        """Runs the tokens into the KV cache without computing any logits."""
        self._eval(self._ids(ids), None, True)

    def reset(self) -> None:
        """Forgets the whole context (n_past = 0)."""
        self.set_n_past(0)

    def set_n_past(self, n: int) -> None:
        """Rewinds to n tokens (0 <= n <= n_past): later evals overwrite positions >= n."""
        n = _int_arg("n_past", n)
        with self._lock:
            check(self._call(lib().sq_model_set_n_past, n))
            del self._tokens[n:]

    # -- tokenizer --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of text. add_bos: None = as the model says, True = always, False = never.
        special: recognise control tokens such as <|im_end|> written in the text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        data = text.encode("utf-8")
        mode = 1 if add_bos is None else (2 if add_bos else 0)
        cap = len(data) + 8
        for _ in range(2):
            buf = ffi().new("int32_t[]", cap)
            n = self._call(lib().sq_tokenize, data, len(data), buf, cap, mode, 1 if special else 0)
            if n == INT32_MIN:
                raise_last()
            if n >= 0:
                return list(ffi().unpack(buf, n))
            cap = -n
        raise SpecQuantError("sq_tokenize kept asking for a larger buffer")

    def _bytes_call(self, fn: Callable[..., int], *args: Any) -> bytes:
        cap = 256
        for _ in range(2):
            buf = ffi().new("char[]", cap)
            n = self._call(fn, *args, buf, cap)
            if n == INT32_MIN:
                raise_last()
            if n >= 0:
                return ffi().unpack(buf, n)
            cap = -n + 1
        raise SpecQuantError("the tokenizer kept asking for a larger buffer")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """Raw bytes of one token (may be part of a UTF-8 sequence)."""
        return self._bytes_call(lambda m, buf, cap: lib().sq_token_to_piece(m, int(token), buf, cap, int(special)))

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of a token sequence (invalid UTF-8 replaced)."""
        a = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64), dtype=np.int32)
        arr = ffi().new("int32_t[]", a.tolist()) if len(a) else ffi().NULL
        data = self._bytes_call(lambda m, buf, cap: lib().sq_detokenize(m, arr, len(a), buf, cap, int(special)))
        return data.decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return int(self._call(lib().sq_token_bos))

    @property
    def eos(self) -> int:
        return int(self._call(lib().sq_token_eos))

    def is_eog(self, token: int) -> bool:
        """End of generation: eos, eot, <|im_end|>, ..."""
        return bool(self._call(lib().sq_token_is_eog, int(token)))

    # -- chat: the session policy of native/src/chat_session.c (sq-chat runs the same) ---------------
    def chat_template(self, forced: str | None = None) -> str:
        """The chat template to use: `forced` (a built-in name such as "chatml", or a Jinja text of
        one; ArgumentError when not recognised), else the model's own tokenizer.chat_template.
        UnsupportedError when the model has none or one that is not recognised."""
        keep = ffi().new("char[]", forced.encode("utf-8")) if forced is not None else ffi().NULL
        p = self._call(lib().sq_chat_template_pick, keep)
        if p == ffi().NULL:
            raise_last()
        return ffi().string(p).decode("utf-8")

    def chat_fit(self, messages: Sequence[tuple[str, str]], template: str) -> int:
        """How many of the oldest non-system messages to drop so that the conversation, formatted
        with template, fits the context with room for an answer (n_ctx/4 while older turns can go).
        ContextFullError when the last message alone does not fit."""
        f = ffi()
        keep = [f.new("char[]", x.encode("utf-8")) for pair in messages for x in pair]
        roles = f.new("const char *[]", keep[0::2]) if messages else f.NULL
        texts = f.new("const char *[]", keep[1::2]) if messages else f.NULL
        n_drop, n_tokens = f.new("int32_t *"), f.new("int32_t *")
        check(self._call(lib().sq_chat_fit, template.encode("utf-8"), roles, texts, len(messages), n_drop, n_tokens))
        return int(n_drop[0])

    # -- generation streams: one at a time holds the KV cache (runtime.generate) -----------------------
    def acquire_kv(self, stream: object) -> None:
        """Gives the KV cache to one generation stream; a second live stream is an error."""
        with self._lock:
            if self._stream is not None and self._stream is not stream:
                raise SpecQuantError("another generate()/chat() stream is still running on this Model: read it to "
                                     "the end or close() it first (or use one Model per conversation)")
            self._stream = stream

    def release_kv(self, stream: object) -> None:
        """Ends a stream's hold on the KV cache (no-op for a stream that does not hold it)."""
        with self._lock:
            if self._stream is stream:
                self._stream = None

    # -- generation (runtime.generate) ---------------------------------------------------------------
    def generate(self, prompt: str | Sequence[int], **kw: Any):
        """Text generation; see specquant_gguf.runtime.generate.generate for the options."""
        from .generate import generate
        return generate(self, prompt, **kw)

    def chat(self, messages: Sequence[dict], **kw: Any):
        """Chat completion with the model's template; see specquant_gguf.runtime.generate.chat."""
        from .generate import chat
        return chat(self, messages, **kw)

    # -- OpenAI-shaped completions, llama-cpp-python's API (runtime.completions) ------------------------
    def create_completion(self, prompt: str | Sequence[int], **kw: Any):
        """An OpenAI "text_completion" dict (stream=True: an iterator of chunks); see
        specquant_gguf.runtime.completions.create_completion for the options."""
        from .completions import create_completion
        return create_completion(self, prompt, **kw)

    def create_chat_completion(self, messages: Sequence[dict], **kw: Any):
        """An OpenAI "chat.completion" dict (stream=True: an iterator of "chat.completion.chunk"s);
        see specquant_gguf.runtime.completions.create_chat_completion for the options."""
        from .completions import create_chat_completion
        return create_chat_completion(self, messages, **kw)
