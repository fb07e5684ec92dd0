"""Model sources for the converter: local HF folders and GGUF files, read block by block.

Every source hands out weights as float32 torch tensors in *GGUF row order* of the file the converter
writes (arch.stored_rope): `attn_q`/`attn_k` rows permuted for interleaved-pair RoPE, exactly as
llama.cpp's converter writes llama models (a GGUF llama file already is in that order; HF safetensors
and qwen2 GGUF files, NeoX RoPE, are permuted here), except Gemma 2, whose files keep HF's half-split
order as llama.cpp's do. Gemma's norm weights are handed out as the file stores them: w + 1.
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
from ..arch import LINEARS, NORMS, POST_NORMS, QKV_BIASES, ModelConfig, stored_rope
from ..errors import SpecQuantError
from ..paths import regular_file
from .hf_vocab import LSTRIP_KEY, NORMALIZER_KEY, RSTRIP_KEY, SPACE_PREFIX_KEY, hf_tokenizer_kv
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

    def token_embd(self) -> torch.Tensor:  # (vocab, n_embd), float32 or the source's 16-bit type
        raise NotImplementedError

    def output_norm(self) -> torch.Tensor:
        raise NotImplementedError

    def output(self) -> torch.Tensor | None:  # (vocab, n_embd) or None when tied to token_embd
        raise NotImplementedError

    def block(self, i: int) -> Block:
        """Block i's tensors as float32, fresh copies the caller owns (the driver quantizes them in place)."""
        raise NotImplementedError

    def norms(self, i: int) -> Block:
        """Block i's pre-norm gains (attn_norm, ffn_norm) alone; sources override it to skip the linears."""
        blk = self.block(i)
        return {n: blk[n] for n in NORMS}

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
        norms = NORMS + (POST_NORMS if archs.ARCHS[self.config.arch].post_norms else ())
        for name in norms:
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
        scaling = self._field(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", "linear", None):
            raise SpecQuantError(f"{self.path}: RoPE scaling '{scaling}' is not supported (supported: linear, llama3)")
        rope_scale = float(self._field(f"{arch}.rope.scaling.factor", 1.0) if scaling == "linear"
                           else self._field(f"{arch}.rope.scale_linear", 1.0))
        longrope = [n for n in ("rope_factors_long.weight", "rope_factors_short.weight") if n in self.tensors]
        if longrope:  # Phi-3-128k: per-frequency factors switched by length, an attention factor
            raise SpecQuantError(f"{self.path}: tensor {longrope[0]}: LongRoPE scaling (Phi-3 128k) is not supported")
        rope_freqs = None
        if "rope_freqs.weight" in self.tensors:  # Llama-3.1 scaling, kept as it is
            rope_freqs = tuple(float(x) for x in self._tensor("rope_freqs.weight").reshape(-1))
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
            rope_freqs=rope_freqs, rope_scale=rope_scale,
            **(self._gemma2_config(arch, n_embd, n_head, head_dim, int(need("block_count"))) if family.post_norms
               else {"sliding_window": self._window(arch)}),
        )

    def _window(self, arch: str) -> int:
        """A llama-family file's sliding window on every layer (llama.cpp writes phi3.attention.sliding_window
        for Phi-3; absent: none), 0 when it cannot mask anything within context_length."""
        window = self._field(f"{arch}.attention.sliding_window", 0)
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise SpecQuantError(f"{self.path}: {arch}.attention.sliding_window = {window!r} is not a "
                                 f"non-negative integer")
        return effective_window(window, int(self._field(f"{arch}.context_length", 2048)))

    def _gemma2_config(self, arch: str, n_embd: int, n_head: int, head_dim: int, n_layer: int) -> dict[str, Any]:
        """A llama.cpp gemma2 file's keys, with llama.cpp's defaults where absent (its loader's: caps
        50 and 30, window 4096, scale by model size: 1/sqrt(n_embd/n_head) for the 46-layer 27B)."""
        scale = self._field(f"{arch}.attention.scale")
        if scale is None:
            scale = (n_embd / n_head if n_layer == 46 else head_dim) ** -0.5
        return dict(attn_softcap=float(self._field(f"{arch}.attn_logit_softcapping", 50.0)),
                    final_softcap=float(self._field(f"{arch}.final_logit_softcapping", 30.0)),
                    sliding_window=int(self._field(f"{arch}.attention.sliding_window", 4096)),
                    attn_scale=float(scale))

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

    def norms(self, i: int) -> Block:
        return {n: self._tensor(f"blk.{i}.{n}.weight") for n in NORMS}

    def block(self, i: int) -> Block:
        c = self.config
        post = POST_NORMS if archs.ARCHS[c.arch].post_norms else ()
        names = {n: f"blk.{i}.{n}.weight" for n in (*LINEARS, *NORMS, *post)}
        if self.config.qkv_bias:
            names.update({f"{n}_bias": f"blk.{i}.{n}.bias" for n in ("attn_q", "attn_k", "attn_v")})
        blk = {}
        if archs.ARCHS[c.arch].fused:  # llama.cpp phi3: attn_qkv = [q; k; v], ffn_up = [gate; up]
            qkv, up = self._tensor(f"blk.{i}.attn_qkv.weight"), self._tensor(f"blk.{i}.ffn_up.weight")
            if tuple(qkv.shape) != (c.q_dim + 2 * c.kv_dim, c.n_embd) or tuple(up.shape) != (2 * c.n_ff, c.n_embd):
                raise SpecQuantError(f"{self.path}: blk.{i}.attn_qkv / ffn_up have shapes {tuple(qkv.shape)} / "
                                     f"{tuple(up.shape)}, which do not match the metadata")
            blk["attn_q"], blk["attn_k"], blk["attn_v"] = (t.contiguous() for t in qkv.split([c.q_dim, c.kv_dim, c.kv_dim]))
            blk["ffn_gate"], blk["ffn_up"] = (t.contiguous() for t in up.split([c.n_ff, c.n_ff]))
            for n in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
                del names[n]
        blk.update({k: self._tensor(v) for k, v in names.items()})
        if archs.ARCHS[c.arch].rope != stored_rope(c.arch):  # llama.cpp's qwen2: NeoX order; we write llama
            for n, heads in (("attn_q", c.n_head), ("attn_k", c.n_head_kv)):
                blk[n] = permute_for_rope(blk[n], heads)
                if c.qkv_bias:
                    blk[f"{n}_bias"] = permute_for_rope(blk[f"{n}_bias"], heads)
        return self.check_block(blk, i)

    def tokenizer_kv(self) -> dict[str, tuple[Any, Any]]:
        import gguf

        out: dict[str, tuple[Any, Any]] = {}
        for key, field in self.reader.fields.items():
            if key.startswith("tokenizer.") or key in (NORMALIZER_KEY, SPACE_PREFIX_KEY, LSTRIP_KEY, RSTRIP_KEY):
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

# config.json RoPE defaults of transformers' own config classes when rope_theta is absent
HF_DEFAULT_THETA = 10000.0


def hf_rope(c: dict, where: str, head_dim: int) -> tuple[float, tuple[float, ...] | None, float]:
    """(rope_theta, rope_freqs, linear scale) of an HF config.json, in either layout:
    transformers <= 4 writes rope_theta and rope_scaling at the top level; transformers 5 writes both
    under "rope_parameters" ({"rope_type", "rope_theta", "factor", ...}). Nothing is defaulted silently:
    a missing theta is said on stderr, an unknown or contradictory setting is an error."""
    import sys

    params = c.get("rope_parameters")
    top = c.get("rope_scaling")
    if params is not None and not isinstance(params, dict) or top is not None and not isinstance(top, dict):
        raise SpecQuantError(f"{where}: rope_parameters / rope_scaling is not an object")
    params, top = params or {}, top or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise SpecQuantError(f"{where}: per-layer-type RoPE parameters ({', '.join(params)}) are not supported")
    thetas = {float(v) for v in (c.get("rope_theta"), params.get("rope_theta")) if v is not None}
    if len(thetas) > 1:
        raise SpecQuantError(f"{where}: rope_theta {c.get('rope_theta')} and rope_parameters.rope_theta "
                             f"{params.get('rope_theta')} disagree")
    if thetas:
        theta = thetas.pop()
    else:
        theta = HF_DEFAULT_THETA
        print(f"[convert] {where}: no rope_theta; using transformers' default {theta:g}", file=sys.stderr)
    scaling = {k: v for k, v in {**top, **params}.items() if k != "rope_theta"}
    for layout in (top, params):  # a key given in both layouts must agree
        for k, v in layout.items():
            if k in scaling and scaling[k] != v and k != "rope_theta":
                raise SpecQuantError(f"{where}: rope_scaling.{k} = {v!r} and rope_parameters.{k} = {scaling[k]!r} disagree")
    kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    partial = float(scaling.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) or 1.0)
    if partial != 1.0:
        raise SpecQuantError(f"{where}: partial rotary embeddings (partial_rotary_factor {partial:g}) are not supported")

    def num(key: str, default: float | None = None) -> float:
        v = scaling.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise SpecQuantError(f"{where}: RoPE scaling '{kind}' needs a positive {key} (got {v!r})")
        return float(v)

    if kind == "default":
        return theta, None, 1.0
    if kind == "linear":
        return theta, None, num("factor")
    if kind == "llama3":
        factors = archs.llama3_rope_freqs(theta, head_dim, num("factor"), num("low_freq_factor"),
                                          num("high_freq_factor"), num("original_max_position_embeddings"))
        return theta, factors, 1.0
    raise SpecQuantError(f"{where}: RoPE scaling '{kind}' is not supported (supported: linear, llama3)")


def hf_gemma2(c: dict, where: str, head_dim: int) -> dict[str, Any]:
    """Gemma 2's config.json fields -> ModelConfig fields. What the runtime cannot run (another MLP
    activation, another local/global layer pattern) is refused in one line."""
    act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise SpecQuantError(f"{where}: hidden_activation {act!r} is not supported for gemma2 (gelu_pytorch_tanh)")
    n_layer = int(c["num_hidden_layers"])
    want = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layer)]
    if c.get("layer_types") is not None and list(c["layer_types"]) != want:
        raise SpecQuantError(f"{where}: layer_types other than alternating sliding/full (even layers "
                             f"sliding) are not supported")

    def positive(key: str, default: float | None) -> float:
        v = c.get(key, default)
        if v is None:
            return 0.0  # a cap of None: no capping
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise SpecQuantError(f"{where}: {key} = {v!r} is not a positive number")
        return float(v)

    window = c.get("sliding_window", 4096)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise SpecQuantError(f"{where}: sliding_window = {window!r} is not a positive integer")
    scalar = positive("query_pre_attn_scalar", 256)
    return dict(attn_softcap=positive("attn_logit_softcapping", 50.0),
                final_softcap=positive("final_logit_softcapping", 30.0),
                sliding_window=int(window or 0), attn_scale=(scalar or head_dim) ** -0.5)


# transformers' sliding_window when config.json has none: MistralConfig's and Qwen2Config's default
# (Qwen2 applies it only with use_sliding_window); Phi3Config's is None (no window)
HF_DEFAULT_WINDOW = {"mistral": 4096, "qwen2": 4096}


def effective_window(window: int, ctx_len: int) -> int:
    """A window that masks something within the model's context, else 0: a window no shorter than the
    context length never leaves a position out (the runtime's n_ctx is at most context_length)."""
    return window if 0 < window < ctx_len else 0


def hf_llama_window(c: dict, where: str, n_layer: int, ctx_len: int) -> int:
    """The sliding window of a llama-family config.json (0: none) as transformers applies it: on every
    layer for Mistral and Phi-3 (create_sliding_window_causal_mask whenever config.sliding_window is
    set); never for Llama (LlamaModel reads no window); for Qwen2 only with use_sliding_window, on the
    layers layer_types (by default: those >= max_window_layers) call sliding. A Qwen2 mix of windowed
    and full layers has no place in a llama file: refused."""
    mtype = c.get("model_type")
    if mtype == "llama":
        return 0
    window = c.get("sliding_window", HF_DEFAULT_WINDOW.get(mtype))
    if mtype == "qwen2" and not c.get("use_sliding_window", False):
        window = None  # Qwen2Config.__post_init__: sliding_window = None unless use_sliding_window
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise SpecQuantError(f"{where}: sliding_window = {window!r} is not a positive integer")
    if mtype == "qwen2":
        windowed = _qwen2_windowed_layers(c, where, n_layer, window is not None)
        if windowed and window is None:
            raise SpecQuantError(f"{where}: layer_types name sliding_attention layers but there is no sliding "
                                 f"window (use_sliding_window is false)")
        if 0 < len(windowed) < n_layer:
            raise SpecQuantError(f"{where}: a sliding window on layers {windowed[0]}.. only (max_window_layers / "
                                 f"layer_types) is not supported: a window applies to all layers or none")
        window = window if windowed else None
    return effective_window(int(window or 0), ctx_len)


def _qwen2_windowed_layers(c: dict, where: str, n_layer: int, has_window: bool) -> list[int]:
    """The layers Qwen2 runs with its sliding window: layer_types' sliding_attention ones, or, without
    layer_types, those >= max_window_layers when there is a window (Qwen2Config.__post_init__)."""
    types = c.get("layer_types")
    if types is None:
        start = c.get("max_window_layers", 28)
        if isinstance(start, bool) or not isinstance(start, int):
            raise SpecQuantError(f"{where}: max_window_layers = {start!r} is not an integer")
        return [i for i in range(n_layer) if has_window and i >= start]
    kinds = {"sliding_attention", "full_attention"}
    if not isinstance(types, list) or len(types) != n_layer or not set(types) <= kinds:
        raise SpecQuantError(f"{where}: layer_types must list sliding_attention / full_attention for each of "
                             f"the {n_layer} layers")
    return [i for i, t in enumerate(types) if t == "sliding_attention"]


class HFSource(ModelSource):
    """A local Hugging Face folder: config.json, *.safetensors (optionally sharded), tokenizer files."""

    HF_PREFIX = "model.layers.{i}."
    HF_NAMES = {"attn_q": "self_attn.q_proj.weight", "attn_k": "self_attn.k_proj.weight",
                "attn_v": "self_attn.v_proj.weight", "attn_output": "self_attn.o_proj.weight",
                "ffn_gate": "mlp.gate_proj.weight", "ffn_up": "mlp.up_proj.weight",
                "ffn_down": "mlp.down_proj.weight", "attn_norm": "input_layernorm.weight",
                "ffn_norm": "post_attention_layernorm.weight", "attn_q_bias": "self_attn.q_proj.bias",
                "attn_k_bias": "self_attn.k_proj.bias", "attn_v_bias": "self_attn.v_proj.bias"}
    # Gemma 2: post_attention_layernorm is the attention output's norm; the FFN's input norm is
    # pre_feedforward_layernorm (llama.cpp's mapping)
    HF_POST_NAMES = {"ffn_norm": "pre_feedforward_layernorm.weight",
                     "post_attention_norm": "post_attention_layernorm.weight",
                     "post_ffw_norm": "post_feedforward_layernorm.weight"}

    def __init__(self, folder: Path, pre_tokenizer: str | None = None):
        self.folder = Path(folder)
        self.pre_tokenizer = pre_tokenizer
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
        try:
            n_embd, n_head = int(c["hidden_size"]), int(c["num_attention_heads"])
            head_dim = int(c.get("head_dim") or (n_embd // n_head if n_head > 0 else 0))  # validate() reports 0
            theta, rope_freqs, rope_scale = hf_rope(c, f"{self.folder}/config.json", head_dim)
            where = f"{self.folder}/config.json"
            ctx = int(c.get("max_position_embeddings", 2048))
            extra = (hf_gemma2(c, where, head_dim) if family.post_norms
                     else {"sliding_window": hf_llama_window(c, where, int(c["num_hidden_layers"]), ctx)})
            if family.qkv_bias is False and c.get("attention_bias") is True:
                raise SpecQuantError(f"{self.folder}/config.json: attention_bias is not supported for {mtype}")
            return ModelConfig(
                arch=family.name,
                name=str(c.get("_name_or_path") or self.folder.name).split("/")[-1] or self.folder.name,
                n_layer=int(c["num_hidden_layers"]), n_embd=n_embd, n_ff=int(c["intermediate_size"]),
                n_head=n_head, n_head_kv=int(c.get("num_key_value_heads") or n_head), head_dim=head_dim,
                rope_base=theta, rms_eps=float(c.get("rms_norm_eps", 1e-6)),
                vocab_size=int(c["vocab_size"]), ctx_len=ctx,
                # tie_word_embeddings' default: True for Gemma, False for the llama family
                tied=bool(c.get("tie_word_embeddings", family.post_norms)), qkv_bias=family.qkv_bias,
                rope_freqs=rope_freqs, rope_scale=rope_scale, **extra,
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

    def _tensor(self, name: str, keep_dtype: bool = False) -> torch.Tensor:
        """A tensor read from its memory-mapped shard, as float32 (keep_dtype: in the file's own
        precision, e.g. the bf16 embeddings of an 8B model, 1 GB instead of 2)."""
        from safetensors import safe_open

        path = self._index.get(name)
        if path is None:
            raise SpecQuantError(f"{self.folder}: tensor {name} is missing")
        if getattr(self, "_as_views", False):
            view = self._mapped(path, name)
            if view is not None:
                return view
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
        if keep_dtype and t.dtype in (torch.float32, torch.float16, torch.bfloat16):
            return t.contiguous()
        return t.to(torch.float32).contiguous()

    def token_embd(self) -> torch.Tensor:  # in the file's precision: callers take .float() of what they use
        return self._tensor("model.embed_tokens.weight", keep_dtype=True)

    def _norm(self, name: str) -> torch.Tensor:
        """A norm weight as the file stores it: Gemma's (1 + w) folded into w + 1."""
        w = self._tensor(name)
        offset = archs.ARCHS[self.config.arch].norm_offset
        return w + offset if offset else w

    def output_norm(self) -> torch.Tensor:
        return self._norm("model.norm.weight")

    def output(self) -> torch.Tensor | None:
        if self.config.tied or "lm_head.weight" not in self._index:
            return None
        return self._tensor("lm_head.weight", keep_dtype=True)

    def norms(self, i: int) -> Block:
        return {n: self._norm(self.HF_PREFIX.format(i=i) + self.HF_NAMES[n]) for n in NORMS}

    def block(self, i: int) -> Block:
        c = self.config
        prefix = self.HF_PREFIX.format(i=i)
        if archs.ARCHS[c.arch].fused:  # phi3: qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows
            qkv = self._tensor(prefix + "self_attn.qkv_proj.weight")
            gate_up = self._tensor(prefix + "mlp.gate_up_proj.weight")
            if tuple(qkv.shape) != (c.q_dim + 2 * c.kv_dim, c.n_embd) or tuple(gate_up.shape) != (2 * c.n_ff, c.n_embd):
                raise SpecQuantError(f"{self.folder}: layer {i} fused qkv_proj {tuple(qkv.shape)} / gate_up_proj "
                                     f"{tuple(gate_up.shape)} do not match the config")
            blk = dict(zip(("attn_q", "attn_k", "attn_v"), (t.contiguous() for t in qkv.split(
                [c.q_dim, c.kv_dim, c.kv_dim]))))
            blk["ffn_gate"], blk["ffn_up"] = (t.contiguous() for t in gate_up.split([c.n_ff, c.n_ff]))
            names = ["attn_output", "ffn_down", *NORMS]
        else:
            blk = {}
            names = [n for n in (*LINEARS, *NORMS)] + (list(QKV_BIASES) if c.qkv_bias else [])
        hf_names = self.HF_NAMES
        if archs.ARCHS[c.arch].post_norms:
            hf_names = {**hf_names, **self.HF_POST_NAMES}
            names += list(POST_NORMS)
        blk.update({n: (self._norm if "norm" in n else self._tensor)(prefix + hf_names[n]) for n in names})
        if stored_rope(c.arch) == "normal":  # HF rows are in NeoX order
            for n, heads in (("attn_q", c.n_head), ("attn_k", c.n_head_kv)):
                blk[n] = permute_for_rope(blk[n], heads)
                if c.qkv_bias:
                    blk[f"{n}_bias"] = permute_for_rope(blk[f"{n}_bias"], heads)
        return self.check_block(blk, i)

    def block_view(self, i: int) -> Block:
        """Block i without copying its weights: read-only views of the memory-mapped shards in the
        file's own 16/32-bit type (file pages, which the kernel may drop and re-read, so a model
        larger than RAM can still be run token by token); only re-ordered tensors (q/k) are copies.
        For the self-generated calibration text of large models."""
        self._as_views = True
        try:
            return self.block(i)
        finally:
            self._as_views = False

    def _mapped(self, path: Path, name: str) -> torch.Tensor | None:
        """A zero-copy view of one safetensors tensor, or None (other dtypes, unreadable header)."""
        import warnings

        maps = self.__dict__.setdefault("_maps", {})
        if path not in maps:
            try:
                with open(regular_file(path, "weights file"), "rb") as fh:
                    n = int.from_bytes(fh.read(8), "little")
                    header = json.loads(fh.read(n))
                maps[path] = (8 + n, header, np.memmap(path, dtype=np.uint8, mode="r"))
            except (OSError, ValueError):
                return None
        base, header, mm = maps[path]
        info = header.get(name) or {}
        dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}.get(info.get("dtype"))
        if dtype is None:
            return None
        start, end = info["data_offsets"]
        with warnings.catch_warnings():  # read-only on purpose: nothing writes to these weights
            warnings.simplefilter("ignore")
            t = torch.frombuffer(mm[base + start:base + end], dtype=dtype)
        return t.reshape(info["shape"])

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
        if getattr(self, "_tokenizer_kv", None) is None:  # built once (the driver asks before converting)
            self._tokenizer_kv = hf_tokenizer_kv(self.folder, self.config, self.pre_tokenizer)
        return self._tokenizer_kv


def open_source(model: str, pre_tokenizer: str | None = None) -> ModelSource:
    """MODEL (folder, GGUF file, short name or HF repo id) -> its source. pre_tokenizer forces
    tokenizer.ggml.pre of an HF folder (--pre-tokenizer)."""
    path = resolve(model)
    if path.is_dir():
        return HFSource(path, pre_tokenizer)
    regular_file(path, "model")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise SpecQuantError(f"{path}: not a GGUF file and not a Hugging Face folder")
    return GGUFSource(path)


def iter_blocks(source: ModelSource) -> Iterator[tuple[int, Block]]:
    for i in range(source.config.n_layer):
        yield i, source.block(i)
