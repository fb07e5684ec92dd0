"""Model(..., backend=): choosing the CPU or the CUDA backend, on tiny synthetic files.

On a machine without a usable GPU (or a library built without CUDA) backend="cuda" must fail with
the C library's reason and "auto" must run on the CPU; where the GPU works, "cuda" must run there
and agree with the CPU (native/tests/test_model_cuda.c checks that closely).
"""
from __future__ import annotations

import numpy as np
import pytest

from specquant_gguf.errors import SpecQuantError, UsageError
from specquant_gguf.runtime import BackendError, Model

IDS = [5, 17, 42, 99, 3, 250, 7, 8]
# the C library's reasons (native/src/model.c, model_cuda.c)
NO_CUDA_REASONS = ("this build has no CUDA backend", "no CUDA device")


def _try_cuda(path) -> Model | None:
    """The model on the GPU, or None after checking that the failure carries the C reason."""
    try:
        return Model(path, n_threads=1, backend="cuda")
    except BackendError as exc:
        assert isinstance(exc, SpecQuantError)
        assert any(r in str(exc) for r in NO_CUDA_REASONS), str(exc)
        return None


def test_cuda_fails_cleanly_or_runs(tiny_sq4) -> None:
    m = _try_cuda(tiny_sq4.path)
    if m is None:
        with pytest.raises(SpecQuantError, match="CUDA"):
            Model(tiny_sq4.path, backend="cuda")
        return
    with m, Model(tiny_sq4.path, n_threads=1, backend="cpu") as c:  # a GPU machine
        assert m.backend == "cuda" and m.requested_backend == "cuda"
        g, r = m.eval(IDS), c.eval(IDS)
        assert np.abs(g - r).max() <= 1e-3 * np.abs(r).max()


def test_auto_and_cpu(tiny_sq4) -> None:
    gpu = _try_cuda(tiny_sq4.path)
    if gpu is not None:
        gpu.close()
    with Model(tiny_sq4.path, n_threads=1) as auto, Model(tiny_sq4.path, n_threads=1, backend="cpu") as cpu:
        assert auto.requested_backend == "auto" and cpu.requested_backend == "cpu"  # auto is the default
        assert auto.backend == ("cuda" if gpu is not None else "cpu")
        assert cpu.backend == "cpu" and "backend=cpu" in repr(cpu)
        a, c = auto.eval(IDS), cpu.eval(IDS)
        assert a.shape == c.shape and np.isfinite(a).all()
        if auto.backend == "cpu":
            np.testing.assert_array_equal(a, c)


def test_auto_stays_on_cpu_for_what_the_gpu_cannot_run(tiny_f16, tiny_sq4) -> None:
    with Model(tiny_f16.path, n_threads=1, backend="auto") as m:  # F16 linear weights
        assert m.backend == "cpu"
        assert np.isfinite(m.eval_last(IDS)).all()
    with Model(tiny_sq4.path, n_threads=1, backend="auto", kv_type="q8") as m:  # the GPU's KV cache is f16
        assert m.backend == "cpu"


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "", None, 1])
def test_bad_backend(tiny_sq4, bad) -> None:
    with pytest.raises(UsageError, match="backend must be one of cpu, cuda, auto") as info:
        Model(tiny_sq4.path, backend=bad)
    assert isinstance(info.value, ValueError)
