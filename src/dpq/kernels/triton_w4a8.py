"""Triton W4A8 GEMM: INT4 group weights dequantized to FP8 in registers, FP8 activations, fp32 accumulate.

Computes exactly the function of `reference.w4a8_linear` (its twin and oracle):

    x8 = fp8(clamp(x / s_x, -F, F))        fused in the GEMM prologue, or a separate quantize kernel
    W8 = fp8(clamp((q - z) * s_g, -F, F))  (q - z) * s_g formed in fp32, never leaves registers
    y  = (x8 @ W8^T) * (s_x * s_w) + b     fp32 accumulate (split-K partials summed in fp32), BF16 out

Weight layout. The kernel reads the packed codes through strides, so the same
code runs on the checkpoint layout ([N, ceil(K/2)] uint8, K-contiguous) and
on the GPU layout made once by `repack_for_kernel` (the same bytes stored
N-contiguous, [ceil(K/2), N]; scales and zeros as [G, N]). A byte holds the
codes of columns 2j (low nibble) and 2j + 1 (high nibble).

The interpreter (TRITON_INTERPRET=1). Triton 3.9's CPU interpreter runs FP8
`tl.dot` (it widens FP8 to fp16, exact, and multiplies in fp32), but its
fp32 -> float8e4nv cast is not round-to-nearest-even and drops the mantissa
carry (17.0 becomes 18.0), and its fp32 -> bf16 cast does not round to
nearest even either (most of 4096 random values differ from torch). Under the interpreter the
kernel therefore rounds onto the E4M3 grid in fp32 arithmetic first
(`EMULATE_FP8`), after which the cast to float8e4nv is exact (checked for all
254 finite E4M3 values); the BF16 output is rounded the same way. Everything else - FP8 operands of `tl.dot`, the
unpacking, masks, split-K, the epilogue - is the same code on both paths. On
a GPU the cast is the hardware's RNE saturating conversion.

Paths. `w4a8_gemm` runs the small-M kernel (triton_small_m.py) at M <= 16, this file's fused
kernel below M = LARGE_M_THRESHOLD and, from there on
(N, K multiples of 16), the large-M path of triton_dequant.py: the FP8 weight dequantized once per
call, then torch._scaled_mm (`choose_path`). Configs: CONFIG_CLASSES, checked to compile without
spills for sm_89/90/100 by tests/kernels/test_compile.py (docs/kernel.md).

W4A16 (fp8_max None) has no Triton path: `w4a8_linear_module` runs the
reference for such modules (an fp32-exact W4A16 kernel would need IEEE fp32
dots, slower than the reference's cuBLAS matmul).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from dpq.kernels import tuning
from dpq.kernels.tuning import _config, choose_split_k, gpu_configs, m_bucket, tune_configs
from dpq.numerics.fp8 import E4M3FN_MAX, FP8_DTYPE, fp8_cast
from dpq.numerics.int4 import num_groups, resolve_group_size

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Read when this module is imported, like triton.jit itself does."""
ACT_MODES = ("fused", "separate")
PATHS = ("auto", "small", "fused", "dequant")
LARGE_M_THRESHOLD = 256
"""`choose_path` runs M >= this on the dequantize + torch._scaled_mm path (triton_dequant.py).
Measured on an H200 (benchmarks/results/gpu/): from M = 256 on, the dequantize path beat the
fused kernel on every Llama-3-8B shape at every larger M (1.1x to 10x)."""


@triton.jit
def _fp8_round(v, FP8_MAX: tl.constexpr, EMULATE_FP8: tl.constexpr):
    """fp32 block -> float8e4nv block: clamp to +-F, round to nearest even on the E4M3 grid.

    On a GPU at F = 448 the clamp is the cast's own saturation (cvt.rn.satfinite: +-inf and
    anything past 448 become +-448; NaN stays NaN, as in the reference), so it is left out."""
    if EMULATE_FP8 or FP8_MAX != 448.0:
        v = tl.minimum(tl.maximum(v, -FP8_MAX), FP8_MAX)
    if EMULATE_FP8:
        bits = v.to(tl.int32, bitcast=True)
        # normals (|v| >= 2^-6): keep 3 of fp32's 23 mantissa bits, RNE, carry into the exponent
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576).to(tl.float32, bitcast=True)
        # subnormals (|v| < 2^-6): multiples of 2^-9; 1.5 * 2^14 has an fp32 ulp of 2^-9
        subnormal = (v + 24576.0) - 24576.0
        v = tl.where((bits & 0x7FFFFFFF) >= 0x3C800000, normal, subnormal)
    return v.to(tl.float8e4nv)


@triton.jit
def _to_bf16(v, EMULATE_FP8: tl.constexpr):
    """fp32 -> bf16, round to nearest even (the interpreter's own cast does not round: do it in fp32 bits)."""
    if EMULATE_FP8:
        bits = v.to(tl.int32, bitcast=True)
        v = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -65536).to(tl.float32, bitcast=True)
    return v.to(tl.bfloat16)


@triton.jit
def _w4a8_gemm_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, sx_ptr, sw_ptr, out_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk,   # x [M, K] (bf16 / fp16 / fp32, or fp8 when X_IS_FP8)
    stride_wk, stride_wn,   # packed codes seen as [ceil(K/2), N] uint8
    stride_sg, stride_sn,   # scales seen as [G, N]
    stride_zg, stride_zn,   # zeros seen as [G, N] uint8
    stride_os, stride_om, stride_on,  # out [M, N] bf16, or fp32 partials [SPLIT_K, M, N]
    GROUP_SIZE: tl.constexpr, FP8_MAX: tl.constexpr, X_IS_FP8: tl.constexpr, HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr, EMULATE_FP8: tl.constexpr, IMPRECISE_ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped tile order: GROUP_M row-tiles share each column of weight tiles while it is in L2
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)          # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)          # [BN]
    m_mask = offs_m < M
    n_mask = offs_n < N
    s_x = tl.load(sx_ptr)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    first, stop = _k_tiles_of_split(K, BLOCK_K, SPLIT_K, pid_k)
    for t in range(first, stop):
        offs_k = t * BLOCK_K + tl.arange(0, BLOCK_K)            # [BK]
        k_mask = offs_k < K
        # activations: [BM, BK] -> FP8
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        x = tl.load(x_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        if X_IS_FP8:
            x8 = x
        else:
            x8 = _fp8_round(tl.math.div_rn(x.to(tl.float32), s_x), FP8_MAX, EMULATE_FP8)
        # codes: [BK/2, BN] bytes -> [BK/2, BN, 2] nibbles -> [BK, BN], row 2j = low nibble of byte j
        offs_b = t * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)  # [BK/2]
        b_ptrs = w_ptr + offs_b[:, None] * stride_wk + offs_n[None, :] * stride_wn
        b = tl.load(b_ptrs, mask=(offs_b[:, None] * 2 < K) & n_mask[None, :], other=0)
        q = tl.reshape(tl.permute(tl.join(b & 0xF, b >> 4), (0, 2, 1)), (BLOCK_K, BLOCK_N))
        # group parameters: one group per K tile when the tile sits inside a group, else per column
        if GROUP_SIZE % BLOCK_K == 0:
            g = (t * BLOCK_K) // GROUP_SIZE
            s = tl.load(s_ptr + g * stride_sg + offs_n * stride_sn, mask=n_mask, other=0.0)[None, :]  # [1, BN]
            z = tl.load(z_ptr + g * stride_zg + offs_n * stride_zn, mask=n_mask, other=0)[None, :]
        else:
            gk = offs_k // GROUP_SIZE                            # [BK]
            kn_mask = k_mask[:, None] & n_mask[None, :]
            s = tl.load(s_ptr + gk[:, None] * stride_sg + offs_n[None, :] * stride_sn, mask=kn_mask, other=0.0)
            z = tl.load(z_ptr + gk[:, None] * stride_zg + offs_n[None, :] * stride_zn, mask=kn_mask, other=0)
        w = (q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)  # [BK, BN], exact in fp32
        w8 = _fp8_round(tl.where(k_mask[:, None], w, 0.0), FP8_MAX, EMULATE_FP8)
        if IMPRECISE_ACC == -1:  # promote the FP8 tensor-core accumulator to fp32 once per K tile
            acc = tl.dot(x8, w8, acc, out_dtype=tl.float32, max_num_imprecise_acc=BLOCK_K)
        elif IMPRECISE_ACC == 0:  # Triton's default (sm_90: never promote)
            acc = tl.dot(x8, w8, acc, out_dtype=tl.float32)
        else:
            acc = tl.dot(x8, w8, acc, out_dtype=tl.float32, max_num_imprecise_acc=IMPRECISE_ACC)

    _store_tile(acc, offs_m, offs_n, m_mask, n_mask, s_x, sw_ptr, bias_ptr, out_ptr, pid_k,
                stride_os, stride_om, stride_on, SPLIT_K, HAS_BIAS, EMULATE_FP8)


@triton.jit
def _k_tiles_of_split(K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr, pid_k):
    """The K tiles [first, stop) that split pid_k of SPLIT_K sums."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    return pid_k * per_split, tl.minimum((pid_k + 1) * per_split, k_tiles)


@triton.jit
def _store_tile(acc, offs_m, offs_n, m_mask, n_mask, s_x, sw_ptr, bias_ptr, out_ptr, pid_k,
                stride_os, stride_om, stride_on,
                SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EMULATE_FP8: tl.constexpr):
    """The epilogue of an fp32 tile acc [BM, BN]: without split-K, acc * (s_x * s_w) + bias rounded once
    to BF16 into out [M, N]; with it, the fp32 partial into out [SPLIT_K, M, N] (reduced later)."""
    out_mask = m_mask[:, None] & n_mask[None, :]
    if SPLIT_K == 1:
        y = acc * (s_x * tl.load(sw_ptr))
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(o_ptrs, _to_bf16(y, EMULATE_FP8), mask=out_mask)
    else:
        o_ptrs = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(o_ptrs, acc, mask=out_mask)


@triton.jit
def _splitk_reduce_kernel(part_ptr, bias_ptr, sx_ptr, sw_ptr, out_ptr, MN, N,
                          SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, EMULATE_FP8: tl.constexpr,
                          BLOCK: tl.constexpr):
    """fp32 partials [SPLIT_K, M*N] -> sum in fixed order, scale, bias -> bf16 [M*N]."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)      # [BLOCK] flat (m, n)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT_K):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    y = acc * (tl.load(sx_ptr) * tl.load(sw_ptr))
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _to_bf16(y, EMULATE_FP8), mask=mask)


@triton.jit
def _quantize_kernel(x_ptr, sx_ptr, out_ptr, numel, FP8_MAX: tl.constexpr, EMULATE_FP8: tl.constexpr,
                     BLOCK: tl.constexpr):
    """Contiguous x [numel] -> fp8(clamp(x / s_x, -F, F)) [numel] float8e4nv."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)      # [BLOCK]
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, _fp8_round(tl.math.div_rn(x, tl.load(sx_ptr)), FP8_MAX, EMULATE_FP8), mask=mask)


# Interpreter: one config per bucket class, so autotuning never benchmarks on the CPU.
_INTERPRET_CONFIGS = [_config(16, 32, 64, 4, 1), _config(32, 32, 64, 4, 1)]


def _prune(configs, named_args, **kwargs):
    """The configs of `tune_configs` for this call's M bucket and group size."""
    bucket = named_args["M_BUCKET"]
    if INTERPRET:
        return [configs[0] if bucket <= 16 else configs[1]]
    return [_config(*c) for c in tune_configs(bucket, kwargs["GROUP_SIZE"])]


_w4a8_gemm_tuned = triton.autotune(
    configs=_INTERPRET_CONFIGS if INTERPRET else gpu_configs(),
    key=["M_BUCKET", "N", "K", "GROUP_SIZE", "SPLIT_K", "X_IS_FP8"],
    prune_configs_by={"early_config_prune": _prune},
    cache_results=not INTERPRET,  # GPU: also keep each key's choice in Triton's on-disk cache
)(_w4a8_gemm_kernel)


def _check_device(device: torch.device) -> None:
    if device.type == "cuda":
        if torch.cuda.get_device_capability(device) < (8, 9):
            raise RuntimeError(f"the Triton W4A8 kernel needs FP8 tensor cores (SM89+); {device} is "
                               f"SM{''.join(map(str, torch.cuda.get_device_capability(device)))}")
    elif not INTERPRET:
        raise RuntimeError(f"the Triton W4A8 kernel runs on CUDA; on {device.type} set TRITON_INTERPRET=1 "
                           "before importing dpq.kernels.triton_w4a8 (slow, for tests) or use the reference backend")


def _scalar(v, device) -> torch.Tensor:
    """s_x / s_w as a 1-element fp32 tensor on `device` (a device tensor is used as is: graph-safe)."""
    if torch.is_tensor(v):
        if v.numel() != 1:
            raise ValueError(f"scales s_x and s_w must be scalars, got shape {tuple(v.shape)}")
        return v.reshape(1).to(device=device, dtype=torch.float32)
    return torch.tensor([float(v)], dtype=torch.float32, device=device)


def check_fp8_max(fp8_max) -> float:
    """F must lie on the E4M3 grid (448, 240, ...) so that clamp-then-cast equals the reference's cast
    (the rule is `dpq.config.check_fp8_max`, which QuantConfig applies too)."""
    from dpq.config import check_fp8_max as check_e4m3_fp8_max  # noqa: PLC0415

    if fp8_max is None:
        raise ValueError("w4a8_gemm needs fp8_max (W4A8); W4A16 modules run on the reference backend")
    return check_e4m3_fp8_max(fp8_max)


def quantize_fp8(x: torch.Tensor, s_x, fp8_max: float = E4M3FN_MAX) -> torch.Tensor:
    """The separate activation-quantize kernel: x [..., K] -> fp8(clamp(x / s_x, -F, F)) float8_e4m3fn."""
    f = check_fp8_max(fp8_max)
    _check_device(x.device)
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    block = 1024
    _quantize_kernel[(triton.cdiv(x.numel(), block),)](x, _scalar(s_x, x.device), out, x.numel(),
                                                       FP8_MAX=f, EMULATE_FP8=INTERPRET, BLOCK=block)
    return out


def _check_gemm_inputs(x, packed, scales, zeros, bias, group_size) -> tuple[int, int, int, int]:
    """(M, N, K, g) of valid w4a8_gemm inputs; a clear error otherwise."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [M, K], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32, FP8_DTYPE):
        raise TypeError(f"x dtype {x.dtype}: use bfloat16, float16, float32 or float8_e4m3fn")
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise TypeError(f"packed codes must be 2-D uint8 [N, ceil(K/2)], got {packed.dtype} {tuple(packed.shape)}")
    m, k = x.shape
    n = packed.shape[0]
    if packed.shape[1] != (k + 1) // 2:
        raise ValueError(f"K mismatch: x has K={k} but packed holds {packed.shape[1]} bytes per row "
                         f"(K={2 * packed.shape[1] - 1} or {2 * packed.shape[1]})")
    if n % 8:
        raise ValueError(f"N={n} must be a multiple of 8")
    g = resolve_group_size(k, group_size)
    groups = num_groups(k, g)
    if tuple(scales.shape) != (n, groups) or tuple(zeros.shape) != (n, groups):
        raise ValueError(f"scales/zeros must be [N, G] = [{n}, {groups}] for K={k}, g={g}; "
                         f"got {tuple(scales.shape)} and {tuple(zeros.shape)}")
    if zeros.dtype != torch.uint8 or not scales.dtype.is_floating_point:
        raise TypeError(f"zeros must be uint8 and scales floating point, got {zeros.dtype} and {scales.dtype}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"bias must be [N] = [{n}], got {tuple(bias.shape)}")
    tensors = [x, packed, scales, zeros] + ([bias] if bias is not None else [])
    if any(t.device != x.device for t in tensors):
        raise ValueError("x, packed, scales, zeros and bias must be on one device")
    return m, n, k, g


def scaled_mm_supported(n: int, k: int) -> bool:
    """torch._scaled_mm exists and cuBLASLt's FP8 GEMM takes these sizes (N and K multiples of 16)."""
    return hasattr(torch, "_scaled_mm") and n % 16 == 0 and k % 16 == 0


def choose_path(m: int, n: int, k: int, group_size: int | None = None) -> str:
    """The path rule: "small" (triton_small_m.py) at M <= tuning.SMALL_M_MAX when the group size is
    given and takes its K tile; "dequant" (FP8 weight once per call + torch._scaled_mm) at
    M >= LARGE_M_THRESHOLD where _scaled_mm takes the sizes; else "fused" (this file's kernel)."""
    if group_size is not None and 0 < m <= tuning.SMALL_M_MAX and tuning.small_m_block_k(group_size):
        return "small"
    return "dequant" if m >= LARGE_M_THRESHOLD and scaled_mm_supported(n, k) else "fused"


def w4a8_gemm(x, packed, scales, zeros, s_w, s_x, bias, group_size, fp8_max=E4M3FN_MAX, *,
              act_quant="fused", split_k=None, config=None, max_imprecise_acc="block", path="auto") -> torch.Tensor:
    """y = (fp8(x / s_x) @ fp8((q - z) * s_g)^T) * s_x * s_w + b: BF16 [M, N].

    x [M, K] bf16/fp16/fp32 (or float8_e4m3fn already quantized with s_x); packed [N, ceil(K/2)]
    uint8 (any strides: the checkpoint layout or `repack_for_kernel`'s N-contiguous view);
    scales [N, G] float; zeros [N, G] uint8; s_w, s_x floats or 1-element tensors; bias [N] or None.
    path: "auto" (`choose_path`), "fused" (this file's kernel) or "dequant" (`triton_dequant`:
    the FP8 weight once, then torch._scaled_mm; N and K multiples of 16).
    The rest configure the fused kernel. act_quant: "fused" (prologue of the GEMM) or "separate"
    (`quantize_fp8` first; always for float32 x). split_k: None = heuristic. config: dict of BLOCK_M/BLOCK_N/BLOCK_K/GROUP_M
    (+ num_warps, num_stages) to bypass autotuning. max_imprecise_acc (Hopper only): "block" promotes
    the FP8 tensor-core accumulator to fp32 once per K tile, None keeps Triton's default (no
    promotion on sm_90), a positive int promotes every that many products.
    """
    f = check_fp8_max(fp8_max)
    if act_quant not in ACT_MODES:
        raise ValueError(f"act_quant={act_quant!r}: use one of {ACT_MODES}")
    if path not in PATHS:
        raise ValueError(f"path={path!r}: use one of {PATHS}")
    m, n, k, g = _check_gemm_inputs(x, packed, scales, zeros, bias, group_size)
    _check_device(x.device)
    if path == "auto":
        path = choose_path(m, n, k, g)
    elif path == "dequant" and not scaled_mm_supported(n, k):
        raise ValueError(f"path='dequant' needs torch._scaled_mm and N, K multiples of 16; got N={n}, K={k}")
    if x.stride(1) != 1:
        x = x.contiguous()
    sx, sw = _scalar(s_x, x.device), _scalar(s_w, x.device)
    if m == 0:
        return torch.empty(0, n, dtype=torch.bfloat16, device=x.device)
    if path == "dequant":
        from dpq.kernels.triton_dequant import dequant_matmul  # noqa: PLC0415 - it imports this module

        return dequant_matmul(x, packed, scales, zeros, sx, sw, bias, g, f)
    if path == "small" and x.dtype != torch.float32:
        from dpq.kernels.triton_small_m import small_m_gemm  # noqa: PLC0415 - it imports this module

        return small_m_gemm(x, packed, scales, zeros, sx, sw, bias, g, f)
    if (act_quant == "separate" or x.dtype == torch.float32) and x.dtype != FP8_DTYPE:
        x = quantize_fp8(x, sx, f)  # float32 tiles staged by the fused prologue would overflow Ada's shared memory
    return _fused_gemm(x, packed, scales, zeros, sx, sw, bias, g, f, split_k, config, max_imprecise_acc)


def _fused_gemm(x, packed, scales, zeros, sx, sw, bias, g, f, split_k, config, max_imprecise_acc) -> torch.Tensor:
    """Launch the fused kernel (and the split-K reduce) on checked inputs: BF16 [M, N]."""
    m, k = x.shape
    n = packed.shape[0]
    split = split_k or (1 if INTERPRET else choose_split_k(m, n, k, x.device))
    out = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    target = out if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    bias_arg = bias if bias is not None else sx  # never read when HAS_BIAS is False
    args = (x, packed, scales, zeros, bias_arg, sx, sw, target, m, n, k, m_bucket(m),
            x.stride(0), x.stride(1), packed.stride(1), packed.stride(0), scales.stride(1), scales.stride(0),
            zeros.stride(1), zeros.stride(0),
            target.stride(0) if split > 1 else 0, target.stride(-2), target.stride(-1))
    meta = dict(GROUP_SIZE=g, FP8_MAX=f, X_IS_FP8=x.dtype == FP8_DTYPE, HAS_BIAS=bias is not None,
                SPLIT_K=split, EMULATE_FP8=INTERPRET)
    meta["IMPRECISE_ACC"] = {"block": -1, None: 0}.get(max_imprecise_acc, max_imprecise_acc)
    if config is None:
        grid = lambda c: (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]), split)  # noqa: E731
        _w4a8_gemm_tuned[grid](*args, **meta)
    else:
        c = dict(config)
        launch = {key: c.pop(key) for key in ("num_warps", "num_stages") if key in c}
        c.setdefault("GROUP_M", 8)
        grid = (triton.cdiv(m, c["BLOCK_M"]) * triton.cdiv(n, c["BLOCK_N"]), split)
        _w4a8_gemm_kernel[grid](*args, **meta, **c, **launch)
    if split > 1:
        block = 1024
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](target, bias_arg, sx, sw, out, m * n, n,
                                                            SPLIT_K=split, HAS_BIAS=bias is not None,
                                                            EMULATE_FP8=INTERPRET, BLOCK=block)
    return out
