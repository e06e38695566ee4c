"""Calibration time of several methods on the same model and tokens, measured in one process.

    python benchmarks/calib_time.py gemma3-270m --methods dpq-gar,dpq-gar-plus --samples 4 --seq-len 2048 \
        --json benchmarks/results/beyond-the-paper/calib_time_gemma.json

Each method quantizes a fresh copy of the float model (same calibration batches); wall time and the
process's CPU time (user + system, all threads) are recorded. On a shared machine the wall time moves
with the load; the CPU time much less, so the ratio between methods is read from it. The methods run
in the order given, then again in reverse (`--repeats 2`), and each method's median is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import dpq
from dpq.config import CalibSpec, QuantConfig
from dpq.io.data import calibration_batches
from dpq.models.loading import load_float_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="smollm2-135m")
    ap.add_argument("--methods", default="dpq-gar,dpq-gar-plus")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model, tok, _ = load_float_model(a.model)
    calib = calibration_batches(tok, "wikitext2", a.samples, a.seq_len, 0)
    methods = [m for m in a.methods.split(",") if m]
    runs = []
    for rep in range(a.repeats):
        for m in methods if rep % 2 == 0 else methods[::-1]:
            cfg = QuantConfig.for_method(m, calib=CalibSpec(samples=a.samples, seq_len=a.seq_len))
            q = copy.deepcopy(model)
            w0, c0 = time.perf_counter(), time.process_time()
            dpq.quantize(q, tok, cfg, calib=calib, progress=False)
            runs.append({"method": m, "wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0})
            print(runs[-1], flush=True)
            del q
    summary = {m: {"wall_s": statistics.median(r["wall_s"] for r in runs if r["method"] == m),
                   "cpu_s": statistics.median(r["cpu_s"] for r in runs if r["method"] == m)} for m in methods}
    base = summary[methods[0]]
    for m in methods:
        summary[m]["cpu_ratio"] = summary[m]["cpu_s"] / base["cpu_s"]
        summary[m]["wall_ratio"] = summary[m]["wall_s"] / base["wall_s"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    out = {"meta": {"command": "python " + " ".join(sys.argv), "git_commit": commit, "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "device": "cpu", "load_avg": os.getloadavg()},
           "model": a.model, "calib_tokens": a.samples * a.seq_len, "runs": runs, "summary": summary}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(out, indent=1))
    for m, s in summary.items():
        print(f"{m}: wall {s['wall_s']:.0f} s, cpu {s['cpu_s']:.0f} s, cpu ratio {s['cpu_ratio']:.2f}")


if __name__ == "__main__":
    main()
