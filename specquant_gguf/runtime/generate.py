"""Text generation and chat on a loaded Model (the `specquant chat` command is cli/chat.py).

    from specquant_gguf import Model
    m = Model("smol.sq4.gguf")
    print(m.generate("The capital of France is", max_tokens=16, temperature=0))
    for piece in m.chat([{"role": "user", "content": "Hi"}], stream=True):
        print(piece, end="", flush=True)

Sampling runs in C (sq_sampler_*: repetition penalty, then top-k, top-p, min-p, temperature; our
own seeded PRNG, so one seed gives one text). Chat formats are the C ones (sq_chat_apply:
chatml, llama3, llama2, gemma, phi3), detected from the model's tokenizer.chat_template.

Streaming yields str pieces that are always whole UTF-8 characters: bytes of a character split
across tokens are held back until it is complete. The KV cache is reused between calls on the same
Model: a call evaluates only the tokens after the prefix it shares with the previous call (what a
multi-turn chat needs). One stream at a time owns the cache: a second live stream on the same
Model raises instead of interleaving (see _pieces).
"""
from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..errors import SpecQuantError, UsageError
from ._native import INT32_MIN, ContextFullError, UnsupportedError, ffi, lib, raise_last

__all__ = ["generate", "chat", "chat_prompt", "format_chat", "chat_template_name", "check_messages", "Timings", "TEMPLATES", "ROLES",
           "Sampling", "context_full"]

ROLES = ("system", "user", "assistant")
TEMPLATES = ("chatml", "llama3", "llama2", "gemma", "phi3")
_SEED_RANDOM = 2 ** 64 - 1

@dataclass
class Timings:
    """Prefill / decode work of the calls that were given this object (tokens and seconds)."""
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0

    def lines(self, prog: str = "specquant chat") -> list[str]:
        def rate(n: int, s: float) -> float:
            return n / s if s > 0 else 0.0
        return [f"{prog}: prefill {self.prefill_s * 1e3:8.2f} ms / {self.prefill_tokens:5d} tokens "
                f"({rate(self.prefill_tokens, self.prefill_s):8.2f} tokens/s)",
                f"{prog}: decode  {self.decode_s * 1e3:8.2f} ms / {self.decode_tokens:5d} tokens "
                f"({rate(self.decode_tokens, self.decode_s):8.2f} tokens/s)"]


# ---------------------------------------------------------------------------------------------
# argument checks (the same limits as sq-chat and sq_sampler_new)


def _check_number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise UsageError(f"{name} must be a finite number, got {v!r}")
    return float(v)


def _check_int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UsageError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise UsageError(f"{name} must be >= {lo}, got {v}")
    return v


@dataclass
class Sampling:
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repeat_penalty: float
    repeat_last_n: int
    seed: int
    stop: list[str] = field(default_factory=list)

    @classmethod
    def check(cls, max_tokens: int, temperature: float, top_k: int, top_p: float, min_p: float,
              repeat_penalty: float, repeat_last_n: int, seed: int | None, stop: str | Sequence[str] | None) -> "Sampling":
        max_tokens = _check_int("max_tokens", max_tokens, -1)
        temperature = _check_number("temperature", temperature)
        if temperature < 0:
            raise UsageError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        top_p = _check_number("top_p", top_p)
        if not 0 < top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {top_p}")
        min_p = _check_number("min_p", min_p)
        if not 0 <= min_p <= 1:
            raise UsageError(f"min_p must be in [0, 1], got {min_p}")
        repeat_penalty = _check_number("repeat_penalty", repeat_penalty)
        if repeat_penalty <= 0:
            raise UsageError(f"repeat_penalty must be > 0 (1 = off), got {repeat_penalty}")
        if seed is None:
            seed = _SEED_RANDOM
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_RANDOM:
            raise UsageError(f"seed must be None or an int in [0, 2^64 - 1), got {seed!r}")
        if stop is None:
            stops: list[str] = []
        elif isinstance(stop, str):
            stops = [stop]
        else:
            stops = list(stop)
        if any(not isinstance(s, str) or not s for s in stops):
            raise UsageError("stop must be a non-empty string or a list of them")
        return cls(max_tokens, temperature, _check_int("top_k", top_k, 0), top_p, min_p, repeat_penalty,
                   _check_int("repeat_last_n", repeat_last_n, 0), seed, stops)


# ---------------------------------------------------------------------------------------------
# generation


class _Sampler:
    """The C sampler (freed on close)."""

    def __init__(self, s: Sampling) -> None:
        p = ffi().new("sq_sampler_params *")
        p.temperature, p.top_k, p.top_p, p.min_p = s.temperature, s.top_k, s.top_p, s.min_p
        p.repeat_penalty, p.repeat_last_n, p.seed = s.repeat_penalty, s.repeat_last_n, s.seed
        self._s = lib().sq_sampler_new(p)
        if self._s == ffi().NULL:
            raise_last()

    def sample(self, logits) -> int:
        t = int(lib().sq_sampler_sample(self._s, ffi().cast("float *", ffi().from_buffer(logits)), len(logits)))
        if t < 0:
            raise_last()
        return t

    def accept(self, token: int) -> None:
        lib().sq_sampler_accept(self._s, token)

    def close(self) -> None:
        s, self._s = self._s, None
        if s is not None and s != ffi().NULL:
            lib().sq_sampler_free(s)


def context_full(need: int, n_ctx: int) -> SpecQuantError:
    return ContextFullError(f"the prompt needs {need} tokens, the context holds {n_ctx} (use a larger n_ctx / -c)")


def _prompt_ids(model, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        ids = model.tokenize(prompt, add_bos=None, special=True)
    else:
        try:
            ids = [int(t) for t in prompt]
        except (TypeError, ValueError) as exc:
            raise UsageError(f"prompt must be a str or a sequence of token ids: {exc}") from exc
        if any(t < 0 or t >= model.n_vocab for t in ids):
            raise UsageError(f"prompt token ids must be in [0, {model.n_vocab})")
    if not ids:
        raise UsageError("the prompt is empty (no tokens)")
    if len(ids) >= model.n_ctx:
        raise context_full(len(ids), model.n_ctx)
    return ids


def _prefill(model, ids: list[int], timings: Timings):
    """Logits after ids, evaluating only what the KV cache does not already hold (the model
    records the tokens its cache holds)."""
    held = model.tokens
    p = 0
    while p < len(ids) and p < len(held) and held[p] == ids[p]:
        p += 1
    p = min(p, len(ids) - 1)  # the last prompt token is run again for its logits
    model.set_n_past(p)
    t0 = time.perf_counter()
    logits = model.eval_last(ids[p:])
    timings.prefill_s += time.perf_counter() - t0
    timings.prefill_tokens += len(ids) - p
    return logits


def _held_back(text: str, stops: list[str]) -> int:
    """Characters at the end of text that could start a stop string (not safe to show yet)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:k]):
                keep = k
                break
    return keep


def _pieces(model, ids: list[int], s: Sampling, timings: Timings, result: dict | None = None) -> Iterator[str]:
    """The generation loop: yields decoded text pieces; stops at end of turn, max_tokens, a stop
    string or a full context. The stream owns the model's KV cache from its first piece to its
    end: a second stream on the same model raises, and so does resuming this one after someone
    else changed the cache (never silently wrong text). result (a dict, optional) receives
    prompt_tokens, completion_tokens and finish_reason ("stop": end of turn or a stop string,
    "length": max_tokens or a full context) as the stream goes (what runtime.completions reports)."""
    info: dict = result if result is not None else {}
    info.update(prompt_tokens=len(ids), completion_tokens=0, finish_reason="length")
    owner = object()
    model.acquire_kv(owner)
    sampler = _Sampler(s)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, shown = "", 0
    try:
        logits = _prefill(model, ids, timings)
        held = model.tokens  # what the cache must still hold when the caller comes back for more
        n = 0
        while s.max_tokens < 0 or n < s.max_tokens:
            t = sampler.sample(logits)
            if model.is_eog(t):
                info["finish_reason"] = "stop"
                break
            sampler.accept(t)
            n += 1
            info["completion_tokens"] = n
            text += decoder.decode(model.token_to_piece(t))
            cut = min((i for i in (text.find(x, max(0, shown - len(x))) for x in s.stop) if i >= 0), default=-1)
            if cut >= 0:
                info["finish_reason"] = "stop"
                if cut > shown:
                    yield text[shown:cut]
                return
            ready = len(text) - _held_back(text, s.stop)
            if ready > shown:
                yield text[shown:ready]
                shown = ready
                if model.n_past != len(held) or model.tokens[-1:] != held[-1:]:
                    raise SpecQuantError("the model's KV cache was changed while this generate()/chat() stream was "
                                         "paused: the stream cannot go on")
            if model.n_past >= model.n_ctx:
                break  # context full: the answer ends here
            t0 = time.perf_counter()
            logits = model.eval_last([t])
            timings.decode_s += time.perf_counter() - t0
            timings.decode_tokens += 1
            held.append(t)
        text += decoder.decode(b"", final=True)
        if len(text) > shown:
            yield text[shown:]
    finally:
        sampler.close()
        model.release_kv(owner)


def generate(model, prompt: str | Sequence[int], max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
             stop: str | Sequence[str] | None = None, stream: bool = False, *, repeat_last_n: int = 64,
             timings: Timings | None = None) -> str | Iterator[str]:
    """Continues prompt (text, or token ids) with up to max_tokens tokens (-1 = until the end of turn
    or a full context). temperature 0 is greedy; seed None draws a fresh seed. stop: strings that end
    the text (not included). stream=True returns an iterator of str pieces instead of the text.
    Bad arguments raise UsageError; a prompt that does not fit the context ContextFullError."""
    s = Sampling.check(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop)
    ids = _prompt_ids(model, prompt)
    it = _pieces(model, ids, s, timings if timings is not None else Timings())
    return it if stream else "".join(it)


# ---------------------------------------------------------------------------------------------
# chat


def _detect(template: str) -> str | None:
    """The built-in format a name or a Jinja text stands for (None: not recognised)."""
    name = lib().sq_chat_template_detect(template.encode("utf-8"))
    return None if name == ffi().NULL else ffi().string(name).decode()


def chat_template_name(model) -> str | None:
    """The built-in format of the model's tokenizer.chat_template (None: none, or not recognised)."""
    text = model.metadata("tokenizer.chat_template")
    return None if text is None else _detect(text)


def check_messages(messages: Sequence[dict]) -> list[tuple[str, str]]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise UsageError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise UsageError(f"message {i} must be a dict with str 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise UsageError(f"message {i} has role {msg['role']!r}; expected one of {', '.join(ROLES)}")
        out.append((msg["role"], msg["content"]))
    return out


def format_chat(messages: Sequence[dict], template: str, add_assistant: bool = True) -> str:
    """The conversation as the template writes it: template is a built-in name or a Jinja text."""
    f, c = ffi(), lib()
    msgs = check_messages(messages)
    keep = [f.new("char[]", x.encode("utf-8")) for pair in msgs for x in pair]
    roles = f.new("const char *[]", keep[0::2]) if msgs else f.NULL
    texts = f.new("const char *[]", keep[1::2]) if msgs else f.NULL
    tmpl = template.encode("utf-8")
    need = c.sq_chat_apply(tmpl, roles, texts, len(msgs), int(add_assistant), f.NULL, 0)
    if need == INT32_MIN:
        raise SpecQuantError(f.string(c.sq_last_error()).decode("utf-8", errors="replace"))
    buf = f.new("char[]", -need)
    n = c.sq_chat_apply(tmpl, roles, texts, len(msgs), int(add_assistant), buf, -need)
    return f.unpack(buf, n).decode("utf-8")


def chat(model, messages: Sequence[dict], max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
         top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
         stop: str | Sequence[str] | None = None, stream: bool = False, *, template: str | None = None,
         repeat_last_n: int = 64, timings: Timings | None = None) -> str | Iterator[str]:
    """The assistant's answer to messages (OpenAI-style dicts with role system/user/assistant).
    template: None = the model's own (an error if it has none or it is not recognised), a built-in
    name (chatml, llama3, llama2, gemma, phi3) or a Jinja text of one. Other options as in generate()."""
    s = Sampling.check(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop)
    it = _pieces(model, chat_prompt(model, messages, template), s, timings if timings is not None else Timings())
    return it if stream else "".join(it)


def chat_prompt(model, messages: Sequence[dict], template: str | None = None) -> list[int]:
    """Token ids of the conversation formatted with the model's chat template (or `template`),
    ending with the assistant's turn opened."""
    if template is not None and not isinstance(template, str):
        raise UsageError(f"template must be a str, got {type(template).__name__}")
    try:
        tmpl = model.chat_template(template)
    except UnsupportedError as exc:
        raise UnsupportedError(f"{exc}; pass template= one of {', '.join(TEMPLATES)}") from None
    return _prompt_ids(model, format_chat(messages, tmpl, add_assistant=True))
