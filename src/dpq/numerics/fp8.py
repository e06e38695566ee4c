"""FP8 E4M3 numerics: the saturating cast, the weight scale, activation scales.

FP8 values live on the E4M3FN grid (3 mantissa bits, smallest subnormal
2^-9) and saturate at +-F, the configurable range: 448 for E4M3FN hardware,
240 for Gaudi 2 (whose E4M3 grid equals E4M3FN's up to 240). All functions
return float32 tensors holding FP8-representable values unless they say
otherwise, so the math stays exact and device independent.
"""

from __future__ import annotations

import math

import torch

FP8_DTYPE = torch.float8_e4m3fn
E4M3FN_MAX = 448.0
MIN_WEIGHT_SCALE = 2.0**-32
"""Floor of the per-tensor weight scale (an all-zero weight gets this)."""


def protective_range(fp8_max: float) -> float:
    """P = F - F/15 (418.13 for F = 448, 224 for F = 240)."""
    return float(fp8_max) - float(fp8_max) / 15.0


def fp8_cast(x: torch.Tensor, fp8_max: float = E4M3FN_MAX) -> torch.Tensor:
    """Round-to-nearest-even cast onto the E4M3 grid, saturating at +-F.

    x: any shape. Returns float32 of x's shape. NaN stays NaN.
    """
    if not 0 < fp8_max <= E4M3FN_MAX:
        raise ValueError(f"fp8_max={fp8_max}: must be in (0, 448] (448 for E4M3FN, 240 for Gaudi 2)")
    y = x.float().clamp(-fp8_max, fp8_max).to(FP8_DTYPE).float()
    # Rounding 239.9 can land on 240 < F; rounding to a grid point above a
    # smaller F (e.g. F = 230) is clamped back so |y| <= F always holds.
    return y.clamp(-fp8_max, fp8_max)


def to_fp8_storage(x: torch.Tensor, fp8_max: float = E4M3FN_MAX) -> torch.Tensor:
    """Same values as `fp8_cast`, stored as torch.float8_e4m3fn (1 byte each)."""
    return fp8_cast(x, fp8_max).to(FP8_DTYPE)


def weight_scale(amax: float | torch.Tensor, fp8_max: float = E4M3FN_MAX) -> float:
    """Per-tensor power-of-two weight scale s_w = 2^ceil(log2(amax / P)).

    Dividing by a power of two is exact, so W / s_w loses nothing. With
    |W / s_w| <= P every dequantized INT4 value stays within +-F.
    """
    amax = float(amax)
    if not math.isfinite(amax):
        raise ValueError(f"weight max-abs is {amax}: the weight holds NaN or Inf")
    if amax <= 0:
        return MIN_WEIGHT_SCALE
    s = 2.0 ** math.ceil(math.log2(amax / protective_range(fp8_max)))
    return max(s, MIN_WEIGHT_SCALE)


def _pow2_ceil(s: float) -> float:
    return 2.0 ** math.ceil(math.log2(s))


def act_scale_maxabs(amax: float, fp8_max: float = E4M3FN_MAX, pow2: bool = False) -> float:
    """s_x = max|x| / F (so max|x| maps onto F); pow2 rounds up to a power of two."""
    amax = float(amax)
    if not math.isfinite(amax):
        raise ValueError(f"activation max-abs is {amax}: the calibration inputs hold NaN or Inf")
    if amax <= 0:
        return 1.0
    s = amax / fp8_max
    return _pow2_ceil(s) if pow2 else s


def act_scale_percentile(
    sample: torch.Tensor, percentile: float, fp8_max: float = E4M3FN_MAX, pow2: bool = False
) -> float:
    """s_x from the given percentile of |x| over a sample of activations (any shape)."""
    a = sample.detach().float().abs().flatten()
    if a.numel() == 0:
        raise ValueError("activation sample is empty: calibration produced no inputs for this layer")
    clip = torch.quantile(a[: 2**24], percentile / 100.0).item() if percentile < 100 else a.max().item()
    return act_scale_maxabs(clip, fp8_max, pow2)


def fp8_roundtrip_error(x: torch.Tensor, scale: float, fp8_max: float = E4M3FN_MAX) -> float:
    """Sum of squared error of x against s * fp8(x / s)."""
    xf = x.float()
    return float(((fp8_cast(xf / scale, fp8_max) * scale - xf) ** 2).sum())


def act_scale_mse(
    sample: torch.Tensor, fp8_max: float = E4M3FN_MAX, pow2: bool = False, grid: int = 40, min_ratio: float = 0.3
) -> float:
    """s_x minimising the FP8 round-trip error over clipping ratios in [min_ratio, 1] of max|x|."""
    x = sample.detach().float().flatten()
    if x.numel() == 0:
        raise ValueError("activation sample is empty: calibration produced no inputs for this layer")
    amax = float(x.abs().max())
    if amax <= 0:
        return 1.0
    candidates = [amax * (min_ratio + (1 - min_ratio) * i / (grid - 1)) for i in range(grid)]
    scales = sorted({act_scale_maxabs(c, fp8_max, pow2) for c in candidates})
    return min(scales, key=lambda s: fp8_roundtrip_error(x, s, fp8_max))


def quantize_activation(x: torch.Tensor, scale: float | torch.Tensor, fp8_max: float = E4M3FN_MAX) -> torch.Tensor:
    """x8 = fp8(clamp(x / s_x, -F, F)); x any shape, returns float32 of the same shape."""
    return fp8_cast(x.float() / scale, fp8_max)
