"""Tiny random llama models in memory for the converter's tests (torch), with outlier channels.

Weights are Gaussian full-precision values (not a quantized grid), and a few input channels of the
residual stream carry large activations (through large embedding columns), like real LLMs.
MemorySource implements models.ModelSource, so every stage of the converter runs on it; write_gguf
writes it as an F32 GGUF file for the CLI tests.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from specquant_gguf.arch import ModelConfig
from specquant_gguf.convert.sources import Block, ModelSource


def tiny_config(n_layer: int = 2, n_embd: int = 128, n_head: int = 4, n_head_kv: int = 2, n_ff: int = 256,
                vocab: int = 320, qkv_bias: bool = False, tied: bool = True) -> ModelConfig:
    return ModelConfig(arch="qwen2" if qkv_bias else "llama", name="tiny", n_layer=n_layer, n_embd=n_embd,
                       n_ff=n_ff, n_head=n_head, n_head_kv=n_head_kv, head_dim=n_embd // n_head,
                       rope_base=10000.0, rms_eps=1e-5, vocab_size=vocab, ctx_len=256, tied=tied,
                       qkv_bias=qkv_bias)


class MemorySource(ModelSource):
    def __init__(self, cfg: ModelConfig, seed: int = 0, outliers: int = 3, outlier_scale: float = 20.0):
        self.config = cfg
        self.description = "tiny"
        g = torch.Generator().manual_seed(seed)
        e = cfg.n_embd

        def normal(*shape: int, std: float = 1.0) -> torch.Tensor:
            return torch.randn(*shape, generator=g) * std

        self.emb = normal(cfg.vocab_size, e, std=0.5)
        cols = torch.randperm(e, generator=g)[:outliers]
        self.emb[:, cols] *= outlier_scale  # outlier channels of the residual stream
        self.norm = 1.0 + normal(e, std=0.1)
        self.head = None if cfg.tied else normal(cfg.vocab_size, e, std=e ** -0.5)
        self.blocks: list[Block] = []
        for _ in range(cfg.n_layer):
            blk: Block = {n: normal(*s, std=s[1] ** -0.5) for n, s in cfg.linear_shapes().items()}
            blk["attn_norm"] = 1.0 + normal(e, std=0.1)
            blk["ffn_norm"] = 1.0 + normal(e, std=0.1)
            if cfg.qkv_bias:
                for n in ("attn_q", "attn_k", "attn_v"):
                    blk[f"{n}_bias"] = normal(cfg.linear_shapes()[n][0], std=0.1)
            self.blocks.append(blk)
        self.loads = 0  # how many blocks were handed out (memory test)

    def token_embd(self) -> torch.Tensor:
        return self.emb.clone()

    def output_norm(self) -> torch.Tensor:
        return self.norm.clone()

    def output(self) -> torch.Tensor | None:
        return None if self.head is None else self.head.clone()

    def block(self, i: int) -> Block:
        self.loads += 1
        return {k: v.clone() for k, v in self.blocks[i].items()}

    @property
    def bos_id(self) -> int | None:
        return 1

    def tokenizer_kv(self) -> dict[str, tuple[Any, Any]]:
        from oracle.synthetic import tiny_vocab  # a real byte-level BPE vocabulary (tests/synthetic.py)

        toks, types, merges = tiny_vocab(self.config.vocab_size)
        return {"tokenizer.ggml.model": ("gpt2", None), "tokenizer.ggml.pre": ("default", None),
                "tokenizer.ggml.tokens": (toks, None), "tokenizer.ggml.merges": (merges, None),
                "tokenizer.ggml.token_type": (types, None), "tokenizer.ggml.bos_token_id": (1, None),
                "tokenizer.ggml.eos_token_id": (2, None), "tokenizer.ggml.add_bos_token": (False, None)}


def write_gguf(src: MemorySource, path: Path) -> Path:
    """The tiny model as an F32 llama GGUF file (q/k already in GGUF row order)."""
    from specquant_gguf.gguf import ModelWriter

    c = src.config
    a = "qwen2" if c.qkv_bias else "llama"
    with ModelWriter(path, arch=a) as w:
        for k, v in {"block_count": c.n_layer, "embedding_length": c.n_embd, "feed_forward_length": c.n_ff,
                     "attention.head_count": c.n_head, "attention.head_count_kv": c.n_head_kv,
                     "rope.dimension_count": c.head_dim, "context_length": c.ctx_len}.items():
            w.add_kv(f"{a}.{k}", int(v))
        w.add_kv(f"{a}.rope.freq_base", float(c.rope_base))
        w.add_kv(f"{a}.attention.layer_norm_rms_epsilon", float(c.rms_eps))
        for key, (value, vtype) in src.tokenizer_kv().items():
            w.add_kv(key, value, vtype)
        w.add_tensor("token_embd.weight", src.emb.numpy().astype(np.float32))
        w.add_tensor("output_norm.weight", src.norm.numpy().astype(np.float32))
        if src.head is not None:
            w.add_tensor("output.weight", src.head.numpy().astype(np.float32))
        for i, blk in enumerate(src.blocks):
            for n, t in blk.items():
                if n.endswith("_bias"):
                    w.add_tensor(f"blk.{i}.{n[:-5]}.bias", t.numpy().astype(np.float32))
                else:
                    w.add_tensor(f"blk.{i}.{n}.weight", t.numpy().astype(np.float32))
    return path


def float_logits(src: ModelSource, tokens: torch.Tensor, blocks: list[Block] | None = None) -> torch.Tensor:
    from specquant_gguf.convert.forward import block_forward, head_logits

    cfg = src.config
    blocks = blocks if blocks is not None else [src.block(i) for i in range(cfg.n_layer)]
    emb = src.token_embd()
    head = src.output()
    x = emb[tokens]
    with torch.no_grad():
        for blk in blocks:
            x = block_forward(x, blk, cfg)
        return head_logits(x, src.output_norm(), emb if head is None else head, cfg.rms_eps)
