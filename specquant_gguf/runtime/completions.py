"""OpenAI-shaped completions on a Model, the way llama-cpp-python's Llama shapes them.

    from specquant_gguf import Model
    m = Model("smol.sq4.gguf")
    r = m.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=32, temperature=0)
    print(r["choices"][0]["message"]["content"], r["usage"])
    for chunk in m.create_completion("Once upon a time", max_tokens=32, stream=True):
        print(chunk["choices"][0]["text"], end="")

Non-streaming calls return one dict (object "text_completion" / "chat.completion"); stream=True
returns an iterator of chunks ("text_completion" / "chat.completion.chunk"): for chat, a first
chunk with delta {"role": "assistant", "content": ""}, content deltas, then a chunk with an empty
delta and the finish_reason ("stop": end of turn or a stop string; "length": max_tokens or a full
context). With include_usage=True the stream ends with a chunk whose choices are empty and whose
usage is filled (OpenAI's stream_options). Argument checks raise UsageError, a prompt that does not
fit the context ContextFullError (the server turns both into 400 answers).
The text generation itself is runtime.generate's (sampling, stop strings, UTF-8 hold-back,
KV-cache prefix reuse between calls).
"""
from __future__ import annotations

import os
import time
import uuid
from typing import Iterator, Sequence

from .generate import Sampling, Timings, _pieces, _prompt_ids, chat_prompt

__all__ = ["create_completion", "create_chat_completion", "model_id", "Shape", "sampling", "chat_prompt", "prompt_ids"]


def model_id(model) -> str:
    """The name a model answers to: its file name (what /v1/models lists)."""
    return os.path.basename(model.path)


def _usage(info: dict) -> dict:
    p, c = int(info.get("prompt_tokens", 0)), int(info.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def sampling(max_tokens: int | None, temperature: float, top_p: float, top_k: int, min_p: float,
              repeat_penalty: float, seed: int | None, stop: str | Sequence[str] | None) -> Sampling:
    if max_tokens is None:
        max_tokens = -1
    elif isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens == 0:
        max_tokens = -1  # llama-cpp-python: max_tokens <= 0 = until the end (or the context)
    return Sampling.check(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, 64, seed, stop)


def _run(model, ids: list[int], s: Sampling, timings: Timings | None, info: dict) -> Iterator[str]:
    return _pieces(model, ids, s, timings if timings is not None else Timings(), info)


class Shape:
    """The OpenAI dicts of one answer (an id and a creation time shared by all its chunks):
    chat=True: "chat.completion" / "chat.completion.chunk"; False: "text_completion"."""

    def __init__(self, chat: bool, name: str) -> None:
        self.chat, self.name = chat, name
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.name}

    def first(self) -> dict | None:
        """The chunk that opens a stream (chat: the assistant's role), or None."""
        return self.chunk(None, None) if self.chat else None

    def chunk(self, text: str | None, finish: str | None) -> dict:
        """A streamed piece (text None: chat's role chunk when finish is None, the closing empty delta
        when it is set)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if text is None and finish is None else \
                ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._head(self.object), "choices": [choice]}

    def usage_chunk(self, info: dict) -> dict:
        return {**self._head(self.object), "choices": [], "usage": _usage(info)}

    def final(self, text: str, info: dict) -> dict:
        """The whole (non-streamed) answer."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": info["finish_reason"]}
            return {**self._head("chat.completion"), "choices": [choice], "usage": _usage(info)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": info["finish_reason"]}
        return {**self._head("text_completion"), "choices": [choice], "usage": _usage(info)}


def _answer(shape: Shape, pieces: Iterator[str], info: dict, stream: bool, include_usage: bool) -> dict | Iterator[dict]:
    if not stream:
        return shape.final("".join(pieces), info)

    def chunks() -> Iterator[dict]:
        try:
            first = shape.first()
            if first is not None:
                yield first
            for piece in pieces:
                yield shape.chunk(piece, None)
            yield shape.chunk(None if shape.chat else "", info["finish_reason"])
            if include_usage:
                yield shape.usage_chunk(info)
        finally:
            pieces.close()
    return chunks()


def create_completion(model, prompt: str | Sequence[int], max_tokens: int | None = 16, temperature: float = 0.8,
                      top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05, stop: str | Sequence[str] | None = None,
                      seed: int | None = None, stream: bool = False, repeat_penalty: float = 1.0, *,
                      model_name: str | None = None, include_usage: bool = False,
                      timings: Timings | None = None) -> dict | Iterator[dict]:
    """Continues prompt (text or token ids); llama-cpp-python's defaults (max_tokens 16; None or 0 =
    until the end of text or a full context)."""
    s = sampling(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop)
    ids = _prompt_ids(model, prompt)
    info: dict = {}
    pieces = _run(model, ids, s, timings, info)
    return _answer(Shape(False, model_name or model_id(model)), pieces, info, stream, include_usage)


def prompt_ids(model, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a completion prompt (text: BOS as the model says, special tokens parsed);
    ContextFullError when it does not fit the context."""
    return _prompt_ids(model, prompt)


def create_chat_completion(model, messages: Sequence[dict], max_tokens: int | None = None, temperature: float = 0.2,
                           top_p: float = 0.95, top_k: int = 40, min_p: float = 0.05,
                           stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False,
                           repeat_penalty: float = 1.0, *, template: str | None = None, model_name: str | None = None,
                           include_usage: bool = False, timings: Timings | None = None) -> dict | Iterator[dict]:
    """The assistant's answer to messages (role system/user/assistant, content str), formatted
    with the model's chat template (or template: chatml, llama3, llama2, gemma, phi3).
    llama-cpp-python's defaults (temperature 0.2, max_tokens None = until the end of turn)."""
    s = sampling(max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, stop)
    ids = chat_prompt(model, messages, template)
    info: dict = {}
    pieces = _run(model, ids, s, timings, info)
    return _answer(Shape(True, model_name or model_id(model)), pieces, info, stream, include_usage)
