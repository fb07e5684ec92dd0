"""The one registry of architecture facts: what a model family is, in every part of the project.

A new architecture is added here (one `Arch` row) and, for the native runtime, in
native/src/arch.c (the C twin of this table: name, RoPE mode, bias rule). Nothing else in Python
spells an architecture name, a linear layer list or a RoPE layout.

Terms:
- rope "normal": RoPE rotates pairs (2i, 2i+1) of each head. llama.cpp stores llama/mistral q/k rows
  permuted into that order. rope "neox": pairs (i, i + d/2), the order of Hugging Face weights;
  llama.cpp stores qwen2 unpermuted with NEOX RoPE.
- Our converter writes q/k in the row order of the family it writes (`written_as`): llama, mistral,
  qwen2 and phi3 become "llama" files (normal RoPE, q/k permuted; qwen2's q/k/v biases are optional
  tensors there); gemma2 stays a "gemma2" file laid out as llama.cpp's (NEOX, unpermuted), because
  its extra block parts (post-norms, soft-capping, a window on every other layer) have no place in a
  llama file. A llama file may carry a sliding window on every layer (Mistral v0.1, Phi-3).
- Gemma's RMSNorm multiplies by (1 + w); GGUF files (llama.cpp's and ours) store w + 1, so every
  runtime norm is the plain x / rms(x) * w (`norm_offset` is what is added at reading HF weights).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecQuantError

# The seven linear weights of a decoder block, in GGUF names and in file order.
LINEARS: tuple[str, ...] = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORMS: tuple[str, ...] = ("attn_norm", "ffn_norm")
# Gemma 2's norms of the attention output and of the feed-forward output (before each residual add),
# llama.cpp's names (blk.N.post_attention_norm.weight, blk.N.post_ffw_norm.weight)
POST_NORMS: tuple[str, ...] = ("post_attention_norm", "post_ffw_norm")
QKV_BIASES: tuple[str, ...] = ("attn_q_bias", "attn_k_bias", "attn_v_bias")
# Linears that read one input (one activation quantization, one smoothing λ), keyed by that input.
LINEAR_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("attn_q", "attn_k", "attn_v"),
    "attn_out": ("attn_output",),
    "ffn": ("ffn_gate", "ffn_up"),
    "ffn_down": ("ffn_down",),
}
INPUT_OF: dict[str, str] = {lin: group for group, lins in LINEAR_GROUPS.items() for lin in lins}


@dataclass(frozen=True)
class Arch:
    """Facts about one model family."""

    name: str  # the family, as general.architecture of a llama.cpp file says it
    hf_model_types: tuple[str, ...]  # config.json model_type values that mean this family
    rope: str  # how llama.cpp stores its q/k rows: "normal" (interleaved pairs) or "neox"
    qkv_bias: bool  # q/k/v projections carry biases
    written_as: str = "llama"  # general.architecture of the files our converter writes
    runtime: bool = True  # the native runtime loads the family's own llama.cpp files (a row in arch.c)
    fused: bool = False  # q/k/v and gate/up are fused tensors in the source (phi3); split on reading
    # Gemma 2's block (all False/0 for the llama family): post-attention / post-feed-forward norms,
    # GELU-tanh instead of SiLU in the gated MLP, embeddings scaled by sqrt(n_embd), HF norm weights
    # offset by norm_offset. swa_pattern: which layers a sliding window (ModelConfig.sliding_window)
    # applies to: p > 0, layers il % p < p - 1 (Gemma 2's alternating local layers); 0, every layer
    # (Mistral v0.1, Phi-3: a window on all layers, when the model has one)
    post_norms: bool = False
    gelu: bool = False
    embd_scale: bool = False
    norm_offset: float = 0.0
    swa_pattern: int = 0
    # tokenizer.ggml.add_space_prefix of a SentencePiece tokenizer, forced (None: as the tokenizer
    # itself says, hf_vocab.py); Gemma's tokenizer adds none (llama.cpp writes False for gemma2)
    spm_space_prefix: bool | None = None


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("llama", ("llama",), rope="normal", qkv_bias=False),
    Arch("mistral", ("mistral",), rope="normal", qkv_bias=False),
    Arch("qwen2", ("qwen2",), rope="neox", qkv_bias=True),
    # Phi-3: a llama block with fused qkv_proj / gate_up_proj, split into the seven linears on reading
    # (FORMAT.md); written as "llama". llama.cpp's own phi3 files (fused attn_qkv / ffn_up, NEOX q/k)
    # run directly too: the runtime takes each linear as a row range of the fused tensor.
    Arch("phi3", ("phi3",), rope="neox", qkv_bias=False, fused=True),
    # Gemma 2: its own file layout (llama.cpp's gemma2: NEOX q/k unpermuted, norms stored as w + 1)
    Arch("gemma2", ("gemma2",), rope="neox", qkv_bias=False, written_as="gemma2", post_norms=True, gelu=True,
         embd_scale=True, norm_offset=1.0, swa_pattern=2, spm_space_prefix=False),
)}


def stored_rope(name: str) -> str:
    """The q/k row order of the files the converter writes for source family `name` (the RoPE mode
    of its written_as family): "normal" (interleaved pairs) or "neox"."""
    return ARCHS[ARCHS[name].written_as].rope


def supported() -> str:
    return ", ".join(ARCHS)


def from_gguf(name: object, where: str) -> Arch:
    """The Arch of a GGUF file's general.architecture (SpecQuantError when unknown)."""
    arch = ARCHS.get(name) if isinstance(name, str) else None
    if arch is None:
        raise SpecQuantError(f"{where}: architecture {name!r} is not supported (supported: {supported()})")
    return arch


def from_hf(model_type: object, where: str) -> Arch:
    """The Arch of a Hugging Face config.json model_type (SpecQuantError when unknown)."""
    for arch in ARCHS.values():
        if model_type in arch.hf_model_types:
            return arch
    raise SpecQuantError(f"{where}: model_type {model_type!r} is not supported (supported: {supported()})")


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of one llama-family decoder (an instance of an Arch)."""

    arch: str  # source family, a key of ARCHS ("llama", "qwen2"); mistral reads as llama
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
    # RoPE scaling, as llama.cpp stores it: rope_freqs = per-pair frequency divisors (n_rot/2 values,
    # the rope_freqs.weight tensor; Llama-3.1 "llama3" scaling); rope_scale = linear factor (positions / it)
    rope_freqs: tuple[float, ...] | None = None
    rope_scale: float = 1.0
    # Gemma 2 (0 = off): tanh soft-capping of attention scores and of the final logits (cap·tanh(x/cap)),
    # and the attention scale (query_pre_attn_scalar^-0.5; 0 = head_dim^-0.5). sliding_window (0 = none):
    # a query sees the last sliding_window positions, itself included, on the layers Arch.swa_pattern
    # names (Gemma 2's local layers; every layer of the llama family: Mistral v0.1, Phi-3)
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    sliding_window: int = 0
    attn_scale: float = 0.0

    @property
    def family(self) -> Arch:
        return ARCHS[self.arch]

    @property
    def scale(self) -> float:
        """The attention score scale."""
        return self.attn_scale or self.head_dim ** -0.5

    def window(self, layer: int) -> int:
        """Positions a query of this layer sees (itself included); 0 = all (a global layer)."""
        p = self.family.swa_pattern
        return self.sliding_window if not p or layer % p < p - 1 else 0

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

    def validate(self, where: str = "model config") -> None:
        """Impossible shapes (zero or negative sizes, heads that do not divide) -> SpecQuantError."""
        ints = dict(n_layer=self.n_layer, n_embd=self.n_embd, n_ff=self.n_ff, n_head=self.n_head,
                    n_head_kv=self.n_head_kv, head_dim=self.head_dim, vocab_size=self.vocab_size)
        for key, value in ints.items():
            if not isinstance(value, int) or value <= 0:
                raise SpecQuantError(f"{where}: {key} = {value!r} is not a positive integer")
        if self.n_head % self.n_head_kv:
            raise SpecQuantError(f"{where}: {self.n_head} heads are not a multiple of {self.n_head_kv} KV heads")
        if self.head_dim % 2:
            raise SpecQuantError(f"{where}: head_dim {self.head_dim} is odd (RoPE needs pairs)")
        if isinstance(self.sliding_window, bool) or not isinstance(self.sliding_window, int) or self.sliding_window < 0:
            raise SpecQuantError(f"{where}: sliding_window = {self.sliding_window!r} is not a non-negative integer")
        if not (self.rms_eps > 0 and self.rope_base > 0):
            raise SpecQuantError(f"{where}: rms_norm_eps and rope_theta must be positive")
        if not self.rope_scale > 0:
            raise SpecQuantError(f"{where}: RoPE scaling factor {self.rope_scale} must be positive")
        if self.rope_freqs is not None and (len(self.rope_freqs) != self.head_dim // 2
                                            or not all(f > 0 for f in self.rope_freqs)):
            raise SpecQuantError(f"{where}: rope_freqs must be {self.head_dim // 2} positive factors")


def llama3_rope_freqs(theta: float, n_rot: int, factor: float, low_freq_factor: float, high_freq_factor: float,
                      original_ctx: int) -> tuple[float, ...]:
    """Llama-3.1 ("llama3") RoPE scaling as llama.cpp's converter computes rope_freqs.weight: for each
    pair i, the divisor of its frequency θ^(-2i/n_rot) (1 for short wavelengths, `factor` for long
    ones, a smooth blend between); float32 like llama.cpp's."""
    import math

    import numpy as np

    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot)))
    low_wavelen, high_wavelen = original_ctx / low_freq_factor, original_ctx / high_freq_factor
    out = []
    for freq in freqs.astype(np.float32):
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(float(factor))
        else:
            smooth = (original_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return tuple(float(np.float32(x)) for x in out)


def linear_tensor_names(n_layers: int) -> list[str]:
    """blk.N.<linear>.weight of every block, in file order."""
    return [f"blk.{i}.{part}.weight" for i in range(n_layers) for part in LINEARS]
