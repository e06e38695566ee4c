"""Ahead-of-time compile of the Triton kernels for NVIDIA GPU targets, on a machine without a GPU.

`triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))` runs Triton's whole pipeline
(TTIR, TTGIR, LLVM IR, PTX, then the ptxas bundled in the triton wheel) for a target without a
driver or a GPU. A job compiles one kernel with one set of constexprs, warps and stages,
specialized the way Triton's launcher specializes a real call (pointers 16-byte aligned, integer
arguments equal to 1 made constants, multiples of 16 marked divisible by 16), and reports what the
compiler says: registers, spill bytes and stack frame (ptxas), shared memory (Triton's metadata, the
number Triton checks against the device at load time), and the tensor-core instruction in the PTX
(`wgmma` on sm_90, `tcgen05` on sm_100, `mma.sync` otherwise).

Compiling needs Triton's compiler, not its interpreter: under TRITON_INTERPRET=1 (which `make test`
sets for the whole run) `triton.jit` makes interpreter functions that cannot be compiled, and the
flag is read when a kernel module is imported. `compile_jobs` therefore runs the jobs in a fresh
Python process whose environment lacks TRITON_INTERPRET (`python -m dpq.kernels.aot JOBS RESULTS`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dpq.kernels.tuning import _config, block_k_for_group, gpu_configs, m_bucket

TARGETS = {"sm_89": 89, "sm_90": 90, "sm_100": 100}
SHARED_LIMIT = {89: 101376, 90: 232448, 100: 232448}
"""Shared memory a block may use (bytes, the opt-in maximum): 99 KiB on Ada, 227 KiB on Hopper and B200."""
KERNELS = ("gemm", "splitk_reduce", "quantize", "dequant", "small_m")


def _kernel(name: str):
    """The @triton.jit function behind a job's kernel name (imported in the compiling process)."""
    from dpq.kernels import triton_dequant, triton_small_m, triton_w4a8  # noqa: PLC0415

    return {"gemm": triton_w4a8._w4a8_gemm_kernel, "splitk_reduce": triton_w4a8._splitk_reduce_kernel,
            "quantize": triton_w4a8._quantize_kernel, "dequant": triton_dequant._dequant_fp8_kernel,
            "small_m": triton_small_m._small_m_kernel}[name]


def specialize(arg_names: list[str], args: dict, constexprs: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ASTSource, as Triton 3.9's launcher specializes a call.

    args: runtime argument -> a pointer type string ("*bf16") or an int value. Pointers are
    16-byte aligned (torch allocations are); an int equal to 1 becomes a constant; an int that
    is a multiple of 16 gets tt.divisibility 16 (what `create_function_from_signature` does).
    """
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name not in args:
            raise KeyError(f"no value for kernel argument {name!r}")
        elif isinstance(args[name], str):
            signature[name] = args[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif args[name] == 1:
            signature[name] = "constexpr"
            consts[name] = 1
        else:
            signature[name] = "i64" if abs(args[name]) >= 2**31 else "i32"
            if args[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, consts, attrs


_PTXAS = {"regs": r"Used (\d+) registers", "stack_frame": r"(\d+) bytes stack frame",
          "spill_stores": r"(\d+) bytes spill stores", "spill_loads": r"(\d+) bytes spill loads"}


def _tensor_core_op(ptx: str) -> str | None:
    for op, pattern in (("wgmma", "wgmma.mma_async"), ("tcgen05", "tcgen05.mma"), ("mma.sync", "mma.sync")):
        if pattern in ptx:
            return op
    return None


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): a compile's cost on a loaded machine."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def compile_one(job: dict) -> dict:
    """Compile one job in this process (TRITON_INTERPRET must be unset here); a result dict."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    fn = _kernel(job["kernel"])
    out = {k: job[k] for k in ("kernel", "cc", "label", "constexprs", "num_warps", "num_stages", "args")}
    out["target"] = f"sm_{job['cc']}"
    sig, consts, attrs = specialize(fn.arg_names, job["args"], job["constexprs"])
    triton.knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed by Triton after each compile
    log = io.StringIO()
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    try:
        with contextlib.redirect_stdout(log):
            k = triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs),
                               target=GPUTarget("cuda", job["cc"], 32),
                               options=dict(num_warps=job["num_warps"], num_stages=job["num_stages"]))
    except Exception as e:  # noqa: BLE001 - a failed compile is a result: the test reports it
        out.update(seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {str(e)[:2000]}")
        return out
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["cpu_seconds"] = round(_cpu_seconds() - cpu0, 3)
    text = log.getvalue()
    for key, pattern in _PTXAS.items():
        found = re.findall(pattern, text)
        out[key] = max(int(v) for v in found) if found else None
    out["shared"] = int(k.metadata.shared)
    out["shared_limit"] = SHARED_LIMIT[job["cc"]]
    out["tensor_core"] = _tensor_core_op(k.asm["ptx"])
    out["error"] = None
    return out


def _worker_main(jobs_path: str, results_path: str, workers: int) -> None:
    jobs = json.loads(Path(jobs_path).read_text())
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(compile_one, jobs, chunksize=1))
    else:
        results = [compile_one(j) for j in jobs]
    Path(results_path).write_text(json.dumps(results))


def compile_jobs(jobs: list[dict], workers: int | None = None, cache_dir: str | None = None,
                 timeout: float = 1800) -> list[dict]:
    """Compile `jobs` in a child process without TRITON_INTERPRET; one result dict per job, in order.

    workers: parallel compiles (default: the CPU count). cache_dir: Triton's cache for the child
    (default: a fresh temporary directory, so every job really compiles).
    """
    src = str(Path(__file__).resolve().parents[2])  # the directory holding the dpq package
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([src] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="dpq-aot-") as tmp:
        env["TRITON_CACHE_DIR"] = cache_dir or os.path.join(tmp, "cache")
        jobs_path, results_path = os.path.join(tmp, "jobs.json"), os.path.join(tmp, "results.json")
        Path(jobs_path).write_text(json.dumps(jobs))
        proc = subprocess.run([sys.executable, "-m", "dpq.kernels.aot", jobs_path, results_path, str(workers)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(results_path):
            raise RuntimeError(f"the compile process failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(Path(results_path).read_text())


# --- the jobs: what `make test` compiles -------------------------------------------------------------

LLAMA_O = (4096, 4096)  # N, K of Llama-3-8B's attention output projection: the shape every job uses
BASE = dict(GROUP_SIZE=128, FP8_MAX=448.0, X_IS_FP8=False, HAS_BIAS=True, SPLIT_K=1, EMULATE_FP8=False,
            IMPRECISE_ACC=-1)
"""The GEMM's base constexprs: g = 128, F = 448, activations quantized in the prologue, bias, no split."""
COMBOS = {  # label: (changes to BASE, pointer types of the call, K of the call)
    "g64 (BLOCK_K 64), separate act quant (x fp8), no bias, split-K 4":
        (dict(GROUP_SIZE=64, X_IS_FP8=True, HAS_BIAS=False, SPLIT_K=4),
         dict(x_ptr="*fp8e4nv", bias_ptr="*fp32", out_ptr="*fp32"), 4096),
    "g256, tail group (K = 4100), x fp16, F = 240, no fp32 promotion":
        (dict(GROUP_SIZE=256, FP8_MAX=240.0, IMPRECISE_ACC=0), dict(x_ptr="*fp16"), 4100),
}
"""Together with BASE, every value of every GEMM constexpr (and an unaligned K) compiled at least once
per target on each REPRESENTATIVE config (its BLOCK_K as `block_k_for_group` sets it). Symmetric and
asymmetric weights are one compiled kernel: symmetric zero points (8) are loaded like any other.
Float32 activations never reach the GEMM: `w4a8_gemm` quantizes them with the separate kernel."""
REPRESENTATIVE = {"small": (16, 64, 128, 8, 3), "mid": (64, 128, 128, 8, 3)}
"""The configs the COMBOS compile on: a decode config, and one with BLOCK_M 64 (wgmma on sm_90)."""


def gemm_args(m: int, n: int, k: int, split_k: int = 1, **types) -> dict:
    """w4a8_gemm's launch arguments for an [M, K] x [N, K] call on the repacked (N-contiguous) layout."""
    args = dict(x_ptr="*bf16", w_ptr="*u8", s_ptr="*bf16", z_ptr="*u8", bias_ptr="*bf16", sx_ptr="*fp32",
                sw_ptr="*fp32", out_ptr="*bf16", M=m, N=n, K=k, M_BUCKET=m_bucket(m), stride_xm=k, stride_xk=1,
                stride_wk=n, stride_wn=1, stride_sg=n, stride_sn=1, stride_zg=n, stride_zn=1,
                stride_os=m * n if split_k > 1 else 0, stride_om=n, stride_on=1)
    args.update(types)
    return args


def representative_m(block_m: int) -> int:
    """The M a config is tuned for: BLOCK_M 16 -> decode (M = 1), up to 64 -> 256, larger -> 4096."""
    return 1 if block_m <= 16 else 256 if block_m <= 64 else 4096


def _gemm_job(cc, config, label, constexprs, k, types) -> dict:
    m, n = representative_m(config.kwargs["BLOCK_M"]), LLAMA_O[0]
    return dict(kernel="gemm", cc=cc, label=label, constexprs={**constexprs, **config.kwargs},
                num_warps=config.num_warps, num_stages=config.num_stages,
                args=gemm_args(m, n, k, constexprs["SPLIT_K"], **types))


def gemm_jobs(targets=TARGETS.values(), combos: bool = True) -> list[dict]:
    """Every autotune config of the GEMM at the BASE constexprs for each target, and with `combos`
    every COMBOS entry on each REPRESENTATIVE config."""
    jobs = []
    for cc in targets:
        jobs += [_gemm_job(cc, cfg, "autotune config", BASE, LLAMA_O[1], {}) for cfg in gpu_configs()]
        for bm, bn, bk, warps, stages in REPRESENTATIVE.values() if combos else ():
            for label, (meta, types, k) in COMBOS.items():
                cfg = _config(bm, bn, block_k_for_group(bk, meta.get("GROUP_SIZE", 128)), warps, stages)
                jobs.append(_gemm_job(cc, cfg, label, {**BASE, **meta}, k, types))
    return jobs


def helper_jobs(targets=TARGETS.values()) -> list[dict]:
    """The split-K reduce, the activation-quantize and the weight-dequantize kernels, as launched."""
    from dpq.kernels.triton_dequant import DEQUANT_TILE  # noqa: PLC0415

    n, k = LLAMA_O
    jobs = []
    for cc in targets:
        for split, bias in ((2, True), (4, False)):
            jobs.append(dict(kernel="splitk_reduce", cc=cc, label=f"split {split}, bias {bias}", num_warps=4,
                             num_stages=3, constexprs=dict(SPLIT_K=split, HAS_BIAS=bias, EMULATE_FP8=False,
                                                           BLOCK=1024),
                             args=dict(part_ptr="*fp32", bias_ptr="*bf16" if bias else "*fp32", sx_ptr="*fp32",
                                       sw_ptr="*fp32", out_ptr="*bf16", MN=16 * n, N=n)))
        for dtype in ("bf16", "fp16", "fp32"):
            jobs.append(dict(kernel="quantize", cc=cc, label=f"x {dtype}", num_warps=4, num_stages=3,
                             constexprs=dict(FP8_MAX=448.0, EMULATE_FP8=False, BLOCK=1024),
                             args=dict(x_ptr=f"*{dtype}", sx_ptr="*fp32", out_ptr="*fp8e4nv", numel=16 * k)))
        tile = {key: v for key, v in DEQUANT_TILE.items() if key.startswith("BLOCK")}
        for g in (64, 128, 256):
            jobs.append(dict(kernel="dequant", cc=cc, label=f"g{g}", num_warps=DEQUANT_TILE["num_warps"],
                             num_stages=3, constexprs=dict(GROUP_SIZE=g, FP8_MAX=448.0, EMULATE_FP8=False, **tile),
                             args=dict(w_ptr="*u8", s_ptr="*bf16", z_ptr="*u8", out_ptr="*fp8e4nv", N=n, K=k,
                                       stride_wn=k // 2, stride_wk=1, stride_sn=k // g, stride_sg=1,
                                       stride_zn=k // g, stride_zg=1, stride_on=k)))
    return jobs


def small_m_jobs(targets=TARGETS.values()) -> list[dict]:
    """The small-M kernel as `small_m_gemm` launches it: the default variant's tile at M = 1 and 16, split-K
    8 on the repacked layout (N-contiguous) with FP8 x, and an uneven shape (masks) with BF16 x and bias;
    the CUDA-core variant once (sm_90, M = 1)."""
    import triton  # noqa: PLC0415

    from dpq.kernels.triton_small_m import DEFAULTS  # noqa: PLC0415

    n, k = LLAMA_O
    jobs = []
    for cc in targets:
        for variant, (bn, bk, warps, stages) in DEFAULTS.items():
            for m, even in ((1, True), (16, True), (3, False)):
                if variant == "gemv" and (m != 1 or cc != 90):  # not the default variant: one build
                    continue
                nn, kk, split = (n, k, 8) if even else (n - 8, k - 64, 1)
                args = dict(x_ptr="*fp8e4nv" if even else "*bf16", w_ptr="*u8", s_ptr="*bf16", z_ptr="*u8",
                            bias_ptr="*fp32" if even else "*bf16", sx_ptr="*fp32", sw_ptr="*fp32",
                            out_ptr="*fp32" if split > 1 else "*bf16", M=m, N=nn, K=kk, stride_xm=kk, stride_xk=1,
                            stride_wn=1, stride_wk=nn, stride_sn=1, stride_sg=nn, stride_zn=1, stride_zg=nn,
                            stride_os=m * nn if split > 1 else 0, stride_om=nn, stride_on=1)
                consts = dict(GROUP_SIZE=128, FP8_MAX=448.0, X_IS_FP8=even, HAS_BIAS=not even, SPLIT_K=split,
                              EMULATE_FP8=False, USE_DOT=variant == "swap", EVEN=even,
                              BLOCK_M=16 if variant == "swap" else triton.next_power_of_2(m), BLOCK_N=bn, BLOCK_K=bk)
                jobs.append(dict(kernel="small_m", cc=cc, label=f"{variant} M={m}{'' if even else ' uneven'}",
                                 num_warps=warps, num_stages=stages, constexprs=consts, args=args))
    return jobs


if __name__ == "__main__":
    _worker_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
