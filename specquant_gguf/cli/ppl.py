"""`specquant ppl FILE --data TEXTFILE [--ctx 512] [--windows N]`: perplexity through the native runtime
(the protocol is eval/perplexity.py)."""
from __future__ import annotations

import argparse
import json

from ..errors import UsageError
from ..eval.perplexity import TEXT_MODES, evaluate_ppl
from ..runtime.model import describe_activations
from ._options import add_act_bits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="model .gguf file")
    p.add_argument("--data", required=True, help="text file (WikiText .raw files are rebuilt into rows)")
    p.add_argument("--ctx", type=int, default=512, help="window length in tokens (default 512)")
    p.add_argument("--windows", type=int, default=None, help="score only the first N windows (default: all)")
    p.add_argument("--threads", "-t", type=int, default=0, help="CPU threads (0 = all cores) [0]")
    p.add_argument("--text", choices=TEXT_MODES, default="auto", dest="text_mode",
                   help="how to read --data: auto (WikiText rows for .raw files), wikitext, plain")
    add_act_bits(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = all cores), got {args.threads}")
    res = evaluate_ppl(args.file, args.data, ctx=args.ctx, windows=args.windows, threads=args.threads or None,
                       text_mode=args.text_mode, progress=not args.json, act_bits=args.act_bits)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"ppl = {res.ppl:.4f}")
        acts = f", activations {describe_activations(res.act_bits, res.a8_linears)}" if res.act_bits else ""
        print(f"({res.tokens} tokens scored in {res.windows} windows of {res.ctx}, backend {res.backend}{acts}, "
              f"{res.seconds:.1f} s)")
    return 0
