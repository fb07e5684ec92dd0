"""PNG plots of bench/out/compare.json (matplotlib, no display needed).

    python bench/plots.py [--json bench/out/compare.json] [--out docs/img]

Writes accuracy_vs_bpw.png (zero-shot average vs bits per weight), ppl.png (WikiText-2 perplexity
per method) and speed.png (prefill and decode tokens/s per method and thread count).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OURS_COLOR, LLAMA_COLOR = "#1f77b4", "#d62728"


def _color(row: dict) -> str:
    return LLAMA_COLOR if row.get("engine") == "llama.cpp" else OURS_COLOR


def plot_accuracy(rows: list[dict], path: Path, metric_label: str) -> Path | None:
    pts = [r for r in rows if r.get("zeroshot_avg") is not None and r.get("bits_per_weight")]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in pts:
        ax.scatter(r["bits_per_weight"], 100 * r["zeroshot_avg"], color=_color(r), s=40, zorder=3)
        ax.annotate(r["name"], (r["bits_per_weight"], 100 * r["zeroshot_avg"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("bits per weight (file bytes x 8 / parameters)")
    ax.set_ylabel(f"zero-shot average, % ({metric_label})")
    ax.set_title("Zero-shot accuracy vs size (SmolLM2-135M-Instruct)")
    ax.grid(alpha=0.3)
    ax.scatter([], [], color=OURS_COLOR, label="specquant runtime")
    ax.scatter([], [], color=LLAMA_COLOR, label="llama.cpp")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_ppl(rows: list[dict], path: Path) -> Path | None:
    pts = [r for r in rows if r.get("ppl") is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    names = [r["name"] for r in pts]
    vals = [r["ppl"] for r in pts]
    bars = ax.bar(range(len(pts)), vals, color=[_color(r) for r in pts])
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(pts)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("WikiText-2 test perplexity (lower is better)")
    if max(vals) > 8 * min(vals):
        ax.set_yscale("log")
    ax.set_title("Perplexity per method (same tokens and windows for every row)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_speed(rows: list[dict], path: Path) -> Path | None:
    pts = [r for r in rows if r.get("speed")]
    if not pts:
        return None
    threads = sorted({t["threads"] for r in pts for t in r["speed"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    width = 0.8 / len(threads)
    for ax, key, title in ((axes[0], "prefill_tok_s", "prefill (512-token prompt)"),
                           (axes[1], "decode_tok_s", "decode (128 tokens)")):
        for k, t in enumerate(threads):
            vals = [next((s[key] for s in r["speed"] if s["threads"] == t), 0.0) for r in pts]
            xs = [i + (k - (len(threads) - 1) / 2) * width for i in range(len(pts))]
            ax.bar(xs, vals, width, label=f"{t} thread{'s' if t > 1 else ''}", alpha=0.6 + 0.4 * k / max(1, len(threads) - 1),
                   color=[_color(r) for r in pts], edgecolor="black", linewidth=0.4, hatch="" if k else "//")
        ax.set_xticks(range(len(pts)), [r["name"] for r in pts], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("tokens / s")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Speed per method and thread count (blue: specquant runtime, red: llama.cpp)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_all(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["rows"]
    made = [plot_accuracy(rows, out_dir / "accuracy_vs_bpw.png", result.get("zeroshot_metric", "acc")),
            plot_ppl(rows, out_dir / "ppl.png"), plot_speed(rows, out_dir / "speed.png")]
    return [p for p in made if p is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=str(REPO / "bench" / "out" / "compare.json"))
    ap.add_argument("--out", default=str(REPO / "docs" / "img"))
    a = ap.parse_args(argv)
    if not Path(a.json).is_file():
        print(f"plots: {a.json}: no such file (run bench/compare.py first)", file=sys.stderr)
        return 2
    for p in make_all(json.loads(Path(a.json).read_text()), Path(a.out)):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
