"""Small-M W4A8 kernels (decode: a few tokens, weight-bandwidth bound), same numerics as the fused GEMM.

    y = (fp8(x / s_x) @ fp8((q - z) * s_g)^T) * (s_x * s_w) + b        BF16 [M, N]

Two shapes of the same computation, for M up to 16, both on the checkpoint layout (packed codes
[N, ceil(K/2)] K-contiguous, scales and zeros [N, G]):

* `swap`: the output transposed, y^T [N, M] = W8 [N, K] @ x8^T [K, M]. N fills the tensor cores'
  long side (64 or 128 rows) and the few tokens their short one (16), where the fused GEMM pads M
  to 16 rows of a [BLOCK_M, BLOCK_N] tile and stages the weight as its second operand.
* `gemv`: no tensor cores: per K tile, the FP8 values widened to fp32 and multiplied on the CUDA
  cores (a product of two E4M3 values is exact in fp32), summed over the tile. One pass over the
  weight, nothing staged.

Both keep the fused GEMM's numerics: the same FP8 rounding of x and of the weight, fp32 sums (in
another order), the same fp32 epilogue and one BF16 rounding; split-K partials go through the
fused GEMM's reduce kernel. Under TRITON_INTERPRET=1 they round through `EMULATE_FP8` like it.
Group parameters: one group per K tile (GROUP_SIZE a multiple of BLOCK_K; tail groups are
masked), which `small_m_supported` checks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dpq.kernels.triton_w4a8 import (
    FP8_DTYPE,
    INTERPRET,
    _fp8_round,
    _k_tiles_of_split,
    _scalar,
    _splitk_reduce_kernel,
    _store_tile,
    quantize_fp8,
)

from dpq.kernels.tuning import SMALL_M_MAX, choose_small_split, small_m_block_k

VARIANTS = ("swap", "gemv")
VARIANT = "swap"
"""The variant `w4a8_gemm` runs at small M (measured: docs/kernel.md)."""
DEFAULTS = {  # variant -> (BLOCK_N, BLOCK_K, num_warps, num_stages); measured: docs/kernel.md
    "swap": (64, 128, 4, 4),
    "gemv": (128, 64, 4, 3),
}


@triton.jit
def _x8_half_t(x_ptr, offs_m, offs_k, m_mask, K, stride_xm, stride_xk, s_x,
               FP8_MAX: tl.constexpr, X_IS_FP8: tl.constexpr, EMULATE_FP8: tl.constexpr):
    """x8^T rows offs_k (every other column of a K tile): [BK/2, BM] float8e4nv."""
    x = tl.load(x_ptr + offs_k[:, None] * stride_xk + offs_m[None, :] * stride_xm,
                mask=(offs_k < K)[:, None] & m_mask[None, :], other=0.0)
    if X_IS_FP8:
        return x
    return _fp8_round(tl.math.div_rn(x.to(tl.float32), s_x), FP8_MAX, EMULATE_FP8)


@triton.jit
def _w8_halves(w_ptr, s_ptr, z_ptr, t, offs_n, n_mask, K, stride_wn, stride_wk, stride_sn, stride_sg,
               stride_zn, stride_zg, GROUP_SIZE: tl.constexpr, FP8_MAX: tl.constexpr, EMULATE_FP8: tl.constexpr,
               BLOCK_K: tl.constexpr, EVEN: tl.constexpr):
    """The FP8 weight of K tile t as two [BN, BK/2] halves: columns 2j (low nibbles) and 2j + 1 (high).

    Kept apart, not interleaved: the dot over a tile is the sum of the two halves' dots, so the
    nibbles never move between registers. q - z without an int-to-float conversion: the code ORed
    into the mantissa of 2^23 is the float 2^23 + q, and subtracting 2^23 + z is exact.
    EVEN (N and K multiples of the tile): no masks."""
    offs_b = t * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)                       # [BK/2]
    b_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_b[None, :] * stride_wk
    g = (t * BLOCK_K) // GROUP_SIZE
    if EVEN:
        b = tl.load(b_ptrs)                                                           # [BN, BK/2]
        s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg).to(tl.float32)
        z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg).to(tl.float32)
    else:
        b = tl.load(b_ptrs, mask=n_mask[:, None] & (offs_b[None, :] * 2 < K), other=0)
        s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg, mask=n_mask, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg, mask=n_mask, other=0).to(tl.float32)
    b = b.to(tl.int32)
    zz = (8388608.0 + z)[:, None]
    lo = (((b & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - zz) * s[:, None]  # (q - z) * s, exact
    hi = (((b >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - zz) * s[:, None]
    if not EVEN:
        hi = tl.where((offs_b * 2 + 1 < K)[None, :], hi, 0.0)
    return _fp8_round(lo, FP8_MAX, EMULATE_FP8), _fp8_round(hi, FP8_MAX, EMULATE_FP8)


@triton.jit
def _small_m_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, sx_ptr, sw_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sg, stride_zn, stride_zg,
    stride_os, stride_om, stride_on,
    GROUP_SIZE: tl.constexpr, FP8_MAX: tl.constexpr, X_IS_FP8: tl.constexpr, HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr, EMULATE_FP8: tl.constexpr, USE_DOT: tl.constexpr, EVEN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One [BLOCK_N] slice of N (all M <= BLOCK_M tokens) over this program's share of K: acc [BN, BM]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    s_x = tl.load(sx_ptr)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    first, stop = _k_tiles_of_split(K, BLOCK_K, SPLIT_K, pid_k)
    for t in range(first, stop):
        offs_even = t * BLOCK_K + 2 * tl.arange(0, BLOCK_K // 2)
        x_lo = _x8_half_t(x_ptr, offs_m, offs_even, m_mask, K, stride_xm, stride_xk, s_x,
                          FP8_MAX, X_IS_FP8, EMULATE_FP8)                            # [BK/2, BM]
        x_hi = _x8_half_t(x_ptr, offs_m, offs_even + 1, m_mask, K, stride_xm, stride_xk, s_x,
                          FP8_MAX, X_IS_FP8, EMULATE_FP8)
        w_lo, w_hi = _w8_halves(w_ptr, s_ptr, z_ptr, t, offs_n, n_mask, K, stride_wn, stride_wk, stride_sn,
                                stride_sg, stride_zn, stride_zg, GROUP_SIZE, FP8_MAX, EMULATE_FP8, BLOCK_K,
                                EVEN)                                                # [BN, BK/2] each
        if USE_DOT:
            acc = tl.dot(w_lo, x_lo, acc, out_dtype=tl.float32, max_num_imprecise_acc=BLOCK_K // 2)
            acc = tl.dot(w_hi, x_hi, acc, out_dtype=tl.float32, max_num_imprecise_acc=BLOCK_K // 2)
        else:  # products of two E4M3 values are exact in fp32
            acc += tl.sum(w_lo.to(tl.float32)[:, :, None] * x_lo.to(tl.float32)[None, :, :], axis=1)
            acc += tl.sum(w_hi.to(tl.float32)[:, :, None] * x_hi.to(tl.float32)[None, :, :], axis=1)
    _store_tile(tl.trans(acc), offs_m, offs_n, m_mask, n_mask, s_x, sw_ptr, bias_ptr, out_ptr, pid_k,
                stride_os, stride_om, stride_on, SPLIT_K, HAS_BIAS, EMULATE_FP8)  # [BM, BN], N contiguous


def small_m_supported(m: int, k: int, group_size: int, block_k: int) -> bool:
    """These kernels take M <= SMALL_M_MAX and groups that hold whole K tiles."""
    return 0 < m <= SMALL_M_MAX and block_k >= 32 and group_size % block_k == 0 and k >= 1


def _block_m(m: int, use_dot: bool) -> int:
    return 16 if use_dot else triton.next_power_of_2(m)  # an FP8 dot needs 16 columns


def small_m_gemm(x, packed, scales, zeros, sx, sw, bias, group_size, fp8_max, *, variant=None,
                 split_k=None, block_n=None, block_k=None, num_warps=None, num_stages=None) -> torch.Tensor:
    """y [M, N] BF16 for M <= 16 on checked inputs (see `w4a8_gemm`): x [M, K] (bf16/fp16 or
    float8_e4m3fn), packed [N, ceil(K/2)] uint8 in any strides, scales/zeros [N, G], sx, sw 1-element
    fp32 tensors, bias [N] or None. variant "swap" (tensor cores), "gemv" (CUDA cores) or None (VARIANT);
    split_k None: `choose_small_split`."""
    variant = variant or VARIANT
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}: use one of {VARIANTS}")
    m, k = x.shape
    n = packed.shape[0]
    bn, bk, warps, stages = DEFAULTS[variant]
    bn, bk = block_n or bn, block_k or min(bk, small_m_block_k(group_size) or bk)
    if not small_m_supported(m, k, group_size, bk):
        raise ValueError(f"small_m_gemm takes M <= {SMALL_M_MAX} and a group size that is a multiple of "
                         f"BLOCK_K={bk}; got M={m}, group size {group_size}")
    use_dot = variant == "swap"
    if x.dtype != FP8_DTYPE:  # once, not in every program that reads the tile (measured: docs/kernel.md)
        x = quantize_fp8(x, sx, fp8_max)
    split_k = split_k or (1 if INTERPRET else choose_small_split(n, k, bn, bk, x.device))
    out = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)
    target = out if split_k == 1 else torch.empty(split_k, m, n, dtype=torch.float32, device=x.device)
    bias_arg = bias if bias is not None else sx
    grid = (triton.cdiv(n, bn), split_k)
    _small_m_kernel[grid](
        x, packed, scales, zeros, bias_arg, sx, sw, target, m, n, k,
        x.stride(0), x.stride(1), packed.stride(0), packed.stride(1), scales.stride(0), scales.stride(1),
        zeros.stride(0), zeros.stride(1), target.stride(0) if split_k > 1 else 0, target.stride(-2),
        target.stride(-1),
        GROUP_SIZE=group_size, FP8_MAX=fp8_max, X_IS_FP8=x.dtype == FP8_DTYPE, HAS_BIAS=bias is not None,
        SPLIT_K=split_k, EMULATE_FP8=INTERPRET, USE_DOT=use_dot, EVEN=n % bn == 0 and k % bk == 0, BLOCK_M=_block_m(m, use_dot), BLOCK_N=bn,
        BLOCK_K=bk, num_warps=num_warps or warps, num_stages=num_stages or stages)
    if split_k > 1:
        block = 1024
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](target, bias_arg, sx, sw, out, m * n, n, SPLIT_K=split_k,
                                                            HAS_BIAS=bias is not None, EMULATE_FP8=INTERPRET,
                                                            BLOCK=block)
    return out


def small_m_call(x, packed, scales, zeros, s_w, s_x, bias, group_size, fp8_max, **kwargs) -> torch.Tensor:
    """`small_m_gemm` with s_w, s_x as floats or tensors (the benchmarks' and tests' entry)."""
    return small_m_gemm(x, packed, scales, zeros, _scalar(s_x, x.device), _scalar(s_w, x.device), bias,
                        group_size, fp8_max, **kwargs)
