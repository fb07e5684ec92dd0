"""Model sources for the converter: local HF folders and GGUF files, read block by block.

Every source hands out weights as float32 torch tensors in *GGUF row order*: `attn_q`/`attn_k` rows
permuted for interleaved-pair RoPE, exactly as llama.cpp's converter writes llama models. A GGUF llama
file already is in that order; HF safetensors and qwen2 GGUF files (NeoX RoPE) are permuted here.
Blocks are loaded one at a time (safetensors and GGUF are both memory-mapped), so the converter never
holds more than one block's weights in fp32 (plus the embeddings).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import arch as archs
from ..arch import LINEARS, NORMS, QKV_BIASES, ModelConfig
from ..errors import SpecQuantError
from ..paths import regular_file
from .hf_vocab import hf_tokenizer_kv
from .hub import resolve

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
        self.config.validate(str(self.path))

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
        family = archs.from_gguf(arch, str(self.path))
        if self._field("general.type", "model") not in ("model", None):
            raise SpecQuantError(f"{self.path}: not a model file (general.type = {self._field('general.type')})")

        def need(key: str) -> Any:
            v = self._field(f"{arch}.{key}")
            if v is None:
                raise SpecQuantError(f"{self.path}: metadata key {arch}.{key} is missing")
            return v

        n_embd, n_head = int(need("embedding_length")), int(need("attention.head_count"))
        n_head_kv = int(self._field(f"{arch}.attention.head_count_kv", n_head))
        head_dim = int(self._field(f"{arch}.attention.key_length", n_embd // n_head if n_head > 0 else 0))
        rope_dim = int(self._field(f"{arch}.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise SpecQuantError(f"{self.path}: partial RoPE (rope dim {rope_dim} != head dim {head_dim}) is not supported")
        if self._field(f"{arch}.rope.scaling.type", "none") not in ("none", None):
            raise SpecQuantError(f"{self.path}: RoPE scaling is not supported")
        if "token_embd.weight" not in self.tensors:
            raise SpecQuantError(f"{self.path}: no token_embd.weight tensor")
        vocab = int(self.tensors["token_embd.weight"].shape[1])
        return ModelConfig(
            arch=family.name,
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
        if archs.ARCHS[self.config.arch].rope == "neox":  # llama.cpp keeps it in NeoX order; we store interleaved pairs
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
        from ..gguf import read_model
        from ..gguf.vocab import TextTokenizer

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
        self.config.validate(str(self.folder / "config.json"))
        self._index = self._index_tensors()
        self._open: dict[Path, Any] = {}

    def _read_config(self) -> ModelConfig:
        c = self.hf_config
        mtype = c.get("model_type")
        family = archs.from_hf(mtype, str(self.folder))
        for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
            if key in c and (isinstance(c[key], bool) or not isinstance(c[key], int)):
                raise SpecQuantError(f"{self.folder}/config.json: {key} = {c[key]!r} is not an integer")
        if c.get("rope_scaling"):
            raise SpecQuantError(f"{self.folder}: RoPE scaling {c['rope_scaling']} is not supported")
        try:
            n_embd, n_head = int(c["hidden_size"]), int(c["num_attention_heads"])
            head_dim = int(c.get("head_dim") or (n_embd // n_head if n_head > 0 else 0))  # validate() reports 0
            return ModelConfig(
                arch=family.name,
                name=str(c.get("_name_or_path") or self.folder.name).split("/")[-1] or self.folder.name,
                n_layer=int(c["num_hidden_layers"]), n_embd=n_embd, n_ff=int(c["intermediate_size"]),
                n_head=n_head, n_head_kv=int(c.get("num_key_value_heads") or n_head), head_dim=head_dim,
                rope_base=float(c.get("rope_theta", 10000.0)), rms_eps=float(c.get("rms_norm_eps", 1e-6)),
                vocab_size=int(c["vocab_size"]), ctx_len=int(c.get("max_position_embeddings", 2048)),
                tied=bool(c.get("tie_word_embeddings", False)), qkv_bias=family.qkv_bias,
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise SpecQuantError(f"{self.folder}/config.json: missing or bad field ({type(exc).__name__}: {exc})") from None

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
            try:
                with safe_open(str(regular_file(f, "weights file")), framework="pt") as h:
                    out.update({k: f for k in h.keys()})
            except SpecQuantError:
                raise
            except Exception as exc:  # safetensors raises its own error types (truncated, corrupt header)
                raise SpecQuantError(f"{f}: unreadable safetensors file ({_first_line(exc)})") from None
        return out

    def _tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self._index.get(name)
        if path is None:
            raise SpecQuantError(f"{self.folder}: tensor {name} is missing")
        if path not in self._open:
            try:
                self._open[path] = safe_open(str(regular_file(path, "weights file")), framework="pt")
            except SpecQuantError:
                raise
            except Exception as exc:
                raise SpecQuantError(f"{path}: unreadable safetensors file ({_first_line(exc)})") from None
        try:
            t = self._open[path].get_tensor(name)
        except Exception as exc:  # a shard index naming a tensor its file lacks, a truncated file
            raise SpecQuantError(f"{path}: cannot read tensor {name} ({_first_line(exc)})") from None
        return t.to(torch.float32).contiguous()

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
        names = [n for n in (*LINEARS, *NORMS)] + (list(QKV_BIASES) if c.qkv_bias else [])
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


def open_source(model: str) -> ModelSource:
    path = resolve(model)
    if path.is_dir():
        return HFSource(path)
    regular_file(path, "model")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise SpecQuantError(f"{path}: not a GGUF file and not a Hugging Face folder")
    return GGUFSource(path)


def iter_blocks(source: ModelSource) -> Iterator[tuple[int, Block]]:
    for i in range(source.config.n_layer):
        yield i, source.block(i)
