"""Solve time of the group search against an earlier commit's, same process, interleaved (bit-identity checked).

    python benchmarks/group_search_speed.py --against ceb8ccd \
        --json benchmarks/results/solver-speed/group_search_vs_ceb8ccd.json

Loads `src/dpq/algorithms/group_search.py` as it was at --against (`git show`), then times
`gptq_solve` with dpq-gar (no search), dpq-gar-plus's solver with the earlier search, and with
today's, alternating them --reps times on SmolLM2-135M's Linear shapes (W [N, K], Gaussian weights,
H from 4,096 Gaussian tokens with four large channels), one thread, best of the reps. Interleaving
keeps the ratio fair on a shared CPU. Fails if the two searches' codes, scales or zero points differ.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dpq.algorithms.gptq as gptq
from dpq.config import QuantConfig

SHAPES = [(576, 576), (1536, 576), (576, 1536)]
"""SmolLM2-135M: q/o_proj, gate/up_proj, down_proj."""


def earlier_search(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:src/dpq/algorithms/group_search.py"], check=True,
                         capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "group_search_earlier.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location("group_search_earlier", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.search_group_params


def time_shape(n: int, k: int, reps: int, earlier) -> dict:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, k, generator=gen) * 0.02
    x = torch.randn(4096, k, generator=gen)
    x[:, :4] *= 20
    h = x.T @ x / x.shape[0]
    today = gptq.search_group_params
    runs = {"dpq-gar": (QuantConfig.for_method("dpq-gar"), today),
            "earlier": (QuantConfig.for_method("dpq-gar-plus"), earlier),
            "today": (QuantConfig.for_method("dpq-gar-plus"), today)}
    best, out = dict.fromkeys(runs, float("inf")), {}
    for _ in range(reps):
        for name, (cfg, fn) in runs.items():
            gptq.search_group_params = fn
            t = time.perf_counter()
            out[name] = gptq.gptq_solve(w, h, cfg)
            best[name] = min(best[name], time.perf_counter() - t)
    gptq.search_group_params = today
    a, b = out["earlier"], out["today"]
    if not (all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("codes", "scale", "zero")) and a.s_w == b.s_w):
        sys.exit(f"group search differs from {earlier.__module__} on {n}x{k}")
    return {"shape": [n, k], **{f"{name}_s": round(s, 3) for name, s in best.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="git revision of the earlier search")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    earlier = earlier_search(a.against)
    rows = [time_shape(n, k, a.reps, earlier) for n, k in SHAPES]
    lines = [f"| shape N x K | dpq-gar s | dpq-gar-plus s ({a.against}) | dpq-gar-plus s (today) | today / earlier |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['shape'][0]}x{r['shape'][1]} | {r['dpq-gar_s']:.2f} | {r['earlier_s']:.2f} | {r['today_s']:.2f} | "
              f"{r['today_s'] / r['earlier_s']:.2f} |" for r in rows]
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
    meta = {"command": "python " + " ".join(sys.argv), "commit": head + (" (with uncommitted src changes)" if dirty else ""),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": "cpu", "threads": 1}}
    result = {"meta": meta, "against": a.against, "reps": a.reps, "rows": rows}
    Path(a.json).write_text(json.dumps(result, indent=1))
    Path(a.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
