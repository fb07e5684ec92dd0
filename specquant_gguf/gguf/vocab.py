"""A Python tokenizer built from a GGUF file's tokenizer.ggml.* metadata (for the reference backend).

Byte-level BPE files (tokenizer.ggml.model = "gpt2": SmolLM2, Qwen2, Llama 3, ...) are built
directly with the `tokenizers` library from the stored tokens and merges, with the pre-tokenizer
that llama.cpp uses for the file's tokenizer.ggml.pre, and NFC first when
specquant.tokenizer.normalizer = "nfc". Anything else (SentencePiece "llama", ...) is
loaded through transformers' own GGUF support (AutoTokenizer.from_pretrained(dir, gguf_file=...)),
with its dummy prefix set as the file says (transformers' GGUF loader always builds HF's Metaspace
"first"): tokenizer.ggml.add_space_prefix (absent = on) and specquant.tokenizer.space_prefix (absent
= "sentencepiece": a ▁ before every piece of text, as sentencepiece and llama.cpp do).

Special (control / user-defined) tokens written in the text are NOT recognised unless
parse_special=True, like llama.cpp's default: "<|im_end|>" in a text file is just characters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import SpecQuantError

# llama.cpp's pre-tokenizer regexes by tokenizer.ggml.pre (byte-level BPE only)
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS: dict[str, list[tuple[str, str]]] = {
    # each entry: regexes applied in turn ("isolated" splits), then the byte-level mapping
    "gpt-2": [("regex", _GPT2_RE)],  # llama.cpp's name
    "gpt2": [("regex", _GPT2_RE)],
    "default": [("regex", _GPT2_RE)],
    "smollm": [("digits", ""), ("regex", _GPT2_RE)],
    "llama-bpe": [("regex", _LLAMA3_RE)],
    "llama3": [("regex", _LLAMA3_RE)],
    "qwen2": [("regex", _QWEN2_RE)],
}

_IGNORE_MERGES = ("llama-bpe", "llama3", "llama-v3")  # as native/src/tokenizer.c's parse_pre

TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4


def model_adds_bos(metadata: dict[str, Any]) -> bool:
    """Whether text gets a BOS token: tokenizer.ggml.add_bos_token when present, else llama.cpp's
    default for the tokenizer model (SentencePiece 'llama': yes; byte-level 'gpt2': no)."""
    v = metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(v, bool):
        return v
    return metadata.get("tokenizer.ggml.model") == "llama"


class TextTokenizer:
    """encode(text, add_bos) -> ids; decode(ids) -> text; bos_id / eos_id / add_bos from the file."""

    def __init__(self, metadata: dict[str, Any], path: str | Path | None = None, parse_special: bool = False) -> None:
        self.metadata = metadata
        self.bos_id = metadata.get("tokenizer.ggml.bos_token_id")
        self.eos_id = metadata.get("tokenizer.ggml.eos_token_id")
        self.add_bos = model_adds_bos(metadata)
        kind = metadata.get("tokenizer.ggml.model")
        if kind == "gpt2":
            self._tok = _build_byte_bpe(metadata, parse_special)
            self._hf = None
        elif path is not None:
            self._tok = None
            self._hf = _load_transformers_tokenizer(Path(path))
            if kind == "llama":
                _set_space_prefix(self._hf.backend_tokenizer, metadata)
        else:
            raise SpecQuantError(f"tokenizer model {kind!r} needs the file path (transformers' GGUF loader)")
        self.n_vocab = len(metadata.get("tokenizer.ggml.tokens", []))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        add_bos = self.add_bos if add_bos is None else add_bos
        if self._tok is not None:
            ids = self._tok.encode(text, add_special_tokens=False).ids
        else:
            ids = self._hf.encode(text, add_special_tokens=False)
        if add_bos:
            if self.bos_id is None:
                raise SpecQuantError("the model asks for a BOS token but has no tokenizer.ggml.bos_token_id")
            ids = [int(self.bos_id)] + list(ids)
        return list(ids)

    def decode(self, ids: Sequence[int]) -> str:
        if self._tok is not None:
            return self._tok.decode(list(ids), skip_special_tokens=False)
        return self._hf.decode(list(ids))


def _build_byte_bpe(md: dict[str, Any], parse_special: bool):
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    except ImportError:
        raise SpecQuantError("the reference tokenizer needs the 'tokenizers' package (pip install tokenizers)") from None
    tokens = md.get("tokenizer.ggml.tokens")
    merges = md.get("tokenizer.ggml.merges", [])
    if not isinstance(tokens, list) or not tokens:
        raise SpecQuantError("the file has no tokenizer.ggml.tokens")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # first id wins, as in llama.cpp
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise SpecQuantError(f"bad merge {m!r} in tokenizer.ggml.merges")
        pairs.append((a, b))
    pre = md.get("tokenizer.ggml.pre", "default")
    # Llama 3's tokenizer.json has ignore_merges: a pre-token that is a whole token is not merged
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False,
                               ignore_merges=pre in _IGNORE_MERGES))
    steps = _PRE_SPLITS.get(pre, _PRE_SPLITS["default"])
    seq = []
    for kind, rx in steps:
        if kind == "digits":
            seq.append(pre_tokenizers.Digits(individual_digits=True))
        else:
            seq.append(pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False))
    seq.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(seq)
    tok.decoder = decoders.ByteLevel()
    norm = md.get("specquant.tokenizer.normalizer")
    if norm == "nfc":  # Qwen2's tokenizer.json normalizer (docs/FORMAT.md)
        tok.normalizer = normalizers.NFC()
    elif norm not in (None, "none"):
        raise SpecQuantError(f"unsupported specquant.tokenizer.normalizer {norm!r} (supported: none, nfc)")
    if parse_special:
        types = md.get("tokenizer.ggml.token_type", [])
        special = [tokens[i] for i, t in enumerate(types) if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def _set_space_prefix(tok: Any, md: dict[str, Any]) -> None:
    """The SentencePiece dummy prefix of the file on a `tokenizers` Tokenizer (in place)."""
    from tokenizers import decoders, normalizers, pre_tokenizers

    add = md.get("tokenizer.ggml.add_space_prefix", True)
    scheme = md.get("specquant.tokenizer.space_prefix", "sentencepiece")
    if scheme not in ("sentencepiece", "metaspace-first", "metaspace-always"):
        raise SpecQuantError(f"unsupported specquant.tokenizer.space_prefix {scheme!r} "
                             f"(supported: sentencepiece, metaspace-first, metaspace-always)")
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if not add:
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = None
    elif scheme == "sentencepiece":  # HF's legacy Llama tokenizer.json: Prepend runs on every piece of text
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", split=False,
                                                     prepend_scheme=scheme.removeprefix("metaspace-"))
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add else []))


def _load_transformers_tokenizer(path: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise SpecQuantError("this tokenizer type needs 'transformers' (pip install transformers)") from None
    try:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many kinds; the user needs one line
        raise SpecQuantError(f"cannot build a tokenizer from {path.name}: {exc}") from None
