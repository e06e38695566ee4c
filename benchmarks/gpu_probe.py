"""GPU probe: where the W4A8 paths lose accuracy and time, in one short call (complements gpu_suite.py).

    PYTHONPATH=src python3 benchmarks/gpu_probe.py --out $OUT       # a CUDA GPU with FP8
    PYTHONPATH=src python3 benchmarks/gpu_probe.py --dry-run --out /tmp/gp

Sections:
  accuracy  one Llama-sized layer (N 1024, K 4096, g128, bias): the FP8 activations of each quantizer
            against the CPU's, and every path's output against an fp64 product of the same FP8
            operands (relative error, worst absolute error, outputs outside one BF16 rounding)
  overhead  eager time per call (host launch work included) against the same calls replayed from a
            CUDA graph (kernel time), M = 1, for the fused, small-M and dequantize paths
  sweep     kernel time (CUDA-graph replay, rotating input sets larger than L2) of the small-M
            kernels over tiles and split-K, the fused kernel as autotuned, BF16 and FP8 at
            Llama-3-8B shapes, M = 1, 4, 16
  decode    the GPU suite's 8-layer decode (CUDA graphs) with the small-M path on and off
Writes $OUT/gpu_probe.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
SMALL_CONFIGS = {  # variant: [(BLOCK_N, BLOCK_K, num_warps, num_stages)]
    "swap": [(64, 128, 4, 4), (128, 128, 4, 4), (64, 128, 4, 3), (64, 128, 8, 4)],
    "gemv": [(128, 64, 4, 3)],
}
SPLITS = [4, 8, 16]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (Triton interpreter)")
    p.add_argument("--budget-s", type=float, default=200.0, help="stop starting sweep rows after this")
    p.add_argument("--skip", default="", help="comma list of sections to leave out")
    p.add_argument("--commit", default=None)
    return p.parse_args(argv)


def graph_ms(fn, n_sets: int, device) -> float:
    """ms per call from a CUDA graph (`gemm.graph_ms`); CPU: one eager call, wall clock (nothing is measured)."""
    if device.type != "cuda":
        fn(0)
        t = time.perf_counter()
        fn(0)
        return (time.perf_counter() - t) * 1e3
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gemm import graph_ms as replayed  # noqa: PLC0415

    return replayed(fn, n_sets)


def eager_ms(fn, device, calls: int = 50) -> float:
    """ms per call of back-to-back eager calls (host launch work included when it exceeds the kernel's)."""
    import torch

    for _ in range(3):
        fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) * 1e3 / calls


def accuracy(dev, dry) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.kernels.kernel_cases import make_input, make_layer

    from dpq.kernels import triton_small_m as sm
    from dpq.kernels import triton_w4a8 as tk
    from dpq.kernels.reference import dequant_weight, w4a8_linear
    from dpq.numerics.fp8 import quantize_activation

    n, k, g = (64, 256, 128) if dry else (1024, 4096, 128)
    packed, scales, zeros, s_w, b = make_layer(n, k, g, False, 448.0, True, seed=11, device="cpu")
    out = {}
    for m in ([3] if dry else [16, 200, 1024]):
        x, s_x = make_input(m, k, 448.0, seed=12)
        x = x.cpu()
        x8_cpu = quantize_activation(x, s_x, 448.0)
        xd = x.to(dev)
        x8 = {"torch_cuda_float_scale": quantize_activation(xd, s_x, 448.0),
              "torch_cuda_tensor_scale": quantize_activation(xd, torch.tensor(s_x, device=dev), 448.0),
              "kernel_quantize_fp8": tk.quantize_fp8(xd, s_x, 448.0).float()}
        x8_diff = {key: int((v.cpu() != x8_cpu).sum()) for key, v in x8.items()}
        w8 = dequant_weight(packed, scales, zeros, k, g, 448.0)
        truth = ((x8_cpu.double() @ w8.double().t()) * (s_x * s_w) + b.double()).float()
        P = [t.to(dev) for t in (packed, scales, zeros)]
        T = [t.t().contiguous().t() for t in P]
        bd = b.to(dev)
        ys = {"reference_cpu": lambda: w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, g, 448.0),
              "reference_dev": lambda: w4a8_linear(xd, *P, s_w, s_x, bd, g, 448.0),
              "fused_prologue": lambda: tk.w4a8_gemm(xd, *T, s_w, s_x, bd, g, 448.0, path="fused"),
              "fused_prologue_no_promotion": lambda: tk.w4a8_gemm(xd, *T, s_w, s_x, bd, g, 448.0, path="fused",
                                                                  max_imprecise_acc=None),
              "fused_separate": lambda: tk.w4a8_gemm(xd, *T, s_w, s_x, bd, g, 448.0, path="fused",
                                                     act_quant="separate"),
              "dequant": lambda: tk.w4a8_gemm(xd, *P, s_w, s_x, bd, g, 448.0, path="dequant")}
        if m <= 16:
            for v in sm.VARIANTS:
                ys[f"small_{v}"] = lambda v=v: sm.small_m_call(xd, *P, s_w, s_x, bd, g, 448.0, variant=v)
        rows = {}
        for key, fn in ys.items():
            try:
                y = fn().float().cpu()
                err = (y - truth).abs()
                outside = err > (2 ** -7 * truth.abs() + 1e-5 * float(truth.abs().max()))
                rows[key] = dict(rel=float((y - truth).norm() / truth.norm()), max_abs=float(err.max()),
                                 outside_one_bf16=int(outside.sum()))
            except Exception as e:  # noqa: BLE001
                rows[key] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        out[str(m)] = {"x8_elements_differing_from_cpu": x8_diff, "outputs_vs_fp64": rows}
    return out


def _sets(n, k, m, dev, l2):
    import torch

    n_sets = 1 if dev.type != "cuda" else max(2, -(-3 * l2 // (n * k // 2)) + 1)
    sets = []
    for _ in range(n_sets):
        p = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=dev)
        sc = (torch.rand(n, k // 128, device=dev) * 0.5 + 0.5).to(torch.bfloat16)
        z = torch.randint(0, 16, (n, k // 128), dtype=torch.uint8, device=dev)
        sets.append(dict(p=p, s=sc, z=z, pt=p.t().contiguous().t(), st=sc.t().contiguous().t(),
                         zt=z.t().contiguous().t(), x=torch.randn(m, k, device=dev).to(torch.bfloat16),
                         w16=(torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16)))
    return sets


def sweep(dev, dry, t0, budget) -> list:
    import torch

    from dpq.kernels import triton_small_m as sm
    from dpq.kernels import triton_w4a8 as tk

    l2 = torch.cuda.get_device_properties(dev).L2_cache_size if dev.type == "cuda" else 1 << 20
    shapes = [("tiny", 64, 256)] if dry else SHAPES
    one = torch.ones((), device=dev)
    sx, sw = tk._scalar(0.05, dev), tk._scalar(1.0, dev)
    rows = []
    for name, n, k in shapes:
        for m in ([1] if dry else [1, 16]):
            if time.perf_counter() - t0 > budget:
                rows.append(dict(layer=name, M=m, skipped="time budget"))
                continue
            S = _sets(n, k, m, dev, l2)
            fns = {"bf16": lambda i: torch.nn.functional.linear(S[i]["x"], S[i]["w16"]),
                   "fused_autotuned": lambda i: tk.w4a8_gemm(S[i]["x"], S[i]["pt"], S[i]["st"], S[i]["zt"], sw, sx,
                                                             None, 128, 448.0, path="fused")}
            if dev.type == "cuda":
                w8 = [s["w16"].to(torch.float8_e4m3fn) for s in S]
                x8 = [torch.randn(16, k, device=dev).to(torch.float8_e4m3fn) for _ in S]
                fns["fp8_scaled_mm"] = lambda i: torch._scaled_mm(x8[i], w8[i].t(), scale_a=one, scale_b=one,
                                                                  out_dtype=torch.bfloat16)
            for v, cfgs in SMALL_CONFIGS.items():
                if v == "gemv" and m > 1:  # [BN, BK, M] products in registers: decode batches of a few only
                    continue
                for bn, bk, w, st in (cfgs[:1] if dry else cfgs):
                    for split in ([1, 2] if dry else SPLITS):
                        for layout in ("ckpt", "repacked"):
                            if layout == "repacked" and (bn, bk, w, st) != cfgs[0]:
                                continue
                            key = f"{v}_bn{bn}_bk{bk}_w{w}_s{st}_k{split}_{layout}"
                            p, s_, z = ("p", "s", "z") if layout == "ckpt" else ("pt", "st", "zt")
                            fns[key] = (lambda i, v=v, bn=bn, bk=bk, w=w, st=st, split=split, p=p, s_=s_, z=z:
                                        sm.small_m_gemm(S[i]["x"], S[i][p], S[i][s_], S[i][z], sx, sw, None, 128, 448.0,
                                                        variant=v, split_k=split, block_n=bn, block_k=bk,
                                                        num_warps=w, num_stages=st))
            for key, fn in fns.items():
                try:
                    ms = graph_ms(fn, len(S), dev)
                    rows.append(dict(layer=name, N=n, K=k, M=m, variant=key, ms=ms,
                                     gbps=(n * k // 2 + n * k // 128 * 3) / ms / 1e6))
                except Exception as e:  # noqa: BLE001
                    rows.append(dict(layer=name, M=m, variant=key, error=f"{type(e).__name__}: {str(e)[:160]}"))
            S = None  # free the sets before the next shape
    return rows


def overhead(dev, dry) -> dict:
    import torch

    from dpq.kernels import triton_w4a8 as tk

    n, k = (64, 256) if dry else (6144, 4096)
    S = _sets(n, k, 1, dev, 1 << 20)
    sx, sw = tk._scalar(0.05, dev), tk._scalar(1.0, dev)
    res = {}
    for path in ("small", "fused", "dequant"):
        fn = lambda i, path=path: tk.w4a8_gemm(S[0]["x"], S[0]["pt"] if path != "dequant" else S[0]["p"],  # noqa
                                               S[0]["st"] if path != "dequant" else S[0]["s"],
                                               S[0]["zt"] if path != "dequant" else S[0]["z"], sw, sx, None, 128,
                                               448.0, path=path)
        try:
            res[path] = dict(eager_ms=eager_ms(fn, dev), graph_ms=graph_ms(fn, 1, dev))
        except Exception as e:  # noqa: BLE001
            res[path] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    res["bf16"] = dict(eager_ms=eager_ms(lambda i: torch.nn.functional.linear(S[0]["x"], S[0]["w16"]), dev))
    return res


def decode(dev, dry) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import Suite, parse_args as suite_args
    from gpu_suite_e2e import e2e

    from dpq.kernels import tuning

    s = Suite(suite_args(["--out", "/tmp/gpu_probe_suite"] + (["--dry-run"] if dry else [])))
    res = {"small_m_on": e2e(s)}
    keep = tuning.SMALL_M_MAX
    tuning.SMALL_M_MAX = 0
    try:
        res["small_m_off"] = e2e(s)
    finally:
        tuning.SMALL_M_MAX = keep
    return res


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, str(ROOT / "src"))
    import platform

    import torch

    dev = torch.device("cpu" if args.dry_run else "cuda")
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"meta": dict(command="python3 benchmarks/gpu_probe.py " + " ".join(argv or sys.argv[1:]),
                           commit=args.commit or "unknown", device=torch.cuda.get_device_name() if not args.dry_run
                           else "cpu (dry run)", machine=platform.platform(), torch=torch.__version__)}
    sections = [("accuracy", lambda: accuracy(dev, args.dry_run)), ("overhead", lambda: overhead(dev, args.dry_run)),
                ("sweep", lambda: sweep(dev, args.dry_run, t0, args.budget_s)),
                ("decode", lambda: decode(dev, args.dry_run))]
    for name, fn in sections:
        if name in args.skip.split(","):
            continue
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception:  # noqa: BLE001
            result[name] = {"error": traceback.format_exc()[-3000:]}
        print(f"[{time.perf_counter() - t0:6.0f} s] {name} ({time.perf_counter() - t:.0f} s)", flush=True)
        (out / "gpu_probe.json").write_text(json.dumps(result, indent=1, default=str))
    print(report(result))
    return 0


def report(result) -> str:
    lines = [f"device: {result['meta']['device']}"]
    for m, r in (result.get("accuracy") or {}).items():
        if not isinstance(r, dict) or "outputs_vs_fp64" not in r:
            lines.append(f"accuracy: {r}")
            continue
        lines.append(f"M={m} x8 differing from CPU: {r['x8_elements_differing_from_cpu']}")
        for key, v in r["outputs_vs_fp64"].items():
            lines.append(f"  {key:<30} {v}")
    lines.append(f"overhead: {json.dumps(result.get('overhead'), default=str)}")
    best = {}
    for r in result.get("sweep") or []:
        if "ms" not in r:
            lines.append(str(r))
            continue
        fam = r["variant"].split("_bn")[0]
        key = (r["layer"], r["M"], fam)
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    for (layer, m, fam), r in sorted(best.items()):
        lines.append(f"{layer:<8} M={m:<3} {fam:<16} {r['ms'] * 1e3:8.1f} us {r['gbps']:7.0f} GB/s  {r['variant']}")
    dec = result.get("decode") or {}
    for key, r in dec.items():
        if isinstance(r, dict) and "ratios" in r:
            lines.append(f"decode {key}: {json.dumps(r['ratios'])}")
        else:
            lines.append(f"decode {key}: {str(r)[:500]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
