"""Fetches llama.cpp's own converter (convert_hf_to_gguf.py, conversion/, gguf-py/) and its tokenizer
test vocabularies (models/ggml-vocab-*.gguf with .inp/.out: texts and the ids the real HF tokenizer
gives) from the llama-cpp-python source distribution on PyPI into the cache, once;
tests/test_llamacpp_interop.py and tests/test_llamacpp_vocab.py use them as independent oracles.
Nothing is built or installed.

    python scripts/fetch_llamacpp_converter.py [--version 0.3.36]
"""
from __future__ import annotations

import argparse
import html
import os
import re
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant")) / "llamacpp-sdist"
KEEP = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/", "vendor/llama.cpp/gguf-py/",
        "vendor/llama.cpp/models/ggml-vocab-")
# one file of each KEEP entry: a cache made before an entry was added is fetched again
CACHED = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/models/ggml-vocab-phi-3.gguf.out")


def sdist_url(version: str) -> str:
    """The sdist's URL from PyPI's simple index (PEP 503 links)."""
    with urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/", timeout=60) as r:
        page = r.read().decode()
    name = f"llama_cpp_python-{version}.tar.gz"
    for href in re.findall(r'href="([^"]+)"', page):
        if href.split("#")[0].endswith("/" + name):
            return html.unescape(href.split("#")[0])
    raise SystemExit(f"llama-cpp-python {version} has no source distribution on PyPI")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="0.3.36")
    a = ap.parse_args()
    root = CACHE / f"llama_cpp_python-{a.version}"
    if all((root / f).is_file() for f in CACHED):
        print(f"{root / 'vendor' / 'llama.cpp'} (cached)")
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=CACHE, suffix=".tar.gz") as tmp:
        with urllib.request.urlopen(sdist_url(a.version), timeout=600) as r:
            while chunk := r.read(1 << 20):
                tmp.write(chunk)
        tmp.flush()
        with tarfile.open(tmp.name) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and any(
                m.name.startswith(f"{root.name}/{k}") for k in KEEP)]
            tf.extractall(CACHE, members=members, filter="data")
    print(root / "vendor" / "llama.cpp")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (OSError, tarfile.TarError) as exc:  # no network, a truncated download: one line
        sys.exit(f"fetch_llamacpp_converter: {exc}")
