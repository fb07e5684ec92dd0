"""specquant_gguf.generation: generate / chat / `specquant chat`.

- a scripted stand-in model (any next token we like, pieces that cut characters in half) checks
  the streaming rules: pieces are whole characters, stop strings never leak, max_tokens, end of
  turn, a full context, and KV-cache prefix reuse;
- the tiny synthetic models check the real path: greedy = argmax chain, seeds, stream == text;
- chat formatting equals the Jinja rendering of the models' own templates (SmolLM2's included);
- bad arguments raise UsageError, and `specquant chat` turns them into one-line errors;
- on the real SmolLM2 (when a converted file is available): "What is the capital of France?".
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from specquant_gguf.errors import SpecQuantError, UsageError

runtime = pytest.importorskip("specquant_gguf.runtime")
from specquant_gguf.runtime import generate as generation  # noqa: E402
from specquant_gguf.runtime.generate import Timings, chat, format_chat, generate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' "
    "+ message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")


class ScriptedModel:
    """Duck-typed Model whose next token follows a script; EOG (0) when the script runs out."""

    n_vocab = 32

    def __init__(self, script: list[int], pieces: dict[int, bytes], n_ctx: int = 64) -> None:
        self.script, self.pieces, self.n_ctx = script, pieces, n_ctx
        self.cache: list[int] = []  # what the "KV cache" holds
        self.evals: list[list[int]] = []
        self.stream: object | None = None

    @property
    def n_past(self) -> int:
        return len(self.cache)

    @property
    def tokens(self) -> list[int]:
        return list(self.cache)

    def acquire_kv(self, stream: object) -> None:
        assert self.stream is None or self.stream is stream, "two streams at once"
        self.stream = stream

    def release_kv(self, stream: object) -> None:
        if self.stream is stream:
            self.stream = None

    def tokenize(self, text: str, add_bos=None, special=False) -> list[int]:
        return [10 + b % 20 for b in text.encode()]

    def set_n_past(self, n: int) -> None:
        assert 0 <= n <= self.n_past
        del self.cache[n:]

    def eval_last(self, ids: list[int]) -> np.ndarray:
        assert self.n_past + len(ids) <= self.n_ctx
        self.cache += list(ids)
        self.evals.append(list(ids))
        k = len(self.evals) - 1 - self._first_eval
        logits = np.full(self.n_vocab, -30.0, dtype=np.float32)
        logits[self.script[k] if k < len(self.script) else 0] = 30.0
        return logits

    _first_eval = 0

    def start(self) -> "ScriptedModel":
        """The next eval is a prefill: the script starts over."""
        self._first_eval = len(self.evals)
        return self

    def is_eog(self, t: int) -> bool:
        return t == 0

    def token_to_piece(self, t: int) -> bytes:
        return self.pieces[t]


PIECES = {1: b"a", 2: b"\xe2", 3: b"\x82", 4: b"\xac", 5: b"\xf0\x9f", 6: b"\x98\x80", 7: b"\xff", 8: b"Hel",
          9: b"lo E", 10: b"ND", 11: b" world", 12: b"x"}


def test_stream_pieces_are_whole_characters() -> None:
    m = ScriptedModel([1, 2, 3, 4, 5, 6, 7, 1], PIECES).start()
    pieces = list(generate(m, "hi", max_tokens=-1, temperature=0, stream=True))
    assert "".join(pieces) == "a€😀\ufffda"
    assert pieces == ["a", "€", "😀", "\ufffd", "a"]  # nothing shown until a character is complete


def test_stop_strings_never_leak() -> None:
    m = ScriptedModel([8, 9, 10, 11], PIECES).start()
    pieces = list(generate(m, "hi", temperature=0, stop=["END"], stream=True))
    assert "".join(pieces) == "Hello "
    assert all("E" not in p for p in pieces)
    m = ScriptedModel([8, 9, 10, 11], PIECES).start()
    assert generate(m, "hi", temperature=0, stop="zzz") == "Hello END world"  # a stop that never comes


def test_max_tokens_end_of_turn_and_full_context() -> None:
    m = ScriptedModel([12] * 50, PIECES).start()
    assert generate(m, "hi", max_tokens=3, temperature=0) == "xxx"
    m = ScriptedModel([12, 12, 0, 12], PIECES).start()
    assert generate(m, "hi", max_tokens=10, temperature=0) == "xx"
    m = ScriptedModel([12] * 50, PIECES, n_ctx=8).start()
    out = generate(m, "hi", max_tokens=-1, temperature=0)  # 2 prompt tokens, 6 more fill the context
    assert out == "x" * 7 and m.n_past == 8  # the 7th token is shown; it cannot be evaluated


def test_kv_prefix_is_reused() -> None:
    m = ScriptedModel([12, 12], PIECES).start()
    timings = Timings()
    generate(m, "abc", temperature=0, timings=timings)
    assert timings.prefill_tokens == 3 and timings.decode_tokens == 2
    m.start()
    generate(m, "abcdef", temperature=0, timings=timings)
    assert m.evals[-3] == [10 + ord(c) % 20 for c in "def"]  # only the new tokens were evaluated
    assert timings.prefill_tokens == 6
    m.set_n_past(0)  # someone else used the model: only what the cache really holds is reused
    m.eval_last([5, 5])
    m.start()
    generate(m, "abcdef", temperature=0, timings=timings)
    assert m.evals[-3] == [10 + b % 20 for b in b"abcdef"]


def test_bad_arguments() -> None:
    m = ScriptedModel([12], PIECES).start()
    bad = [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=2), dict(max_tokens=-2),
           dict(seed=-5), dict(repeat_penalty=0), dict(top_k=-1), dict(temperature=float("nan")), dict(stop=[""]),
           dict(max_tokens=1.5)]
    for kw in bad:
        with pytest.raises(UsageError):
            generate(m, "hi", **kw)
    with pytest.raises(UsageError, match="empty"):
        generate(m, "")
    with pytest.raises(runtime.ContextFullError, match="context"):
        generate(ScriptedModel([12], PIECES, n_ctx=4), "a long prompt")
    with pytest.raises(UsageError):
        generate(m, [99])  # token id outside the vocabulary
    with pytest.raises(UsageError, match="role"):
        format_chat([{"role": "wizard", "content": "x"}], "chatml")
    with pytest.raises(UsageError):
        format_chat("not a list", "chatml")
    with pytest.raises(UsageError):
        format_chat([{"role": "user"}], "chatml")


# ---------------------------------------------------------------------------------------------
# chat templates against their Jinja text


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "2+2?"}],
    [{"role": "user", "content": "multi\nline  with  spaces "}, {"role": "assistant", "content": " x "}],
])
def test_chatml_matches_jinja(messages: list[dict]) -> None:
    jinja2 = pytest.importorskip("jinja2")
    from oracle.synthetic import make_tiny_llama_gguf  # noqa: F401  (the tiny models' template, below)
    tiny_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                     "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    for tmpl in (SMOLLM2_TEMPLATE, tiny_template):
        want = jinja2.Template(tmpl).render(messages=messages, add_generation_prompt=True)
        assert format_chat(messages, tmpl) == want
        want = jinja2.Template(tmpl).render(messages=messages, add_generation_prompt=False)
        assert format_chat(messages, tmpl, add_assistant=False) == want


def test_smollm2_file_template_is_chatml_with_default_system() -> None:
    from conftest import smollm2_path
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not on this machine")
    from specquant_gguf.gguf import ModelFile
    with ModelFile(path) as f:
        tmpl = f.get("tokenizer.chat_template")
    assert tmpl == SMOLLM2_TEMPLATE
    assert generation._detect(tmpl) == "chatml"
    assert "named SmolLM" in format_chat([{"role": "user", "content": "Hi"}], tmpl)


# ---------------------------------------------------------------------------------------------
# the tiny synthetic models


def test_greedy_is_the_argmax_chain(tiny_f16) -> None:
    with runtime.Model(tiny_f16.path, n_ctx=128, n_threads=1) as m:
        text = generate(m, "The quick brown fox", max_tokens=12, temperature=0)
        m.reset()
        ids = m.tokenize("The quick brown fox", special=True)
        logits = m.eval_last(ids)
        chain = []
        for _ in range(12):
            t = int(np.argmax(logits))
            if m.is_eog(t):
                break
            chain.append(t)
            logits = m.eval_last([t])
        want = b"".join(m.token_to_piece(t) for t in chain).decode("utf-8", errors="replace")
        assert text == want
        assert generate(m, "The quick brown fox", max_tokens=12, temperature=0) == text


def test_seed_and_stream(tiny_sq4) -> None:
    kw = dict(max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0)
    with runtime.Model(tiny_sq4.path, n_ctx=128, n_threads=1) as m:
        a = generate(m, "Hello world", seed=7, **kw)
        b = generate(m, "Hello world", seed=7, **kw)
        c = generate(m, "Hello world", seed=8, **kw)
        s = "".join(generate(m, "Hello world", seed=7, stream=True, **kw))
    assert a == b == s
    assert a != c


def test_chat_on_tiny_model(tiny_sq4, tiny_f16, tmp_path: Path) -> None:
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hello"}]
    with runtime.Model(tiny_sq4.path, n_ctx=128, n_threads=1) as m:
        assert generation.chat_template_name(m) == "chatml"
        a = chat(m, msgs, max_tokens=8, temperature=0)
        assert a == chat(m, msgs, max_tokens=8, temperature=0, template="chatml")
        assert "".join(m.chat(msgs, max_tokens=8, temperature=0, stream=True)) == a
        with pytest.raises(UsageError):
            chat(m, msgs, template="vicuna")
    bare = _without_template(tiny_f16.path, tmp_path / "bare.gguf")
    with runtime.Model(bare, n_ctx=128, n_threads=1) as m:
        with pytest.raises(SpecQuantError, match="no chat template"):
            chat(m, msgs)
        assert isinstance(chat(m, msgs, max_tokens=4, temperature=0, template="chatml"), str)


def _without_template(src: Path, dst: Path) -> Path:
    """A copy of a model file (standard tensor types) without tokenizer.chat_template."""
    from specquant_gguf.gguf import ModelFile, ModelWriter, RawTensor
    with ModelFile(src) as f, ModelWriter(dst, arch=f.get("general.architecture")) as w:
        for key, value in f.metadata.items():
            if key not in ("tokenizer.chat_template", "general.architecture", "general.alignment"):
                w.add_kv(key, value, *f.kv_types[key])
        for t in f:
            w.add_tensor(t.name, RawTensor(t.type_id, t.raw, t.shape))
    return dst


# ---------------------------------------------------------------------------------------------
# `specquant chat`


class _Run:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys, monkeypatch):
    """`specquant chat ARGS` in this process (a subprocess per call would import torch each time)."""
    import io
    from specquant_gguf.cli import main

    def run(*args: str, input: str = "") -> _Run:
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        capsys.readouterr()
        rc = main(["chat", *args])
        out = capsys.readouterr()
        return _Run(rc, out.out, out.err)
    return run


def test_cli_subprocess(tiny_sq4) -> None:
    r = subprocess.run([sys.executable, "-m", "specquant_gguf.cli", "chat", str(tiny_sq4.path), "-p", "Hello", "-n", "6",
                        "--temp", "0", "-t", "1"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello\n")
    assert "prefill" in r.stderr and "decode" in r.stderr and "tokens/s" in r.stderr


def test_cli_prompt_and_bad_input(cli, tiny_sq4, tiny_f16, tmp_path: Path) -> None:
    model = str(tiny_sq4.path)
    r = cli(model, "-p", "Hello", "-n", "6", "--temp", "0", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Hello\n") and "tokens/s" in r.stderr
    assert cli(model, "-p", "Hello", "-n", "6", "--temp", "0", "-t", "1").stdout == r.stdout  # greedy: same answer
    cases = [(["-p", ""], 2, "empty"), (["-p", "x", "-n", "-2"], 2, "-n"), (["-p", "x", "--temp", "-1"], 2, "temperature"),
             (["-p", "x", "--top-p", "0"], 2, "top_p"), (["-p", "x", "--top-p", "1.5"], 2, "top_p"),
             (["-p", "x" * 40, "-c", "8"], 1, "context"), (["-f", str(tmp_path / "nope.txt")], 1, "cannot read"),
             (["--raw"], 2, "--raw"), (["-p", "caf\udce9"], 1, "UTF-8")]
    for extra, code, words in cases:
        r = cli(model, *extra)
        assert r.returncode == code, (extra, r.returncode, r.stderr)
        assert words in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (extra, r.stderr)
    r = cli(str(tmp_path / "missing.gguf"), "-p", "x")
    assert r.returncode == 1 and "missing.gguf" in r.stderr and r.stderr.count("\n") == 1
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    r = cli(model, "-f", str(bad))
    assert r.returncode == 1 and "UTF-8" in r.stderr
    bare = _without_template(tiny_f16.path, tmp_path / "bare.gguf")
    r = cli(str(bare), input="hi\n")  # the interactive chat needs a template
    assert r.returncode == 1 and "chat template" in r.stderr and r.stderr.count("\n") == 1
    r = cli(str(bare), "-p", "Hello", "-n", "3")  # -p falls back to plain completion, and says so
    assert r.returncode == 0 and "plain text" in r.stderr
    r = cli(str(bare), "--chat-template", "chatml", "-p", "Hello", "-n", "3")
    assert r.returncode == 0 and "plain text" not in r.stderr


def test_cli_interactive_with_eof(cli, tiny_sq4) -> None:
    r = cli(str(tiny_sq4.path), "-n", "4", "--temp", "0", "-t", "1", input="Hello\n\n/reset\nAgain\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 5  # before: Hello, the empty line, /reset, Again, and the EOF
    assert "new conversation" in r.stderr and "decode" in r.stderr
