"""sq-chat, used as a person would: through a pseudo-terminal, with Ctrl-C and Ctrl-D.

- tiny synthetic model: a conversation, Ctrl-C at the prompt, EOF, timings on exit;
- bad input: one line on stderr and a non-zero exit, never a crash (signal) or a hang;
- the real SmolLM2 converted to SpecQuant W4A4 (tests/conftest.py: smollm2_sq4): a two-turn
  conversation whose first answer names Paris, Ctrl-C cutting a long answer, and the timing lines.
"""
from __future__ import annotations

import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_sq_chat() -> Path | None:
    env = os.environ.get("SQ_CHAT")
    if env:
        return Path(env)
    found = [Path(sys.executable).parent / "sq-chat"]
    which = shutil.which("sq-chat")
    if which:
        found.append(Path(which))
    found += sorted(REPO.glob("build/*/native/sq-chat"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in found if p.is_file() and os.access(p, os.X_OK)), None)


@pytest.fixture(scope="session")
def sq_chat() -> Path:
    """The sq-chat binary: $SQ_CHAT, the one installed next to python, or a CMake build of this tree
    (built into build/pytest when there is none)."""
    path = _find_sq_chat()
    if path is None:
        build = REPO / "build" / "pytest"
        subprocess.run(["cmake", "-S", str(REPO), "-B", str(build), "-DSPECQUANT_TESTS=OFF", "-DSPECQUANT_CUDA=OFF"],
                       check=True, capture_output=True)
        subprocess.run(["cmake", "--build", str(build), "--target", "sq-chat", "-j", "2"], check=True, capture_output=True)
        path = build / "native" / "sq-chat"
    return path


class Terminal:
    """A program on a pseudo-terminal (its controlling tty: Ctrl-C raises SIGINT like in a shell)."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.out = b""
        self.mark = 0  # expect() searches output after this point
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            data = b""
        if not data:
            return False
        self.out += data
        return True

    def expect(self, pattern: bytes, timeout: float = 60.0) -> re.Match:
        """Waits until pattern (a regex) appears after the previous match."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.out, self.mark)
            if m:
                self.mark = m.end()
                return m
            left = end - time.monotonic()
            if left <= 0 or not self._read(min(left, 0.5)) and not rx.search(self.out, self.mark):
                raise AssertionError(f"{pattern!r} not seen; output so far:\n{self.out.decode(errors='replace')}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 60.0) -> int:
        """Exit code (negative: killed by that signal), reading what is left meanwhile."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                while self._read(0.05) and select.select([self.fd], [], [], 0)[0]:
                    pass
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
            self._read(0.1)
        self.kill()
        raise AssertionError(f"sq-chat did not exit; output:\n{self.out.decode(errors='replace')}")

    def kill(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.status = -9

    def close(self) -> None:
        self.kill()
        os.close(self.fd)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []

    def start(*argv: str) -> Terminal:
        t = Terminal([str(a) for a in argv])
        opened.append(t)
        return t
    yield start
    for t in opened:
        t.close()


TIMINGS = rb"prefill .* tokens/s\)\r?\n.*decode .* tokens/s\)"


# ---------------------------------------------------------------------------------------------
# tiny model


def test_conversation_ctrl_d(sq_chat: Path, tiny_sq4, terminal) -> None:
    t = terminal(sq_chat, "-m", tiny_sq4.path, "-n", "8", "--temp", "0", "-t", "1", "-sys", "Be brief.")
    t.expect(rb"> ")
    t.send(b"Hello there\n")
    t.expect(rb"Hello there\r?\n")  # the terminal's echo
    t.expect(rb"\n> ")             # the answer, then the next prompt
    t.send(b"Again\n")
    t.expect(rb"\n> ")
    t.send(b"\x04")  # Ctrl-D: EOF
    assert t.wait() == 0
    t.expect(TIMINGS)


def test_ctrl_c_at_the_prompt_exits(sq_chat: Path, tiny_sq4, terminal) -> None:
    t = terminal(sq_chat, "-m", tiny_sq4.path, "-n", "4", "--temp", "0", "-t", "1")
    t.expect(rb"> ")
    t.send(b"\x03")  # Ctrl-C
    assert t.wait() == 0
    t.expect(TIMINGS)


def test_prompt_mode(sq_chat: Path, tiny_sq4) -> None:
    r = subprocess.run([sq_chat, "-m", tiny_sq4.path, "-p", "Hello", "-n", "5", "--temp", "0", "-t", "1"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"Hello\n") and re.search(TIMINGS, r.stderr)
    q = subprocess.run([sq_chat, "-m", tiny_sq4.path, "-p", "Hello", "-n", "5", "--temp", "0", "-t", "1",
                        "--no-display-prompt", "--seed", "3", "--kv-type", "q8"], capture_output=True, timeout=120)
    assert q.returncode == 0 and not q.stdout.startswith(b"Hello")
    raw = subprocess.run([sq_chat, "-m", tiny_sq4.path, "-p", "Hello", "-n", "5", "--raw", "-t", "1"],
                         capture_output=True, timeout=120)
    assert raw.returncode == 0 and raw.stdout.startswith(b"Hello") and not raw.stdout.startswith(b"Hello\n")
    h = subprocess.run([sq_chat, "-h"], capture_output=True, timeout=30)
    assert h.returncode == 0 and b"--chat-template" in h.stdout and b"--act-bits" in h.stdout
    # the timing lines say the activation bits that ran: auto = 8 on the CPU (issue 16)
    assert b"(backend cpu, activations 8-bit)" in r.stderr, r.stderr
    a4 = subprocess.run([sq_chat, "-m", tiny_sq4.path, "-p", "Hello", "-n", "3", "--temp", "0", "-t", "1",
                         "--act-bits", "4", "--backend", "cpu"], capture_output=True, timeout=120)
    assert a4.returncode == 0 and b"(backend cpu, activations 4-bit)" in a4.stderr, a4.stderr


def test_timing_line_names_the_8_bit_linears(sq_chat: Path, tmp_path: Path) -> None:
    """A file that keeps ffn_down's input at 8 bits (the default conversion) says so when it runs at 4."""
    from oracle.synthetic import make_tiny_llama_gguf

    down = make_tiny_llama_gguf(tmp_path / "down.gguf", seed=3, a8_linears=["ffn_down"]).path
    for bits, want in (("4", b"activations 4-bit (ffn_down 8-bit))"), ("8", b"activations 8-bit)")):
        r = subprocess.run([sq_chat, "-m", down, "-p", "Hello", "-n", "2", "--temp", "0", "-t", "1",
                            "--act-bits", bits], capture_output=True, timeout=120)
        assert r.returncode == 0 and want in r.stderr, r.stderr


def _no_template_copy(src: Path, dst: Path) -> Path:
    from specquant_gguf.gguf import ModelFile, ModelWriter, RawTensor
    with ModelFile(src) as f, ModelWriter(dst, arch=f.get("general.architecture")) as w:
        for key, value in f.metadata.items():
            if key not in ("tokenizer.chat_template", "general.architecture", "general.alignment"):
                w.add_kv(key, value, *f.kv_types[key])
        for t in f:
            w.add_tensor(t.name, RawTensor(t.type_id, t.raw, t.shape))
    return dst


def test_bad_input(sq_chat: Path, tiny_sq4, tiny_f16, tmp_path: Path) -> None:
    m = str(tiny_sq4.path)
    prompt_file = tmp_path / "latin1.txt"
    prompt_file.write_bytes(b"caf\xe9 au lait")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    bare = str(_no_template_copy(tiny_f16.path, tmp_path / "bare.gguf"))
    cases = [
        (["-m", m, "-p", ""], 2, b"empty"),
        (["-m", m, "-f", str(empty)], 2, b"empty"),
        (["-m", m, "-p", "x", "-n", "-2"], 2, b"-n"),
        (["-m", m, "-p", "x", "--temp", "-0.5"], 2, b"--temp"),
        (["-m", m, "-p", "x", "--top-p", "0"], 2, b"--top-p"),
        (["-m", m, "-p", "x", "--top-p", "1.01"], 2, b"--top-p"),
        (["-m", m, "-p", "x", "--min-p", "2"], 2, b"--min-p"),
        (["-m", m, "-p", "x", "-c", "-1"], 2, b"-c"),
        (["-m", m, "-p", "x", "-t", "abc"], 2, b"-t"),
        (["-m", m, "-p", "x", "--kv-type", "q3"], 2, b"--kv-type"),
        (["-m", m, "-p", "x", "--chat-template", "vicuna"], 2, b"vicuna"),
        (["-m", m, "-p", "x", "--spectral-tau", "0"], 2, b"--spectral-tau"),
        (["-m", m, "-p", "x", "--act-bits", "3"], 2, b"--act-bits must be 4, 8 or auto, got '3'"),
        (["-m", m, "--bogus"], 2, b"--bogus"),
        (["-m"], 2, b"-m"),
        (["-p", "x"], 2, b"model"),
        (["-m", str(tmp_path / "missing.gguf"), "-p", "x"], 1, b"missing.gguf"),
        (["-m", str(prompt_file), "-p", "x"], 1, b"cannot load"),
        (["-m", m, "-p", b"caf\xe9".decode("latin-1")], None, b"UTF-8"),  # placeholder, replaced below
        (["-m", m, "-f", str(prompt_file)], 1, b"UTF-8"),
        (["-m", m, "-p", "word " * 400, "-c", "64"], 1, b"context"),
        (["-m", bare], 1, b"chat template"),
        (["-m", m, "--raw"], 2, b"--raw"),
    ]
    for argv, code, words in cases:
        if code is None:  # a prompt of raw non-UTF-8 bytes on the command line
            argv = [os.fsencode(a) for a in argv[:-1]] + [b"caf\xe9"]
            code = 1
        r = subprocess.run([os.fsencode(sq_chat), *[os.fsencode(a) if isinstance(a, str) else a for a in argv]],
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == code, (argv[:4], r.returncode, r.stderr)
        assert words in r.stderr, (argv[:4], r.stderr)
        assert r.stderr.count(b"\n") == 1 and r.stdout == b"", (argv[:4], r.stderr, r.stdout[:200])
    # a model without a template still completes a -p prompt, and says so
    r = subprocess.run([sq_chat, "-m", bare, "-p", "Hello", "-n", "3"], capture_output=True, timeout=120)
    assert r.returncode == 0 and b"plain text" in r.stderr


# ---------------------------------------------------------------------------------------------
# the real SmolLM2, converted


@pytest.mark.slow
def test_smollm2_two_turns(sq_chat: Path, smollm2_sq4: Path, terminal) -> None:
    t = terminal(sq_chat, "-m", smollm2_sq4, "--temp", "0", "-n", "48", "-c", "1024")
    t.expect(rb"> ", timeout=120)
    t.send(b"What is the capital of France?\n")
    t.expect(rb"France\?\r?\n")
    answer = t.expect(rb"(?s)(.*?)\n> ", timeout=300).group(1)
    assert b"Paris" in answer, answer
    t.send(b"Write a very long story about a dragon who learns to cook.\n")
    t.expect(rb"cook\.\r?\n")
    t.expect(rb"\w+ \w+", timeout=300)  # the answer has started ...
    t.send(b"\x03")                     # ... Ctrl-C cuts it, and the prompt comes back
    t.expect(rb"\n> ", timeout=120)
    t.send(b"\x04")
    assert t.wait(120) == 0
    t.expect(TIMINGS)
