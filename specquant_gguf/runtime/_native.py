"""The native library (libspecquant) through cffi: lookup, lazy loading, status codes -> exceptions.

Everything in runtime/ reaches C through this module: `ffi()` and `lib()` load the library on first
use (so importing the package never needs it), `check(status)` turns a C status into an exception.

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
from typing import Any

from cffi import FFI

from ..errors import FormatError, SpecQuantError, UsageError

__all__ = ["NativeIOError", "ArgumentError", "ContextFullError", "UnsupportedError", "BackendError",
           "NativeMemoryError", "library_path", "ffi", "lib", "check", "raise_last", "isa"]

_PKG = Path(__file__).resolve().parent.parent  # specquant_gguf/: the wheel puts the library there
_REPO = _PKG.parent
_LIB_NAMES = {"darwin": "libspecquant.dylib", "win32": "specquant.dll"}
_LIB_NAME = _LIB_NAMES.get(sys.platform, "libspecquant.so")

# status codes of specquant.h (sq_status)
SQ_OK, SQ_ERR_IO, SQ_ERR_FORMAT, SQ_ERR_UNSUPPORTED, SQ_ERR_ARG, SQ_ERR_CTX_FULL, SQ_ERR_NOMEM, SQ_ERR_BACKEND = range(8)
KV_TYPES = {"f16": 0, "q8": 1, "q4": 2, "f32": 3}
BACKENDS = {"cpu": 0, "cuda": 1, "auto": 2}
INT32_MIN = -(2 ** 31)  # what the C functions that return a length return on error


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


_loaded: tuple[FFI, Any, Path] | None = None
_load_lock = threading.Lock()


def _library() -> tuple[FFI, Any, Path]:
    global _loaded
    with _load_lock:
        if _loaded is None:
            _loaded = _load()
        return _loaded


def ffi() -> FFI:
    return _library()[0]


def lib() -> Any:
    return _library()[1]


def library_path() -> Path:
    """The library this module loaded (see the module docstring for the search order)."""
    return _library()[2]


def available() -> bool:
    """Whether the native library can be loaded here."""
    try:
        _library()
    except SpecQuantError:
        return False
    return True


def last_message() -> str:
    return ffi().string(lib().sq_last_error()).decode("utf-8", errors="replace")


def raise_last(status: int | None = None) -> None:
    """Raises the exception for a C status (default: the thread's last one), with the C message."""
    code = int(lib().sq_last_status()) if status is None else int(status)
    raise _ERRORS.get(code, SpecQuantError)(last_message() or f"native error {code}")


def check(status: int) -> None:
    """Raises unless status is SQ_OK."""
    if status != SQ_OK:
        raise_last(status)


def isa() -> str:
    """The kernel set in use: scalar, avx2, avx512, avx512-mix or neon (SQ_ISA=... forces one)."""
    return ffi().string(lib().sq_isa_name()).decode()


