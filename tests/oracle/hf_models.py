"""Tiny random Hugging Face models built locally with transformers (nothing is downloaded), and
GGUF files written from them the way llama.cpp's converter lays each architecture out.

Attention is made position-dependent on purpose: at transformers' default init (std 0.02) the
attention of a tiny model is almost uniform, which hides any RoPE error. The q/k weights are
scaled up so that attention is peaky and every logit depends on where each token sits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from specquant_gguf.arch import ARCHS
from specquant_gguf.gguf import ModelWriter

from .synthetic import tiny_vocab, write_tiny_tokenizer

VOCAB = 300


# Gemma 2 made small, with every part that differs from llama mattering on a 64-token input:
# head_dim 32 != hidden / heads (16), query_pre_attn_scalar 20 (neither), caps low enough that scores
# and logits reach them, a window of 4 on the even (local) layers
GEMMA2 = {"head_dim": 32, "query_pre_attn_scalar": 20, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0,
          "sliding_window": 4, "layers": 4, "tied": True}

# Llama-3.1's RoPE scaling with a short original context, so that it changes a 64-token input
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 16}


def tiny_hf_model(model_type: str, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4,
                  kv_heads: int = 2, ffn: int = 128, qk_scale: float = 6.0, tied: bool = False,
                  round_to: torch.dtype | None = None, **config):
    """A transformers CausalLM of the family, random weights, float32, eval mode.
    round_to: weights rounded to that precision (the file's), so a file of it holds them exactly.
    config: more config fields (rope_parameters, ...)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=hidden, intermediate_size=ffn,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                               max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0, **config)
    torch.manual_seed(seed)
    # Gemma 2's soft-capping exists only in the eager attention (transformers refuses SDPA for it)
    extra = {"attn_implementation": "eager"} if model_type == "gemma2" else {}
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32, **extra).eval()
    hd = hidden // heads
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 1 and "bias" in name else hidden ** -0.5))
            if "norm" in name:  # Gemma's norms multiply by (1 + w): the same scales, stored as offsets
                p.copy_((0.0 if model_type == "gemma2" else 1.0) + 0.1 * torch.randn_like(p))
            if "q_proj.weight" in name or "k_proj.weight" in name:
                p.mul_(qk_scale)
            if "qkv_proj.weight" in name:  # phi3: the q and k rows of the fused projection
                p[:(heads + kv_heads) * hd].mul_(qk_scale)
            if round_to is not None:
                p.copy_(p.to(round_to).float())
    return model


def tiny_gemma2(seed: int = 0, round_to: torch.dtype | None = None, **overrides):
    """tiny_hf_model("gemma2") with GEMMA2's settings (overrides: other config fields)."""
    g = {**GEMMA2, **overrides}
    return tiny_hf_model("gemma2", seed=seed, layers=g.pop("layers"), tied=g.pop("tied"), round_to=round_to, **g)


def save_hf_folder(model, folder: Path, layout: str = "t5") -> Path:
    """The model as a Hugging Face folder (save_pretrained, safetensors) with a tiny byte-level BPE
    tokenizer.json. layout "t4": config.json rewritten as transformers <= 4 writes it (rope_theta
    and rope_scaling at the top level); "t5": as transformers 5 saves it (under rope_parameters)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    model.save_pretrained(str(folder))
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if layout == "t4":
        params = dict(cfg.pop("rope_parameters", None) or {})
        cfg["rope_theta"] = params.pop("rope_theta", 10000.0)
        params.pop("partial_rotary_factor", None)
        if params.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {**params, "type": params["rope_type"]}
        cfg["transformers_version"] = "4.46.0"
        cfg_path.write_text(json.dumps(cfg, indent=2))
    else:
        assert "rope_parameters" in cfg and "rope_theta" not in cfg, "transformers 5 layout expected"
    toks, _types, merges = tiny_vocab(model.config.vocab_size)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": toks[1], "eos_token": toks[2],
                                                              "tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _permute_for_normal_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permute: HF half-split rows -> interleaved pairs, per head."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llamacpp_rope_factors(base: float, dim: int, rs: dict) -> np.ndarray:
    import math

    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old_ctx = rs.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(torch.tensor(out, dtype=torch.float32).numpy(), dtype=np.float32)


def _rope_dims(cfg, heads: int, head_dim: int) -> int:
    """rope.dimension_count as llama.cpp's Phi3MiniModel writes it: int(partial_rotary_factor · n_embd) //
    n_head (head_dim when the factor is 1)."""
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    pct = rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None) or 1.0)
    return head_dim if pct == 1.0 else int(pct * cfg.hidden_size) // heads


def write_llamacpp_gguf(model, path: Path, drop: tuple[str, ...] = (), longrope: bool = False) -> Path:
    """The model as llama.cpp's convert_hf_to_gguf.py writes it: F32 tensors, the family's own
    general.architecture and key prefix, q/k rows permuted only for "normal"-RoPE families.
    drop: tensor names left out (Gemma 2 only: broken files for error tests). longrope: add Phi-3-128k's
    rope_factors_long / rope_factors_short tensors (ones; for refusal tests)."""
    cfg = model.config
    arch = ARCHS[cfg.model_type]
    a = arch.name
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    if arch.post_norms:
        return _write_llamacpp_gemma2(model, sd, path, drop)
    tokens, types, merges = tiny_vocab(cfg.vocab_size)
    with ModelWriter(path, arch=a) as w:
        w.add_kv("general.name", f"tiny-{a}-hf")
        for key, value in (("context_length", cfg.max_position_embeddings), ("embedding_length", cfg.hidden_size),
                           ("block_count", cfg.num_hidden_layers), ("feed_forward_length", cfg.intermediate_size),
                           ("attention.head_count", heads), ("attention.head_count_kv", kv_heads),
                           ("rope.dimension_count", _rope_dims(cfg, heads, head_dim)), ("vocab_size", cfg.vocab_size)):
            w.add_kv(f"{a}.{key}", int(value))
        w.add_kv(f"{a}.rope.freq_base", float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
        w.add_kv(f"{a}.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps))
        if arch.fused and getattr(cfg, "sliding_window", None):  # llama.cpp's Phi3MiniModel writes the window
            w.add_kv(f"{a}.attention.sliding_window", int(cfg.sliding_window))
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        if rope.get("rope_type") == "linear":
            w.add_kv(f"{a}.rope.scaling.type", "linear")
            w.add_kv(f"{a}.rope.scaling.factor", float(rope["factor"]))
        if rope.get("rope_type") == "llama3":  # llama.cpp's LlamaModel.generate_extra_tensors
            w.add_tensor("rope_freqs.weight", _llamacpp_rope_factors(float(rope["rope_theta"]), head_dim, rope))
        if longrope:
            for n in ("rope_factors_long.weight", "rope_factors_short.weight"):
                w.add_tensor(n, np.ones(head_dim // 2, dtype=np.float32))
        write_tiny_tokenizer(w, tokens, types, merges)
        w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                     "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                     "ffn_down": "mlp.down_proj"}
            if arch.fused:  # phi3: llama.cpp keeps the fused tensors (attn_qkv; ffn_up = [gate; up])
                names = {"attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj",
                         "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj"}
            w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
            w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
            for ours, hf in names.items():
                wt, bias = sd[p + hf + ".weight"], sd.get(p + hf + ".bias")
                if arch.rope == "normal" and ours in ("attn_q", "attn_k"):
                    n = heads if ours == "attn_q" else kv_heads
                    wt = _permute_for_normal_rope(wt, n)
                    bias = None if bias is None else _permute_for_normal_rope(bias, n)
                w.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(wt))
                if bias is not None:
                    w.add_tensor(f"blk.{i}.{ours}.bias", np.ascontiguousarray(bias))
        w.add_tensor("output_norm.weight", sd["model.norm.weight"])
        if "lm_head.weight" in sd and not cfg.tie_word_embeddings:
            w.add_tensor("output.weight", sd["lm_head.weight"])
    return path


def _write_llamacpp_gemma2(model, sd: dict[str, np.ndarray], path: Path, drop: tuple[str, ...] = ()) -> Path:
    """Gemma 2 as llama.cpp's Gemma2Model writes it: general.architecture gemma2, q/k unpermuted (NEOX),
    every norm weight + 1, key/value_length, the two caps and the window; no rope.freq_base (its
    default 10000), no attention.scale (llama.cpp derives it from the model size), no output.weight."""
    cfg = model.config
    tokens, types, merges = tiny_vocab(cfg.vocab_size)
    with ModelWriter(path, arch="gemma2") as w:
        w.add_kv("general.name", "tiny-gemma2-hf")
        for key, value in (("context_length", cfg.max_position_embeddings), ("embedding_length", cfg.hidden_size),
                           ("block_count", cfg.num_hidden_layers), ("feed_forward_length", cfg.intermediate_size),
                           ("attention.head_count", cfg.num_attention_heads),
                           ("attention.head_count_kv", cfg.num_key_value_heads), ("attention.key_length", cfg.head_dim),
                           ("attention.value_length", cfg.head_dim), ("attention.sliding_window", cfg.sliding_window)):
            w.add_kv(f"gemma2.{key}", int(value))
        w.add_kv("gemma2.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps))
        w.add_kv("gemma2.attn_logit_softcapping", float(cfg.attn_logit_softcapping))
        w.add_kv("gemma2.final_logit_softcapping", float(cfg.final_logit_softcapping))
        write_tiny_tokenizer(w, tokens, types, merges)
        w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
        names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
                 "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                 "post_ffw_norm": "post_feedforward_layernorm"}
        for i in range(cfg.num_hidden_layers):
            for ours, hf in names.items():
                wt = sd[f"model.layers.{i}.{hf}.weight"]
                if f"blk.{i}.{ours}.weight" in drop:
                    continue
                w.add_tensor(f"blk.{i}.{ours}.weight", np.ascontiguousarray(wt + 1 if "norm" in ours else wt))
        w.add_tensor("output_norm.weight", sd["model.norm.weight"] + 1)
    return path
