"""The native tokenizer gives exactly the Hugging Face tokenizer's ids.

Oracles:
- SmolLM2 (byte-level BPE, tokenizer.ggml.pre = "smollm"): transformers builds the tokenizer from
  the GGUF file (AutoTokenizer.from_pretrained(folder, gguf_file=...)). Its GGUF builder does not know
  "smollm" and keeps GPT-2's plain ByteLevel pre-tokenizer, while SmolLM2's own tokenizer.json splits
  every digit first (Digits(individual_digits=True) + ByteLevel, which is what llama.cpp's "smollm"
  means too). We compare against the builder with that pre-tokenizer restored, and check that the
  unmodified builder differs only on texts with non-ASCII numerals (½, ², ...), where the two HF
  set-ups disagree with each other.
- SentencePiece: a BPE model trained here with the sentencepiece package (byte fallback, user-defined
  symbols) written to a vocabulary-only GGUF; oracles are transformers' LlamaTokenizer built from that
  file and sentencepiece itself: the same ids with the default dummy prefix (a ▁ before every piece
  of text, as sentencepiece and llama.cpp do); with specquant.tokenizer.space_prefix = metaspace-first
  HF's Metaspace adds no second ▁ before a leading space.
- Llama-3 and Qwen2 pre-tokenizers: byte-level BPE vocabularies trained here with the tokenizers
  library behind each model's split regex, written as GGUF; oracle: the trained tokenizer itself.
Texts: every line of WikiText-2 test, the 1,000 C4 calibration texts (when ../shared/data exists),
and an edge-case list (emoji, CJK, combining marks, whitespace runs, code, numbers, special tokens).
"""
from __future__ import annotations

import json
import os
import re
import time
import unicodedata
from pathlib import Path

import pytest

from conftest import smollm2_path

runtime = pytest.importorskip("specquant_gguf.runtime")
from specquant_gguf.runtime import _native  # noqa: E402
_ffi, _lib = _native.ffi(), _native.lib()

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SPECQUANT_DATA", REPO.parent / "shared" / "data"))
WIKI = DATA / "wikitext-2-raw" / "wiki.test.raw"
C4 = DATA / "c4" / "c4_calib_1k.jsonl"

EDGE = [
    "", " ", "  ", "\n", "\n\n\n", " \n", "\n ", "\t", "\t\t x", "a\tb", "  \t\n  x", "x  ", "x \n\n y",
    "Hello world", " Hello", "  Hello  world  ", "hello\r\nworld\r\n", "\r\n\r\n", "end.\n\n",
    "I'm you're we've they'll he'd it's can't", "I'M YOU'RE WE'VE THEY'LL HE'D IT'S", "'s'S'tT 're", "ſ'ſ 'ſ",
    "12345", "1 2 3", "3.14159", "1,000,000", "x1y22z333", " 42", "½ ¼ ¾", "²³", "Ⅻ", "٣٤٥", "१२३", "①②",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "I ❤️ NY", "emoji😀in😀text",
    "你好，世界", "日本語のテキスト", "한국어 텍스트", "中文 English 混合",
    "e\u0301", "cafe\u0301", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319a\u0308lgo", " \u0301x",
    "\u00a0nbsp\u00a0", "a\u2028b\u2029c", "\u3000full width", "\u200bzero\u200bwidth", "\u2009thin",
    "שלום עולם", "مرحبا بالعالم", "Привет, мир!", "Ελληνικά", "ñandú", "Straße",
    "def f(x):\n    return x ** 2  # square\n", "if (a && b) { c[i] = d->e; }\n\tfoo();",
    "<html><body class=\"x\">Hi</body></html>", "SELECT * FROM t WHERE a='b';", "x=>y; a!==b",
    "...!!!???", "---", "$$$", "a--b", " .", " . .", "  .  ", "http://example.com/a?b=c&d=e#f",
    "<|im_start|>user\nHi<|im_end|>\n", "<|im_start|><|im_end|>", "text<|endoftext|>more", "<|im_end", "<|im_end|",
    "<repo_name>x<file_sep>", " <|im_start|> spaced ", "<s>hi</s>", "<unk>", "a<tool>b<|sep|>c",
    "a" * 1000, " " * 1000, "\n" * 500, "ab" * 700, "🙂" * 200, "x " * 500,
    "The quick brown fox\u00a0jumps\u2003over the lazy dog.", "\x00\x01\x02", "\x7f\x1b[31mred\x1b[0m",
    "\u0085next line", "\ufeffBOM", "\U0010FFFF", "\ue000private", "\x04\x06 ctrl", "\U00040000 plane 4",
]


class Vocab:
    """The native tokenizer of a GGUF file (sq_vocab_*: metadata only, no weights)."""

    def __init__(self, path: Path) -> None:
        self._v = _lib.sq_vocab_load(str(path).encode())
        if self._v == _ffi.NULL:
            raise RuntimeError(_ffi.string(_lib.sq_last_error()).decode())

    def encode(self, text: str | bytes, add_bos: int = 1, special: bool = True) -> list[int]:
        data = text.encode("utf-8") if isinstance(text, str) else text
        cap = len(data) + 8
        buf = _ffi.new("int32_t[]", cap)
        n = _lib.sq_vocab_tokenize(self._v, data, len(data), buf, cap, add_bos, int(special))
        if n < 0 and n != -(2**31):  # more tokens than bytes (NFC can lengthen the text): -n is the count
            cap = -n
            buf = _ffi.new("int32_t[]", cap)
            n = _lib.sq_vocab_tokenize(self._v, data, len(data), buf, cap, add_bos, int(special))
        assert n >= 0, _ffi.string(_lib.sq_last_error())
        return list(buf[0:n])

    def decode(self, ids: list[int], special: bool = False) -> bytes:
        arr = _ffi.new("int32_t[]", ids)
        need = -_lib.sq_vocab_detokenize(self._v, arr, len(ids), _ffi.NULL, 0, int(special))
        buf = _ffi.new("char[]", max(need, 1))
        n = _lib.sq_vocab_detokenize(self._v, arr, len(ids), buf, max(need, 1), int(special))
        assert n >= 0
        return _ffi.unpack(buf, n)

    def close(self) -> None:
        _lib.sq_vocab_free(self._v)


def _corpus() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if WIKI.is_file():
        out["wikitext-2 test lines"] = WIKI.read_text(encoding="utf-8").split("\n")
    if C4.is_file():
        out["c4 calibration texts"] = [json.loads(line)["text"] for line in C4.read_text(encoding="utf-8").splitlines()]
    return out


def _mismatches(ours, theirs, texts: list[str]) -> list[str]:
    return [t for t in texts if ours(t) != theirs(t)]


# ---------------------------------------------------------------------------------------------
# SmolLM2


@pytest.fixture(scope="module")
def smol():
    path = smollm2_path()
    if path is None:
        pytest.skip("SmolLM2 GGUF not on this machine")
    transformers = pytest.importorskip("transformers")
    from tokenizers import pre_tokenizers
    from tokenizers import Tokenizer
    real = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    plain = Tokenizer.from_str(real.backend_tokenizer.to_str())  # the builder's own pre-tokenizer
    real.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    v = Vocab(path)
    yield v, real, plain
    v.close()


def test_smollm2_matches_hf_on_corpus(smol) -> None:
    v, real, plain = smol
    corpus = _corpus()
    if not corpus:
        pytest.skip("../shared/data not available")
    for name, texts in corpus.items():
        ours = [v.encode(t) for t in texts]
        hf_ids = real.backend_tokenizer.encode_batch(texts)
        bad = [t for t, o, h in zip(texts, ours, hf_ids) if o != h.ids]
        assert not bad, f"{name}: {len(bad)} of {len(texts)} differ, first {bad[0][:200]!r}"
        # the plain GGUF builder (no digit split) differs only where a non-ASCII numeral is involved
        for t, o, h in zip(texts, ours, plain.encode_batch(texts)):
            if o != h.ids:
                assert any(unicodedata.category(c)[0] == "N" and not c.isascii() for c in t), t[:200]


def test_smollm2_edge_cases(smol) -> None:
    v, real, _ = smol
    for t in EDGE:
        assert v.encode(t, special=True) == real(t)["input_ids"], repr(t[:80])
    real.backend_tokenizer.encode_special_tokens = True  # HF's "special tokens are text" switch
    try:
        for t in EDGE:
            assert v.encode(t, special=False) == real.backend_tokenizer.encode(t).ids, repr(t[:80])
    finally:
        real.backend_tokenizer.encode_special_tokens = False


def test_smollm2_whole_wikitext_is_fast_and_exact(smol) -> None:
    if not WIKI.is_file():
        pytest.skip("../shared/data not available")
    v, real, _ = smol
    text = WIKI.read_text(encoding="utf-8")
    t0 = time.perf_counter()
    ids = v.encode(text)
    elapsed = time.perf_counter() - t0
    assert ids == real.backend_tokenizer.encode(text).ids
    assert elapsed < 2.0, f"{len(text)} characters took {elapsed:.2f} s"
    assert v.decode(ids).decode("utf-8") == text


def test_bytes_round_trip_including_invalid_utf8(smol) -> None:
    """Invalid UTF-8 is tokenized byte by byte, so decoding gives the bytes back -- for every byte the
    vocabulary has a token for. SmolLM2 has none for 21 bytes (0xC0, 0xC1, 0xF5-0xFF, a few control
    characters): those are dropped, as HF drops a character it has no token for."""
    v = smol[0]
    samples = [b"abc\x80def", b"\xc3", b"\xe2\x82", b"ok \xf0\x9f\x98", b"\xed\xa0\x80 surrogate",
               "é😀".encode() + b"\x80" * 3, bytes(b for b in range(256) if b not in b"\x04\x06\x13\x14\x16\x1d\xc0\xc1\xf1\xf2" and b < 0xf5)]
    for data in samples:
        ids = v.encode(data, special=False)
        assert v.decode(ids, special=True) == data, data
    assert v.encode(b"\xff\xfe") == [] and v.encode("\x04") == []


# ---------------------------------------------------------------------------------------------
# SentencePiece (llama-2 style)


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    gguf = pytest.importorskip("gguf")
    import io
    corpus = _corpus()
    train = corpus.get("c4 calibration texts", [])[:300] or [t * 3 for t in EDGE[19:70]] * 10
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train), model_writer=buf, vocab_size=1000 if len(train) > 100 else 400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=["<tool>", "<|sep|>"], character_coverage=0.9995, minloglevel=2, num_threads=1)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        tokens.append(piece)
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 4 if piece in ("<tool>", "<|sep|>") else 1)
    folder = tmp_path_factory.mktemp("spm")
    paths = {}
    for scheme in ("sentencepiece", "metaspace-first"):  # no key (llama.cpp's default), HF's Metaspace
        path = paths[scheme] = folder / f"spm-{scheme}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(sp.bos_id())
        w.add_eos_token_id(sp.eos_id())
        w.add_unk_token_id(sp.unk_id())
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        if scheme != "sentencepiece":
            w.add_string("specquant.tokenizer.space_prefix", scheme)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return paths, sp


def test_sentencepiece_matches_hf_and_sentencepiece(spm_model) -> None:
    """Without specquant.tokenizer.space_prefix the dummy prefix is sentencepiece's (and llama.cpp's):
    a ▁ before every piece of text, also one that starts with a space (every WikiText line does);
    with "metaspace-first" it is transformers' Metaspace, which adds none there."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import normalizers

    paths, sp = spm_model
    texts = [t for ts in _corpus().values() for t in ts] + EDGE
    for scheme, path in paths.items():
        hf = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer
        if scheme == "sentencepiece":  # HF's legacy Llama tokenizer.json: Prepend("▁") + Replace, no Metaspace
            hf.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            hf.pre_tokenizer = None
        v = Vocab(path)
        try:
            ours = [v.encode(t) for t in texts]
            ref = [e.ids for e in hf.encode_batch(texts)]
            bad_hf = [t for t, o, r in zip(texts, ours, ref) if o != r]
            assert not bad_hf, f"{scheme}: {len(bad_hf)} of {len(texts)} differ from HF, first {bad_hf[0][:120]!r}"
            # sentencepiece itself, except user-defined symbols (HF matches them anywhere, sentencepiece
            # as pieces) and control tokens written in the text (sentencepiece reads them as text)
            plain = [t for t in texts if not re.search(r"<tool>|<\|sep\|>|<s>|</s>|<unk>", t)]
            if scheme == "metaspace-first":
                spaced = [t for t in plain if t.startswith(" ")]
                assert sum(v.encode(t) != [sp.bos_id()] + sp.encode(t) for t in spaced) == len(spaced) > 100
                plain = [t for t in plain if not t.startswith(" ")]
            bad_sp = _mismatches(v.encode, lambda t: [sp.bos_id()] + sp.encode(t), plain)
            assert not bad_sp, f"{scheme}: {len(bad_sp)} of {len(plain)} differ from sentencepiece, first {bad_sp[0][:120]!r}"
            decoded = hf.decode_batch(ours, skip_special_tokens=True)
            for t, ids, d in zip(texts, ours, decoded):  # decoding as HF does (dummy prefix dropped, bytes fused)
                assert v.decode(ids).decode("utf-8", errors="replace") == d, repr(t[:80])
        finally:
            v.close()


# ---------------------------------------------------------------------------------------------
# Llama-3 and Qwen2 pre-tokenizers, on byte-level BPE vocabularies trained here

_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


@pytest.mark.parametrize("pre,pattern", [("llama-bpe", _LLAMA3), ("qwen2", _QWEN2)])
def test_bpe_pre_tokenizers_match_hf(pre: str, pattern: str, tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    gguf = pytest.importorskip("gguf")
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    corpus = _corpus()
    train = corpus.get("c4 calibration texts", [])[:400] or EDGE * 20
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=(pre == "llama-bpe")))  # as Llama-3's tokenizer.json
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(train, trainers.BpeTrainer(vocab_size=3000, special_tokens=specials, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    model = json.loads(tok.to_str())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    path = tmp_path / f"{pre}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in specials else 1 for t, _ in vocab])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    v = Vocab(path)
    try:
        texts = [t for ts in corpus.values() for t in ts] + EDGE + ["<|begin_of_text|>Hi<|eot_id|>\n\n1234567 ok"]
        ref = [e.ids for e in tok.encode_batch(texts)]
        bad = [t for t, r in zip(texts, ref) if v.encode(t) != r]
        assert not bad, f"{pre}: {len(bad)} of {len(texts)} differ, first {bad[0][:120]!r}"
    finally:
        v.close()


# ---------------------------------------------------------------------------------------------
# NFC (specquant.tokenizer.normalizer = "nfc", Qwen2's tokenizer.json normalizer)

# texts that NFC changes: decomposed accents, Hangul jamo, mark reordering, singletons, exclusions,
# blocked marks, a mark at the start or after a special token (which NFC never joins across)
NFC_EDGE = [
    "e\u0301", "cafe\u0301 na\u0308ive", "A\u030angstro\u0308m \u212b \u2126hm", "\u1100\u1161\u11a8",
    "\u1112\u1161\u11ab\u1100\u1173\u11af \ud55c\u11ab", "\uac00\u11a8 \uac01\u11a8",
    "a\u0323\u0302 a\u0302\u0323 \u1ead", "q\u0307\u0323 \u1e0b\u0323",
    "\u0958\u0959 \u0915\u093c", "\U0001d15e\U0001d160 \u2adc", "\u0344 \u0340\u0341 \u0374 \u037e \u0387",
    "\u03b1\u0313\u0300\u0345", "\u0301a", "\u0301\u0301e", "a\u0301\u0315\u0300b", "a\u0300\u0305\u0301",
    "Vie\u0302\u0323t Nam tie\u0302\u0301ng Vie\u0302\u0323t", "\u0065\u0301<|im_end|>\u0301x",
    "\u304b\u3099\u306f\u309a \u30ab\u3099", "\u0627\u0653 \u0648\u0654", "\u1025\u102e",
    "\u00c5\u0301 \u1e69 s\u0323\u0307 s\u0307\u0323", "o\u0328\u0304 \u01ed\u0301", "\u0e40\u0e01\u0e48\u0e32",
    "\u212a\u212b\u2126 \uf900\uf9ff \U0002f800", "x" + "\u0301" * 40 + "y", "\u0b47\u0b3e \u0dd9\u0dcf\u0dca",
]


def _byte_vocab(tmp_path: Path, normalizer: str | None) -> Path:
    """A byte-level BPE vocabulary of the 256 single bytes and no merges: its tokens spell the text's
    bytes one by one, so decode(encode(text)) shows exactly the text the tokenizer worked on."""
    gguf = pytest.importorskip("gguf")
    from tokenizers import pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: (len(c.encode()), ord(c)))
    path = tmp_path / f"bytes-{normalizer}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(alphabet + ["<|im_end|>"])
    w.add_token_types([1] * 256 + [3])
    w.add_token_merges(["a b"])
    if normalizer is not None:
        w.add_string("specquant.tokenizer.normalizer", normalizer)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_nfc_normalizer_equals_unicodedata(tmp_path: Path) -> None:
    import random
    v, plain = Vocab(_byte_vocab(tmp_path, "nfc")), Vocab(_byte_vocab(tmp_path, None))
    try:
        def nfc(t: str) -> bytes:
            # the text between special tokens is normalized on its own, like HF's added-token split
            return "<|im_end|>".join(unicodedata.normalize("NFC", p) for p in t.split("<|im_end|>")).encode()

        chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
        marks = [c for c in chars if unicodedata.combining(c)]
        changed = [c for c in chars if unicodedata.normalize("NFC", c) != c]
        rng = random.Random(14)
        starters = [c for c in chars[:0x3100] if not unicodedata.combining(c)] + changed + \
            [chr(c) for c in range(0x1100, 0x1200)] + [chr(c) for c in range(0xAC00, 0xAC00 + 800)]
        texts = NFC_EDGE + EDGE + ["".join(chars[i:i + 4000]) for i in range(0, len(chars), 4000)]
        texts += ["".join(c + m for c, m in zip(changed, rng.choices(marks, k=len(changed))))]
        for _ in range(3000):  # random runs of starters, jamo and marks in any order
            texts.append("".join(rng.choice(marks) if rng.random() < 0.45 else rng.choice(starters)
                                 for _ in range(rng.randint(1, 12))))
        assert sum(nfc(t) != t.encode() for t in texts) > 1000  # many of them are changed by NFC
        bad = [t for t in texts if v.decode(v.encode(t, add_bos=0), special=True) != nfc(t)]
        assert not bad, f"{len(bad)} of {len(texts)} differ from unicodedata's NFC, first {bad[0][:40]!r}"
        for t in NFC_EDGE + texts[-100:]:  # without the key nothing is normalized
            assert plain.decode(plain.encode(t, add_bos=0), special=True) == t.encode()
        # invalid UTF-8 passes through unchanged and blocks composition; valid parts still compose
        for raw, want in ((b"e\xff\xcc\x81", b"e\xff\xcc\x81"), (b"\xcc\x81\x80e\xcc\x81", b"\xcc\x81\x80\xc3\xa9"),
                          (b"a\xe1\x84", b"a\xe1\x84"), (b"\xe1\x84\x80\xe1\x85", b"\xe1\x84\x80\xe1\x85"),
                          (b"\xe1\x84\x80\xe1\x85\xa1\xff", b"\xea\xb0\x80\xff")):
            assert v.decode(v.encode(raw, add_bos=0)) == want, raw
    finally:
        v.close()
        plain.close()


def test_unknown_normalizer_refused(tmp_path: Path) -> None:
    assert _lib.sq_vocab_load(str(_byte_vocab(tmp_path, "nfkc")).encode()) == _ffi.NULL
    assert "unsupported normalizer 'nfkc'" in _ffi.string(_lib.sq_last_error()).decode()


# ---------------------------------------------------------------------------------------------
# bad files


def test_vocab_load_errors(tmp_path: Path) -> None:
    assert _lib.sq_vocab_load(str(tmp_path / "missing.gguf").encode()) == _ffi.NULL
    assert "missing.gguf" in _ffi.string(_lib.sq_last_error()).decode() or _ffi.string(_lib.sq_last_error())
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    assert _lib.sq_vocab_load(str(junk).encode()) == _ffi.NULL
    gguf = pytest.importorskip("gguf")
    bare = tmp_path / "bare.gguf"
    w = gguf.GGUFWriter(str(bare), "llama")
    w.add_name("no tokenizer")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert _lib.sq_vocab_load(str(bare).encode()) == _ffi.NULL
    assert re.search(r"tokenizer", _ffi.string(_lib.sq_last_error()).decode())
