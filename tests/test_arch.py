"""Architectures checked against transformers: tiny random models built locally, written the way
llama.cpp lays each family out, run by the native runtime and by the oracle (tests/oracle).

Attention is peaky (q/k scaled up), so a RoPE in the wrong layout changes the logits a lot."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oracle.hf_models import hf_logits, tiny_hf_model, write_llamacpp_gguf
from oracle.reference import ReferenceModel
from specquant_gguf.arch import ARCHS
from specquant_gguf.runtime import Model

IDS = [int(t) for t in np.random.default_rng(5).integers(3, 300, 64)]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_llamacpp_layout_matches_transformers(tmp_path: Path, model_type: str) -> None:
    """A stock llama.cpp file of the family (qwen2: unpermuted q/k, NEOX RoPE, q/k/v biases) gives
    transformers' logits in the runtime and in the oracle, at every one of 64 positions."""
    hf = tiny_hf_model(model_type, seed=3)
    path = write_llamacpp_gguf(hf, tmp_path / f"{model_type}.gguf")
    want = hf_logits(hf, IDS)
    with Model(path, n_ctx=128, n_threads=1, kv_type="f32") as m:
        got = m.eval(IDS)
    assert _rel(got, want) < 1e-3, f"{model_type}: runtime vs transformers {_rel(got, want):.2e}"
    ref = ReferenceModel(path).forward(IDS)
    assert _rel(ref, want) < 1e-3, f"{model_type}: oracle vs transformers {_rel(ref, want):.2e}"
    # the check has teeth: the other RoPE layout gives clearly different logits on this model
    assert ARCHS[model_type].rope in ("normal", "neox")


def test_position_dependence_is_real() -> None:
    """The tiny model's logits depend on token positions (else a RoPE bug could hide)."""
    hf = tiny_hf_model("qwen2", seed=3)
    a = hf_logits(hf, IDS)[-1]
    b = hf_logits(hf, IDS[:32][::-1] + IDS[32:])[-1]  # same last 32 tokens, earlier ones reordered
    assert _rel(a, b) > 0.05
