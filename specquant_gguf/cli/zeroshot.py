"""`specquant zeroshot FILE --tasks piqa,arc_easy,hellaswag [--data-dir DIR] [--limit N] [--json]`:
zero-shot accuracy through the native runtime (the protocol is eval/zeroshot.py)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..errors import SpecQuantError, UsageError
from ..eval.scoring import NativeScorer
from ..eval.zeroshot import TASKS, average, default_data_dir, evaluate_tasks, format_table, parse_tasks, task_file
from ._options import add_act_bits


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="model file (.gguf)")
    p.add_argument("--tasks", default="piqa,arc_easy,hellaswag",
                   help=f"comma-separated tasks (default piqa,arc_easy,hellaswag; known: {', '.join(TASKS)})")
    p.add_argument("--data-dir", default=None,
                   help="folder holding zeroshot/<task>/ or <task>/ (default ../shared/data when it exists)")
    p.add_argument("--limit", type=int, default=None, help="only the first N items of each task")
    p.add_argument("--threads", "-t", type=int, default=0, help="CPU threads (0 = all cores) [0]")
    p.add_argument("--ctx", type=int, default=2048, help="context size; longer requests are left-truncated")
    add_act_bits(p)
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def run(args: argparse.Namespace) -> int:
    tasks = parse_tasks(args.tasks)
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    if args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = all cores), got {args.threads}")
    if args.ctx < 16:
        raise UsageError("--ctx must be >= 16")
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    if data_dir is None:
        raise UsageError("--data-dir is required (no ../shared/data here)")
    if not data_dir.is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder")
    for name in tasks:  # missing files are reported before the model is loaded
        task_file(name, data_dir)
    if not Path(args.file).is_file():
        raise SpecQuantError(f"{args.file}: no such file")

    model = NativeScorer(args.file, n_ctx=args.ctx, threads=args.threads or None, act_bits=args.act_bits)
    t0 = time.perf_counter()
    results = evaluate_tasks(model, tasks, data_dir, args.limit, progress=not args.no_progress)
    if args.json:
        native = getattr(model, "model", None)
        out = {"file": str(args.file), "data_dir": str(data_dir), "limit": args.limit, "ctx": args.ctx,
               "threads": args.threads, "act_bits": getattr(native, "act_bits", None),
               "a8_linears": list(getattr(native, "a8_linears", ())),
               "tasks": results, "average": average(results), "seconds": round(time.perf_counter() - t0, 2)}
        print(json.dumps(out, indent=2))
    else:
        print(format_table(results))
    return 0
