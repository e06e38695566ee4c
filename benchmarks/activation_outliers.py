"""Which Linear inputs are dominated by a few tokens (massive activations)?

    python benchmarks/activation_outliers.py [MODEL] [--samples 8] [--seq-len 512] [--top 8] \
        [--json benchmarks/results/activation_outliers_MODEL.json]

Runs the float model once over WikiText-2 calibration windows and, for every decoder Linear
input X [tokens, K], reports the share of tr(H) = sum over tokens of ||x||^2 carried by the
top 0.1% of tokens, max |x|, and how many of those tokens sit at position 0 of their window.
A large share means a GPTQ/DPQ Hessian (and a max-abs static FP8 scale) is set by those few
tokens rather than by the typical ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dpq.io.data import calibration_batches
from dpq.models.loading import load_float_model
from dpq.models.linear_inputs import decoder, flat_float, watch_model_linears
from dpq.models.specs import spec_for


def outliers(model, ids: torch.Tensor) -> dict[str, dict]:
    """{linear name: {share, max_abs, at_position_0, top_tokens}} for ids [S, T]."""
    spec = spec_for(model.config)
    stats: dict[str, dict] = {}

    def on_input(i, name, x):
        x = flat_float(x)
        energy = (x * x).sum(1)
        k = max(1, energy.numel() // 1000)
        top = energy.topk(k)
        stats[f"{spec.layers}.{i}.{name}"] = {
            "share": float(top.values.sum() / energy.sum()),
            "max_abs": float(x.abs().max()),
            "at_position_0": int(((top.indices % ids.shape[1]) == 0).sum()),
            "top_tokens": k,
        }

    # one Linear per set: the Linears of a set share their input
    with watch_model_linears(model, on_input, first_of_set=True), torch.no_grad():
        decoder(model)(input_ids=ids)  # the decoder, no lm_head
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--top", type=int, default=8, help="rows to print")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    model, tok, src = load_float_model(a.model)
    ids = calibration_batches(tok, "wikitext2", a.samples, a.seq_len, 0)
    stats = outliers(model, ids)
    rows = sorted(stats.items(), key=lambda kv: -kv[1]["share"])
    print(f"{src.name}: {a.samples} x {a.seq_len} WikiText-2 validation tokens")
    print("| Linear input | top 0.1% tokens' share of tr(H) | max abs x | of them at position 0 |")
    print("|---|---|---|---|")
    for name, s in rows[: a.top]:
        print(f"| {name} | {s['share']:.1%} | {s['max_abs']:.0f} | {s['at_position_0']}/{s['top_tokens']} |")
    shares = sorted(s["share"] for s in stats.values())
    print(f"median share over {len(shares)} inputs: {shares[len(shares) // 2]:.2%}")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": src.name, "samples": a.samples, "seq_len": a.seq_len,
                                            "inputs": dict(rows)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
