"""Does the default export load with plain transformers, FP8 activations on, at dpq's perplexity?

    python benchmarks/export_loads_by_default.py smollm2-135m --group-size 64 [--weights int4]
    python benchmarks/export_loads_by_default.py gemma3-270m [--weights int4]

For one model: `dpq quantize` with the default method and settings (dpq-gar, asymmetric INT4, static
FP8 activations; small calibration: --calib-samples 8 --seq-len 512), `dpq eval DIR` perplexity on the
first --windows WikiText-2 test windows of 2048 tokens (kept in --work and reused),
`dpq export DIR --format compressed-tensors [--weights int4]` (default: dpq's default, fp8 here),
then `AutoModelForCausalLM.from_pretrained(OUT)` with default arguments in a fresh process (no dpq
import before it) and the same perplexity. Also checks that every quantized Linear of the loaded export
quantizes its input to FP8 (scheme, static input_scale, DECOMPRESSED status after the first forward).
Writes benchmarks/results/export-loads-by-default/<model>-g<group>-<weights>.json and prints a table row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "export-loads-by-default"

CT_SCRIPT = r"""
import json, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
t0 = time.time()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()   # default arguments
load_s = time.time() - t0
import dpq  # only now, for the perplexity protocol; the model is already loaded
from dpq.eval.perplexity import wikitext2_perplexity
tok = AutoTokenizer.from_pretrained(sys.argv[1])
p = wikitext2_perplexity(model, tok, seq_len=2048, max_windows=int(sys.argv[2]), progress=False)
lins = [m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None]
acts = [m.quantization_scheme.input_activations for m in lins]
print(json.dumps({
    "ppl": p.ppl, "windows": f"{p.windows_used}/{p.windows_total}", "load_s": round(load_s, 1),
    "dtype": str(model.dtype), "quantized_linears": len(lins),
    "fp8_static_input": sum(a is not None and a.type == "float" and a.num_bits == 8 and not a.dynamic
                            and a.strategy == "tensor" for a in acts),
    "with_input_scale": sum(getattr(m, "input_scale", None) is not None for m in lins),
    "status": sorted({str(m.quantization_status) for m in lins}),
    "zero_point_dtype_after_decompress": sorted({str(m.weight_zero_point.dtype) for m in lins
                                                 if getattr(m, "weight_zero_point", None) is not None}),
}))
"""


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "compressed-tensors", "safetensors")}


def run(a) -> dict:
    import dpq
    from dpq.eval.run import evaluate_path
    from dpq.models.loading import load_float_model

    work = Path(a.work or tempfile.mkdtemp(prefix="dpq-export-"))
    ck, out = work / "ck", work / f"ct-{a.weights or 'default'}"
    t0 = time.time()
    if not ck.exists():
        model, tok, src = load_float_model(a.model)
        cfg = dpq.QuantConfig.for_method("dpq-gar", group_size=a.group_size,
                                         calib=dpq.CalibSpec(samples=a.calib_samples, seq_len=a.seq_len))
        result = dpq.quantize(model, tok, cfg, progress=False)
        dpq.save(result, ck, source_model=src.reference)
        del model
    quant_s = time.time() - t0
    t0 = time.time()
    cached = work / f"dpq-eval-{a.windows}.json"
    if cached.exists():
        ref = json.loads(cached.read_text())
    else:
        ref = evaluate_path(str(ck), ppl="wikitext2", seq_len=2048, max_windows=a.windows, progress=False)
        cached.write_text(json.dumps(ref))
    dpq_s = ref["settings"]["timings"]["ppl_s"]
    dpq.export(ck, out, overwrite=True, weights=a.weights)
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", CT_SCRIPT, str(out), str(a.windows)], capture_output=True,
                         text=True, env=env)
    if res.returncode:
        raise SystemExit(f"loading the export failed:\n{res.stderr[-4000:]}")
    ct = json.loads(res.stdout.strip().splitlines()[-1])
    ct_s = time.time() - t0
    info = json.loads((out / "dpq_export.json").read_text())
    return {
        "meta": {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "commit": _git_commit(),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": "cpu"},
            "versions": _versions(),
        },
        "model": a.model, "method": "dpq-gar", "group_size": a.group_size, "symmetric": False,
        "target": "paper", "export_weights": info["weights"],
        "calibration": f"{a.calib_samples} x {a.seq_len} tokens WikiText-2 validation",
        "ppl_protocol": f"WikiText-2 test, first {a.windows} windows of 2048 tokens",
        "ppl_dpq_eval": ref["wikitext2_ppl"], "windows": ref["windows"],
        "ppl_transformers_default": ct["ppl"],
        "ppl_rel_diff": ct["ppl"] / ref["wikitext2_ppl"] - 1,
        "transformers_load": ct,
        "weight_difference": info["weight_difference"],
        "seconds": {"quantize": round(quant_s, 1), "dpq_eval": round(dpq_s, 1), "transformers": round(ct_s, 1)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="smollm2-135m, gemma3-270m, or a float model directory")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--calib-samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--weights", default=None, choices=["int4", "fp8"], help="dpq export --weights (default: dpq's)")
    p.add_argument("--work", default=None, help="keep the checkpoint and export here (reused when present)")
    a = p.parse_args()
    r = run(a)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{Path(a.model).name}-g{a.group_size}-{r['export_weights']}.json"
    path.write_text(json.dumps(r, indent=2))
    print("| model | group | export weights | dpq eval ppl | transformers ppl (default load) | diff | FP8 static inputs |")
    print("|---|---|---|---|---|---|---|")
    t = r["transformers_load"]
    print(f"| {a.model} | {a.group_size} | {r['export_weights']} | {r['ppl_dpq_eval']:.3f} | {r['ppl_transformers_default']:.3f} | "
          f"{100 * r['ppl_rel_diff']:+.2f}% | {t['fp8_static_input']}/{t['quantized_linears']} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
