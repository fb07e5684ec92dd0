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


def tiny_hf_model(model_type: str, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4,
                  kv_heads: int = 2, ffn: int = 128, qk_scale: float = 6.0, tied: bool = False):
    """A transformers CausalLM of the family, random weights, float32, eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=VOCAB, hidden_size=hidden, intermediate_size=ffn,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                               max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 1 and "bias" in name else hidden ** -0.5))
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            if "q_proj.weight" in name or "k_proj.weight" in name:
                p.mul_(qk_scale)
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _permute_for_normal_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's permute: HF half-split rows -> interleaved pairs, per head."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llamacpp_gguf(model, path: Path) -> Path:
    """The model as llama.cpp's convert_hf_to_gguf.py writes it: F32 tensors, the family's own
    general.architecture and key prefix, q/k rows permuted only for "normal"-RoPE families."""
    cfg = model.config
    arch = ARCHS[cfg.model_type]
    a = arch.name
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = cfg.hidden_size // heads
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    tokens, types, merges = tiny_vocab(cfg.vocab_size)
    with ModelWriter(path, arch=a) as w:
        w.add_kv("general.name", f"tiny-{a}-hf")
        for key, value in (("context_length", cfg.max_position_embeddings), ("embedding_length", cfg.hidden_size),
                           ("block_count", cfg.num_hidden_layers), ("feed_forward_length", cfg.intermediate_size),
                           ("attention.head_count", heads), ("attention.head_count_kv", kv_heads),
                           ("rope.dimension_count", head_dim), ("vocab_size", cfg.vocab_size)):
            w.add_kv(f"{a}.{key}", int(value))
        w.add_kv(f"{a}.rope.freq_base", float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
        w.add_kv(f"{a}.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps))
        write_tiny_tokenizer(w, tokens, types, merges)
        w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}."
            names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                     "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                     "ffn_down": "mlp.down_proj"}
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
