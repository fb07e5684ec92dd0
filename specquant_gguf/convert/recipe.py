"""The conversion recipe: which method, which groups, which searches (one frozen dataclass), and the
recipe each --method / --preset stands for."""
from __future__ import annotations

from dataclasses import dataclass

# clipping ratios of the per-group weight scale search: 1.00 ... 0.55 (or none)
CLIP_RATIOS: tuple[float, ...] = tuple(round(1.0 - 0.05 * i, 2) for i in range(10))
NO_CLIP: tuple[float, ...] = (1.0,)
METHODS = ("specquant", "smoothquant", "rtn", "f16", "q8")
QUANT_METHODS = ("specquant", "smoothquant", "rtn")
DEFAULT_ALPHA_GRID: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
# the linear kinds of a block (arch.LINEAR_GROUPS), in file order: what --a8-linears may name
LINEAR_KINDS: tuple[str, ...] = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# what the default recipe keeps at 8-bit activations while the rest runs at 4 (issue 16). ffn_down's
# input, SiLU(gate)·up, is the widest and heaviest-tailed activation of a block and the one whose
# 4-bit grid costs most: SmolLM2-135M at A4 36.42 -> 35.67 PPL (1.216x -> 1.191x f16), the same
# bits per weight; A8 runs (every CPU's default) are unchanged. Its cost is on CUDA's int4 path
# only: that matmul runs at the int8 rate (docs/RESULTS.md, "ffn_down's input at 8 bits in the
# default W4A4 file")
DEFAULT_A8_LINEARS: tuple[str, ...] = ("ffn_down",)
# kinds that read one quantized input: listed together or not at all
SHARED_INPUTS: tuple[tuple[str, ...], ...] = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))


def parse_a8_linears(names: "list[str] | tuple[str, ...]") -> tuple[str, ...]:
    """The linear kinds whose input activations stay 8-bit when the SQ4 layers run at 4 bits
    (specquant.act_bits_a8_linears, docs/FORMAT.md), in file order; ValueError with a one-line
    message for an unknown or repeated kind, or a shared input listed in part."""
    seen: list[str] = []
    for n in names:
        if n not in LINEAR_KINDS:
            raise ValueError(f"{n!r} is not a linear kind ({', '.join(LINEAR_KINDS)})")
        if n in seen:
            raise ValueError(f"{n!r} is listed twice")
        seen.append(n)
    for group in SHARED_INPUTS:
        inside = [n for n in group if n in seen]
        if inside and len(inside) != len(group):
            raise ValueError(f"{', '.join(group)} share one quantized input: list all of them or none")
    return tuple(n for n in LINEAR_KINDS if n in seen)


# the α search of a large model's default recipe (above calibrate.BIG_MODEL_PARAMS or --large-model yes)
LARGE_MODEL_SEARCH: dict = {"search_rows": 512, "search_ratios": (1.0, 0.85, 0.7)}


RESIDUAL_ROTATIONS: tuple[str, ...] = ("none", "hadamard", "random")


@dataclass(frozen=True)
class Recipe:
    method: str = "specquant"
    preset: str = "default"
    act_bits: int = 4
    group_size: int = 64  # 0 = one group per row
    alpha: float | None = None  # None = per-group search over alpha_grid
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    rotation: str = "wht"
    # orthogonal rotation of the residual stream merged into the weights (residual.py): one of
    # RESIDUAL_ROTATIONS
    residual_rotation: str = "none"
    gptq: bool = True
    act_order: bool = False
    clip: bool = True
    damp: float = 0.01
    spectral_k: int = 0
    spectral_axis: str = "in"
    spectral_rule: str = "flat"
    spectral_temp: float = 1.0
    search_tokens: int = 512
    # the α search is a proxy (RTN instead of GPTQ), so it measures each linear's error on at most
    # search_rows output rows (evenly spaced; 0 = all) with the clipping ratios search_ratios (None =
    # the recipe's 10). Large models get LARGE_MODEL_SEARCH instead (driver.convert): at 8B shape
    # one block's search takes 10 s instead of ~145 s; on SmolLM2 it would cost +0.5 % PPL
    # (docs/RESULTS.md, "Conversion at Llama-3.1-8B shape").
    search_rows: int = 2048
    search_ratios: tuple[float, ...] | None = None
    search_gptq: bool = False  # use GPTQ (not RTN) inside the α search (slower)
    propagate: str = "float"  # calibration activations through the float or the quantized block
    head_type: str = "q8_0"
    # linear kinds whose input activations stay 8-bit when the SQ4 layers run at 4 bits: the
    # converter calibrates them at 8 and writes specquant.act_bits_a8_linears (parse_a8_linears)
    a8_linears: tuple[str, ...] = ()
    # steps of end-to-end tuning of the weight scales and norm gains against the float model
    # (tune.py); None = the default for the model's size (tune.auto_steps), resolved by the driver
    tune_steps: int | None = None

    @property
    def quantized(self) -> bool:
        return self.method in QUANT_METHODS

    @property
    def smoothing(self) -> bool:
        return self.method in ("specquant", "smoothquant")

    @property
    def needs_calibration(self) -> bool:
        """Smoothing, GPTQ and the activation-aware spectral branch read calibration statistics;
        plain RTN does not."""
        return self.quantized and (self.smoothing or self.gptq or self.spectral_k > 0)

    @property
    def ratios(self) -> tuple[float, ...]:
        return CLIP_RATIOS if self.clip else NO_CLIP

    def act_bits_of(self, *names: str) -> int:
        """Activation bits of the input that the linears `names` read: 8 when any is an a8 linear."""
        return 8 if self.act_bits < 8 and any(n in self.a8_linears for n in names) else self.act_bits

    def group_for(self, c_in: int) -> int:
        return self.group_size or c_in

    def mean_alpha(self, alphas: list[float]) -> float:
        return float(sum(alphas) / len(alphas)) if alphas else (self.alpha if self.alpha is not None else 0.0)


def method_defaults(method: str, preset: str = "default") -> Recipe:
    """The recipe each --method / --preset stands for (flags may override parts of it)."""
    if preset == "paper":  # the paper's literal reading: per-row weights, per-token acts, α=0.5, fixed K
        return Recipe(method="specquant", preset="paper", group_size=0, alpha=0.5, rotation="none",
                      gptq=False, clip=False, spectral_k=16, spectral_axis="in", spectral_rule="flat")
    if method == "specquant":
        return Recipe(a8_linears=DEFAULT_A8_LINEARS)
    if method == "smoothquant":
        return Recipe(method=method, alpha=0.5, rotation="none", gptq=False, clip=False)
    if method == "rtn":
        return Recipe(method=method, alpha=None, rotation="none", gptq=False, clip=False)
    return Recipe(method=method, rotation="none", gptq=False, clip=False)
