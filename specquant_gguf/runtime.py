"""cffi binding of the native runtime (libspecquant) -> `Model`.

    from specquant_gguf import Model
    with Model("smol.sq4.gguf", n_ctx=2048, n_threads=2) as m:
        logits = m.eval(m.tokenize("The capital of France is"))   # (n_tokens, n_vocab) float32
        nxt = int(m.eval_last([int(logits[-1].argmax())]).argmax())

ABI mode (no compiler needed at install time): the declarations come from the public header
native/include/specquant.h (installed next to the library), with preprocessor lines and SQ_API
removed. Library lookup order: $SPECQUANT_LIB; the package folder (a wheel, or the platlib copy of
an editable install); the newest <repo>/build/*/native/libspecquant.so (developers; sanitizer
builds skipped: they cannot be loaded into Python).
Errors from C become SpecQuantError subclasses carrying the C message (see _raise).
"""
from __future__ import annotations

import os
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from cffi import FFI

from .errors import FormatError, SpecQuantError, UsageError

__all__ = ["Model", "NativeIOError", "ArgumentError", "ContextFullError", "UnsupportedError", "BackendError",
           "library_path"]

_PKG = Path(__file__).resolve().parent
_REPO = _PKG.parent
_LIB_NAMES = {"darwin": "libspecquant.dylib", "win32": "specquant.dll"}
_LIB_NAME = _LIB_NAMES.get(sys.platform, "libspecquant.so")

# status codes of specquant.h (sq_status)
SQ_OK, SQ_ERR_IO, SQ_ERR_FORMAT, SQ_ERR_UNSUPPORTED, SQ_ERR_ARG, SQ_ERR_CTX_FULL, SQ_ERR_NOMEM, SQ_ERR_BACKEND = range(8)
_KV_TYPES = {"f16": 0, "q8": 1, "q4": 2, "f32": 3}
_BACKENDS = {"cpu": 0, "cuda": 1, "auto": 2}
_INT32_MIN = -(2 ** 31)


class NativeIOError(SpecQuantError, FileNotFoundError):
    """The model file cannot be opened or mapped (SQ_ERR_IO)."""


class ArgumentError(UsageError, ValueError):
    """A bad argument: n_ctx, token id, thread count, ... (SQ_ERR_ARG)."""


class ContextFullError(SpecQuantError):
    """eval past n_ctx (SQ_ERR_CTX_FULL)."""


class UnsupportedError(SpecQuantError):
    """Unknown architecture, tensor type or ISA (SQ_ERR_UNSUPPORTED)."""


class BackendError(SpecQuantError):
    """The requested backend is not available (SQ_ERR_BACKEND)."""


class NativeMemoryError(SpecQuantError, MemoryError):
    """The runtime ran out of memory (SQ_ERR_NOMEM)."""


_ERRORS: dict[int, type[Exception]] = {
    SQ_ERR_IO: NativeIOError, SQ_ERR_FORMAT: FormatError, SQ_ERR_UNSUPPORTED: UnsupportedError,
    SQ_ERR_ARG: ArgumentError, SQ_ERR_CTX_FULL: ContextFullError, SQ_ERR_NOMEM: NativeMemoryError,
    SQ_ERR_BACKEND: BackendError,
}

# ---------------------------------------------------------------------------------------------
# loading the library


def _header_path() -> Path:
    for p in (_PKG / "specquant.h", _REPO / "native" / "include" / "specquant.h"):
        if p.is_file():
            return p
    raise SpecQuantError("specquant.h not found next to the package or in native/include (broken install?)")


def _cdef_source(text: str) -> str:
    """The header with its preprocessor lines removed: #if/#ifdef blocks for other languages and
    platforms (__cplusplus, _WIN32) dropped, include guards kept, SQ_API removed."""
    out: list[str] = []
    keep_stack: list[bool] = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#"):
            word = s[1:].strip().split(None, 1)
            directive = word[0] if word else ""
            if directive in ("ifdef", "if"):
                keep_stack.append(False)  # __cplusplus, defined(_WIN32): not this binding
            elif directive == "ifndef":
                keep_stack.append(True)  # include guard
            elif directive == "else":
                keep_stack[-1] = not keep_stack[-1]
            elif directive == "endif":
                keep_stack.pop()
            continue
        if all(keep_stack):
            out.append(line.replace("SQ_API ", ""))
    return "\n".join(out)


def _sanitized(path: Path) -> bool:
    """A -fsanitize build: dlopen'ing it into Python aborts the process, so it must not be tried."""
    try:
        data = path.read_bytes()
    except OSError:
        return True
    return any(tag in data for tag in (b"libasan.so", b"libtsan.so", b"libubsan.so"))


def _candidates() -> list[Path]:
    found = [_PKG / _LIB_NAME]
    platlib = sysconfig.get_paths().get("platlib")
    if platlib:
        found.append(Path(platlib) / "specquant_gguf" / _LIB_NAME)
    builds = sorted(_REPO.glob(f"build/*/native/{_LIB_NAME}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found + [b for b in builds if not _sanitized(b)]


def _library_candidates() -> list[Path]:
    env = os.environ.get("SPECQUANT_LIB")
    if env:
        if not Path(env).is_file():
            raise SpecQuantError(f"SPECQUANT_LIB={env} does not exist")
        return [Path(env)]
    found = [p for p in _candidates() if p.is_file()]
    if not found:
        raise SpecQuantError(f"the native library {_LIB_NAME} was not found: install the package (pip install -e .), "
                             f"build it (cmake -S . -B build/dev && cmake --build build/dev), or set SPECQUANT_LIB")
    return found


def _load() -> tuple[FFI, Any, Path]:
    """The first candidate that loads ($SPECQUANT_LIB, if set, must)."""
    ffi = FFI()
    ffi.cdef(_cdef_source(_header_path().read_text(encoding="utf-8")))
    errors = []
    for path in _library_candidates():
        try:
            return ffi, ffi.dlopen(str(path)), path
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    raise SpecQuantError("cannot load the native library: " + "; ".join(errors))


def library_path() -> Path:
    """The library this module loaded (see the module docstring for the search order)."""
    return _path


_ffi, _lib, _path = _load()


def _message() -> str:
    return _ffi.string(_lib.sq_last_error()).decode("utf-8", errors="replace")


def _raise(status: int | None = None) -> None:
    code = int(_lib.sq_last_status()) if status is None else int(status)
    raise _ERRORS.get(code, SpecQuantError)(_message() or f"native error {code}")


def isa() -> str:
    """The kernel set in use: scalar, avx2, avx512 or neon (SQ_ISA=... forces one)."""
    return _ffi.string(_lib.sq_isa_name()).decode()


# ---------------------------------------------------------------------------------------------
# the model


class Model:
    """A loaded model file (mmap) with its KV cache; eval() continues from the current position.

    n_ctx: context of this instance (None = min(2048, the model's context length)); n_threads: None
    or 0 = every online core; kv_type: "f16" | "q8" | "q4"; spectral_tau: energy fraction of the
    spectral branch kept at load (1.0 = all); backend: "auto" (the GPU when the library has the CUDA
    backend, a device is there and the model can run on it, else the CPU) | "cpu" | "cuda" (an error,
    BackendError with the reason, when the GPU cannot be used). `backend` then reports where the model
    actually runs ("cpu" or "cuda"), `requested_backend` what was asked for.
    Not thread-safe for concurrent evals on one instance (a lock serialises them).
    """

    def __init__(self, path: str | os.PathLike[str], n_ctx: int | None = None, n_threads: int | None = None,
                 kv_type: str = "f16", spectral_tau: float = 1.0, backend: str = "auto") -> None:
        self._m = None
        self._lock = threading.Lock()
        if kv_type not in _KV_TYPES:
            raise ArgumentError(f"kv_type must be one of {', '.join(_KV_TYPES)}, got {kv_type!r}")
        if not isinstance(backend, str) or backend not in _BACKENDS:
            raise ArgumentError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
        p = _lib.sq_model_default_params()
        if n_ctx is not None and self._int_arg("n_ctx", n_ctx) <= 0:
            raise ArgumentError(f"n_ctx must be >= 1 (None = min(2048, the model's)), got {n_ctx}")
        p.n_ctx = 0 if n_ctx is None else int(n_ctx)
        p.n_threads = self._int_arg("n_threads", n_threads or 0)
        p.kv_type = _KV_TYPES[kv_type]
        p.spectral_tau = float(spectral_tau)
        p.backend = _BACKENDS[backend]
        self.path = os.fspath(path)
        params = _ffi.new("sq_model_params *", p)
        m = _lib.sq_model_load(self.path.encode(), params)
        if m == _ffi.NULL:
            _raise()
        self._m = m
        self.kv_type, self.spectral_tau, self.requested_backend = kv_type, float(spectral_tau), backend

    @staticmethod
    def _int_arg(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not -2 ** 31 <= int(v) < 2 ** 31:
            raise ArgumentError(f"{name} must be an int, got {v!r}")
        return int(v)

    # -- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Frees the model (idempotent)."""
        m, self._m = self._m, None
        if m is not None:
            _lib.sq_model_free(m)

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass

    def _handle(self):
        if self._m is None:
            raise SpecQuantError("the model is closed")
        return self._m

    def __repr__(self) -> str:
        state = "closed" if self._m is None else (f"n_ctx={self.n_ctx}, n_past={self.n_past}, isa={self.isa}, "
                                                  f"backend={self.backend}")
        return f"Model({self.path!r}, {state})"

    # -- properties -------------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return int(_lib.sq_model_n_vocab(self._handle()))

    @property
    def n_ctx(self) -> int:
        return int(_lib.sq_model_n_ctx(self._handle()))

    @property
    def n_ctx_train(self) -> int:
        return int(_lib.sq_model_n_ctx_train(self._handle()))

    @property
    def n_past(self) -> int:
        return int(_lib.sq_model_n_past(self._handle()))

    @property
    def isa(self) -> str:
        """The kernel set this model runs (SQ_ISA at load time, else the CPU's best)."""
        return _ffi.string(_lib.sq_model_isa(self._handle())).decode()

    @property
    def backend(self) -> str:
        """Where this model runs: "cpu" or "cuda" (what backend="auto" chose)."""
        fn = getattr(_lib, "sq_model_backend", None)  # a library older than the header: CPU only
        return "cpu" if fn is None else _ffi.string(fn(self._handle())).decode()

    def metadata(self, key: str) -> str | None:
        """A metadata value as text (numbers printed, arrays as [a, b, ...]); None when absent."""
        p = _lib.sq_model_meta(self._handle(), key.encode())
        return None if p == _ffi.NULL else _ffi.string(p).decode("utf-8", errors="replace")

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
        tok = _ffi.cast("const int32_t *", _ffi.from_buffer(ids))
        ptr = _ffi.NULL if out is None else _ffi.cast("float *", _ffi.from_buffer(out, require_writable=True))
        with self._lock:
            st = _lib.sq_model_eval(self._handle(), tok, len(ids), ptr, 1 if last_only else 0)
        if st != SQ_OK:
            _raise(st)

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
        st = _lib.sq_model_set_n_past(self._handle(), self._int_arg("n_past", n))
        if st != SQ_OK:
            _raise(st)

    # -- tokenizer --------------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of text. add_bos: None = as the model says, True = always, False = never.
        special: recognise control tokens such as <|im_end|> written in the text."""
        data = text.encode("utf-8")
        mode = 1 if add_bos is None else (2 if add_bos else 0)
        cap = len(data) + 8
        for _ in range(2):
            buf = _ffi.new("int32_t[]", cap)
            n = _lib.sq_tokenize(self._handle(), data, len(data), buf, cap, mode, 1 if special else 0)
            if n == _INT32_MIN:
                _raise()
            if n >= 0:
                return list(_ffi.unpack(buf, n))
            cap = -n
        raise SpecQuantError("sq_tokenize kept asking for a larger buffer")

    def _bytes_call(self, fn, *args) -> bytes:
        cap = 256
        for _ in range(2):
            buf = _ffi.new("char[]", cap)
            n = fn(self._handle(), *args, buf, cap)
            if n == _INT32_MIN:
                _raise()
            if n >= 0:
                return _ffi.unpack(buf, n)
            cap = -n + 1
        raise SpecQuantError("the tokenizer kept asking for a larger buffer")

    def token_to_piece(self, token: int, special: bool = False) -> bytes:
        """Raw bytes of one token (may be part of a UTF-8 sequence)."""
        return self._bytes_call(lambda m, buf, cap: _lib.sq_token_to_piece(m, int(token), buf, cap, int(special)))

    def detokenize(self, ids: Sequence[int], special: bool = False) -> str:
        """Text of a token sequence (invalid UTF-8 replaced)."""
        a = np.ascontiguousarray(np.asarray(list(ids), dtype=np.int64), dtype=np.int32)
        arr = _ffi.new("int32_t[]", a.tolist()) if len(a) else _ffi.NULL
        data = self._bytes_call(lambda m, buf, cap: _lib.sq_detokenize(m, arr, len(a), buf, cap, int(special)))
        return data.decode("utf-8", errors="replace")

    @property
    def bos(self) -> int:
        return int(_lib.sq_token_bos(self._handle()))

    @property
    def eos(self) -> int:
        return int(_lib.sq_token_eos(self._handle()))

    def is_eog(self, token: int) -> bool:
        """End of generation: eos, eot, <|im_end|>, ..."""
        return bool(_lib.sq_token_is_eog(self._handle(), int(token)))

    # -- generation (specquant_gguf/generation.py) ----------------------------------------------------
    def generate(self, prompt: str | Sequence[int], **kw: Any):
        """Text generation; see specquant_gguf.generation.generate for the options."""
        from . import generation
        return generation.generate(self, prompt, **kw)

    def chat(self, messages: Sequence[dict], **kw: Any):
        """Chat completion with the model's template; see specquant_gguf.generation.chat."""
        from . import generation
        return generation.chat(self, messages, **kw)
