"""tokenizer.* GGUF metadata of a Hugging Face folder, built with gguf.vocab's helpers (like
llama.cpp's converter)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..arch import ARCHS, ModelConfig
from ..errors import SpecQuantError


# The pre-tokenizer regexes of tokenizer.json files, by the tokenizer.ggml.pre name llama.cpp gives
# them (and our runtime runs: native/src/pretokenize.c).
_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = _LLAMA3_RE.replace(r"\p{N}{1,3}", r"\p{N}")
# Mistral's "tekken" splits on letter case (\p{Lu}/\p{Ll}), which the runtime does not implement
_TEKKEN_MARK = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"

# Text normalization before the pre-tokenizer, as tokenizer.json's "normalizer" says (Qwen2: NFC).
# Our key (docs/FORMAT.md): llama.cpp has none and does not normalize.
NORMALIZER_KEY = "specquant.tokenizer.normalizer"
NORMALIZERS = {"NFC": "nfc"}

# The SentencePiece dummy prefix: tokenizer.ggml.add_space_prefix (llama.cpp's key; absent = on) and,
# when it is on, how (our key, docs/FORMAT.md; absent = "sentencepiece"): "sentencepiece" puts a ▁
# before every piece of text, even one that starts with a space (sentencepiece's add_dummy_prefix,
# llama.cpp, HF's Prepend("▁") normalizer); "metaspace-first" / "metaspace-always" are HF's Metaspace
# pre-tokenizer (prepend_scheme first / always: no ▁ before a leading space; "first": only at the
# start of the text, not after a special token).
SPACE_PREFIX_KEY = "specquant.tokenizer.space_prefix"
SPACE_PREFIXES = ("sentencepiece", "metaspace-first", "metaspace-always")

# gguf.SpecialVocab's names -> the GGUF key's spelling (llama.cpp's and our runtime's:
# tokenizer.ggml.unknown_token_id, seperator_token_id [sic], padding_token_id)
GGUF_ID_NAMES = {"unk": "unknown", "sep": "seperator", "pad": "padding"}

# HF added tokens with lstrip / rstrip (Phi-3: <|assistant|>, </s>, ...) take the whitespace before /
# after them when they are recognised in the text: our keys (docs/FORMAT.md), arrays of token ids;
# llama.cpp has none (it sets rstrip on Phi-3's special tokens by the model's name).
LSTRIP_KEY = "specquant.tokenizer.lstrip"
RSTRIP_KEY = "specquant.tokenizer.rstrip"

# names --pre-tokenizer accepts: those the runtime runs (tokenizer.c), one per behaviour, spelled as
# llama.cpp spells tokenizer.ggml.pre (it refuses "gpt2": its name is "gpt-2"); "gpt2" is an alias
PRE_TOKENIZERS = ("gpt-2", "llama-bpe", "qwen2", "smollm")
PRE_TOKENIZER_ALIASES = {"gpt2": "gpt-2"}


def _steps(pre: Any) -> list[Any]:
    if not isinstance(pre, dict):
        return [pre]
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers") or [] for s in _steps(p)]
    return [pre]


def _signature(pre: Any) -> tuple:
    """The behaviour of a tokenizer.json pre_tokenizer, as a tuple independent of offsets options."""
    sig = []
    for st in _steps(pre):
        kind = st.get("type") if isinstance(st, dict) else None
        if kind == "ByteLevel":
            sig.append(("bytelevel", bool(st.get("use_regex", True)), bool(st.get("add_prefix_space", False))))
        elif kind == "Split":
            pat = st.get("pattern") or {}
            sig.append(("split", pat.get("Regex", pat.get("String")), st.get("behavior"), bool(st.get("invert"))))
        elif kind == "Digits":
            sig.append(("digits", bool(st.get("individual_digits"))))
        else:
            sig.append((str(kind),))
    return tuple(sig)


_KNOWN: dict[tuple, str] = {
    (("bytelevel", True, False),): "gpt-2",
    (("digits", True), ("bytelevel", True, False)): "smollm",
    (("split", _LLAMA3_RE, "Isolated", False), ("bytelevel", False, False)): "llama-bpe",
    (("split", _QWEN2_RE, "Isolated", False), ("bytelevel", False, False)): "qwen2",
}


def pre_tokenizer_name(tokenizer_json: dict, where: str) -> str:
    """tokenizer.ggml.pre from what the tokenizer does (its pre_tokenizer in tokenizer.json), never
    from a folder name: a Hugging Face snapshot folder is named by a commit hash."""
    sig = _signature(tokenizer_json.get("pre_tokenizer"))
    name = _KNOWN.get(sig)
    if name is not None:
        return name
    if any(_TEKKEN_MARK in str(part) for step in sig for part in step):
        raise SpecQuantError(f"{where}: Mistral's 'tekken' pre-tokenizer is not supported by the runtime "
                             f"(--pre-tokenizer NAME forces one of {', '.join(PRE_TOKENIZERS)}, at your risk)")
    raise SpecQuantError(f"{where}: unknown pre-tokenizer {json.dumps(tokenizer_json.get('pre_tokenizer'))[:120]}; "
                         f"pass --pre-tokenizer NAME to force one of {', '.join(PRE_TOKENIZERS)}")


def normalizer_name(tokenizer_json: dict, where: str) -> str | None:
    """specquant.tokenizer.normalizer of a byte-level BPE tokenizer.json: None (no normalizer) or one
    the runtime applies ("nfc"); any other normalizer is refused rather than silently skipped."""
    norm = tokenizer_json.get("normalizer")
    if norm is None:
        return None
    kind = norm.get("type") if isinstance(norm, dict) else None
    if kind == "Sequence" and not (norm.get("normalizers") or []):
        return None
    if kind in NORMALIZERS:
        return NORMALIZERS[kind]
    raise SpecQuantError(f"{where}: the normalizer {json.dumps(norm)[:120]} is not supported by the runtime "
                         f"(supported: none, {', '.join(NORMALIZERS)})")


def _find_steps(node: Any, kind: str, key: str) -> list[dict]:
    """Every step of type `kind` in a tokenizer.json normalizer / pre_tokenizer (Sequence flattened)."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [s for sub in node.get(key) or [] for s in _find_steps(sub, kind, key)]
    return [node] if node.get("type") == kind else []


def space_prefix_of_json(tokenizer_json: dict) -> tuple[bool, str | None]:
    """(add_space_prefix, specquant.tokenizer.space_prefix) of a SentencePiece tokenizer's tokenizer.json:
    a Prepend("▁") normalizer is sentencepiece's dummy prefix; a Metaspace pre-tokenizer says its
    prepend_scheme (or, before tokenizers 0.14, add_prefix_space); neither: no prefix."""
    if any(st.get("prepend") == "▁" for st in _find_steps(tokenizer_json.get("normalizer"), "Prepend", "normalizers")):
        return True, "sentencepiece"
    for st in _find_steps(tokenizer_json.get("pre_tokenizer"), "Metaspace", "pretokenizers"):
        scheme = st.get("prepend_scheme")
        if scheme is None:
            scheme = "always" if st.get("add_prefix_space", True) else "never"
        if scheme == "never":
            return False, None
        return True, "metaspace-first" if scheme == "first" else "metaspace-always"
    return False, None


def space_prefix_of_model(path: Path) -> tuple[bool, str | None]:
    """(add_space_prefix, specquant.tokenizer.space_prefix) of a SentencePiece tokenizer.model:
    normalizer_spec.add_dummy_prefix (sentencepiece's default: on)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    add = bool(proto.normalizer_spec.add_dummy_prefix)
    return add, "sentencepiece" if add else None


def _is_tiktoken(path: Path) -> bool:
    """A tiktoken BPE file (lines "base64-token rank", Llama 3's tokenizer.model), not SentencePiece."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    line = head.split(b"\n", 1)[0].split(b" ")
    return len(line) == 2 and line[1].strip().isdigit() and all(32 < c < 127 for c in line[0])


_SPM_USER_DEFINED = 4  # sentencepiece_model.proto: ModelProto.SentencePiece.Type.USER_DEFINED


def _spm_piece_types(path: Path) -> list[int]:
    """The type of each piece of a SentencePiece model (NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, ...)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return [p.type for p in proto.pieces]


def _spm_special_ids(path: Path) -> dict[str, int]:
    """bos / eos / unk / pad ids a SentencePiece model defines itself (trainer_spec; -1 = none)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor(model_file=str(path))
    ids = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": sp.pad_id()}
    return {k: v for k, v in ids.items() if 0 <= v < sp.get_piece_size()}


def hf_tokenizer_kv(folder: Path, config: ModelConfig, pre_tokenizer: str | None = None) -> dict[str, tuple[Any, Any]]:
    """tokenizer.* GGUF keys of an HF folder, built with gguf.vocab's helpers (like llama.cpp's converter).
    pre_tokenizer: force tokenizer.ggml.pre (--pre-tokenizer) instead of identifying it."""
    import gguf

    out: dict[str, tuple[Any, Any]] = {}
    normalizer: str | None = None  # SentencePiece: the model's own normalization is the SPM rules
    spm, tjson = folder / "tokenizer.model", folder / "tokenizer.json"
    tiktoken = spm.is_file() and _is_tiktoken(spm)
    if spm.is_file() and not tiktoken:
        vocab: Any = gguf.vocab.SentencePieceVocab(folder)  # SentencePiece (llama-2, mistral v0.1, tinyllama)
        model, pre = "llama", "default"
    elif tjson.is_file():
        try:
            tj = json.loads(tjson.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecQuantError(f"{tjson}: unreadable ({exc})") from None
        if (tj.get("model") or {}).get("type") != "BPE":
            raise SpecQuantError(f"{tjson}: a {(tj.get('model') or {}).get('type')} tokenizer without tokenizer.model "
                                 f"is not supported (byte-level BPE or SentencePiece)")
        pre_tokenizer = PRE_TOKENIZER_ALIASES.get(pre_tokenizer or "", pre_tokenizer)
        pre = pre_tokenizer or pre_tokenizer_name(tj, str(tjson))
        if pre_tokenizer and pre_tokenizer not in PRE_TOKENIZERS:
            raise SpecQuantError(f"--pre-tokenizer {pre_tokenizer}: not one of {', '.join(PRE_TOKENIZERS)}")
        normalizer = normalizer_name(tj, str(tjson))
        vocab = gguf.vocab.BpeVocab(folder)
        model = "gpt2"
    elif tiktoken:
        raise SpecQuantError(f"{spm}: a tiktoken vocabulary, not SentencePiece; the folder needs its tokenizer.json")
    else:
        raise SpecQuantError(f"{folder}: no tokenizer (tokenizer.json or tokenizer.model); "
                             f"copy the model's tokenizer files into the folder")
    toks, scores, types = [], [], []
    for text, score, ttype in vocab.all_tokens():
        toks.append(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)
        scores.append(float(score))
        types.append(int(ttype))
    if model == "llama":
        # gguf's SentencePieceVocab types no piece USER_DEFINED (its check is commented out): sentencepiece
        # takes those whole wherever they occur in the text (Gemma: <start_of_turn>, "\n\n", "\t\t", <sup>,
        # ...; never formed by merges), and so does the runtime with the type, so take it from the model
        for i, piece_type in enumerate(_spm_piece_types(spm)):
            if piece_type == _SPM_USER_DEFINED and i < len(types):
                types[i] = int(gguf.TokenType.USER_DEFINED)
    n_base = len(toks)
    lstrip: list[int] = []
    rstrip: list[int] = []
    if model == "llama" and tjson.is_file():
        try:
            tj = json.loads(tjson.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SpecQuantError(f"{tjson}: unreadable ({exc})") from None
    if model == "gpt2" or tjson.is_file():
        # tokenizer.json's added tokens (gguf's BpeVocab misses them when a vocab.json sits beside it,
        # as in Qwen2.5 repos; its SentencePieceVocab reads only added_tokens.json, which Phi-3-vision's
        # folder lacks: <|user|>, <|end|>, ... after the 32000 pieces): special ones are CONTROL, the
        # others USER_DEFINED, as llama.cpp writes them. A SentencePiece model's own unknown, control
        # and byte pieces keep their type, and a text that is not the piece's own is not taken.
        # lstrip / rstrip (the token takes the whitespace before / after it, Phi-3's <|assistant|>):
        # specquant.tokenizer.lstrip / rstrip list them
        keep = (int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.BYTE))
        for added in tj.get("added_tokens") or []:
            tid, text = added.get("id"), added.get("content")
            if not isinstance(tid, int) or not isinstance(text, str) or tid < 0:
                continue
            if model == "llama" and tid < n_base and toks[tid] != text:
                continue
            for flag, ids in (("lstrip", lstrip), ("rstrip", rstrip)):
                if added.get(flag):
                    ids.append(tid)
            if model == "llama" and tid < n_base and types[tid] in keep:
                continue
            while len(toks) <= tid:
                toks.append(f"[PAD{len(toks)}]")
                scores.append(-1000.0)
                types.append(int(gguf.TokenType.UNUSED))
            toks[tid] = text
            if model == "gpt2":
                scores[tid] = 0.0  # (SentencePiece: -1000 like gguf's added tokens; never merged into)
            types[tid] = int(gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED)
    if len(toks) > config.vocab_size:
        raise SpecQuantError(f"{folder}: the tokenizer has {len(toks)} tokens but the model only {config.vocab_size} "
                             f"embedding rows (vocab_size); the tokenizer does not belong to this model")
    # Pad to the model's vocab size like llama.cpp does, so token ids and embedding rows line up.
    for i in range(len(toks), config.vocab_size):
        toks.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    out["tokenizer.ggml.model"] = (model, None)
    out["tokenizer.ggml.pre"] = (pre, None)
    if normalizer is not None:
        out[NORMALIZER_KEY] = (normalizer, None)
    if model == "llama":
        # the dummy prefix: as the HF tokenizer does it when tokenizer.json is there (what users compare
        # with), else as tokenizer.model says; an architecture may force it off (Gemma, like llama.cpp)
        add_prefix, scheme = space_prefix_of_model(spm)
        if tjson.is_file():
            try:
                add_prefix, scheme = space_prefix_of_json(json.loads(tjson.read_text(encoding="utf-8")))
            except (OSError, ValueError) as exc:
                raise SpecQuantError(f"{tjson}: unreadable ({exc})") from None
        forced = ARCHS[config.arch].spm_space_prefix
        if forced is not None and forced != add_prefix:
            add_prefix, scheme = forced, "sentencepiece" if forced else None
        out["tokenizer.ggml.add_space_prefix"] = (add_prefix, None)
        if add_prefix and scheme != "sentencepiece":  # the runtime's default needs no key
            out[SPACE_PREFIX_KEY] = (scheme, None)
    for key, ids in ((LSTRIP_KEY, lstrip), (RSTRIP_KEY, rstrip)):
        if ids:
            out[key] = (sorted(set(ids)), (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32))
    out["tokenizer.ggml.tokens"] = (toks, None)
    out["tokenizer.ggml.scores"] = (scores, (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.FLOAT32))
    out["tokenizer.ggml.token_type"] = (types, (gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32))
    special = gguf.SpecialVocab(folder, load_merges=model == "gpt2", n_vocab=config.vocab_size)
    if special.merges:
        out["tokenizer.ggml.merges"] = (list(special.merges), None)
    ids = dict(special.special_token_ids)
    if model == "llama":  # no tokenizer_config.json / config.json (an original release): the model's own ids
        for typ, tid in _spm_special_ids(spm).items():
            ids.setdefault(typ, tid)
    for typ, tid in ids.items():
        out[f"tokenizer.ggml.{GGUF_ID_NAMES.get(typ, typ)}_token_id"] = (int(tid), gguf.GGUFValueType.UINT32)
    for typ, value in special.add_special_token.items():
        out[f"tokenizer.ggml.add_{typ}_token"] = (bool(value), None)
    if special.chat_template:
        tmpl = special.chat_template
        out["tokenizer.chat_template"] = (tmpl if isinstance(tmpl, str) else json.dumps(tmpl), None)
    return out
