"""The large-M path: dequantize the weight to FP8 once per call, then an FP8 GEMM (`torch._scaled_mm`).

At large M a GEMM is bound by arithmetic, not by reading the weight, and cuBLASLt's FP8 GEMM is
faster than a Triton kernel that rebuilds the FP8 weight in every output tile's K loop. This path
computes the same function as the fused kernel and `reference.w4a8_linear`:

    W8 = fp8(clamp((q - z) * s_g, -F, F))   [N, K] float8_e4m3fn   (this file's kernel, bit-exact)
    x8 = fp8(clamp(x / s_x, -F, F))          [M, K]                  (`triton_w4a8.quantize_fp8`)
    y  = (x8 @ W8^T) * (s_x * s_w) + b       torch._scaled_mm, fp32 accumulate, BF16 out

The temporary W8 costs N*K bytes for the duration of the call (2x the packed codes).
`triton_w4a8.choose_path` takes this path at M >= `triton_w4a8.LARGE_M_THRESHOLD` when N and K
are multiples of 16 (what cuBLASLt's FP8 GEMM requires).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dpq.kernels.triton_w4a8 import INTERPRET, _check_device, _fp8_round, quantize_fp8
from dpq.numerics.fp8 import FP8_DTYPE

DEQUANT_TILE = dict(BLOCK_N=32, BLOCK_K=128, num_warps=4)


@triton.jit
def _dequant_fp8_kernel(
    w_ptr, s_ptr, z_ptr, out_ptr, N, K,
    stride_wn, stride_wk,   # packed codes seen as [N, ceil(K/2)] uint8
    stride_sn, stride_sg,   # scales seen as [N, G]
    stride_zn, stride_zg,   # zeros seen as [N, G] uint8
    stride_on,              # out [N, K] float8e4nv, K-contiguous
    GROUP_SIZE: tl.constexpr, FP8_MAX: tl.constexpr, EMULATE_FP8: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """codes, scales, zeros -> fp8(clamp((q - z) * s, -F, F)) [N, K], one [BLOCK_N, BLOCK_K] tile per program."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)              # [BN]
    offs_b = tl.program_id(1) * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)  # [BK/2] bytes
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)              # [BK]
    n_mask = offs_n < N
    k_mask = offs_k < K
    b = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_b[None, :] * stride_wk,
                mask=n_mask[:, None] & (offs_b[None, :] * 2 < K), other=0)  # [BN, BK/2]
    # [BN, BK/2] bytes -> [BN, BK/2, 2] nibbles -> [BN, BK]: column 2j = low nibble of byte j
    q = tl.reshape(tl.join(b & 0xF, b >> 4), (BLOCK_N, BLOCK_K))
    nk_mask = n_mask[:, None] & k_mask[None, :]
    if GROUP_SIZE % BLOCK_K == 0:  # the tile sits inside one group: one scale and zero per row
        g = (tl.program_id(1) * BLOCK_K) // GROUP_SIZE
        s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg, mask=n_mask, other=0.0)[:, None]  # [BN, 1]
        z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg, mask=n_mask, other=0)[:, None]
    else:
        gk = offs_k // GROUP_SIZE                                             # [BK]
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + gk[None, :] * stride_sg, mask=nk_mask, other=0.0)
        z = tl.load(z_ptr + offs_n[:, None] * stride_zn + gk[None, :] * stride_zg, mask=nk_mask, other=0)
    w = (q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)             # [BN, BK], exact in fp32
    tl.store(out_ptr + offs_n[:, None] * stride_on + offs_k[None, :], _fp8_round(w, FP8_MAX, EMULATE_FP8),
             mask=nk_mask)


def dequant_fp8(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, k: int, group_size: int,
                fp8_max: float) -> torch.Tensor:
    """W8 = fp8(clamp((q - z) * s, -F, F)): [N, K] float8_e4m3fn, K-contiguous.

    packed [N, ceil(K/2)] uint8 and scales/zeros [N, G] in any strides (checkpoint layout or the
    N-contiguous views of `repack_for_kernel`); group_size already resolved (no -1). Equals
    `reference.dequant_weight` bit for bit.
    """
    _check_device(packed.device)
    n = packed.shape[0]
    out = torch.empty(n, k, dtype=FP8_DTYPE, device=packed.device)
    if n == 0 or k == 0:
        return out
    t = DEQUANT_TILE
    grid = (triton.cdiv(n, t["BLOCK_N"]), triton.cdiv(k, t["BLOCK_K"]))
    _dequant_fp8_kernel[grid](packed, scales, zeros, out, n, k, packed.stride(0), packed.stride(1),
                              scales.stride(0), scales.stride(1), zeros.stride(0), zeros.stride(1), out.stride(0),
                              GROUP_SIZE=group_size, FP8_MAX=float(fp8_max), EMULATE_FP8=INTERPRET,
                              BLOCK_N=t["BLOCK_N"], BLOCK_K=t["BLOCK_K"], num_warps=t["num_warps"])
    return out


def dequant_matmul(x: torch.Tensor, packed, scales, zeros, sx: torch.Tensor, sw: torch.Tensor, bias, group_size: int,
                   fp8_max: float) -> torch.Tensor:
    """y = (x8 @ W8^T) * (s_x * s_w) + b through torch._scaled_mm: BF16 [M, N].

    x [M, K] (bf16/fp16/fp32, or float8_e4m3fn already divided by s_x), M >= 1; sx, sw 1-element
    fp32 tensors on x's device; the rest as `dequant_fp8`; inputs checked by `w4a8_gemm`.
    """
    k = x.shape[1]
    x8 = x.contiguous() if x.dtype == FP8_DTYPE else quantize_fp8(x, sx, fp8_max)  # [M, K] row-major
    w8 = dequant_fp8(packed, scales, zeros, k, group_size, fp8_max)   # [N, K]
    if bias is None or bias.dtype == torch.bfloat16:
        return torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw, bias=bias, out_dtype=torch.bfloat16)
    # cuBLASLt adds only a BF16 bias to a BF16 output; another dtype is added in fp32, as the reference does
    y = torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw, out_dtype=torch.float32)
    return (y + bias.float()).to(torch.bfloat16)
