"""Getting models from the Hugging Face Hub, against a stand-in Hub on 127.0.0.1 (HF_ENDPOINT):
any repo id, the standard HF cache (HF_HOME), only the files a conversion reads, nothing fetched
twice, and one line that says what to do for gated / missing repos and offline use."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oracle.fake_hub import FakeHub
from oracle.hf_models import save_hf_folder, tiny_hf_model

REPO = Path(__file__).resolve().parents[1]


def _convert(model: str, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, "-m", "specquant_gguf.cli", "convert", model, "--out", str(out),
                           "--method", "f16", "--quiet"], capture_output=True, text=True, env=full, cwd=REPO, timeout=300)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_hf_folder(tiny_hf_model("llama", seed=2), tmp_path_factory.mktemp("repo") / "tiny")
    (folder / "pytorch_model.bin").write_bytes(b"not needed")  # a file a conversion must not fetch
    return folder


def test_repo_id_downloads_into_hf_cache(tmp_path: Path, tiny_repo: Path) -> None:
    with FakeHub({"acme/tiny-llama": tiny_repo}) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        r = _convert("acme/tiny-llama", tmp_path / "a.gguf", env)
        assert r.returncode == 0, r.stderr
        snap = tmp_path / "hf" / "hub" / "models--acme--tiny-llama" / "snapshots"
        files = {p.name for p in snap.rglob("*") if p.is_file() or p.is_symlink()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        assert "pytorch_model.bin" not in files and not any("pytorch_model" in q for q in hub.requests)
        gets = [q for q in hub.requests if q.startswith("GET") and q.endswith("model.safetensors")]
        r = _convert("acme/tiny-llama", tmp_path / "b.gguf", env)  # second time: from the cache
        assert r.returncode == 0, r.stderr
        assert [q for q in hub.requests if q.startswith("GET") and q.endswith("model.safetensors")] == gets
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    # offline, the cached snapshot is enough
    r = _convert("acme/tiny-llama", tmp_path / "c.gguf", {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr


def test_gated_missing_and_offline_say_what_to_do(tmp_path: Path, tiny_repo: Path) -> None:
    import json
    import shutil

    gemma = tmp_path / "gemma"
    shutil.copytree(tiny_repo, gemma)
    (gemma / "config.json").write_text(json.dumps({**json.loads((tiny_repo / "config.json").read_text()),
                                                  "model_type": "gemma3_text"}))
    repos = {"acme/tiny-llama": tiny_repo, "google/gemma-3-1b-it": gemma}
    with FakeHub(repos, gated=("meta-llama/Llama-3.2-1B",)) as hub:
        env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        r = _convert("llama3.2-1b", tmp_path / "g.gguf", env)
        assert r.returncode != 0 and "accept its licence" in r.stderr and "HF_TOKEN" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        r = _convert("google/gemma-3-1b-it", tmp_path / "g3.gguf", env)  # refused before any weights are fetched
        assert r.returncode != 0 and "model_type 'gemma3_text' is not supported" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not any("safetensors" in q for q in hub.requests)
        r = _convert("acme/no-such-model", tmp_path / "m.gguf", env)
        assert r.returncode != 0 and "no such model" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _convert("acme/tiny-llama", tmp_path / "o.gguf", {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0 and "HF_HUB_OFFLINE" in r.stderr and "pass the folder" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
