#!/usr/bin/env python3
"""Stock llama.cpp loads our standard-type files: `--method f16` and `--method q8` outputs are run by
llama.cpp (llama-cpp-python in its own venv, bench/llama_cpp_env.py) and by our runtime on the
same WikiText-2 windows, and their perplexities are compared.

    python bench/llama_loads.py                       # the variants' f16 and q8 files, 8 windows
    python bench/llama_loads.py FILE.gguf ... --windows 16

Token ids come from our tokenizer for both engines (eval/perplexity.py's protocol: ctx 512, every token
after the first of each window scored). Writes bench/out/llama_loads.json and prints a table.
Exit code 1 when llama.cpp refuses a file or the perplexities differ by more than 0.5 %.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import common  # noqa: E402  (adds the repo to sys.path)
import llama_cpp_env  # noqa: E402

TOLERANCE = 0.005


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="GGUF files of standard types (default: bench-models' f16 and q8)")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    a = p.parse_args(argv)
    files = [Path(f) for f in a.files] or [common.models_dir() / f"smollm2-var-{n}.gguf" for n in ("f16", "q8")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"no such file: {', '.join(missing)} (python bench/variants.py --only f16,q8 makes them)")
    if a.windows <= 0:
        raise SystemExit("--windows must be positive")
    llama_cpp_env.ensure()
    rows, ok = [], True
    for f in files:
        try:
            windows = common.ppl_windows(f, a.windows)
        except RuntimeError as exc:
            raise SystemExit(f"llama_loads: {exc}") from None
        mine = common.ppl_native(f, windows, a.threads)[0]
        try:
            theirs = llama_cpp_env.perplexity(f, windows, 1, a.threads)["ppl"]
        except llama_cpp_env.LlamaEnvError as exc:
            print(f"{f.name}: llama.cpp failed: {exc}", file=sys.stderr)
            ok = False
            continue
        diff = theirs / mine - 1
        ok &= abs(diff) <= TOLERANCE
        rows.append({"file": f.name, "windows": a.windows, "ppl_ours": mine, "ppl_llama_cpp": theirs, "rel_diff": diff,
                     "tensor_types": common.file_facts(f)["tensor_types"]})
    print(f"{'file':<28}{'types':<26}{'ours':>9}{'llama.cpp':>11}{'diff':>8}")
    for r in rows:
        types = ",".join(sorted(r["tensor_types"]))
        print(f"{r['file']:<28}{types:<26}{r['ppl_ours']:>9.3f}{r['ppl_llama_cpp']:>11.3f}{100 * r['rel_diff']:>7.2f}%")
    common.write_json(common.OUT_DIR / "llama_loads.json", {"machine": common.machine_info(), "rows": rows})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
