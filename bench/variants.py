#!/usr/bin/env python3
"""Converter variants measured on real files: convert SmolLM2-135M with each recipe through the
product's own CLI, then score WikiText-2 test perplexity with the native runtime.

    python bench/variants.py                       # every variant below, 64 windows
    python bench/variants.py --only specquant,rtn --windows 8
    python bench/variants.py --list

Each variant is `python convert.py smollm2-135m --out FILE FLAGS...` (timed; self-generated
calibration text is cached between conversions, so its generation is timed only in the first
variant that needs it: the converter's own cache, see `--calib-cache`), then
`specquant ppl FILE --data wiki.test.raw --ctx 512 --windows N --backend native --json`.
Files are kept in the bench-models cache folder (never in the repo); a variant whose file and
result exist is not redone unless --force. Writes bench/out/variants.json and prints a Markdown
table: PPL, ratio to the f16 row, linear bits per weight, spectral-branch share, file size,
conversion time. WikiText-2 is read for perplexity only; calibration never sees it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (adds the repo to sys.path)

C4 = "{shared}/c4/c4_calib_1k.jsonl"
# name -> converter flags; the order is the table's order
VARIANTS: dict[str, list[str]] = {
    "f16": ["--method", "f16"],
    "q8": ["--method", "q8"],
    "rtn": ["--method", "rtn"],
    "smoothquant": ["--method", "smoothquant"],
    "paper": ["--preset", "paper"],
    "specquant": [],
    "sq-notune": ["--tune-steps", "0"],
    "sq-tune128": ["--tune-steps", "128"],
    "sq-nogptq": ["--no-gptq"],
    "sq-noclip": ["--no-clip"],
    "sq-norot": ["--rotation", "none"],
    "sq-alpha.5": ["--alpha", "0.5"],
    "sq-actorder": ["--act-order"],
    "sq-k4in": ["--spectral-k", "4"],
    "sq-k4out": ["--spectral-k", "4", "--spectral-axis", "out"],
    "sq-k4soft": ["--spectral-k", "4", "--spectral-rule", "softmax"],
    "sq-g32": ["--group-size", "32"],
    "sq-c4": ["--calib", C4, "--calib-windows", "64"],
    "sq-a8": ["--act-bits", "8"],
    "sq-a8-g32": ["--act-bits", "8", "--group-size", "32"],
    "sq-a4all": ["--a8-linears", "none"],  # every input at 4 bits (the default keeps ffn_down's at 8)
    "sq-a8downout": ["--a8-linears", "attn_output,ffn_down"],
    "sq-g32-a8down": ["--group-size", "32", "--a8-linears", "ffn_down"],
    "sq-g32-a8downout": ["--group-size", "32", "--a8-linears", "attn_output,ffn_down"],
    "sq-r1": ["--residual-rotation", "random"],
    "sq-r1h": ["--residual-rotation", "hadamard"],
}


def run_variant(name: str, flags: list[str], model: str, wiki: Path, windows: int, threads: int,
                folder: Path, force: bool) -> dict:
    out = folder / f"smollm2-var-{name}.gguf"
    result = folder / f"smollm2-var-{name}.w{windows}.json"
    if result.is_file() and out.is_file() and not force:
        return json.loads(result.read_text())
    row: dict = {"name": name, "flags": flags}
    if force or not out.is_file():
        t0 = time.perf_counter()
        cmd = [sys.executable, str(common.REPO / "convert.py"), model, "--out", str(out), "--quiet", *flags]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"variant {name}: conversion failed: {r.stderr.strip().splitlines()[-1:]}")
        row["convert_s"] = round(time.perf_counter() - t0, 1)
    cmd = [sys.executable, "-m", "specquant_gguf.cli", "ppl", str(out), "--data", str(wiki), "--ctx", "512",
           "--windows", str(windows), "--backend", "native", "--threads", str(threads), "--json",
           "--act-bits", _run_bits(flags)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=common.REPO)
    if r.returncode != 0:
        raise SystemExit(f"variant {name}: perplexity failed: {r.stderr.strip().splitlines()[-1:]}")
    ppl = json.loads(r.stdout)
    row.update(ppl=ppl["ppl"], windows=ppl["windows"], tokens=ppl["tokens"], **_variant_facts(out))
    result.write_text(json.dumps(row, indent=1))
    return row


def _run_bits(flags: list[str]) -> str:
    """The activation bits a variant is scored at: what it was converted for (the runtime's auto
    is 8 on a CPU, which would score every W4A4 file at A8)."""
    return flags[flags.index("--act-bits") + 1] if "--act-bits" in flags else "4"


def _variant_facts(path: Path) -> dict:
    f = common.file_facts(path)
    return {k: f[k] for k in ("file_bytes", "bpw_linears", "branch_pct", "calibration")}


def table(rows: list[dict], shared: Path) -> str:
    base = next((r["ppl"] for r in rows if r["name"] == "f16"), None)
    lines = ["| variant | converter flags | PPL | × f16 | bits/weight (linears) | branch % of int4 | file MiB | convert s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ppl'] / base:.3f}" if base else "–"
        flags = " ".join(r["flags"]).replace(str(shared), "../shared/data") or "(default)"
        lines.append(f"| {r['name']} | `{flags}` | {r['ppl']:.2f} | {ratio} | {r['bpw_linears']:.2f} | "
                     f"{r['branch_pct']:.1f} | {r['file_bytes'] / 2**20:.1f} | {r.get('convert_s', '–')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated variant names (default: all)")
    p.add_argument("--windows", type=int, default=64, help="WikiText-2 windows of 512 tokens (default 64)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--force", action="store_true", help="convert and score again even when cached")
    p.add_argument("--list", action="store_true", help="print the variants and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = p.parse_args(argv)
    if args.list:
        for name, flags in VARIANTS.items():
            print(f"{name:14s} {' '.join(flags) or '(default recipe)'}")
        return 0
    shared = common.shared_data()
    if shared is None:
        raise SystemExit("../shared/data not found: WikiText-2 test is needed for perplexity")
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s): {', '.join(unknown)} (see --list)")
    if args.windows <= 0 or args.threads <= 0:
        raise SystemExit("--windows and --threads must be positive")
    folder = common.models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    wiki = shared / "wikitext-2-raw" / "wiki.test.raw"
    rows = []
    for i, name in enumerate(names, 1):
        flags = [f.replace("{shared}", str(shared)) for f in VARIANTS[name]]
        print(f"[{i}/{len(names)}] {name}: convert.py {' '.join(flags) or '(default)'}", file=sys.stderr, flush=True)
        rows.append(run_variant(name, flags, args.model, wiki, args.windows, args.threads, folder, args.force))
        print(f"        PPL {rows[-1]['ppl']:.2f}", file=sys.stderr, flush=True)
    res = {"machine": common.machine_info(), "windows": args.windows, "rows": rows}
    common.write_json(common.OUT_DIR / "variants.json", res)
    common.report(res, table(rows, shared), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
