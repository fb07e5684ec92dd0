"""`specquant` console script: one subcommand per job, each in its own module of this package.

Every subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. This file only
dispatches, turns expected errors into one-line messages, and maps them to exit codes
(2: usage errors, 1: everything else).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# The native runtime brings its own thread pool. numpy's OpenBLAS starts one too, which is idle in
# every subcommand but spins in sched_yield after start-up and takes turns on the same cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from ..errors import SpecQuantError, UsageError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("specquant_gguf.cli.convert", "convert a model (HF folder, GGUF file or short name) to a .gguf file"),
    "inspect": ("specquant_gguf.cli.inspect", "print a GGUF file's metadata and tensor table"),
    "ppl": ("specquant_gguf.cli.ppl", "perplexity of a model file on a text file"),
    "zeroshot": ("specquant_gguf.cli.zeroshot", "zero-shot accuracy (piqa, arc_easy, hellaswag, ...)"),
    "chat": ("specquant_gguf.cli.chat", "chat with a model file (Python twin of sq-chat)"),
    "serve": ("specquant_gguf.cli.serve", "an OpenAI-compatible HTTP server and chat page for a model file"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every usage error here
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specquant", description="SpecQuant-GGUF: W4A4 models in GGUF files.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # e.g. the converter's extras (torch) are not installed
            p.set_defaults(_missing=f"'specquant {name}' is unavailable: {exc}")
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


EXIT_BROKEN_PIPE = 141  # what a shell reports for a program killed by SIGPIPE


def _silence_stdout() -> None:
    """After stdout failed: point it at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"specquant: error: {args._missing}", file=sys.stderr)
        return 1
    if sys.stdout is None:  # started with stdout closed (`>&-`): every answer would be lost
        print(f"specquant {args.command}: error: standard output is closed", file=sys.stderr)
        return 1
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()
        return rc
    except UsageError as exc:
        print(f"specquant {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except SpecQuantError as exc:
        print(f"specquant {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, like any Unix tool
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        if not _is_stdout_error(exc):
            raise
        _silence_stdout()
        print(f"specquant {args.command}: error: cannot write to standard output: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("specquant: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"specquant {args.command}: error: out of memory", file=sys.stderr)
        return 1


def _is_stdout_error(exc: OSError) -> bool:
    """Whether an OSError came from writing stdout (full disk, closed descriptor), not from a file
    the command was working on (those are SpecQuantErrors with a message of their own)."""
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return exc.filename is None and exc.errno in (errno.ENOSPC, errno.EBADF, errno.EIO, errno.EPIPE)


if __name__ == "__main__":
    sys.exit(main())
