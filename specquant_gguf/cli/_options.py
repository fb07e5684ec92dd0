"""Options that several subcommands share (argparse only; not a subcommand)."""
from __future__ import annotations

import argparse

ACT_BITS_HELP = ("bits of the W4A4 layers' activations at run time: 4, 8 or auto (8 on the CPU: decodes as fast "
                 "as 4 and is more accurate; 4 on CUDA int4 tensor cores) [auto]")


def _act_bits(text: str) -> int | None:
    if text == "auto":
        return None
    if text in ("4", "8"):
        return int(text)
    raise argparse.ArgumentTypeError(f"must be 4, 8 or auto, got {text!r}")


def add_act_bits(p: argparse.ArgumentParser) -> None:
    """--act-bits 4|8|auto -> args.act_bits: 4, 8 or None (auto), what runtime.Model(act_bits=) takes."""
    p.add_argument("--act-bits", type=_act_bits, default=None, metavar="4|8|auto", help=ACT_BITS_HELP)
