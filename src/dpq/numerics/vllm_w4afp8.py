"""What vLLM's W4AFP8 path computes (compressed-tensors scheme `W4AFP8`, CUTLASS W4A8 on SM90).

Read from vLLM's source (vllm-project/vllm, 2025-2026 main; not run here, no GPU):

- `vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_w4a8_fp8.py`
  (`CompressedTensorsW4A8Fp8`): INT4 weights, group strategy, group size 128
  only; `weight_scale` [N, K/128] held in the model dtype (BF16).
- `vllm/model_executor/kernels/linear/mixed_precision/cutlass.py`
  (`CutlassW4A8LinearKernel`): symmetric only (no zero points), K and N
  multiples of 128, BF16 out; activations quantized per token, dynamically
  (`QuantFP8(static=False, group_shape=GroupShape.PER_TOKEN)`); at load
  `convert_bf16_scales_to_fp8` turns the BF16 group scales into FP8 group
  scales plus one fp32 scale per output channel; `cutlass_w4a8_mm` takes the
  FP8 activations, the INT4 codes, the FP8 group scales, the per-token and the
  per-channel scales.
- `vllm/model_executor/layers/quantization/utils/quant_utils.py`
  (`convert_bf16_scales_to_fp8`): per row of the scale matrix,
  c = max|s| / 448 (the per-token FP8 quantizer applied to the scale rows),
  s8 = fp8(s / c), then s8 = fp8(s8 / 8) and c = 8 c: the divide by 8 is
  head-room so that |q * s8| <= 8 * 56 = 448 for every INT4 code q in [-8, 7].
- `csrc/quantization/fp8/common.cu` (`dynamic_per_token_scaled_fp8_quant`):
  per-token scale a = max(max|x| / 448, 1 / (448 * 512)).
- CUTLASS's Hopper mixed-input GEMM used by `csrc/quantization/cutlass_w4a8/`
  (`cutlass_pack_scale_fp8`, `cutlass_encode_and_reorder_int4b`): the INT4
  code times its FP8 group scale is looked up from a table of FP8 values
  built per scale, so the weight that enters the FP8 tensor core is
  fp8(q * s8). That table construction is read from CUTLASS's example 55
  design, not from running it: the one numeric assumption here that no test
  on a GPU has confirmed.

So one Linear, x [M, K], codes q [N, K] in [-8, 7], BF16 group scales s [N, G]:

    c_n        = 8 * max(max_g s[n, g] / 448, 1 / (448 * 512))
    s8[n, g]   = fp8(fp8(s[n, g] / (c_n / 8)) / 8)
    Wg[n, k]   = fp8(q[n, k] * s8[n, k // 128])            # the FP8 weight in the GEMM
    a_m        = max(max_k |x[m, k]| / 448, 1 / (448 * 512))
    y[m, n]    = (fp8(x[m] / a_m) . Wg[n]) * a_m * c_n + b_n   (fp32 accumulate, BF16 out)

dpq's codes are unsigned (0..15, zero point 8): q_signed = q - 8. All
functions return float32 tensors holding the exact values the engine uses.
"""

from __future__ import annotations

import torch

from dpq.numerics.fp8 import E4M3FN_MAX, fp8_cast
from dpq.numerics.int4 import SYM_ZERO, expand_groups

GROUP_SIZE = 128
"""The only group size vLLM's W4AFP8 kernels take (and K, N must be multiples of it)."""
HEADROOM = 8.0
"""convert_bf16_scales_to_fp8 divides the FP8 group scales by 8 so |q * s8| <= 448."""
MIN_SCALE = 1.0 / (E4M3FN_MAX * 512.0)
"""Floor of vLLM's dynamic FP8 scales (per token, and per row of the group scales)."""
SCALE_DTYPE = torch.bfloat16
"""The dtype vLLM holds `weight_scale` in before converting it (the model's params dtype)."""


def rowwise_scale(x: torch.Tensor) -> torch.Tensor:
    """vLLM's dynamic per-row FP8 scale: x [R, C] -> [R] float32, max(max|x_r| / 448, 1/(448*512))."""
    amax = x.float().abs().amax(dim=-1)
    return torch.clamp(amax / E4M3FN_MAX, min=MIN_SCALE)


def load_time_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales vLLM builds at load: BF16 group scales [N, G] -> (s8 [N, G], chan [N]).

    s8 are FP8 values (as float32) in [0, 56]; chan is the per-output-channel
    fp32 scale (8x the row scale). The group scales are first rounded to
    BF16, the dtype vLLM stores them in.
    """
    s = scales.to(SCALE_DTYPE).float()  # [N, G]
    c = rowwise_scale(s)  # [N]
    s8 = fp8_cast(s / c.unsqueeze(1))
    s8 = fp8_cast(s8 / HEADROOM)
    return s8, c * HEADROOM


def gemm_weight(codes: torch.Tensor, s8: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The FP8 weight the tensor core multiplies: fp8((q - 8) * s8), [N, K] float32.

    codes: [N, K] unsigned INT4 codes (0..15, symmetric zero point 8); s8: [N, G].
    """
    k = codes.shape[1]
    q = codes.float() - SYM_ZERO
    return fp8_cast(q * expand_groups(s8.float(), k, group_size))


def effective_weight(codes: torch.Tensor, scales: torch.Tensor, group_size: int = GROUP_SIZE) -> torch.Tensor:
    """The weight in real units that vLLM applies (per-channel scale folded in): [N, K] float32."""
    s8, chan = load_time_scales(scales)
    return gemm_weight(codes, s8, group_size) * chan.unsqueeze(1)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token FP8: x [M, K] -> (x8 [M, K] float32 FP8 values, a [M] scales)."""
    a = rowwise_scale(x)
    return fp8_cast(x.float() / a.unsqueeze(1)), a


def linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None = None,
    group_size: int = GROUP_SIZE,
) -> torch.Tensor:
    """y [..., N] (BF16) as vLLM's CUTLASS W4A8 path computes it, from x [..., K], codes [N, K], scales [N, G]."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    s8, chan = load_time_scales(scales)
    x8, a = quantize_per_token(x2)
    acc = x8 @ gemm_weight(codes, s8, group_size).t()  # (M, N) fp32
    out = acc * a.unsqueeze(1) * chan.unsqueeze(0)
    out = out.to(torch.bfloat16)
    if bias is not None:
        out = out + bias.to(torch.bfloat16)  # vLLM adds the bias to the BF16 output in place
    return out.reshape(*lead, -1)
