"""End-to-end tuning of the weight scales and norm gains by distillation (after GPTQ, before writing).

GPTQ fixes every int4 code against its own layer's float inputs. It cannot see how the 4-bit
activations and the codes of all the other layers add up by the time they reach the logits. This
step keeps every code and re-fits the continuous numbers the file already stores: each group's fp16
scale d (as d·exp(s), one s per group) and each block's RMSNorm gains (as gain·exp(t)), so that the
simulated model's next-token distribution matches the float model's on the calibration windows (KL
divergence, Adam, straight-through rounding of the activations). The file format and the runtime
are unchanged: the same tensors, other values.

It holds the float model and the quantized one in memory and back-propagates through both, so it
is for small models (TUNE_MAX_PARAMS; larger ones skip it unless asked). docs/RESULTS.md, issue 16.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..arch import ModelConfig
from . import spectral
from .block import QBlock
from .calibrate import linear_params
from .forward import LinearFn, block_forward, embed_tokens, head_logits
from .qlinear import shared_input_fn
from .quantize import fake_quant_act
from .recipe import Recipe
from .rotation import hadamard
from .sources import ModelSource

# steps of one calibration window each (512 tokens: ~6 s per step for SmolLM2-135M on 2 cores)
TUNE_STEPS = 48
TUNE_LR = 2e-3
# linear parameters above which the default recipe skips the tuning: every step runs the float and
# the quantized model forward and the quantized one backward. Measured at Qwen2.5-0.5B's shape
# (0.36e9, random weights, 2 cores): ~37 s a step (48 steps: ~30 min) and +5 GB of memory, too much
# for a default; SmolLM2-135M (0.11e9): 7 s a step, +1 GB
TUNE_MAX_PARAMS = 0.2e9


def tune_memory_bytes(cfg: ModelConfig) -> int:
    """About what tuning needs on top of the conversion: per linear parameter the float model (fp32),
    the codes (int8) and allocator slack; the embeddings and head in fp32 with their gradients' share;
    the logits of a 512-token window (both models, log-softmax and gradients); one block's
    dequantized weights and intermediates at a time (_logits recomputes blocks in the backward pass).
    Measured at Qwen2.5-0.5B's shape: +5.2 GB of RSS, this estimate 5.4 GB."""
    return int(6 * linear_params(cfg) + 10 * cfg.vocab_size * cfg.n_embd + 6 * 4 * 512 * cfg.vocab_size)


def auto_steps(cfg: ModelConfig) -> int:
    """The default number of steps for a model: TUNE_STEPS, or 0 above TUNE_MAX_PARAMS."""
    return TUNE_STEPS if linear_params(cfg) <= TUNE_MAX_PARAMS else 0


@dataclass
class TuneResult:
    steps: int
    kl_before: float  # mean KL (nats per token) on the check windows with the GPTQ scales
    kl_after: float  # the same with the tuned scales and gains
    kept: bool  # False: tuning did not lower kl_before, and the GPTQ values were left as they were
    seconds: float


class _TunedBlock:
    """One block's trainable numbers and its simulated linears. Both the scales and the norm gains
    are tuned as log offsets (d·exp(s), gain·exp(t)): every step then moves each by a relative
    amount, so a gain that silences a channel (SmolLM2's massive activations: < 0.1 × the median)
    stays small instead of taking the same absolute steps as a gain of 1."""

    def __init__(self, qb: QBlock, r: Recipe) -> None:
        self.qb, self.r = qb, r
        sq4 = {n: ql for n, ql in qb.linears.items() if ql.kind == "sq4"}
        self.log_scale = {n: torch.zeros(ql.d.shape, requires_grad=True) for n, ql in sq4.items()}
        self.gain0 = {k: v.detach().clone().float() for k, v in qb.norms.items()}
        self.log_gain = {k: torch.zeros_like(v, requires_grad=True) for k, v in self.gain0.items()}
        self.fixed = {n: ql.weight.float() for n, ql in qb.linears.items() if ql.kind != "sq4"}

    def params(self) -> list[torch.Tensor]:
        return [*self.log_scale.values(), *self.log_gain.values()]

    def norms(self) -> dict[str, torch.Tensor]:
        return {k: g * torch.exp(self.log_gain[k]) for k, g in self.gain0.items()}

    def scales(self, name: str) -> torch.Tensor:
        return self.qb.linears[name].d.float() * torch.exp(self.log_scale[name])

    def linear_fn(self) -> LinearFn:
        rotate = self.r.rotation == "wht"

        def quant(name: str, x: torch.Tensor) -> torch.Tensor:
            ql = self.qb.linears[name]
            if ql.kind != "sq4":
                return x
            xr = _wht(x, ql.group) if rotate else x
            return fake_quant_act(xr, ql.group, self.r.act_bits_of(name), straight_through=True)

        def apply(name: str, x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
            ql = self.qb.linears[name]
            if ql.kind != "sq4":
                y = x @ self.fixed[name].t()
            else:
                w = ql.q.float() * self.scales(name).repeat_interleave(ql.group, dim=1)
                y = xq @ w.t()
                if ql.k_max > 0:
                    y = y + spectral.branch(x, ql.coef, ql.ks, ql.axis, ql.shape[0]).to(y.dtype)
            return y + ql.bias if ql.bias is not None else y

        return shared_input_fn(quant, apply)

    def store(self) -> None:
        """Writes the tuned values into the QBlock (scales rounded to the file's fp16)."""
        with torch.no_grad():
            for name in self.log_scale:
                ql = self.qb.linears[name]
                ql.d = self.scales(name).clamp(max=65504.0).to(torch.float16)
            self.qb.norms = {k: v.detach().clone() for k, v in self.norms().items()}


_HADAMARD: dict[int, torch.Tensor] = {}


def _wht(x: torch.Tensor, group: int) -> torch.Tensor:
    """rotation.wht_groups as one matrix product (the same values up to fp32 rounding; autograd
    through one matmul is much cheaper than through log2(G) butterfly levels)."""
    h = _HADAMARD.get(group)
    if h is None:
        h = _HADAMARD[group] = hadamard(group, torch.float32)
    return (x.reshape(-1, group) @ h).reshape(x.shape)


def _logits(x: torch.Tensor, blocks: list[tuple[dict[str, torch.Tensor], LinearFn | None]], cfg: ModelConfig,
            norm: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Logits of the blocks' model. When gradients are recorded, each block is recomputed in the
    backward pass instead of keeping its intermediates (dequantized weights, activations) for all
    blocks at once: ~25 % more compute, and memory of one block instead of the whole model."""
    for i, (weights, lin) in enumerate(blocks):
        if torch.is_grad_enabled():
            x = checkpoint(block_forward, x, weights, cfg, lin, layer=i, use_reentrant=False)
        else:
            x = block_forward(x, weights, cfg, lin=lin, layer=i)
    return head_logits(x, norm, head, cfg.rms_eps, cfg.final_softcap)


CHECK_WINDOWS = 4  # calibration windows the KL is checked on before and after tuning


def tune_scales(qblocks: list[QBlock], source: ModelSource, tokens: torch.Tensor, r: Recipe, steps: int,
                lr: float = TUNE_LR, seed: int = 0,
                progress: Callable[[int], None] | None = None) -> TuneResult:
    """Tunes the QBlocks in place: `steps` Adam steps (cosine-decayed learning rate), each on one
    calibration window (rows of `tokens`, drawn without replacement, reshuffled every pass) against
    the float `source`. The KL on CHECK_WINDOWS windows is measured before and after; when tuning
    did not lower it (rounding of the activations makes the loss jumpy), nothing is changed."""
    t0 = time.time()
    cfg = source.config
    teacher = [(source.block(i), None) for i in range(cfg.n_layer)]
    emb = source.token_embd().float()
    head = source.output()
    head = emb if head is None else head.float()
    norm = source.output_norm().float()
    tuned = [_TunedBlock(qb, r) for qb in qblocks]

    def kl(window: torch.Tensor) -> torch.Tensor:
        x = embed_tokens(window.unsqueeze(0), emb, cfg)
        with torch.no_grad():
            target = F.log_softmax(_logits(x, teacher, cfg, norm, head).float(), -1)
        student = [(tb.norms(), tb.linear_fn()) for tb in tuned]
        logp = F.log_softmax(_logits(x, student, cfg, norm, head).float(), -1)
        return F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean")

    check = torch.linspace(0, tokens.shape[0] - 1, min(CHECK_WINDOWS, tokens.shape[0])).round().long().tolist()

    def check_kl() -> float:
        with torch.no_grad():
            return sum(float(kl(tokens[i])) for i in check) / len(check)

    before = check_kl()
    opt = torch.optim.Adam([p for tb in tuned for p in tb.params()], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        if not order:
            order = torch.randperm(tokens.shape[0], generator=gen).tolist()
        loss = kl(tokens[order.pop()])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress:
            progress(1)
    after = check_kl()
    kept = after < before
    if kept:
        for tb in tuned:
            tb.store()
    return TuneResult(steps, before, after, kept, time.time() - t0)
