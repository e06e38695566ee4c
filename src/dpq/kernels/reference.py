"""Pure-torch W4A8 / W4A16 linear: the CPU path and the oracle for every fast kernel.

Numerics (the method page, section 1), x: [M, K] (any leading dims), W: [N, K]:

    x8 = fp8(clamp(x / s_x, -F, F))
    W8 = fp8((q - z) * s_g)
    y  = (x8 @ W8^T) * (s_x * s_w) + b       fp32 accumulate, BF16 out

Products of two FP8 values are exact in fp32, so an fp32 matmul over the FP8
values computes what an FP8 tensor core computes, up to summation order.
"""

from __future__ import annotations

import torch

from dpq.numerics.fp8 import FP8_DTYPE, fp8_cast, quantize_activation
from dpq.numerics.int4 import dequantize, unpack_int4

OUT_DTYPE = torch.bfloat16
ACC_DTYPE = torch.float32


def dequant_weight(
    packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, k: int, group_size: int, fp8_max: float | None
) -> torch.Tensor:
    """Packed codes [N, ceil(K/2)] uint8, scale/zero [N, G] -> weight before s_w, [N, K].

    W4A8: fp8((q - z) * s_g) as torch.float8_e4m3fn. W4A16: (q - z) * s_g in float32.
    """
    w = dequantize(unpack_int4(packed, k), scale.float(), zero.float(), group_size)
    if fp8_max is None:
        return w
    return fp8_cast(w, fp8_max).to(FP8_DTYPE)


def linear_from_dequant(
    x: torch.Tensor,
    w: torch.Tensor,
    s_w: float | torch.Tensor,
    s_x: float | torch.Tensor | None,
    bias: torch.Tensor | None,
    fp8_max: float | None,
) -> torch.Tensor:
    """y [..., N] in BF16 from x [..., K] and a dequantized weight w [N, K] (see `dequant_weight`).

    With fp8_max set, x is quantized to FP8 with the static scale s_x.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if fp8_max is None:
        acc = x2.to(ACC_DTYPE) @ w.to(ACC_DTYPE).t()
        out = acc * s_w
    else:
        x8 = quantize_activation(x2, s_x, fp8_max)
        acc = x8 @ w.to(ACC_DTYPE).t()
        out = acc * (s_x * s_w)
    if bias is not None:
        out = out + bias.to(ACC_DTYPE)
    return out.to(OUT_DTYPE).reshape(*lead, -1)


def w4a8_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    s_w: float | torch.Tensor,
    s_x: float | torch.Tensor | None,
    bias: torch.Tensor | None,
    group_size: int,
    fp8_max: float | None,
) -> torch.Tensor:
    """The reference W4A8 linear (W4A16 when fp8_max is None).

    x [..., K]; packed [N, ceil(K/2)] uint8; scale, zero [N, G]; returns [..., N] BF16.
    """
    k = x.shape[-1]
    w = dequant_weight(packed, scale, zero, k, group_size, fp8_max)
    return linear_from_dequant(x, w, s_w, s_x, bias, fp8_max)


def vllm_dequant_weight(packed: torch.Tensor, scales: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """Target vllm-w4afp8: packed codes [N, ceil(K/2)], real-unit group scales [N, G] ->
    the real-unit weight vLLM applies, chan * fp8((q - 8) * s8), [N, K] float32 (dpq.numerics.vllm_w4afp8)."""
    from dpq.numerics.vllm_w4afp8 import effective_weight  # noqa: PLC0415

    return effective_weight(unpack_int4(packed, k), scales, group_size)


def linear_per_token(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [..., N] BF16 with dynamic per-token FP8 activations (vLLM's W4AFP8 numerics).

    x [..., K]; w [N, K] float32 real-unit weight from `vllm_dequant_weight`.
    y = (fp8(x / a) @ w^T) * a, a = max(max|x_row| / 448, 1/(448*512)) per token.
    """
    from dpq.numerics.vllm_w4afp8 import quantize_per_token  # noqa: PLC0415

    lead = x.shape[:-1]
    x8, a = quantize_per_token(x.reshape(-1, x.shape[-1]))
    out = (x8 @ w.to(ACC_DTYPE).t()) * a.unsqueeze(1)  # (M, N)
    out = out.to(OUT_DTYPE)
    if bias is not None:
        out = out + bias.to(OUT_DTYPE)
    return out.reshape(*lead, -1)
