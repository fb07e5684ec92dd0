"""End-to-end tuning of the weight scales and norm gains (convert/tune.py) on tiny random models."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from specquant_gguf.cli import main
from specquant_gguf.convert import driver
from specquant_gguf.convert.calibrate import Calibration
from specquant_gguf.convert.driver import convert_blocks, resolve_tuning, sim_block
from specquant_gguf.convert.forward import block_forward, head_logits
from specquant_gguf.convert.quantize import fake_quant_act
from specquant_gguf.convert.recipe import Recipe
from specquant_gguf.convert.tune import TUNE_STEPS, auto_steps, tune_scales
from specquant_gguf.errors import UsageError
from specquant_gguf.gguf import read_model

from oracle.tinyllama import MemorySource, float_logits, tiny_config, write_gguf


def test_straight_through_quantizer_has_the_fake_quant_values_and_a_gradient() -> None:
    x = (torch.randn(3, 5, 128) * torch.linspace(0.1, 4, 128)).requires_grad_(True)
    for bits in (4, 8):
        y = fake_quant_act(x, 64, bits, straight_through=True)
        assert torch.allclose(y, fake_quant_act(x.detach(), 64, bits), atol=1e-5, rtol=1e-5)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _sim_kl(src: MemorySource, qblocks, r: Recipe, tokens: torch.Tensor) -> float:
    """KL(float || simulated file) per token, through the converter's exact fake-quant forward."""
    cfg = src.config
    emb = src.token_embd()
    with torch.no_grad():
        x = emb[tokens]
        for i, qb in enumerate(qblocks):
            norms, lin = sim_block(qb, r)
            x = block_forward(x, norms, cfg, lin=lin, layer=i)
        logp = F.log_softmax(head_logits(x, src.output_norm(), emb, cfg.rms_eps), -1)
        target = F.log_softmax(float_logits(src, tokens), -1)
    return float(F.kl_div(logp.flatten(0, 1), target.flatten(0, 1), log_target=True, reduction="batchmean"))


def _converted(windows: int, length: int, seed: int) -> tuple[MemorySource, Calibration, Recipe, list]:
    """A tiny model, random calibration windows, and its blocks converted without tuning."""
    src = MemorySource(tiny_config(n_layer=2), seed=3)
    tokens = torch.randint(3, src.config.vocab_size, (windows, length), generator=torch.Generator().manual_seed(seed))
    calib = Calibration(tokens, "test")
    r = Recipe(tune_steps=0)
    return src, calib, r, [qb for _, qb in convert_blocks(src, calib, r)]


def test_tuning_keeps_the_codes_and_brings_the_model_closer_to_float() -> None:
    src, calib, r, qblocks = _converted(8, 48, seed=1)
    codes = [{n: ql.q.clone() for n, ql in qb.linears.items()} for qb in qblocks]
    scales = [{n: ql.d.clone() for n, ql in qb.linears.items()} for qb in qblocks]
    before = _sim_kl(src, qblocks, r, calib.tokens)
    res = tune_scales(qblocks, src, calib.tokens, r, steps=40, lr=1e-3)
    after = _sim_kl(src, qblocks, r, calib.tokens)
    assert res.steps == 40 and res.kept and res.kl_after < res.kl_before
    assert after < 0.9 * before, (before, after)
    for qb, q0, d0 in zip(qblocks, codes, scales):
        for n, ql in qb.linears.items():
            assert torch.equal(ql.q, q0[n])  # the int4 codes are never changed
            assert ql.d.dtype == torch.float16 and torch.isfinite(ql.d.float()).all()
            assert not torch.equal(ql.d, d0[n])
        assert all(v.requires_grad is False for v in qb.norms.values())


def test_norm_gains_move_by_relative_steps() -> None:
    """A silenced channel (gain near 0, SmolLM2's massive activations) must stay silenced: the gains
    are tuned as gain·exp(t), so zeros stay zero, signs stay, and each moves by a bounded factor."""
    src, calib, r, qblocks = _converted(8, 48, seed=1)
    for qb in qblocks:
        for v in qb.norms.values():
            v[0], v[1] = 0.0, 1e-3
    gains = [{k: v.clone() for k, v in qb.norms.items()} for qb in qblocks]
    res = tune_scales(qblocks, src, calib.tokens, r, steps=40, lr=1e-3)
    assert res.kept
    bound = math.exp(40 * 1e-3 * 3.2)  # Adam moves a parameter by at most ~(1-β1)/sqrt(1-β2) = 3.2 lr a step
    for qb, g0 in zip(qblocks, gains):
        for k, v in qb.norms.items():
            assert v[0] == 0.0 and torch.equal(torch.sign(v), torch.sign(g0[k]))
            ratio = v[g0[k] != 0] / g0[k][g0[k] != 0]
            assert ratio.min() > 1 / bound and ratio.max() < bound
            assert not torch.equal(v, g0[k])


def test_default_steps_follow_the_model_size() -> None:
    small = tiny_config()
    llama8b = tiny_config(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, vocab=128256)
    assert auto_steps(small) == TUNE_STEPS
    assert auto_steps(llama8b) == 0 and resolve_tuning(Recipe(), llama8b).tune_steps == 0
    assert resolve_tuning(Recipe(), small).tune_steps == TUNE_STEPS
    assert resolve_tuning(Recipe(method="rtn", rotation="none", gptq=False, clip=False), small).tune_steps == 0
    assert resolve_tuning(Recipe(tune_steps=0), small).tune_steps == 0


def test_forced_tuning_of_a_model_too_large_for_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "tune_memory_bytes", lambda cfg: 1 << 60)
    with pytest.raises(UsageError, match="--tune-steps"):
        resolve_tuning(Recipe(tune_steps=4), tiny_config())
    assert resolve_tuning(Recipe(tune_steps=0), tiny_config()).tune_steps == 0


def test_tuned_file_records_its_steps_and_runs_like_its_reference(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from oracle.reference import ReferenceModel
    from specquant_gguf import Model

    monkeypatch.setenv("SPECQUANT_CACHE", str(tmp_path / "cache"))
    src = MemorySource(tiny_config(n_layer=2), seed=0)
    path = write_gguf(src, tmp_path / "tiny.f32.gguf")
    fast = ["--calib-windows", "2", "--calib-len", "32", "--threads", "1", "--quiet"]
    out = tmp_path / "tuned.sq4.gguf"
    assert main(["convert", str(path), "--out", str(out), "--tune-steps", "6", *fast]) == 0
    assert read_model(out).metadata["specquant.tune_steps"] == 6
    tokens = list(range(3, 40))
    ref = ReferenceModel(out).forward(tokens)
    with Model(out, n_threads=1, act_bits=4, kv_type="f32") as model:
        logits = model.eval(tokens)
    assert np.abs(logits - ref).max() / np.abs(ref).max() < 1e-3
    off = tmp_path / "off.sq4.gguf"
    assert main(["convert", str(path), "--out", str(off), "--tune-steps", "0", *fast]) == 0
    assert read_model(off).metadata["specquant.tune_steps"] == 0


@pytest.mark.parametrize("flags, message", [
    (["--tune-steps", "-1"], "--tune-steps must be in [0, 100000]"),
    (["--tune-steps", "5", "--method", "rtn"], "--tune-steps applies to --method specquant"),
    (["--tune-steps", "5", "--preset", "paper"], "--tune-steps applies to --method specquant"),
    (["--tune-steps", "5", "--method", "f16"], "--tune-steps N > 0 do not apply to --method f16"),
])
def test_bad_tune_flags_exit_2_with_one_line(tmp_path: Path, capsys, flags: list[str], message: str) -> None:
    assert main(["convert", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "o.gguf"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_tuning_that_does_not_help_changes_nothing() -> None:
    src, calib, r, qblocks = _converted(4, 32, seed=2)
    scales = [{n: ql.d.clone() for n, ql in qb.linears.items()} for qb in qblocks]
    norms = [{k: v.clone() for k, v in qb.norms.items()} for qb in qblocks]
    res = tune_scales(qblocks, src, calib.tokens, r, steps=6, lr=3.0)  # steps of e^±3 on every scale
    assert not res.kept and not res.kl_after < res.kl_before  # worse, or not even finite
    for qb, d0, n0 in zip(qblocks, scales, norms):
        assert all(torch.equal(ql.d, d0[n]) for n, ql in qb.linears.items())
        assert all(torch.equal(v, n0[k]) for k, v in qb.norms.items())
