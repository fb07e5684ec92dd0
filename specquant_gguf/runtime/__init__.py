"""Running a converted model: the C library through cffi (numpy + cffi, no torch).

    _native    library lookup, lazy loading, C status -> exception
    model      Model: a loaded file that owns its KV cache (eval, tokenize, ...)
    generate   sampling, generate(), chat(), chat templates
"""
from __future__ import annotations

from ._native import (ArgumentError, BackendError, ContextFullError, NativeIOError, NativeMemoryError,
                      UnsupportedError, available, isa, library_path)
from .model import Model

__all__ = ["Model", "ArgumentError", "BackendError", "ContextFullError", "NativeIOError", "NativeMemoryError",
           "UnsupportedError", "available", "isa", "library_path"]
