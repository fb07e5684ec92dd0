"""Running a converted model: the C library through cffi (numpy + cffi, no torch).

    _native    library lookup, lazy loading, C status -> exception
    model      Model: a loaded file that owns its KV cache (eval, tokenize, ...)
    generate   sampling, generate(), chat(), chat templates
    completions  OpenAI-shaped create_completion / create_chat_completion (llama-cpp-python's API)
    batch      Batch: several sequences in one forward pass (Model(n_seq=N).batch)
    engine     continuous batching of generation requests on a Batch
    server     `specquant serve`: OpenAI-compatible HTTP server + chat page (extra: server)
"""
from __future__ import annotations

from ._native import (ArgumentError, BackendError, ContextFullError, NativeIOError, NativeMemoryError,
                      UnsupportedError, available, isa, library_path)
from .model import Model

__all__ = ["Model", "ArgumentError", "BackendError", "ContextFullError", "NativeIOError", "NativeMemoryError",
           "UnsupportedError", "available", "isa", "library_path"]
