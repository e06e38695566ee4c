"""Compile the Triton kernels ahead of time for sm_89, sm_90 and sm_100 and write the resource table.

The jobs of tests/kernels/test_compile.py (`dpq.kernels.aot`: every autotune config of the GEMM,
the constexpr combinations, the split-K reduce, activation-quantize and weight-dequantize kernels),
and with --with-pruned the configs that were in the autotune space before issue 28 and were removed
from it, with the reason measured here. No GPU needed; runs on the CPU with the ptxas of the
triton wheel.

    python benchmarks/kernel_compile.py --with-pruned --out benchmarks/results/kernel-compile
    PYTHONPATH=/path/to/triton-3.6:src python benchmarks/kernel_compile.py --tag triton3.6   # another Triton
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

PREVIOUS = (  # the autotune space before issue 28: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    [(16, bn, bk, 4, s) for bn in (32, 64, 128) for bk in (128, 256) for s in (3, 4)]
    + [(bm, bn, 128, w, s) for bm in (32, 64) for bn in (64, 128) for w in (4, 8) for s in (3, 4)]
    + [(128, 128, 128, 8, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (128, 128, 64, 4, 4),
       (128, 256, 64, 8, 4), (64, 256, 128, 8, 3)]
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/kernel-compile", help="folder for compile.json and compile.md")
    p.add_argument("--with-pruned", action="store_true", help="also compile the removed configs, with the reason")
    p.add_argument("--workers", type=int, default=None, help="parallel compiles (default: CPU count)")
    p.add_argument("--tag", default="", help="suffix of the file names (compile-TAG.json), e.g. triton3.6")
    return p.parse_args(argv)


def pruned_jobs() -> list[dict]:
    from dpq.kernels import aot
    from dpq.kernels.tuning import CONFIG_CLASSES, _config

    kept = {c for cls in CONFIG_CLASSES.values() for c in cls}
    jobs = []
    for cc in aot.TARGETS.values():
        for c in PREVIOUS:
            if c not in kept:
                jobs.append(aot._gemm_job(cc, _config(*c), "pruned", aot.BASE, aot.LLAMA_O[1], {}))
    return jobs


def _tile(r) -> str:
    c = r["constexprs"]
    t = "x".join(str(c[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K") if k in c) or str(c.get("BLOCK", ""))
    return f"{t} w{r['num_warps']} s{r['num_stages']}"


def pruned_reasons(rows) -> dict:
    """tile -> why it left the autotune space, from its compile on the three targets."""
    reasons = {}
    for r in rows:
        if r["label"] != "pruned":
            continue
        why = reasons.setdefault(_tile(r), [])
        if r["error"]:
            why.append(f"{r['target']}: fails ({r['error'][:60]})")
        elif r["spill_stores"]:
            why.append(f"{r['target']}: spills {r['spill_stores']} B")
        if not r["error"] and r["shared"] > r["shared_limit"]:
            why.append(f"{r['target']}: {r['shared'] / 1024:.0f} KiB shared > {r['shared_limit'] / 1024:.0f}")
    return {t: "; ".join(w) or "compiles clean: dropped to keep the autotune space small" for t, w in reasons.items()}


def markdown(rows, meta) -> str:
    lines = [f"# Kernel compile table ({meta['triton']}, ptxas of the triton wheel; no GPU)", "",
             f"`{meta['command']}` at {meta['commit'][:12]}: {meta['jobs']} compiles in {meta['wall_s']:.0f} s "
             f"wall, {meta['cpu_s']:.0f} CPU-s on {meta['machine']['cpu_count']} CPUs.", "",
             "regs: registers per thread; spill: bytes of spill stores; shared: bytes of shared memory "
             "(Triton's count, checked against the device at load: 101376 on sm_89, 232448 on sm_90/sm_100); "
             "mma: tensor-core instruction in the PTX; cpu s: CPU seconds of the compile.", "",
             "| kernel | target | tile w/s | what | regs | spill | shared | mma | cpu s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"]:
            lines.append(f"| {r['kernel']} | {r['target']} | {_tile(r)} | {r['label']} | error: {r['error'][:80]} "
                         "| | | | |")
            continue
        lines.append(f"| {r['kernel']} | {r['target']} | {_tile(r)} | {r['label']} | {r['regs']} | "
                     f"{r['spill_stores']} | {r['shared']} | {r['tensor_core'] or '-'} | {r['cpu_seconds']:.2f} |")
    reasons = pruned_reasons(rows)
    if reasons:
        lines += ["", "## Removed from the autotune space", "", "| tile w/s | reason (compiled here) |", "|---|---|"]
        lines += [f"| {t} | {why} |" for t, why in reasons.items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    from dpq.kernels import aot

    jobs = aot.gemm_jobs() + aot.helper_jobs() + (pruned_jobs() if args.with_pruned else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    rows = aot.compile_jobs(jobs, workers=args.workers)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    import torch
    import triton

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    path = os.environ.get("PYTHONPATH", "")
    meta = dict(command=(f"PYTHONPATH={path} " if path else "") + "python "
                + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
                triton_file=triton.__file__,
                commit=commit or "unknown", triton=f"triton {triton.__version__}", torch=torch.__version__,
                machine=dict(platform=platform.platform(), cpu_count=os.cpu_count(),
                             device="none: ahead-of-time compile on the CPU"),
                jobs=len(jobs), wall_s=time.perf_counter() - t0,
                cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
                targets=aot.TARGETS, shared_limit=aot.SHARED_LIMIT)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"compile-{args.tag}" if args.tag else "compile"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "pruned": pruned_reasons(rows), "rows": rows}, indent=1))
    (out / f"{stem}.md").write_text(markdown(rows, meta))
    bad = [r for r in rows if r["label"] != "pruned" and (r["error"] or r["spill_stores"])]
    print(f"{len(rows)} compiles, {meta['wall_s']:.0f} s wall, {meta['cpu_s']:.0f} CPU-s; "
          f"{len(bad)} kept jobs with an error or spills; wrote {out}/{stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
