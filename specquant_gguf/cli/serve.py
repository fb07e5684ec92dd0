"""`specquant serve FILE`: an OpenAI-compatible HTTP server with a chat page (runtime.server).

    specquant serve smol.sq4.gguf --port 8080 --parallel 4
    # then: openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="none"), or a browser at /
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (.gguf)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on [127.0.0.1: this machine only]")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0 = any free one) [8080]")
    p.add_argument("-np", "--parallel", type=int, default=1,
                   help="slots: conversations decoded at once; more requests wait in line [1]")
    p.add_argument("-c", "--ctx", "--ctx-size", dest="ctx", type=int, default=0,
                   help="context per slot (0 = the model's, at most 2048)")
    p.add_argument("-t", "--threads", type=int, default=0, help="threads per slot (0 = all cores)")
    p.add_argument("--kv-type", choices=("f16", "q8", "q4"), default="f16", help="KV cache type [f16]")
    p.add_argument("--act-bits", choices=("auto", "4", "8"), default="auto",
                   help="bits of the W4A4 layers' activations at run time (auto: 8 on the CPU) [auto]")
    p.add_argument("--api-key", default=os.environ.get("SPECQUANT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $SPECQUANT_API_KEY; none = open)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level [info]")


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    if args.parallel < 1 or args.ctx < 0 or args.threads < 0:
        raise UsageError("--parallel must be >= 1, --ctx and --threads >= 0")
    try:
        from ..runtime.server import serve
    except ImportError as exc:
        raise UsageError(str(exc)) from None

    def ready(port: int) -> None:
        print(f"specquant serve: {args.model} on http://{args.host}:{port}/ (OpenAI API at /v1, "
              f"{args.parallel} slot{'s' if args.parallel != 1 else ''})", file=sys.stderr, flush=True)

    serve(args.model, host=args.host, port=args.port, parallel=args.parallel, n_ctx=args.ctx or None,
          n_threads=args.threads or None, api_key=args.api_key or None, log_level=args.log_level, ready=ready,
          kv_type=args.kv_type, **({} if args.act_bits == "auto" else {"act_bits": int(args.act_bits)}))
    return 0
