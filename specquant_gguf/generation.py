"""Text generation and chat on a loaded Model, and the `specquant chat` command (twin of sq-chat).

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
multi-turn chat needs), provided nothing else moved the model's position in between.
"""
from __future__ import annotations

import argparse
import codecs
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .errors import SpecQuantError, UsageError

__all__ = ["generate", "chat", "format_chat", "chat_template_name", "add_arguments", "run", "Timings"]

ROLES = ("system", "user", "assistant")
TEMPLATES = ("chatml", "llama3", "llama2", "gemma", "phi3")
_SEED_RANDOM = 2 ** 64 - 1
_INT32_MIN = -(2 ** 31)


def _native():
    """(ffi, lib, raise_error) of the runtime binding (imported late: the converter does not need it)."""
    from . import runtime
    return runtime._ffi, runtime._lib, runtime._raise


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
class _Sampling:
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
              repeat_penalty: float, repeat_last_n: int, seed: int | None, stop: str | Sequence[str] | None) -> "_Sampling":
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

    def __init__(self, s: _Sampling) -> None:
        ffi, lib, raise_error = _native()
        p = ffi.new("sq_sampler_params *")
        p.temperature, p.top_k, p.top_p, p.min_p = s.temperature, s.top_k, s.top_p, s.min_p
        p.repeat_penalty, p.repeat_last_n, p.seed = s.repeat_penalty, s.repeat_last_n, s.seed
        self._lib = lib
        self._ffi = ffi
        self._s = lib.sq_sampler_new(p)
        if self._s == ffi.NULL:
            raise_error()

    def sample(self, logits) -> int:
        t = int(self._lib.sq_sampler_sample(self._s, self._ffi.cast("float *", self._ffi.from_buffer(logits)), len(logits)))
        if t < 0:
            _native()[2]()
        return t

    def accept(self, token: int) -> None:
        self._lib.sq_sampler_accept(self._s, token)

    def close(self) -> None:
        s, self._s = self._s, None
        if s is not None and s != self._ffi.NULL:
            self._lib.sq_sampler_free(s)


def _context_full(need: int, n_ctx: int) -> SpecQuantError:
    from .runtime import ContextFullError
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
        raise _context_full(len(ids), model.n_ctx)
    return ids


def _prefill(model, ids: list[int], timings: Timings):
    """Logits after ids, evaluating only what the KV cache does not already hold."""
    held: list[int] = getattr(model, "_gen_kv", None) or []
    if len(held) != model.n_past:  # someone else moved the model: trust nothing
        held = []
    p = 0
    while p < len(ids) and p < len(held) and held[p] == ids[p]:
        p += 1
    p = min(p, len(ids) - 1)  # the last prompt token is run again for its logits
    model.set_n_past(p)
    model._gen_kv = list(ids[:p])
    t0 = time.perf_counter()
    logits = model.eval_last(ids[p:])
    timings.prefill_s += time.perf_counter() - t0
    timings.prefill_tokens += len(ids) - p
    model._gen_kv = list(ids)
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


def _pieces(model, ids: list[int], s: _Sampling, timings: Timings) -> Iterator[str]:
    """The generation loop: yields decoded text pieces; stops at end of turn, max_tokens, a stop
    string or a full context."""
    sampler = _Sampler(s)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text, shown = "", 0
    try:
        logits = _prefill(model, ids, timings)
        n = 0
        while s.max_tokens < 0 or n < s.max_tokens:
            t = sampler.sample(logits)
            if model.is_eog(t):
                break
            sampler.accept(t)
            n += 1
            text += decoder.decode(model.token_to_piece(t))
            cut = min((i for i in (text.find(x, max(0, shown - len(x))) for x in s.stop) if i >= 0), default=-1)
            if cut >= 0:
                if cut > shown:
                    yield text[shown:cut]
                return
            ready = len(text) - _held_back(text, s.stop)
            if ready > shown:
                yield text[shown:ready]
                shown = ready
            if model.n_past >= model.n_ctx:
                break  # context full: the answer ends here
            t0 = time.perf_counter()
            logits = model.eval_last([t])
            timings.decode_s += time.perf_counter() - t0
            timings.decode_tokens += 1
            model._gen_kv.append(t)
        text += decoder.decode(b"", final=True)
        if len(text) > shown:
            yield text[shown:]
    finally:
        sampler.close()


def generate(model, prompt: str | Sequence[int], max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
             top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
             stop: str | Sequence[str] | None = None, stream: bool = False, *, repeat_last_n: int = 64,
             timings: Timings | None = None) -> str | Iterator[str]:
    """Continues prompt (text, or token ids) with up to max_tokens tokens (-1 = until the end of turn
    or a full context). temperature 0 is greedy; seed None draws a fresh seed. stop: strings that end
    the text (not included). stream=True returns an iterator of str pieces instead of the text.
    Bad arguments raise UsageError; a prompt that does not fit the context ContextFullError."""
    s = _Sampling.check(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop)
    ids = _prompt_ids(model, prompt)
    it = _pieces(model, ids, s, timings if timings is not None else Timings())
    return it if stream else "".join(it)


# ---------------------------------------------------------------------------------------------
# chat


def _detect(template: str) -> str | None:
    """The built-in format a name or a Jinja text stands for (None: not recognised)."""
    ffi, lib, _ = _native()
    name = lib.sq_chat_template_detect(template.encode("utf-8"))
    return None if name == ffi.NULL else ffi.string(name).decode()


def chat_template_name(model) -> str | None:
    """The built-in format of the model's tokenizer.chat_template (None: none, or not recognised)."""
    text = model.metadata("tokenizer.chat_template")
    return None if text is None else _detect(text)


def _check_messages(messages: Sequence[dict]) -> list[tuple[str, str]]:
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
    ffi, lib, raise_error = _native()
    msgs = _check_messages(messages)
    keep = [ffi.new("char[]", x.encode("utf-8")) for pair in msgs for x in pair]
    roles = ffi.new("const char *[]", keep[0::2]) if msgs else ffi.NULL
    texts = ffi.new("const char *[]", keep[1::2]) if msgs else ffi.NULL
    tmpl = template.encode("utf-8")
    need = lib.sq_chat_apply(tmpl, roles, texts, len(msgs), int(add_assistant), ffi.NULL, 0)
    if need == _INT32_MIN:
        raise SpecQuantError(ffi.string(lib.sq_last_error()).decode("utf-8", errors="replace"))
    buf = ffi.new("char[]", -need)
    n = lib.sq_chat_apply(tmpl, roles, texts, len(msgs), int(add_assistant), buf, -need)
    return ffi.unpack(buf, n).decode("utf-8")


def _resolve_template(model, template: str | None) -> str:
    if template is not None:
        if not isinstance(template, str) or _detect(template) is None:
            raise UsageError(f"unknown chat template {str(template)[:40]!r}; known: {', '.join(TEMPLATES)} "
                             "(or a Jinja text of one of them)")
        return template
    text = model.metadata("tokenizer.chat_template")
    if text is None or chat_template_name(model) is None:
        why = "no chat template (tokenizer.chat_template)" if text is None else "an unrecognised chat template"
        raise SpecQuantError(f"the model has {why}; pass template= one of {', '.join(TEMPLATES)}")
    return text


def chat(model, messages: Sequence[dict], max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
         top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0, seed: int | None = None,
         stop: str | Sequence[str] | None = None, stream: bool = False, *, template: str | None = None,
         repeat_last_n: int = 64, timings: Timings | None = None) -> str | Iterator[str]:
    """The assistant's answer to messages (OpenAI-style dicts with role system/user/assistant).
    template: None = the model's own (an error if it has none or it is not recognised), a built-in
    name (chatml, llama3, llama2, gemma, phi3) or a Jinja text of one. Other options as in generate()."""
    s = _Sampling.check(max_tokens, temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, stop)
    prompt = format_chat(messages, _resolve_template(model, template), add_assistant=True)
    ids = _prompt_ids(model, prompt)
    it = _pieces(model, ids, s, timings if timings is not None else Timings())
    return it if stream else "".join(it)


# ---------------------------------------------------------------------------------------------
# `specquant chat FILE`


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.gguf)")
    p.add_argument("-p", "--prompt", help="one user message; answer it and exit (with -i: then chat)")
    p.add_argument("-f", "--file", help="read the prompt from FILE")
    p.add_argument("-sys", "--system", help="system prompt")
    p.add_argument("-i", "--interactive", action="store_true", help="chat interactively (default without a prompt)")
    p.add_argument("-n", "--n-predict", type=int, default=-1,
                   help="max tokens per answer (-1 = until the end of turn or a full context) [-1]")
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="context size (0 = the model's, at most 2048)")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads (0 = all cores)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0 = greedy) [0.8]")
    p.add_argument("--top-k", type=int, default=40, help="top-k (0 = off) [40]")
    p.add_argument("--top-p", type=float, default=0.95, help="top-p in (0, 1] [0.95]")
    p.add_argument("--min-p", type=float, default=0.05, help="min-p in [0, 1] [0.05]")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (1 = off) [1.0]")
    p.add_argument("--repeat-last-n", type=int, default=64, help="tokens the penalty looks back on [64]")
    p.add_argument("--seed", type=int, default=-1, help="random seed (-1 = random) [-1]")
    p.add_argument("--kv-type", choices=("f16", "q8", "q4"), default="f16", help="KV cache type [f16]")
    p.add_argument("--spectral-tau", type=float, default=1.0, help="spectral energy kept, (0, 1] [1.0]")
    p.add_argument("--chat-template", choices=TEMPLATES, help="force a chat format")
    p.add_argument("--raw", action="store_true", help="no template: complete the prompt as plain text")
    p.add_argument("--no-display-prompt", action="store_true", help="do not echo the prompt")


def _validate_cli(args: argparse.Namespace) -> None:
    if args.n_predict < -1:
        raise UsageError(f"-n must be >= -1, got {args.n_predict}")
    if args.ctx_size < 0 or args.threads < 0:
        raise UsageError("-c and -t must be >= 0")
    if args.seed < -1:
        raise UsageError(f"--seed must be -1 or >= 0, got {args.seed}")
    if not 0 < args.spectral_tau <= 1:
        raise UsageError(f"--spectral-tau must be in (0, 1], got {args.spectral_tau}")
    if args.prompt is not None and args.file is not None:
        raise UsageError("give -p or -f, not both")
    if args.raw and (args.chat_template or args.interactive or (args.prompt is None and args.file is None)):
        raise UsageError("--raw completes a prompt: it needs -p or -f, and no -i or --chat-template")
    _Sampling.check(args.n_predict, args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty,
                    args.repeat_last_n, None, None)


def _read_prompt(args: argparse.Namespace) -> str | None:
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SpecQuantError(f"cannot read prompt file {args.file!r}: {exc.strerror}") from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecQuantError(f"the prompt file {args.file!r} is not valid UTF-8 text") from exc
    else:
        text = args.prompt
    if text is not None and text == "":
        raise UsageError("the prompt is empty")
    if text is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # undecodable argv bytes
        raise SpecQuantError("the prompt is not valid UTF-8 text")
    return text


class _Session:
    """One CLI conversation: messages, sampling options, timings."""

    def __init__(self, model, args: argparse.Namespace, template: str | None) -> None:
        self.model, self.args, self.template = model, args, template
        self.messages: list[dict] = [{"role": "system", "content": args.system}] if args.system and template else []
        self.timings = Timings()
        self.seed = None if args.seed == -1 else args.seed

    def _options(self) -> dict:
        a = self.args
        return dict(max_tokens=a.n_predict, temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p,
                    repeat_penalty=a.repeat_penalty, repeat_last_n=a.repeat_last_n, seed=self.seed,
                    stream=True, timings=self.timings)

    def _fit(self) -> None:
        """Drops the oldest messages (never the system prompt) until the conversation fits."""
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        n_ctx, dropped = self.model.n_ctx, 0
        while True:
            n = len(self.model.tokenize(format_chat(self.messages, self.template), special=True))
            reserve = n_ctx // 4 if len(self.messages) - first > 1 else 1
            if n + reserve <= n_ctx:
                break
            if len(self.messages) - first <= 1:
                self.messages.pop()
                raise _context_full(n, n_ctx)
            del self.messages[first]
            dropped += 1
        if dropped:
            print(f"specquant chat: dropped the {dropped} oldest message(s) to fit the context ({n_ctx} tokens)",
                  file=sys.stderr)

    def turn(self, text: str) -> None:
        """Answers one user message (or completes text with --raw), streaming to stdout.
        Ctrl-C stops the answer (KeyboardInterrupt propagates after the partial answer is kept)."""
        opts = self._options()
        if self.template is None:
            pieces = generate(self.model, text, **opts)
        else:
            self.messages.append({"role": "user", "content": text})
            self._fit()
            pieces = chat(self.model, self.messages, template=self.template, **opts)
        answer: list[str] = []
        try:
            for piece in pieces:
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        finally:
            pieces.close()
            if self.template is not None:
                self.messages.append({"role": "assistant", "content": "".join(answer)})
            if self.model.n_past >= self.model.n_ctx:
                print(f"\nspecquant chat: context full ({self.model.n_ctx} tokens): answer cut; older turns will be "
                      "dropped to go on", file=sys.stderr)


def _interactive(session: _Session) -> None:
    while True:
        try:
            line = input("\n> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        line = line.rstrip("\r\n")
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            session.messages = session.messages[:1] if session.messages[:1] and session.messages[0]["role"] == "system" else []
            print("specquant chat: new conversation", file=sys.stderr)
            continue
        try:
            session.turn(line)
        except KeyboardInterrupt:
            continue  # Ctrl-C stops the answer; the next one at the prompt exits
        except SpecQuantError as exc:  # e.g. a message too long for the context: ask again
            print(f"specquant chat: error: {exc}", file=sys.stderr)


def _pick_template(model, args: argparse.Namespace, chatting: bool) -> str | None:
    if args.raw:
        return None
    if args.chat_template:
        return args.chat_template
    text = model.metadata("tokenizer.chat_template")
    if text is not None and chat_template_name(model) is not None:
        return text
    why = "no chat template (tokenizer.chat_template)" if text is None else "an unrecognised chat template"
    if chatting:
        raise SpecQuantError(f"the model has {why}; choose one with --chat-template {'|'.join(TEMPLATES)}")
    print(f"specquant chat: the model has {why}: completing the prompt as plain text (--chat-template NAME to chat)",
          file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    _validate_cli(args)
    prompt = _read_prompt(args)
    from .runtime import Model
    t0 = time.perf_counter()
    model = Model(args.model, n_ctx=args.ctx_size or None, n_threads=args.threads, kv_type=args.kv_type,
                  spectral_tau=args.spectral_tau)
    t_load = time.perf_counter() - t0
    chatting = args.interactive or prompt is None
    rc = 0
    try:
        session = _Session(model, args, _pick_template(model, args, chatting))
        if prompt is not None:
            if not args.no_display_prompt:
                print(prompt, end="\n" if session.template else "", flush=True)
            try:
                session.turn(prompt)
                if not args.interactive:
                    print()
            except KeyboardInterrupt:
                print()
                rc = 130 if not args.interactive else 0
        if rc == 0 and chatting:
            _interactive(session)
        print(f"\nspecquant chat: load    {t_load * 1e3:8.2f} ms", file=sys.stderr)
        for line in session.timings.lines():
            print(line, file=sys.stderr)
    finally:
        model.close()
    return rc
