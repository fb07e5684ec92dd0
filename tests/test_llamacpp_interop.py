"""llama.cpp's own converter as an independent oracle for files (issue 14, item 2c).

Tiny random HF folders of every family (tests/test_arch.py's FAMILIES, attention made peaky) are
converted by llama.cpp's convert_hf_to_gguf.py, taken from the llama-cpp-python source distribution
(never built, never installed: its converter and gguf-py run on this venv's torch/transformers).
Its GGUF must give transformers' logits in our runtime, and convert.py must take it as a source
and write a file with the same logits. scripts/test.sh fetches the sdist once into
~/.cache/specquant/llamacpp-sdist ($SPECQUANT_LLAMACPP_DIR names a llama.cpp checkout instead);
without it these tests skip. Slow-marked: each conversion imports llama.cpp's converter (seconds).

The tiny folders carry a made-up byte-level BPE tokenizer that llama.cpp's tokenizer fingerprint
cannot know, so the wrapper tells it to write a plain gpt2 vocabulary: what is compared is the
weights, hyperparameters and layouts, which is this test's point (tokenizers are checked in
tests/test_hf_tokenizers.py).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oracle.hf_models import hf_logits, save_hf_folder, tiny_hf_model
from specquant_gguf.gguf import read_model
from specquant_gguf.runtime import Model
from test_arch import FAMILIES, IDS, _rel

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))


def _llamacpp_dir() -> Path | None:
    env = os.environ.get("SPECQUANT_LLAMACPP_DIR")
    if env:
        return Path(env) if (Path(env) / "convert_hf_to_gguf.py").is_file() else None
    found = sorted((CACHE / "llamacpp-sdist").glob("llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    return found[-1].parent if found else None


LLAMACPP = _llamacpp_dir()
needs_llamacpp = pytest.mark.skipif(LLAMACPP is None, reason="llama.cpp's converter not fetched (scripts/test.sh)")

# Runs convert_hf_to_gguf.main() with llama.cpp's own gguf-py first on the path; every model class
# writes a gpt2 vocabulary from tokenizer.json (see the module docstring).
WRAPPER = """
import sys
root = sys.argv.pop(1)
sys.path[:0] = [root, root + "/gguf-py"]
import convert_hf_to_gguf as c
import conversion
from conversion import base

def gpt2_vocab(self):
    self._set_vocab_gpt2()

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
find = conversion.get_model_class

def get_model_class(*args, **kwargs):  # the family's class is imported on demand: patch it then
    cls = find(*args, **kwargs)
    cls.set_vocab = gpt2_vocab
    return cls

conversion.get_model_class = c.get_model_class = get_model_class
sys.argv = ["convert_hf_to_gguf.py", *sys.argv[1:]]
c.main()
"""


def _llamacpp_convert(folder: Path, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-c", WRAPPER, str(LLAMACPP), str(folder), "--outfile", str(out),
                        "--outtype", "f32"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"convert_hf_to_gguf.py failed:\n{r.stderr[-3000:]}"
    return out


def _logits(path: Path) -> np.ndarray:
    with Model(path, n_ctx=128, n_threads=1, kv_type="f32") as m:
        return m.eval(IDS)


@needs_llamacpp
@pytest.mark.parametrize("family", list(FAMILIES))
def test_llamacpp_converter_output_runs_and_converts(tmp_path: Path, family: str) -> None:
    import torch

    from specquant_gguf.cli import main

    model_type, extra = FAMILIES[family]
    if model_type == "gemma2":  # llama.cpp has no key for query_pre_attn_scalar: it assumes head_dim
        extra = {**extra, "query_pre_attn_scalar": extra["head_dim"]}  # (real 2B / 9B: 256 = head_dim)
    hf = tiny_hf_model(model_type, seed=7, round_to=torch.float16, **extra)
    want = hf_logits(hf, IDS)
    theirs = _llamacpp_convert(save_hf_folder(hf, tmp_path / "hf", "t5"), tmp_path / "llamacpp.gguf")
    arch = read_model(theirs).metadata["general.architecture"]
    direct = _rel(_logits(theirs), want)  # phi3: fused attn_qkv / ffn_up, read as row views
    ours = tmp_path / "ours.f16.gguf"
    assert main(["convert", str(theirs), "--out", str(ours), "--method", "f16", "--quiet"]) == 0
    converted = _rel(_logits(ours), want)
    print(f"\n{family}: llama.cpp's file ({arch}) in our runtime vs transformers {direct:.1e}; "
          f"converted by convert.py {converted:.1e}")
    assert direct < 1e-3
    assert converted < 1e-3
