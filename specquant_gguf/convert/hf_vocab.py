"""tokenizer.* GGUF metadata of a Hugging Face folder, built with gguf.vocab's helpers (like
llama.cpp's converter)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..arch import ModelConfig
from ..errors import SpecQuantError


def _pre_tokenizer_name(folder: Path, config: ModelConfig) -> str:
    """tokenizer.ggml.pre for the BPE pre-tokenizers our runtime and llama.cpp know."""
    name = folder.name.lower() + " " + config.name.lower()
    if config.arch == "qwen2":
        return "qwen2"
    for key, pre in (("smollm", "smollm"), ("llama-3", "llama-bpe"), ("llama3", "llama-bpe"), ("mistral", "tekken")):
        if key in name:
            return pre
    return "default"


def hf_tokenizer_kv(folder: Path, config: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """tokenizer.* GGUF keys of an HF folder, built with gguf.vocab's helpers (like llama.cpp's converter)."""
    import gguf

    out: dict[str, tuple[Any, Any]] = {}
    if (folder / "tokenizer.model").is_file():  # SentencePiece (llama-2, mistral v0.1, tinyllama)
        vocab: Any = gguf.vocab.SentencePieceVocab(folder)
        model, pre = "llama", "default"
    elif (folder / "tokenizer.json").is_file():
        vocab = gguf.vocab.BpeVocab(folder)
        model, pre = "gpt2", _pre_tokenizer_name(folder, config)
    else:
        raise SpecQuantError(f"{folder}: no tokenizer.model or tokenizer.json")
    toks, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        toks.append(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)
        scores.append(float(score))
        types.append(int(ttype))
    # Pad to the model's vocab size like llama.cpp does, so token ids and embedding rows line up.
    for i in range(len(toks), config.vocab_size):
        toks.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    out["tokenizer.ggml.model"] = (model, None)
    out["tokenizer.ggml.pre"] = (pre, None)
    out["tokenizer.ggml.tokens"] = (toks, None)
    out["tokenizer.ggml.scores"] = (scores, (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32))
    out["tokenizer.ggml.token_type"] = (types, (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32))
    special = gguf.SpecialVocab(folder, load_merges=model == "gpt2", n_vocab=config.vocab_size)
    if special.merges:
        out["tokenizer.ggml.merges"] = (list(special.merges), None)
    for typ, tid in special.special_token_ids.items():
        key = "padding" if typ == "pad" else typ
        out[f"tokenizer.ggml.{key}_token_id"] = (int(tid), gguf.GGUFValueType.UINT32)
    for typ, value in special.add_special_token.items():
        out[f"tokenizer.ggml.add_{typ}_token"] = (bool(value), None)
    if special.chat_template:
        tmpl = special.chat_template
        out["tokenizer.chat_template"] = (tmpl if isinstance(tmpl, str) else json.dumps(tmpl), None)
    return out
