"""`specquant chat FILE`: the Python twin of sq-chat (same options, same session policy).

A conversation: messages kept between turns, the oldest dropped (never the system prompt) when the
next turn would not fit the context with room for an answer; answers stream to stdout.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..errors import SpecQuantError, UsageError
from ..runtime import UnsupportedError
from ..runtime.generate import TEMPLATES, Sampling, Timings, chat, check_messages, generate
from ._options import add_act_bits


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
    add_act_bits(p)
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
    Sampling.check(args.n_predict, args.temp, args.top_k, args.top_p, args.min_p, args.repeat_penalty,
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
        """Drops the oldest messages (never the system prompt) until the conversation fits: the
        policy of the C runtime (sq_chat_fit), the same as sq-chat's. A new message that cannot fit
        alone is forgotten and the error raised; the earlier turns stay."""
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        n_ctx = self.model.n_ctx
        try:
            dropped = self.model.chat_fit(check_messages(self.messages), self.template)
        except SpecQuantError:
            self.messages.pop()
            raise
        del self.messages[first:first + dropped]
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
    if hasattr(sys.stdin, "reconfigure"):  # undecodable bytes arrive as surrogates, refused below
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = input("\n> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        line = line.rstrip("\r\n")
        if not line:
            continue
        if any(0xD800 <= ord(c) <= 0xDFFF for c in line):
            print("specquant chat: error: that line is not valid UTF-8 text; type it again", file=sys.stderr)
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
    try:
        return model.chat_template(args.chat_template)
    except UnsupportedError as exc:
        why = str(exc)
    if chatting:
        raise SpecQuantError(f"{why}; choose one with --chat-template {'|'.join(TEMPLATES)}")
    print(f"specquant chat: {why}: completing the prompt as plain text (--chat-template NAME to chat)",
          file=sys.stderr)
    return None


def run(args: argparse.Namespace) -> int:
    _validate_cli(args)
    prompt = _read_prompt(args)
    from ..runtime.model import Model
    t0 = time.perf_counter()
    model = Model(args.model, n_ctx=args.ctx_size or None, n_threads=args.threads, kv_type=args.kv_type,
                  spectral_tau=args.spectral_tau, act_bits=args.act_bits)
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
        acts = f", activations {model.activations()}" if model.act_bits else ""
        print(f"\nspecquant chat: load    {t_load * 1e3:8.2f} ms (backend {model.backend}{acts})", file=sys.stderr)
        for line in session.timings.lines():
            print(line, file=sys.stderr)
    finally:
        model.close()
    return rc
