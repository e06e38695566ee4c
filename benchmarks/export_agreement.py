"""Agreement of compressed-tensors exports with dpq's own reference model (CPU).

    python benchmarks/export_agreement.py [smollm2-paper-sym|smollm2-paper-asym|gemma3-vllm ...]

For each case: quantize (tiny calibration), save, `dpq.export`, load OUT with
transformers `AutoModelForCausalLM.from_pretrained`, and compare logits and
WikiText-2 perplexity (first windows) with the dpq checkpoint loaded by `dpq.load`.
Writes benchmarks/results/export_agreement.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import dpq
from dpq.eval.perplexity import wikitext2_perplexity
from dpq.models.loading import load_float_model

CASES = {
    # name: (model, method, group, symmetric, target, transformers loader kwargs)
    "smollm2-paper-sym": ("smollm2-135m", "dpq-gar", 64, True, "paper", {}),
    "smollm2-paper-asym": ("smollm2-135m", "dpq-gar", 64, False, "paper", {"dequantize": True}),
    "gemma3-vllm": ("gemma3-270m", "dpq-gar", 128, True, "vllm-w4afp8", {}),
}
SEQ_LEN, WINDOWS = 512, 4


def run(name: str, work: Path) -> dict:
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    model_name, method, g, sym, target, load_kw = CASES[name]
    model, tok, _ = load_float_model(model_name)
    cfg = dpq.QuantConfig.for_method(method, group_size=g, symmetric=sym, target=target,
                                     calib=dpq.CalibSpec(samples=4, seq_len=128))
    t0 = time.time()
    result = dpq.quantize(model, tok, cfg, progress=False)
    t_quant = time.time() - t0
    ck, out = work / f"{name}-dpq", work / f"{name}-ct"
    dpq.save(result, ck)
    del model
    dpq.export(ck, out, weights="int4")  # the INT4 layout these cases were measured with
    ref, _ = dpq.load(ck, dtype=torch.float32)
    kw = {"quantization_config": CompressedTensorsConfig(**load_kw)} if load_kw else {}
    ct = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **kw).eval()
    ids = tok("The capital of France is Paris. " * 20, return_tensors="pt").input_ids[:, :128]
    with torch.no_grad():
        a, b = ct(ids).logits.float(), ref(ids).logits.float()
    ppl_ref = wikitext2_perplexity(ref, tok, SEQ_LEN, WINDOWS, progress=False).ppl
    ppl_ct = wikitext2_perplexity(ct, tok, SEQ_LEN, WINDOWS, progress=False).ppl
    info = json.loads((out / "dpq_export.json").read_text())
    return {
        "model": model_name, "method": method, "group_size": g, "symmetric": sym, "target": target,
        "transformers_load": load_kw or "default", "calibration": "4 x 128 tokens WikiText-2",
        "quantize_seconds": round(t_quant, 1),
        "logits_rel_diff": float((a - b).norm() / b.norm()),
        "logits_max_abs_diff": float((a - b).abs().max()),
        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "ppl_dpq": ppl_ref, "ppl_transformers": ppl_ct, "ppl_rel_diff": ppl_ct / ppl_ref - 1,
        "ppl_protocol": f"WikiText-2 test, first {WINDOWS} windows of {SEQ_LEN}",
        "weight_difference": info["weight_difference"],
    }


def main(names: list[str]) -> None:
    path = Path(__file__).parent / "results" / "export_agreement.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as d:
        for name in names or list(CASES):
            results[name] = run(name, Path(d))
            print(name, json.dumps(results[name], indent=1), flush=True)
            path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
