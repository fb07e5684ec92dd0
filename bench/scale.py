"""The default conversion at Llama-3.1-8B shape, inside a memory cgroup (issue 15).

    python bench/scale.py                      # all 32 blocks (hours on 2 cores; ~16 GB on disk)
    python bench/scale.py --blocks 2           # reduced depth, same per-block shapes
    python bench/scale.py --blocks 2 --limit-gib 10 --json out.json

1. builds (once, cached by shape and seed) a synthetic checkpoint of the real 8B config: hidden 4096,
   ffn 14336, 32 q heads / 8 KV heads, head dim 128, vocab 128256, untied head, rope_theta 500000,
   bf16 safetensors in shards (embeddings, one shard per block, head) with an index; random weights
   with a realistic spread (linears N(0, 0.5/sqrt(C_in)), embeddings N(0, 0.02) with a few outlier
   channels x30, norms 1 + N(0, 0.1)); seeded. The tokenizer is byte-level (256 tokens, padded to
   the vocabulary by the converter): the weights and shapes are what cost, not the text.
2. converts it with the default recipe (`convert.py FOLDER --out F`, no flags) in a child process
   placed in a cgroup v1 memory cgroup (/sys/fs/cgroup/memory, root needed) with the limit given
   (default 10 GiB), and records wall time, the converter's stage table (time and peak RSS per
   stage), the cgroup's peak usage (includes page cache), the child's peak RSS and the file size.
3. when llama.cpp's venv exists (bench/llama_cpp_env.py setup), makes our f16 file of the same
   weights, llama.cpp's Q4_0 and Q4_K_M from it, and measures pp512 / tg128 at 1 and 2 threads for
   ours (default W4A4) and both (bench/speed.py), and decode bandwidth against bench/membw.py.

With --blocks N < 32 every per-block figure is measured and the 32-block figures are extrapolated
(fixed stages + 32/N x per-block stages); the output says which is which.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

LLAMA31_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=128, vocab_size=128256, num_hidden_layers=32, rms_norm_eps=1e-5, rope_theta=500000.0,
                  max_position_embeddings=8192, tie_word_embeddings=False)
# stages of the converter that run once (the others run once per block)
FIXED_STAGES = ("open model", "calibration text", "embeddings", "output head", "finish file")
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")


def cache_dir() -> Path:
    return Path(os.environ.get("SPECQUANT_CACHE", Path.home() / ".cache" / "specquant"))


# ------------------------------------------------------------------------------------ checkpoint

def _byte_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for _, c in sorted(zip(bs, cs))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["Ġt"] = len(vocab)  # one merge: llama.cpp refuses a BPE vocabulary without merges
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": chars[1], "eos_token": chars[2]}))


def build_checkpoint(folder: Path, n_blocks: int, seed: int = 0) -> Path:
    """The synthetic 8B-shaped HF folder (kept; rebuilt only when absent or incomplete)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "DONE").is_file():
        _byte_tokenizer(folder)  # cheap; folders built before the tokenizer had a merge get one
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    c = dict(LLAMA31_8B, num_hidden_layers=n_blocks)
    e, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    weight_map: dict[str, str] = {}

    def shard(name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})

    n_shards = n_blocks + 2
    emb = torch.randn(v, e, generator=g) * 0.02
    emb[:, torch.randperm(e, generator=g)[:4]] *= 30.0  # outlier channels of the residual stream
    shard(f"model-00001-of-{n_shards:05d}.safetensors", {"model.embed_tokens.weight": emb.to(torch.bfloat16)})
    del emb
    shapes = {"self_attn.q_proj": (nh * hd, e), "self_attn.k_proj": (nkv * hd, e), "self_attn.v_proj": (nkv * hd, e),
              "self_attn.o_proj": (e, nh * hd), "mlp.gate_proj": (f, e), "mlp.up_proj": (f, e), "mlp.down_proj": (e, f)}
    for i in range(n_blocks):
        p = f"model.layers.{i}."
        t = {p + n + ".weight": normal(*s, std=0.5 * s[1] ** -0.5) for n, s in shapes.items()}
        t[p + "input_layernorm.weight"] = (1.0 + torch.randn(e, generator=g) * 0.1).abs().to(torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = (1.0 + torch.randn(e, generator=g) * 0.1).abs().to(torch.bfloat16)
        shard(f"model-{i + 2:05d}-of-{n_shards:05d}.safetensors", t)
        del t
    shard(f"model-{n_shards:05d}-of-{n_shards:05d}.safetensors",
          {"model.norm.weight": (1.0 + torch.randn(e, generator=g) * 0.1).abs().to(torch.bfloat16),
           "lm_head.weight": normal(v, e, std=e ** -0.5)})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    cfg = dict(c, model_type="llama", architectures=["LlamaForCausalLM"], torch_dtype="bfloat16",
               bos_token_id=1, eos_token_id=2, _name_or_path=f"synthetic-llama3.1-8b-shape-{n_blocks}blk")
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    _byte_tokenizer(folder)
    (folder / "DONE").write_text("ok\n")
    return folder


# ------------------------------------------------------------------------------- cgroup conversion

def _cgroup(limit_bytes: int) -> Path | None:
    """A fresh v1 memory cgroup with the limit, or None when not available (not root, no v1)."""
    if not (CGROUP_ROOT / "memory.limit_in_bytes").exists():
        return None
    cg = CGROUP_ROOT / f"specquant-scale-{os.getpid()}"
    try:
        cg.mkdir(exist_ok=True)
        (cg / "memory.limit_in_bytes").write_text(str(limit_bytes))
        if (cg / "memory.memsw.limit_in_bytes").exists():  # no escaping into swap
            (cg / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
    except OSError:
        return None
    return cg


def _read(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def convert_limited(folder: Path, out: Path, limit_gib: float, extra: list[str] | None = None,
                    log: Path | None = None) -> dict[str, Any]:
    """Runs the default conversion in a memory cgroup; returns time, peaks, stages and file size."""
    limit = int(limit_gib * 2**30)
    cg = _cgroup(limit)
    stages_json = out.with_suffix(".stages.json")
    cmd = [sys.executable, str(ROOT / "convert.py"), str(folder), "--out", str(out), "--no-calib-cache",
           "--stages-json", str(stages_json), *(extra or [])]

    def enter() -> None:
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.time()
    with open(log or os.devnull, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, preexec_fn=enter).returncode
    wall = time.time() - t0
    res: dict[str, Any] = {"command": " ".join(cmd), "returncode": rc, "wall_s": round(wall, 1),
                           "limit_gib": limit_gib if cg is not None else None,
                           "child_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3)}
    if cg is not None:
        res["cgroup_peak_gib"] = round(int(_read(cg / "memory.max_usage_in_bytes") or 0) / 2**30, 3)
        res["cgroup_failcnt"] = int(_read(cg / "memory.failcnt") or 0)
        res["oom_kill"] = "oom_kill 1" in _read(cg / "memory.oom_control")
        try:
            cg.rmdir()
        except OSError:
            pass
    if stages_json.is_file():
        res["stages"] = json.loads(stages_json.read_text())
    if out.is_file():
        res["file_bytes"] = out.stat().st_size
    return res


def extrapolate(stages: dict[str, dict[str, float]], n_blocks: int, target: int = 32) -> dict[str, float]:
    """Stage seconds at `target` blocks from a run of n_blocks: fixed stages as measured, per-block
    stages x target/n (the self-generation's cost is per-block too except its head: kept fixed,
    which underestimates it; see the docstring of calibration_cost)."""
    out = {}
    for name, st in stages.items():
        out[name] = st["seconds"] if name in FIXED_STAGES else st["seconds"] * target / n_blocks
    return out


# --------------------------------------------------------------------------------- speed (optional)

def speed_vs_llama(folder: Path, ours: Path, work: Path, reps: int = 3) -> dict[str, Any] | None:
    """f16 of the same weights -> Q4_0 / Q4_K_M; pp512/tg128 at 1 and 2 threads; decode bandwidth."""
    import llama_cpp_env

    if not llama_cpp_env.venv_python().is_file():
        return None
    import speed

    f16 = work / "f16.gguf"
    if not f16.is_file():
        subprocess.run([sys.executable, str(ROOT / "convert.py"), str(folder), "--out", str(f16), "--method", "f16",
                        "--quiet"], check=True)
    llama = {}
    for t in ("Q4_0", "Q4_K_M"):
        q = work / f"{t}.gguf"
        if not q.is_file():
            llama_cpp_env.quantize(f16, q, t)
        llama[f"llama.cpp {t}"] = q
    res = speed.run({"ours W4A4": ours}, llama, threads=(1, 2), reps=reps)  # membw included
    print(speed.format_table(res), file=sys.stderr)
    return {"speed": res, "files": {k: str(v) for k, v in llama.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=32, help="decoder blocks (default 32 = the real depth)")
    p.add_argument("--limit-gib", type=float, default=10.0, help="memory cgroup limit (default 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=None, help="folder for the checkpoint and files "
                   "(default $SPECQUANT_CACHE/scale)")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--no-speed", action="store_true", help="skip the llama.cpp comparison")
    p.add_argument("--speed-only", action="store_true", help="reuse the converted file of an earlier run "
                   "(the conversion is not timed again) and measure only the speed comparison")
    p.add_argument("--reps", type=int, default=3, help="speed repetitions per row, best of (default 3)")
    p.add_argument("--convert-args", default="", help="extra converter flags (default none: the default recipe)")
    args = p.parse_args(argv)
    work = args.work or cache_dir() / "scale"
    folder = work / f"llama3.1-8b-shape-{args.blocks}blk-s{args.seed}"
    t0 = time.time()
    build_checkpoint(folder, args.blocks, args.seed)
    print(f"[scale] checkpoint {folder} ({time.time() - t0:.0f} s)", file=sys.stderr)
    out = work / f"sq4-{args.blocks}blk.gguf"
    extra = args.convert_args.split() + (["--large-model", "yes"] if args.blocks < 32 else [])  # as the 32-block model
    if args.speed_only:
        if not out.is_file():
            print(f"[scale] --speed-only: {out} does not exist (run without --speed-only first)", file=sys.stderr)
            return 1
        res: dict[str, Any] = {"returncode": 0, "file_bytes": out.stat().st_size, "converted": "earlier run"}
    else:
        res = convert_limited(folder, out, args.limit_gib, extra, log=work / f"convert-{args.blocks}blk.log")
    res["blocks"] = args.blocks
    res["measured_depth"] = "full" if args.blocks == 32 else f"reduced ({args.blocks} of 32 blocks)"
    if "stages" in res and args.blocks != 32:
        ex = extrapolate(res["stages"], args.blocks)
        res["extrapolated_32_blocks_s"] = {k: round(v, 1) for k, v in ex.items()}
        res["extrapolated_32_blocks_total_s"] = round(sum(ex.values()), 1)
    if not args.no_speed and res.get("returncode") == 0:
        res["speed"] = speed_vs_llama(folder, out, work, args.reps)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if res.get("returncode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
