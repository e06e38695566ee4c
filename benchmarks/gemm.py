"""W4A8 GEMM benchmark: the W4A8 paths against BF16, FP8 (_scaled_mm) and W4A16 (_weight_int4pack_mm).

W4A8 paths (`W4A8_VARIANTS`): the fused Triton kernel (activations quantized in its prologue or by
the separate kernel) and the large-M path (FP8 weight dequantized once, then torch._scaled_mm);
each row marks with * the path `choose_path` takes at that M, so the table shows where the
large-M threshold should sit.

Needs a CUDA GPU with FP8 (SM89+). Shapes are the Linears of Llama-3-8B and
Llama-2-70B (N x K), M tokens in {1 .. 8192}. Times are CUDA-event medians
over many runs, rotating among input sets larger than L2: `ms` is the kernels' time (a CUDA graph
of 20 calls replayed), `eager_ms` one eager call between events (the host's launch work included,
0.1-0.3 ms for a W4A8 call on an H200). Reports time,
TFLOP/s, GB/s, ratio to BF16 and FP8, the fraction of the memory floor
(bytes / measured copy bandwidth, what matters at small M) and of the
measured FP8 matmul peak (large M).

    python benchmarks/gemm.py --quick --json out/gemm.json     # on the GPU
    python benchmarks/gemm.py --dry-run                        # CPU smoke test (Triton interpreter)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

SHAPES = {  # model: [(name, N, K)]
    "llama3-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)],
    "llama2-70b": [("qkv", 10240, 8192), ("o", 8192, 8192), ("gate_up", 57344, 8192), ("down", 8192, 28672)],
}
MS = [1, 4, 16, 64, 256, 1024, 4096, 8192]
QUICK = {"shapes": [("llama3-8b", "o", 4096, 4096), ("llama3-8b", "down", 4096, 14336)], "ms": [1, 16, 256, 4096]}
DRY = {"shapes": [("tiny", "x", 64, 256)], "ms": [1, 17]}
GROUP = 128
F = 448.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--quick", action="store_true", help="two Llama-3-8B shapes, four M values")
    p.add_argument("--dry-run", action="store_true", help="tiny shape on the CPU under TRITON_INTERPRET=1")
    p.add_argument("--models", default="llama3-8b,llama2-70b", help="comma list of " + ", ".join(SHAPES))
    p.add_argument("--ms", help="comma list of M values (default: %s)" % ",".join(map(str, MS)))
    p.add_argument("--reps", type=int, default=100, help="timed runs per measurement (median reported)")
    p.add_argument("--layouts", action="store_true", help="also time the kernel on the checkpoint layout")
    return p.parse_args(argv)


class Timer:
    """Median time in ms of fn(i) over reps, i cycling over the rotating input sets."""

    def __init__(self, cuda: bool, reps: int):
        self.cuda, self.reps = cuda, reps

    def __call__(self, fn, n_sets: int) -> float:
        for i in range(max(3, n_sets)):  # warm-up: compile, autotune, handles
            fn(i % n_sets)
        times = []
        for r in range(self.reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn(r % n_sets)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn(r % n_sets)
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def graph_ms(fn, n_sets: int, calls: int = 20, reps: int = 10) -> float:
    """ms per call of fn(i) replayed from a CUDA graph of `calls` calls cycling the input sets: the
    kernels' time without the host's launch work (what a served decode step, itself a graph, sees).
    The median of reps replays, after warm-up calls (compiling and autotuning happen there)."""
    for i in range(max(3, n_sets)):
        fn(i % n_sets)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i % n_sets)
    graph.replay()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def ceilings(device, timer) -> dict:
    """Measured device-to-device copy bandwidth (GB/s, read + write) and FP8 matmul rate (TFLOP/s)."""
    if device.type != "cuda":
        return {"copy_gbps": float("nan"), "fp8_tflops": float("nan")}
    src = torch.empty(2**28, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = timer(lambda i: dst.copy_(src), 1)
    n = 8192
    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device)
    ms_mm = timer(lambda i: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16), 1)
    return {"copy_gbps": 2 * src.numel() / ms / 1e6, "fp8_tflops": 2 * n**3 / ms_mm / 1e9}


def make_sets(m, n, k, device, l2_bytes):
    """Random checkpoint-layout weights and inputs; enough copies that one pass exceeds 2x L2."""
    g = GROUP
    groups = math.ceil(k / g)
    per_set = n * k // 2 + 3 * n * groups + 2 * m * k + 2 * n * k  # w4 + scales/zeros + x + bf16 weight
    n_sets = max(1, min(8, math.ceil(2 * l2_bytes / per_set)))
    sets = []
    for _ in range(n_sets):
        packed = torch.randint(0, 256, (n, (k + 1) // 2), dtype=torch.uint8, device=device)
        scales = (torch.rand(n, groups, device=device) * 0.5 + 0.5).to(torch.bfloat16)
        zeros = torch.randint(0, 16, (n, groups), dtype=torch.uint8, device=device)
        t = lambda a: a.t().contiguous().t()  # noqa: E731  (the repack_for_kernel layout)
        sets.append(dict(packed=packed, scales=scales, zeros=zeros, packed_t=t(packed), scales_t=t(scales),
                         zeros_t=t(zeros), x=torch.randn(m, k, device=device).to(torch.bfloat16),
                         w_bf16=torch.randn(n, k, device=device).to(torch.bfloat16) * 0.02))
    return sets, n_sets


def baselines(sets, m, n, k, device):
    """name -> (fn(i), note) for the torch baselines that exist on this build and device."""
    out = {"bf16": (lambda i: torch.nn.functional.linear(sets[i]["x"], sets[i]["w_bf16"]), "")}
    one = torch.ones((), device=device)
    mp = -(-m // 16) * 16  # cuBLASLt FP8 wants dimensions in multiples of 16
    try:
        w8 = [s["w_bf16"].to(torch.float8_e4m3fn) for s in sets]
        x8 = [torch.randn(mp, k, device=device).to(torch.float8_e4m3fn) for _ in sets]
        fp8 = lambda i: torch._scaled_mm(x8[i], w8[i].t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa
        fp8(0)
        out["fp8_scaled_mm"] = (fp8, f"x pre-quantized; M padded to {mp}" if mp != m else "x pre-quantized")
    except Exception as e:  # noqa: BLE001 - a missing baseline is reported, not fatal
        out["fp8_scaled_mm"] = (None, f"n/a: {type(e).__name__}: {str(e)[:80]}")
    try:
        inner = 8 if k % 1024 == 0 else 2
        if device.type == "cuda":
            w4 = [torch._convert_weight_to_int4pack(s["packed"], inner) for s in sets]
        else:
            w4 = [torch._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), inner)
                  for _ in sets]
        sz = torch.rand(k // GROUP, n, 2, device=device).to(torch.bfloat16)
        w4a16 = lambda i: torch._weight_int4pack_mm(sets[i]["x"], w4[i], GROUP, sz)  # noqa: E731
        w4a16(0)
        out["w4a16_int4pack"] = (w4a16, "torch tinygemm W4A16, random codes")
    except Exception as e:  # noqa: BLE001
        out["w4a16_int4pack"] = (None, f"n/a: {type(e).__name__}: {str(e)[:80]}")
    return out


W4A8_VARIANTS = {  # name: (w4a8_gemm path, act_quant, checkpoint layout, note)
    "w4a8_small": ("small", "fused", False, "small-M kernel (y^T on the tensor cores), M <= 16"),
    "w4a8_fused": ("fused", "fused", False, "fused kernel, FP8 quantize in its prologue"),
    "w4a8_separate": ("fused", "separate", False, "fused kernel after the separate quantize kernel"),
    "w4a8_dequant": ("dequant", "fused", True, "FP8 weight dequantized once, then torch._scaled_mm"),
    "w4a8_fused_ckpt": ("fused", "fused", True, "fused kernel on the checkpoint layout [N, K/2]"),
}


def default_variants(m: int, layouts: bool = False) -> set:
    """The W4A8 variants worth timing at M: the dequantize path only from M = 64 (below it rebuilds
    the whole weight for a few rows); the separate quantize kernel only below the large-M rule."""
    from dpq.kernels.triton_w4a8 import LARGE_M_THRESHOLD

    from dpq.kernels.tuning import SMALL_M_MAX

    out = {"w4a8_fused"} | ({"w4a8_dequant"} if m >= 64 else set()) | ({"w4a8_small"} if m <= SMALL_M_MAX else set())
    out |= {"w4a8_separate"} if m < LARGE_M_THRESHOLD else set()
    return out | ({"w4a8_fused_ckpt"} if layouts else set())


def _run(s, variant):
    from dpq.kernels.triton_w4a8 import w4a8_gemm

    path, act, ckpt, _ = W4A8_VARIANTS[variant]
    p, sc, z = (s["packed"], s["scales"], s["zeros"]) if ckpt else (s["packed_t"], s["scales_t"], s["zeros_t"])
    return w4a8_gemm(s["x"], p, sc, z, 1.0, 0.05, None, GROUP, F, act_quant=act, path=path)


def ours(sets, variants):
    """name -> (fn(i), note) for the W4A8 variants to time (the rule's path is marked per row)."""
    return {v: ((lambda i, v=v: _run(sets[i], v)), W4A8_VARIANTS[v][3]) for v in sorted(variants)}


def check(s, variants) -> dict:
    """variant -> ||kernel - reference|| / ||reference|| on one input set; raises above 1e-2."""
    from dpq.kernels.reference import w4a8_linear

    ref = w4a8_linear(s["x"], s["packed"], s["scales"], s["zeros"], 1.0, 0.05, None, GROUP, F).float()
    errs = {}
    for v in variants:
        y = _run(s, v).float()
        errs[v] = float((y - ref).norm() / ref.norm().clamp_min(1e-30))
        if not errs[v] < 1e-2:  # BF16 output: ~2^-9 expected; NaN fails too
            raise RuntimeError(f"W4A8 {v} disagrees with the reference: relative error {errs[v]}")
    return errs


def bench_shape(model, name, n, k, m, device, timer, ceil, l2_bytes, variants=None, baselines_too=True):
    """Rows for one shape and M: the torch baselines (unless baselines_too is False) and the W4A8
    variants (default: `default_variants(m)`); each row says which path the large-M rule takes."""
    from dpq.kernels.triton_w4a8 import choose_path

    variants = default_variants(m) if variants is None else set(variants)
    sets, n_sets = make_sets(m, n, k, device, l2_bytes)
    flops = 2 * m * n * k
    groups = math.ceil(k / GROUP)
    w4_bytes = n * k // 2 + 3 * n * groups + 2 * m * k + 2 * m * n
    bytes_of = {"bf16": 2 * n * k + 2 * m * k + 2 * m * n, "fp8_scaled_mm": n * k + m * k + 2 * m * n,
                "w4a16_int4pack": n * k // 2 + 4 * n * groups + 2 * m * k + 2 * m * n}
    rule = "w4a8_" + choose_path(m, n, k, GROUP)
    rows = []
    timed = {**(baselines(sets, m, n, k, device) if baselines_too else {}), **ours(sets, variants)}
    for variant, (fn, note) in timed.items():
        eager = timer(fn, n_sets) if fn is not None else float("nan")
        ms = eager
        if fn is not None and device.type == "cuda":
            try:
                ms = graph_ms(fn, n_sets)
            except Exception as e:  # noqa: BLE001 - an op that cannot be captured keeps its eager time
                note = f"{note}; eager time (graph capture failed: {type(e).__name__})".lstrip("; ")
        nbytes = bytes_of.get(variant, w4_bytes)
        rows.append(dict(model=model, layer=name, N=n, K=k, M=m, variant=variant, ms=ms, eager_ms=eager,
                         tflops=flops / ms / 1e9, gbps=nbytes / ms / 1e6, note=note, rule_path=variant == rule,
                         frac_mem_floor=(nbytes / (ceil["copy_gbps"] * 1e6)) / ms,
                         frac_fp8_peak=(flops / (ceil["fp8_tflops"] * 1e9)) / ms))
    errs = check(sets[0], variants)
    for r in rows:
        if r["variant"] in errs:
            r["rel_err_vs_reference"] = errs[r["variant"]]
    ref = {r["variant"]: r["ms"] for r in rows}
    for r in rows:
        r["vs_bf16"] = ref.get("bf16", float("nan")) / r["ms"]
        r["vs_fp8"] = ref.get("fp8_scaled_mm", float("nan")) / r["ms"]
    del sets
    return rows


def table(rows) -> str:
    head = f"{'layer':<18}{'M':>6} {'variant':<16}{'ms':>9}{'TFLOP/s':>9}{'GB/s':>8}{'xBF16':>8}{'xFP8':>8}" \
           f"{'mem%':>6}{'fp8%':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = "*" if r.get("rule_path") else " "
        lines.append(f"{r['model'] + '/' + r['layer']:<18}{r['M']:>6}{mark}{r['variant']:<16}{r['ms']:>9.4f}"
                     f"{r['tflops']:>9.1f}{r['gbps']:>8.0f}{r['vs_bf16']:>8.2f}{r['vs_fp8']:>8.2f}"
                     f"{100 * r['frac_mem_floor']:>6.0f}{100 * r['frac_fp8_peak']:>6.0f}")
    lines.append("*: the W4A8 path the large-M rule takes; ms: CUDA-graph replay (kernel time; eager_ms in the JSON); "
                 "xBF16/xFP8: speed-up over that baseline (>1 = faster); mem%: memory floor / time; "
                 "fp8%: time at measured FP8 peak / time")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before dpq.kernels.triton_w4a8 is imported
        device = torch.device("cpu")
    else:
        if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
            print("benchmarks/gemm.py needs a CUDA GPU with FP8 (SM89+); none found. "
                  "Use --dry-run for a CPU smoke test of the script.", file=sys.stderr)
            return 2
        device = torch.device("cuda")
    torch.manual_seed(0)
    timer = Timer(device.type == "cuda", 3 if args.dry_run else args.reps)
    if args.dry_run:
        shapes, ms = DRY["shapes"], DRY["ms"]
    elif args.quick:
        shapes, ms = QUICK["shapes"], QUICK["ms"]
    else:
        shapes = [(mdl, *s) for mdl in args.models.split(",") for s in SHAPES[mdl]]
        ms = MS
    if args.ms:
        ms = [int(v) for v in args.ms.split(",")]
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (TRITON_INTERPRET=1, not a measurement)"
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 1 << 20
    ceil = ceilings(device, timer)
    print(f"device: {name}; measured copy {ceil['copy_gbps']:.0f} GB/s, FP8 matmul {ceil['fp8_tflops']:.0f} TFLOP/s")
    rows = []
    for model, layer, n, k in shapes:
        for m in ms:
            new = bench_shape(model, layer, n, k, m, device, timer, ceil, l2, default_variants(m, args.layouts))
            rows += new
            print("\n".join(table(new).splitlines()[2:-1]), flush=True)
    print()
    print(table(rows))
    notes = {(r["variant"], r["note"]) for r in rows if r["note"]}
    for variant, note in sorted(notes):
        print(f"  {variant}: {note}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = dict(device=name, torch=torch.__version__, ceilings=ceil, group_size=GROUP, fp8_max=F,
                    dry_run=args.dry_run, reps=timer.reps)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
