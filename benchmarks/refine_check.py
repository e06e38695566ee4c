"""`--refine` on the first decoder layers of SmolLM2-135M: its loss before and after, and its time.

    python benchmarks/refine_check.py --layers 2 --steps 100 --json benchmarks/results/beyond-the-paper/refine_check.json

The model is cut to its first `--layers` decoder layers and quantized with dpq-gar plus `--refine STEPS`
(8 x 512 WikiText-2 validation tokens). Reported per layer: the refinement loss (mean squared error
between the quantized layer's output on the quantized hidden states and the float layer's output on the
float hidden states, over the 8 x 512 refinement tokens) before and after, whether it was kept, and
seconds. The loss is measured on the tokens it was trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

import dpq
from dpq.config import QuantConfig
from dpq.io.data import calibration_batches
from dpq.models.loading import load_float_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok, _ = load_float_model("smollm2-135m")
    model.model.layers = model.model.layers[: a.layers]
    model.config.num_hidden_layers = a.layers
    calib = calibration_batches(tok, "wikitext2", 8, 512, 0)
    t0 = time.perf_counter()
    summary = dpq.quantize(model, tok, QuantConfig.for_method("dpq-gar", refine_steps=a.steps), calib=calib,
                           progress=False)
    out = {"meta": {"command": "python " + " ".join(sys.argv), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "device": "cpu"},
           "seconds_total": time.perf_counter() - t0, "refine": summary.refine}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
