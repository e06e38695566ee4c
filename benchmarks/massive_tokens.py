"""Massive-activation tokens and the solver, on SmolLM2-135M's flagged `down_proj` inputs (layer level).

    python benchmarks/massive_tokens.py --json benchmarks/results/beyond-the-paper/massive_tokens.json

For the `down_proj` of layers 11 and 28 (the two Linears `dpq quantize` flags: a few position-0 tokens
carry most of tr(H)) and of layer 9 (the next one, 13%), DPQ-GAR weights are solved on 8 x 512
calibration tokens of the float model and measured on 4 x 512 held-out tokens under the deployed
numerics (static max-abs FP8 inputs, FP8 inference weight). Variants: the plain Hessian; token weights
capped at C x the median token energy (`--token-clip C`); and the per-channel input scales the
smoothing search picks (`--smooth on`). Reported: each token's relative output error
||y_t - y^_t|| / ||y_t||, its median over the held-out tokens (the typical tokens), at position 0 (the
massive tokens, one per window), and the global ||Y - Y^|| / ||Y||.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from dpq.algorithms import hessian_from_inputs, solve
from dpq.config import QuantConfig
from dpq.io.data import calibration_batches
from dpq.models.loading import load_float_model
from dpq.models.linear_inputs import decoder, flat_float, watch_model_linears
from dpq.models.set_inputs import token_weights
from dpq.models.smoothing import SAMPLE_TOKENS, sample_tokens, search_scales
from dpq.numerics.fp8 import quantize_activation

LAYERS = (11, 28, 9)
CLIPS = (0, 1000, 100, 10)


def errors(w, xc, xh, seq_len, clip=0.0, s=None) -> dict:
    s = torch.ones(w.shape[1]) if s is None else s
    ws, xcs, xhs = w * s, xc / s, xh / s
    s_x = float(xcs.abs().max()) / 448
    wt = torch.ones(xcs.shape[0]) if clip == 0 else token_weights(xcs.square().sum(1), clip)
    qw = solve(ws, hessian_from_inputs(xcs * wt.sqrt()[:, None]), QuantConfig.for_method("dpq-gar"))
    ref = xh @ w.t()
    out = (quantize_activation(xhs, s_x) * s_x) @ qw.weight().t()
    per_token = ((out - ref).square().sum(1) / ref.square().sum(1)).sqrt()
    pos0 = per_token[::seq_len]
    return {"typical_median": float(per_token.median()), "position0_mean": float(pos0.mean()),
            "global": float((out - ref).norm() / ref.norm()), "s_x": s_x}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--seq-len", type=int, default=512)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, tok, _ = load_float_model("smollm2-135m")
    cal = calibration_batches(tok, "wikitext2", 8, a.seq_len, 0)
    held = calibration_batches(tok, "wikitext2", 4, a.seq_len, 1)
    store = {"c": {}, "h": {}}
    mode = ["c"]

    def on_input(li, name, x):
        if name == "mlp.down_proj":
            store[mode[0]].setdefault(li, []).append(flat_float(x))

    with watch_model_linears(model, on_input, layers=LAYERS, first_of_set=True), torch.no_grad():
        decoder(model)(input_ids=cal)
        mode[0] = "h"
        decoder(model)(input_ids=held)
    rows = []
    cfg = QuantConfig.for_method("dpq-gar")
    for li in LAYERS:
        xc, xh = torch.cat(store["c"][li]), torch.cat(store["h"][li])
        w = model.model.layers[li].mlp.down_proj.weight.detach().float()
        for clip in CLIPS:
            rows.append({"layer": li, "variant": "plain" if clip == 0 else f"token_clip {clip}",
                         **errors(w, xc, xh, a.seq_len, clip)})
            print(rows[-1], flush=True)
        sample, amax = sample_tokens([xc], SAMPLE_TOKENS, 0)
        s, errs = search_scales([w], sample, amax, cfg)
        rows.append({"layer": li, "variant": f"smooth ({min(errs, key=errs.get)})", **errors(w, xc, xh, a.seq_len, 0, s)})
        print(rows[-1], flush=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    out = {"meta": {"command": "python " + " ".join(sys.argv), "git_commit": commit, "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "device": "cpu"}, "rows": rows}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    lines = ["| down_proj | variant | typical tokens: median error | position 0: mean error | global error | s_x |",
             "|---|---|---|---|---|---|"]
    lines += [f"| layer {r['layer']} | {r['variant']} | {r['typical_median']:.4f} | {r['position0_mean']:.4f} | "
              f"{r['global']:.4f} | {r['s_x']:.3g} |" for r in rows]
    Path(a.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
