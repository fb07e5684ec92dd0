"""Tiny random llama-family model files for tests (no torch needed).

    m = make_tiny_llama_gguf(tmp_path / "tiny.gguf", method="specquant", spectral_k=4)
    m.path, m.config, m.float_weights["blk.0.attn_q.weight"], m.tokens

The file is written through specquant_gguf.gguf.ModelWriter exactly as the converter would write
one: llama.cpp metadata, a small byte-level BPE tokenizer (GPT-2 byte alphabet, merges learned from a
fixed English text), norms, tied embeddings by default, optional output.weight and qwen2 q/k/v biases.

Methods:
- "f16": every matrix F16 (the float weights rounded to fp16);
- "q8": linear layers and the embeddings Q8_0;
- "specquant" (also "rtn"/"smoothquant", which differ only in the recorded method name): linear
  layers SQ4 made from the float weights: optional spectral branch (low DFT frequencies, per-channel
  K in [K_max/2, K_max], coefficients fp16), residual rotated by the in-group Walsh–Hadamard matrix
  / G when rotation="wht", then round-to-nearest symmetric int4 with one fp16 scale per group.
So a specquant file approximates its own float_weights, and tests can compare the two forwards.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from specquant_gguf.arch import LINEARS
from specquant_gguf.gguf import ModelWriter, Q8_0Weight, SQ4Weight

# ---------------------------------------------------------------------------------------------
# tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. The cat sat on the mat, and the dog sat on the "
    "rug. In the beginning there was the word, and the word was the thing that was there. "
    "Robert Boulter is an English film, television and theatre actor. He had a guest starring role "
    "on the television series The Bill in 2000. Hello world! How are you? I am fine, thank you. "
    "Numbers like 12 and 345 are split into digits. The end of the story is near the end."
)
# GPT-2-style pre-tokenizer (contractions, letters, digits one by one, punctuation, spaces)
_PRETOKENIZE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def train_tiny_bpe(n_merges: int, text: str = _TRAIN_TEXT) -> list[tuple[str, str]]:
    """Greedy byte-level BPE on a fixed text: the n most frequent adjacent pairs, merged in turn.
    Ties are broken by the pair itself, so the result is deterministic."""
    b2u = bytes_to_unicode()
    words = Counter(tuple(b2u[b] for b in w.encode("utf-8")) for w in _PRETOKENIZE.findall(text))
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def tiny_vocab(vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges "a b") of a vocab-sized byte-level BPE vocabulary."""
    base = len(SPECIAL_TOKENS) + 256
    if vocab < base:
        raise ValueError(f"vocab must be >= {base} (specials + 256 bytes)")
    tokens = list(SPECIAL_TOKENS) + [bytes_to_unicode()[b] for b in range(256)]
    types = [3] * len(SPECIAL_TOKENS) + [1] * 256  # 3 = control, 1 = normal (llama.cpp)
    merges = train_tiny_bpe(vocab - base)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            types.append(1)
            seen.add(a + b)
    n_fill = 0
    while len(tokens) < vocab:  # pad with unused tokens if the text ran out of pairs
        tokens.append(f"<unused{n_fill}>")
        types.append(5)  # 5 = unused
        n_fill += 1
    return tokens, types, [f"{a} {b}" for a, b in merges]


# ---------------------------------------------------------------------------------------------
# weights


def hadamard(n: int) -> np.ndarray:
    """Sylvester-order Walsh–Hadamard matrix (entries ±1), H[i, j] = (-1)^popcount(i & j)."""
    if n < 1 or n & (n - 1):
        raise ValueError("Hadamard size must be a power of two")
    idx = np.arange(n)
    bits = np.bitwise_and.outer(idx, idx)
    parity = np.zeros_like(bits)
    while bits.any():
        parity ^= bits & 1
        bits >>= 1
    return np.where(parity, -1.0, 1.0)


def rotate_groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """Each row's groups of G multiplied by H/G: the offline half of FORMAT.md §4.1."""
    rows, k = w.shape
    h = hadamard(group_size)
    return (w.reshape(rows, k // group_size, group_size) @ h.T / group_size).reshape(rows, k)


def quantize_rtn(w: np.ndarray, group_size: int) -> SQ4Weight:
    """Symmetric round-to-nearest int4 per group of G: d = max|w| / 7 (fp16), q = clamp(rint(w/d))."""
    rows, k = w.shape
    g = w.reshape(rows, k // group_size, group_size)
    d = (np.abs(g).max(axis=2) / 7.0).astype(np.float16)
    d32 = d.astype(np.float32)
    inv = np.divide(1.0, d32, out=np.zeros_like(d32), where=d32 > 0)
    q = np.clip(np.rint(g * inv[..., None]), -8, 7).astype(np.int8).reshape(rows, k)
    return SQ4Weight(q=q, d=d, group_size=group_size)


def spectral_split(w: np.ndarray, k_max: int, axis: str, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Low-frequency part of w along the input ("in": per row) or output ("out": per column) axis.

    Returns (coef float16 (channels, k_max, 2), k int16 (channels,), w_F float32 = what the stored
    fp16 coefficients reconstruct), with w_F[j] = Σ_{k<K} a_k cos(2πkj/N) + b_k sin(2πkj/N).
    """
    sig = w if axis == "in" else w.T  # (channels, N)
    channels, n = sig.shape
    spec = np.fft.rfft(sig.astype(np.float64), axis=1)
    kk = np.arange(k_max)
    scale = np.where(kk == 0, 1.0, 2.0) / n  # the conjugate half doubles every k > 0
    coef = np.zeros((channels, k_max, 2))
    coef[:, :, 0] = spec[:, :k_max].real * scale
    coef[:, :, 1] = -spec[:, :k_max].imag * scale
    k_per = rng.integers(max(1, k_max // 2), k_max + 1, size=channels).astype(np.int16)
    coef[kk[None, :] >= k_per[:, None]] = 0.0
    coef16 = coef.astype(np.float16)
    ang = 2 * np.pi * np.outer(kk, np.arange(n)) / n  # (k_max, N)
    c64 = coef16.astype(np.float64)
    w_f = c64[:, :, 0] @ np.cos(ang) + c64[:, :, 1] @ np.sin(ang)
    w_f = w_f if axis == "in" else w_f.T
    return coef16, k_per, w_f.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the model file


@dataclass
class TinyModel:
    path: Path
    config: dict
    float_weights: dict[str, np.ndarray] = field(repr=False)  # numpy shape (out, in); pre-quantization
    tokens: list[str] = field(repr=False)
    merges: list[str] = field(repr=False)


def make_tiny_llama_gguf(
    path: str | Path, *, method: str = "specquant", n_layers: int = 2, hidden: int = 128, heads: int = 4,
    kv_heads: int = 2, ffn: int = 256, vocab: int = 300, group_size: int = 32, act_bits: int = 4,
    rotation: str = "wht", spectral_k: int = 0, axis: str = "in", seed: int = 0, arch: str = "llama",
    qkv_bias: bool | None = None, tied: bool = True, head_type: str | None = None,
    rope_theta: float = 10000.0, rms_eps: float = 1e-5, context_length: int = 256, add_bos: bool = False,
    a8_linears: Sequence | None = None,
) -> TinyModel:
    """Writes a tiny random model file; see the module docstring. group_size 0 = per-row groups
    (G = each matrix's C_in, as specquant.group_size = 0 means). head_type: "f16" | "q8" for
    token_embd/output (default: f16 for method f16, q8 otherwise). qkv_bias defaults to arch == "qwen2".
    a8_linears: written as specquant.act_bits_a8_linears as given (unchecked, for error tests too)."""
    path = Path(path)
    if method not in ("specquant", "rtn", "smoothquant", "f16", "q8"):
        raise ValueError(f"unknown method {method!r}")
    if hidden % heads or heads % kv_heads:
        raise ValueError("hidden must divide by heads, heads by kv_heads")
    if group_size == 0 and rotation == "wht" and (hidden & (hidden - 1) or ffn & (ffn - 1)):
        raise ValueError("per-row groups with rotation='wht' need power-of-two hidden and ffn sizes")
    head_type = head_type or ("f16" if method == "f16" else "q8")
    qkv_bias = (arch == "qwen2") if qkv_bias is None else qkv_bias
    sq4 = method in ("specquant", "rtn", "smoothquant")
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    tokens, types, merges = tiny_vocab(vocab)

    config = dict(arch=arch, method=method, n_layers=n_layers, hidden=hidden, heads=heads, kv_heads=kv_heads,
                  head_dim=head_dim, ffn=ffn, vocab=vocab, group_size=group_size, act_bits=act_bits,
                  rotation=rotation if sq4 else "none", spectral_k=spectral_k if sq4 else 0, axis=axis,
                  rope_theta=rope_theta, rms_eps=rms_eps, tied=tied, head_type=head_type, qkv_bias=qkv_bias,
                  a8_linears=None if a8_linears is None else list(a8_linears))
    fw: dict[str, np.ndarray] = {}

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    fw["token_embd.weight"] = normal((vocab, hidden), 1.0)
    if not tied:
        fw["output.weight"] = normal((vocab, hidden), hidden ** -0.5)
    # small final-norm gains keep the tied head's logits O(1) (embeddings have unit variance)
    fw["output_norm.weight"] = 0.15 * (1.0 + normal((hidden,), 0.1))
    shapes = {"attn_q": (heads * head_dim, hidden), "attn_k": (kv_heads * head_dim, hidden),
              "attn_v": (kv_heads * head_dim, hidden), "attn_output": (hidden, heads * head_dim),
              "ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    for i in range(n_layers):
        fw[f"blk.{i}.attn_norm.weight"] = 1.0 + normal((hidden,), 0.1)
        fw[f"blk.{i}.ffn_norm.weight"] = 1.0 + normal((hidden,), 0.1)
        for part in LINEARS:
            out_f, in_f = shapes[part]
            fw[f"blk.{i}.{part}.weight"] = normal((out_f, in_f), in_f ** -0.5)
        if qkv_bias:
            for part in ("attn_q", "attn_k", "attn_v"):
                fw[f"blk.{i}.{part}.bias"] = normal((shapes[part][0],), 0.1)

    with ModelWriter(path, arch=arch) as w:
        _write_metadata(w, config, tokens, types, merges, add_bos, context_length, method)
        for name, value in fw.items():
            _write_tensor(w, name, value, config, rng, sq4)
    return TinyModel(path=path, config=config, float_weights=fw, tokens=tokens, merges=merges)


def write_tiny_tokenizer(w: ModelWriter, tokens: list[str], types: list[int], merges: list[str]) -> None:
    """The tokenizer keys of a tiny_vocab (byte-level BPE, SmolLM2's pre-tokenizer, BOS 1, EOS 2)."""
    w.add_kv("tokenizer.ggml.model", "gpt2")
    w.add_kv("tokenizer.ggml.pre", "smollm")
    w.add_kv("tokenizer.ggml.tokens", tokens)
    w.add_kv("tokenizer.ggml.token_type", types)
    w.add_kv("tokenizer.ggml.merges", merges)
    w.add_kv("tokenizer.ggml.bos_token_id", 1)
    w.add_kv("tokenizer.ggml.eos_token_id", 2)


def _write_metadata(w: ModelWriter, c: dict, tokens: list[str], types: list[int], merges: list[str],
                    add_bos: bool, context_length: int, method: str) -> None:
    a = c["arch"]
    w.add_kv("general.name", f"tiny-{a}-{method}")
    w.add_kv("general.file_type", 1)
    w.add_kv(f"{a}.context_length", context_length)
    w.add_kv(f"{a}.embedding_length", c["hidden"])
    w.add_kv(f"{a}.block_count", c["n_layers"])
    w.add_kv(f"{a}.feed_forward_length", c["ffn"])
    w.add_kv(f"{a}.attention.head_count", c["heads"])
    w.add_kv(f"{a}.attention.head_count_kv", c["kv_heads"])
    w.add_kv(f"{a}.rope.freq_base", float(c["rope_theta"]))
    w.add_kv(f"{a}.attention.layer_norm_rms_epsilon", float(c["rms_eps"]))
    w.add_kv(f"{a}.rope.dimension_count", c["head_dim"])
    w.add_kv(f"{a}.vocab_size", c["vocab"])
    write_tiny_tokenizer(w, tokens, types, merges)
    w.add_kv("tokenizer.ggml.padding_token_id", 2)
    w.add_kv("tokenizer.ggml.unknown_token_id", 0)
    w.add_kv("tokenizer.ggml.add_bos_token", bool(add_bos))
    w.add_kv("tokenizer.ggml.add_eos_token", False)
    w.add_kv("tokenizer.chat_template",
             "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    w.add_kv("specquant.version", 1)
    w.add_kv("specquant.converter", "tests/synthetic.py")
    w.add_kv("specquant.method", method)
    w.add_kv("specquant.preset", "default")
    w.add_kv("specquant.group_size", c["group_size"])
    w.add_kv("specquant.act_bits", c["act_bits"])
    w.add_kv("specquant.act_group_size", c["group_size"])
    w.add_kv("specquant.rotation", c["rotation"])
    w.add_kv("specquant.rotation.block", c["group_size"] if c["rotation"] == "wht" else 0)  # 0 with per-row
    w.add_kv("specquant.spectral.axis", c["axis"])
    w.add_kv("specquant.spectral.k_max", c["spectral_k"])
    w.add_kv("specquant.spectral.tau", 1.0)
    w.add_kv("specquant.smooth.alpha", 0.0)
    w.add_kv("specquant.calibration.source", "none")
    w.add_kv("specquant.calibration.tokens", 0)
    if c["a8_linears"] is not None:
        w.add_kv("specquant.act_bits_a8_linears", c["a8_linears"])


def _write_tensor(w: ModelWriter, name: str, value: np.ndarray, c: dict, rng: np.random.Generator, sq4: bool) -> None:
    if value.ndim == 1:  # norms and biases
        w.add_tensor(name, value.astype(np.float32))
        return
    if name in ("token_embd.weight", "output.weight"):
        w.add_tensor(name, Q8_0Weight.from_float(value) if c["head_type"] == "q8" else value.astype(np.float16))
        return
    if c["method"] == "f16":
        w.add_tensor(name, value.astype(np.float16))
        return
    if c["method"] == "q8":
        w.add_tensor(name, Q8_0Weight.from_float(value))
        return
    resid = value
    base = name[: -len(".weight")]
    if c["spectral_k"] > 0:
        coef, k_per, w_f = spectral_split(value, c["spectral_k"], c["axis"], rng)
        resid = value - w_f
        w.add_tensor(base + ".spectral", coef)
        w.add_tensor(base + ".spectral_k", k_per)
    g = c["group_size"] or value.shape[1]  # 0 = per row: one group per row
    if c["rotation"] == "wht":
        resid = rotate_groups(resid, g)
    w.add_tensor(name, quantize_rtn(resid, g))
