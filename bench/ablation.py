#!/usr/bin/env python3
"""Converter ablation: convert a model in memory with each recipe and measure WikiText-2 test
perplexity with the simulated (fake-quant) forward, which does the FORMAT.md §4 math in torch.

    python bench/ablation.py --variants fp,rtn,smoothquant,specquant --windows 8
    python bench/ablation.py --list

Calibration comes from --calib (c4 = ../shared C4 file, self = self-generated, or a path).
WikiText-2 test is used for perplexity only (ctx 512, the first N non-overlapping windows of the
"\\n\\n".join(rows) string). Results are appended to bench/out/ablation.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specquant_gguf.convert.calibrate import Calibration, generate_windows, read_texts, windows_from_texts  # noqa: E402
from specquant_gguf.convert.forward import block_forward, rms_norm  # noqa: E402
from specquant_gguf.convert.sources import ModelSource, open_source  # noqa: E402
from specquant_gguf.convert.driver import convert_blocks, next_hidden, sim_block  # noqa: E402
from specquant_gguf.convert.quantize import fake_quant_q8_0, q8_0_weight  # noqa: E402
from specquant_gguf.convert.recipe import Recipe, method_defaults  # noqa: E402
from specquant_gguf.gguf import sq4_block_bytes  # noqa: E402

SHARED = Path("/work/shared/data") if Path("/work/shared/data").is_dir() else ROOT.parent / "shared" / "data"
WIKI = SHARED / "wikitext-2-raw" / "wiki.test.raw"
C4 = SHARED / "c4" / "c4_calib_1k.jsonl"
OUT = ROOT / "bench" / "out"
SPEC = method_defaults("specquant")

# name -> recipe (None = the float source itself)
VARIANTS: dict[str, Recipe | None] = {
    "fp": None,
    "f16": method_defaults("f16"),
    "q8": method_defaults("q8"),
    "rtn": method_defaults("rtn"),
    "rtn-g32": replace(method_defaults("rtn"), group_size=32),
    "smoothquant": method_defaults("smoothquant"),
    "paper": method_defaults("specquant", "paper"),
    "paper-g64": replace(method_defaults("specquant", "paper"), group_size=64),
    "sq-wht-a.7-rtn": replace(SPEC, alpha=0.7, gptq=False, clip=False),
    "sq-wht-a.7-rtnclip": replace(SPEC, alpha=0.7, gptq=False),
    "sq-wht-a.7-gptq": replace(SPEC, alpha=0.7),
    "sq-wht-a.7-gptq-g32": replace(SPEC, alpha=0.7, group_size=32),
    "specquant": SPEC,
    "specquant-g32": replace(SPEC, group_size=32),
    "specquant-actorder": replace(SPEC, act_order=True),
    "specquant-searchgptq": replace(SPEC, search_gptq=True),
    "specquant-quantprop": replace(SPEC, propagate="quant"),
    "specquant-a8": replace(SPEC, act_bits=8),
    "specquant-a16": replace(SPEC, act_bits=16),  # weights alone (16-bit activation grid): the W4A8 bound
    "specquant-a8-g32": replace(SPEC, act_bits=8, group_size=32),
    "specquant-damp.1": replace(SPEC, damp=0.1),
    "sq-wht-a.7-gptq-damp.1": replace(SPEC, alpha=0.7, damp=0.1),
    "specquant-g32-damp.1": replace(SPEC, group_size=32, damp=0.1),
    "sq-wht-a.7-gptq-actorder": replace(SPEC, alpha=0.7, act_order=True),
    "sq-wht-a.7-gptq-quantprop": replace(SPEC, alpha=0.7, propagate="quant"),
    "sq-wht-a.7-gptq-a8": replace(SPEC, alpha=0.7, act_bits=8),
    "sq-wht-a.5-gptq-a8": replace(SPEC, alpha=0.5, act_bits=8),
    "sq-wht-a.7-gptq-k4-in": replace(SPEC, alpha=0.7, spectral_k=4, spectral_axis="in"),
    "sq-wht-a.7-gptq-k4-out": replace(SPEC, alpha=0.7, spectral_k=4, spectral_axis="out"),
    "sq-wht-a.7-gptq-k4-in-soft": replace(SPEC, alpha=0.7, spectral_k=4, spectral_axis="in", spectral_rule="softmax"),
    "specquant-k4-in": replace(SPEC, spectral_k=4, spectral_axis="in"),
    "specquant-k4-out": replace(SPEC, spectral_k=4, spectral_axis="out"),
    "specquant-k4-in-soft": replace(SPEC, spectral_k=4, spectral_axis="in", spectral_rule="softmax"),
    "specquant-k16-in": replace(SPEC, spectral_k=16, spectral_axis="in"),
    "rtn-wht-gptq": replace(method_defaults("rtn"), rotation="wht", gptq=True, clip=True),
    "quarot-gptq": replace(method_defaults("rtn"), rotation="quarot", gptq=True, clip=True),
    "quarot-gptq-g32": replace(method_defaults("rtn"), rotation="quarot", gptq=True, clip=True, group_size=32),
}


# ------------------------------------------------------------------ QuaRot-like baseline (sim only)
# Every linear's input is rotated by a full random orthogonal matrix Q (QuaRot/SpinQuant style: the
# residual-stream rotation folded into the weights, online rotations before o_proj and down_proj),
# RMSNorm weights folded into the next linears, GPTQ + clipping search on W·Q, per-token group-wise
# asymmetric int4 activations. The SQ4 format cannot express the online full-size rotations, so this
# exists only here, as the baseline the in-group rotation has to beat.

def _random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def quarot_block(blk, stats, cfg, r: Recipe, seed: int, index: int):
    from specquant_gguf.convert.sources import LINEARS
    from specquant_gguf.convert.quantize import dequantize, fake_quant_act, gptq, rtn
    from specquant_gguf.arch import INPUT_OF as POINT_OF

    gen = torch.Generator().manual_seed(seed * 1000 + index)
    blk = {k: v.clone() for k, v in blk.items()}
    gam = {"attn": blk["attn_norm"], "ffn": blk["ffn_norm"]}
    rots = {p: _random_orthogonal(d, gen) for p, d in (("attn", cfg.n_embd), ("attn_out", cfg.q_dim),
                                                       ("ffn", cfg.n_embd), ("ffn_down", cfg.n_ff))}
    sims = {}
    for name in LINEARS:
        p = POINT_OF[name]
        w = blk[name].double()
        h = stats[p].hess
        if p in gam:  # fold γ: the activation becomes x̂ = x / γ
            w = w * gam[p].double().unsqueeze(0)
            inv = 1.0 / gam[p].double()
            h = h * inv.unsqueeze(0) * inv.unsqueeze(1)
        q = rots[p]
        w_rot = (w @ q).float()
        h_rot = q.t() @ h @ q
        g = r.group_for(w.shape[1])
        qq, dd = gptq(w_rot, h_rot, g, r.ratios, r.damp) if r.gptq else rtn(w_rot, g, r.ratios)
        wt = dequantize(qq, dd, g).t().contiguous()
        qf = q.float()
        sims[name] = (qf, wt, g)

    cache = {}

    def lin(name, x):
        qf, wt, g = sims[name]
        key = (POINT_OF[name], id(x))
        if key not in cache:
            cache.clear()
            cache[key] = fake_quant_act(x @ qf, g, r.act_bits)
        return cache[key] @ wt

    norms = {"attn_norm": torch.ones(cfg.n_embd), "ffn_norm": torch.ones(cfg.n_embd)}
    return norms, lin


def wiki_windows(encode, n: int, length: int = 512) -> torch.Tensor:
    cache = OUT / "cache" / f"wiki_{length}.pt"
    if cache.is_file():
        ids = torch.load(cache)
    else:
        text = WIKI.read_text(encoding="utf-8")
        rows = [line + "\n" if line.strip() else "" for line in text.split("\n")[:-1]]
        ids = torch.tensor(encode("\n\n".join(rows)), dtype=torch.int64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(ids, cache)
    n_all = ids.numel() // length
    return ids[: min(n, n_all) * length].reshape(-1, length)


def calibration(source: ModelSource, spec: str, n: int, length: int, seed: int, encode) -> Calibration:
    cache = OUT / "cache" / f"calib_{spec.replace('/', '_')}_{n}x{length}_s{seed}.pt"
    if cache.is_file():
        d = torch.load(cache)
        return Calibration(d["tokens"], d["source"])
    if spec == "self":
        cal = generate_windows(source, n, length, seed)
    else:
        path = C4 if spec == "c4" else Path(spec)
        cal = windows_from_texts(encode, read_texts(path), n, length, seed, path.name)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"tokens": cal.tokens, "source": cal.source}, cache)
    return cal


def cached_stats(cfg, tag: str):
    """stats_fn for convert_blocks: float-propagated statistics, cached on disk per calibration set."""
    from specquant_gguf.convert.calibrate import block_stats

    folder = OUT / "cache" / f"stats_{tag}"
    folder.mkdir(parents=True, exist_ok=True)

    def fn(i, blk, x, mask):
        f = folder / f"blk{i}.pt"
        if f.is_file():
            d = torch.load(f, weights_only=False)  # our own cache
            return d["stats"], d["x"]
        stats, x_out = block_stats(x, blk, cfg, mask)
        torch.save({"stats": stats, "x": x_out}, f)
        return stats, x_out

    return fn


def cached_convert_blocks(source: ModelSource, calib: Calibration | None, recipe: Recipe, emb: torch.Tensor,
                          seed: int, stats_fn):
    """driver.convert_blocks, with the float statistics read from the cache of cached_stats (they do
    not depend on the recipe) when the recipe propagates float activations."""
    if stats_fn is None or recipe.propagate != "float" or not recipe.quantized:
        yield from convert_blocks(source, calib, recipe, emb, seed)
        return
    from specquant_gguf.convert.block import quantize_block
    from specquant_gguf.convert.calibrate import sample_plan

    cfg = source.config
    x = emb[calib.tokens]
    mask = sample_plan(*calib.tokens.shape, recipe.search_tokens, seed)
    for i in range(cfg.n_layer):
        blk = source.block(i)
        stats, x_float = stats_fn(i, blk, x, mask)
        qb = quantize_block(blk, stats, cfg, recipe)
        x = next_hidden(qb, recipe, cfg, x, x_float)
        yield i, qb


@torch.no_grad()
def perplexity(source: ModelSource, recipe: Recipe | None, windows: torch.Tensor, calib: Calibration | None,
               seed: int) -> tuple[float, dict]:
    cfg = source.config
    emb = source.token_embd()
    head = source.output()
    head = emb if head is None else head
    info: dict = {}
    t0 = time.time()
    if recipe is None:
        blocks = [(source.block(i), None) for i in range(cfg.n_layer)]
        head_fn = lambda h: h @ head.t()  # noqa: E731
    else:
        blocks = []
        alphas = []
        by_group: dict = {}
        bytes_ = {"int4": 0, "branch": 0, "linears": 0}
        tag = f"{calib.source.replace(':', '_')}_{tuple(calib.tokens.shape)}_s{seed}_n{recipe.search_tokens}" if calib else ""
        stats_fn = cached_stats(cfg, tag) if calib is not None else None
        quarot = recipe.rotation == "quarot"
        if quarot:  # research baseline: its own block quantizer (see quarot_block)
            from specquant_gguf.convert.calibrate import sample_plan

            recipe = replace(recipe, rotation="none")
            x = emb[calib.tokens]
            mask = sample_plan(*calib.tokens.shape, recipe.search_tokens, seed)
            for i in range(cfg.n_layer):
                blk = source.block(i)
                st, x = stats_fn(i, blk, x, mask)
                blocks.append(quarot_block(blk, st, cfg, recipe, seed, i))
                for c_out, c_in in cfg.linear_shapes().values():
                    g = recipe.group_for(c_in)
                    nb = c_out * (c_in // g) * sq4_block_bytes(g)
                    bytes_["int4"] += nb
                    bytes_["linears"] += nb
        for i, qb in ([] if quarot else cached_convert_blocks(source, calib, recipe, emb, seed, stats_fn)):
            blocks.append(sim_block(qb, recipe))
            alphas += list(qb.alphas.values())
            for k, v in qb.alphas.items():
                by_group.setdefault(k, []).append(v)
            for ql in qb.linears.values():
                bytes_["int4"] += ql.int4_bytes()
                bytes_["linears"] += ql.nbytes()
                bytes_["branch"] += ql.nbytes() - ql.int4_bytes() if ql.kind == "sq4" else 0
        info["alpha_mean"] = sum(alphas) / len(alphas) if alphas else None
        info["alpha_by_group"] = {k: round(sum(v) / len(v), 3) for k, v in by_group.items()}
        info["bytes"] = bytes_
        n_w = sum(a * b for a, b in cfg.linear_shapes().values()) * cfg.n_layer
        info["bpw_linears"] = 8 * bytes_["linears"] / n_w
        if recipe.head_type == "q8_0" or recipe.method == "q8":
            hq = q8_0_weight(head).t().contiguous()
            emb = hq.t()
            head_fn = lambda h: fake_quant_q8_0(h) @ hq  # noqa: E731
        else:
            hf = head.half().float()
            head_fn = lambda h: h @ hf.t()  # noqa: E731
    info["convert_s"] = time.time() - t0
    t0 = time.time()
    nll, count = 0.0, 0
    for c in range(0, windows.shape[0], 4):
        w = windows[c:c + 4]
        x = emb[w]
        for blk, lin in blocks:
            x = block_forward(x, blk, cfg, lin=lin)
        logits = head_fn(rms_norm(x, source.output_norm(), cfg.rms_eps))
        lp = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                               w[:, 1:].reshape(-1), reduction="sum")
        nll += float(lp)
        count += w[:, 1:].numel()
    info["eval_s"] = time.time() - t0
    return float(torch.exp(torch.tensor(nll / count))), info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="short name, GGUF file or HF folder")
    ap.add_argument("--variants", default="fp,rtn,smoothquant,specquant")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--calib", default="c4", help="c4 | self | PATH")
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="override a recipe field: name=value")
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for k, v in VARIANTS.items():
            print(k, v)
        return 0
    torch.set_num_threads(args.threads)
    source = open_source(args.model)
    tok = source.encoder()
    windows = wiki_windows(tok, args.windows)
    calib = calibration(source, args.calib, args.calib_windows, args.calib_len, args.seed, tok)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.variants.split(","):
        recipe = VARIANTS[name]
        if recipe is not None and args.set:
            kv = {}
            for s in args.set:
                k, v = s.split("=", 1)
                cur = getattr(recipe, k)
                kv[k] = (v.lower() in ("1", "true", "yes")) if isinstance(cur, bool) else (
                    None if v == "none" else tuple(float(t) for t in v.split(":")) if isinstance(cur, tuple)
                    else type(cur)(v) if cur is not None else float(v))
            recipe = replace(recipe, **kv)
        ppl, info = perplexity(source, recipe, windows, calib, args.seed)
        row = {"variant": name + (f"[{args.tag}]" if args.tag else ""), "set": args.set, "ppl": round(ppl, 3),
               "windows": int(windows.shape[0]), "calib": calib.source if recipe and recipe.quantized else None,
               "calib_tokens": calib.n_tokens, **info}
        print(json.dumps(row), flush=True)
        with open(OUT / "ablation.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
