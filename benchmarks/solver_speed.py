"""Seconds per layer of GPTQ (fp8_aware False) and DPQ on Llama-2-7B Linear shapes.

Shapes W [N, K]: 4096x4096 (q/k/v/o), 11008x4096 (gate/up), 4096x11008 (down).
H comes from 2048 random Gaussian tokens (damping makes it positive definite).
Each timing is the whole `solve` call (Hessian preparation, Cholesky, loop),
the best of --reps runs, CPU with --threads torch threads. Both solvers use asymmetric g128, sequential order,
updated group parameters, so the ratio isolates the cost of the FP8 cast.

    python benchmarks/solver_speed.py --json benchmarks/results/solver_speed.json [--reps 1] [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from dpq.algorithms import hessian_from_inputs, solve
from dpq.config import QuantConfig

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008)]


def timed_solve(w: torch.Tensor, h: torch.Tensor, cfg: QuantConfig, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        if w.is_cuda:
            torch.cuda.synchronize()
        qw = solve(w, h, cfg)
        if w.is_cuda:
            torch.cuda.synchronize()
        best = min(best, qw.solve_seconds)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the machine is shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gptq = QuantConfig.for_method("naive-w4a8")  # GPTQ, fp8_aware False
    dpq = QuantConfig.for_method("dpq")
    rows = []
    for dev in args.devices.split(","):
        gen = torch.Generator().manual_seed(0)
        for n, k in SHAPES:
            w = (torch.randn(n, k, generator=gen) * 0.02).to(dev)
            h = hessian_from_inputs(torch.randn(args.tokens, k, generator=gen).to(dev))
            t_g = timed_solve(w, h, gptq, args.reps)
            t_d = timed_solve(w, h, dpq, args.reps)
            row = {"device": dev, "shape": [n, k], "gptq_s": t_g, "dpq_s": t_d, "ratio": t_d / t_g}
            print(row, flush=True)
            rows.append(row)
            del w, h
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    result = {
        "cpu": platform.processor() or platform.machine(), "cuda": name,
        "torch_threads": torch.get_num_threads(), "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "rows": rows,
    }
    lines = ["| device | shape N x K | GPTQ s | DPQ s | DPQ / GPTQ |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['device']} | {r['shape'][0]}x{r['shape'][1]} | {r['gptq_s']:.2f} | {r['dpq_s']:.2f} | {r['ratio']:.3f} |" for r in rows]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    Path(args.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
