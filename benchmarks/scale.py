"""Peak memory, time by phase and output size of `dpq quantize` as models grow (issue: quantize models
larger than the machine's memory).

    python benchmarks/scale.py --json benchmarks/results/scale/scale.json            # 4, 8, 16, 32 layers
    python benchmarks/scale.py --llama3-8b --json benchmarks/results/scale/llama3-8b.json

The models are random-weight Llama-architecture checkpoints (bf16, sharded safetensors) written
tensor by tensor with dpq's own shard writer, so building them needs no more memory than one
tensor. Each quantization runs `dpq.quantize_to_disk` in a fresh process, which reports its own
peak RSS (getrusage, as the OS counts it), the summary's time by phase, and the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

SCALE = dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4)
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                 vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192)
RSS_GROWTH_TARGET = 1.15  # peak at 32 layers / peak at 4 layers
LLAMA3_8B_RSS_TARGET_GIB = 6.0

_CHILD = """
import json, resource, sys, time
import torch
import dpq
from dpq.pipeline import result_dict
torch.set_num_threads({threads})
cfg = dpq.QuantConfig.for_method({method!r}, calib=dpq.CalibSpec(samples={samples}, seq_len={seq_len}))
t0 = time.time()
r = dpq.quantize_to_disk({model!r}, {out!r}, cfg, overwrite=True, progress=False)
d = result_dict(r)
d["wall_s"] = time.time() - t0
d["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(d, default=str))
"""


def build_model(directory: Path, layers: int, shape: dict, shard: str = "2GB", seed: int = 0) -> Path:
    """A random-weight Llama checkpoint (bf16, sharded) in `directory`, with SmolLM2's tokenizer."""
    from transformers import LlamaConfig

    from dpq.io.shards import ShardedWriter, TensorEntry, parse_size, plan_shards
    from dpq.models.loading import load_tokenizer, resolve
    from dpq.models.source import meta_model

    if (directory / "config.json").is_file():
        return directory
    tok = load_tokenizer(resolve(None))
    cfg = LlamaConfig(num_hidden_layers=layers, vocab_size=shape.get("vocab_size", len(tok)),
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
                      **{k: v for k, v in shape.items() if k != "vocab_size"})
    cfg.dtype = "bfloat16"
    model = meta_model(cfg, torch.bfloat16)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    state = model.state_dict()
    units = [[TensorEntry.of(n, t)] for n, t in state.items()]
    plan = plan_shards(units, parse_size(shard))
    writer = ShardedWriter(tmp, plan, {"format": "pt"})
    gen = torch.Generator().manual_seed(seed)
    for name, t in state.items():
        if name.endswith("norm.weight"):
            value = torch.ones(t.shape, dtype=torch.bfloat16)
        else:
            value = (torch.randn(t.shape, generator=gen, dtype=torch.float32) * 0.02).to(torch.bfloat16)
        writer.write(name, value)
    writer.finish()
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def run_quantize(model_dir: Path, out: Path, method: str, samples: int, seq_len: int, threads: int) -> dict:
    code = _CHILD.format(threads=threads, method=method, samples=samples, seq_len=seq_len, model=str(model_dir),
                         out=str(out))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"quantize of {model_dir} with {method} failed:\n{proc.stderr[-3000:]}")
    d = json.loads(line[len("RESULT "):])
    size = sum(f.stat().st_size for f in Path(d["path"]).iterdir())
    s = d["summary"]
    return {"method": method, "peak_rss_mib": round(d["peak_rss_mib"], 1), "wall_s": round(d["wall_s"], 1),
            "quantize_s": round(s["seconds"], 1), "phases": s["phases"], "output_bytes": size,
            "calib_tokens": s["calib_tokens"], "linears": len(s["linears"])}


def memory_bound_mib(shape: dict, vocab: int, samples: int, seq_len: int) -> float:
    """One decoder layer in fp32 + its Hessians + the calibration activations (bf16, inputs and outputs)
    + the embeddings (bf16) + 1 GiB: the issue's bound on peak RSS."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    layer = (2 * h * h + 2 * h * kv + 3 * h * i) * 4
    hessians = (3 * h * h + i * i) * 4
    acts = 2 * samples * seq_len * h * 2
    return (layer + hessians + acts + vocab * h * 2) / 2**20 + 1024


def meta(args) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]), "commit": commit,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": "cpu",
                        "torch_threads": args.threads},
            "date": time.strftime("%Y-%m-%d")}


def table(rows: list[dict]) -> str:
    out = ["| layers | method | peak RSS MiB | bound MiB | quantize s | load | forward | hessian | solve | error | "
           "save | output MiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        total = sum(r["phases"].values()) or 1.0
        pct = {k: f"{r['phases'].get(k, 0):.1f} ({100 * r['phases'].get(k, 0) / total:.0f}%)"
               for k in ("load", "forward", "hessian", "solve", "error", "save")}
        out.append(f"| {r['layers']} | {r['method']} | {r['peak_rss_mib']:.0f} | {r['bound_mib']:.0f} | "
                   f"{r['quantize_s']:.1f} | {pct['load']} | {pct['forward']} | {pct['hessian']} | {pct['solve']} | "
                   f"{pct['error']} | {pct['save']} | {r['output_bytes'] / 2**20:.0f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", required=True, help="result file (a .md table is written beside it)")
    p.add_argument("--layers", default="4,8,16,32")
    p.add_argument("--methods", default="dpq-gar,rtn-w4a8")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--llama3-8b", action="store_true", help="Llama-3-8B's shapes: rtn-w4a8 on 32 layers (2 x 128 "
                   "tokens) and dpq-gar on one layer")
    p.add_argument("--work", default="/tmp/dpq-scale", help="where models and checkpoints are written")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--keep", action="store_true", help="keep the checkpoints (the models are always kept)")
    args = p.parse_args(argv)
    work = Path(args.work)
    if args.llama3_8b:
        runs = [(32, "rtn-w4a8", 2, 128), (1, "dpq-gar", 2, 128)]
        shape = LLAMA3_8B
    else:
        runs = [(n, m, args.samples, args.seq_len) for n in map(int, args.layers.split(","))
                for m in args.methods.split(",")]
        shape = SCALE
    rows = []
    result = {"meta": meta(args), "shape": shape, "rows": rows}
    for layers, method, samples, seq_len in runs:
        name = ("llama3-8b" if args.llama3_8b else "scale") + f"-{layers}L"
        model_dir = build_model(work / name, layers, shape)
        out = work / f"{name}-{method}"
        row = {"layers": layers, **run_quantize(model_dir, out, method, samples, seq_len, args.threads)}
        vocab = shape.get("vocab_size", 49152)
        row["bound_mib"] = round(memory_bound_mib(shape, vocab, samples, seq_len), 1)
        row["source_bytes"] = sum(f.stat().st_size for f in model_dir.iterdir())
        rows.append(row)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
        _write(args.json, result, rows)
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    result["targets"] = targets(rows, args.llama3_8b)
    _write(args.json, result, rows)
    print(table(rows))
    print(json.dumps(result["targets"], indent=1))
    return 0


def targets(rows: list[dict], llama3: bool) -> dict:
    """The issue's memory targets, checked on the measured rows."""
    out = {}
    if llama3:
        full = [r for r in rows if r["layers"] == 32]
        if full:
            out["peak_rss_gib"] = round(full[0]["peak_rss_mib"] / 1024, 2)
            out["peak_rss_at_most_6_gib"] = full[0]["peak_rss_mib"] / 1024 <= LLAMA3_8B_RSS_TARGET_GIB
        one = [r for r in rows if r["layers"] == 1]
        if one:
            out["dpq_gar_seconds_per_layer"] = one[0]["quantize_s"]
            out["dpq_gar_estimated_hours_32_layers"] = round(one[0]["quantize_s"] * 32 / 3600, 2)
        return out
    for method in sorted({r["method"] for r in rows}):
        by = {r["layers"]: r for r in rows if r["method"] == method}
        if 4 in by and 32 in by:
            growth = by[32]["peak_rss_mib"] / by[4]["peak_rss_mib"]
            out[method] = {"rss_32_over_4": round(growth, 3), "growth_at_most_1.15": growth <= RSS_GROWTH_TARGET,
                           "within_bound": all(r["peak_rss_mib"] <= r["bound_mib"] for r in by.values())}
    return out


def _write(path: str, result: dict, rows: list[dict]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(result, indent=2, default=str) + "\n")
    p.with_suffix(".md").write_text(table(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main())
