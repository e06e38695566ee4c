"""What every solver shares: input checks, the FP8 weight domain, group-parameter sources."""

from __future__ import annotations

import torch

from dpq.config import FP8_E4M3FN_MAX, QuantConfig
from dpq.numerics.fp8 import fp8_cast, protective_range, weight_scale
from dpq.numerics.int4 import resolve_group_size, storage_dtype

from dpq.algorithms.hessian import SOLVER_DTYPE


def check_weight(w: torch.Tensor, name: str = "") -> None:
    """W must be a finite 2-D [N, K] tensor."""
    who = name or "layer"
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"{who}: the weight must be a 2-D [N, K] tensor, got {shape}")
    if w.numel() == 0:
        raise ValueError(f"{who}: the weight {tuple(w.shape)} is empty")
    if not torch.isfinite(w).all():
        raise ValueError(f"{who}: the weight holds NaN or Inf: fix the float model before quantizing it")


def check_hessian(h: torch.Tensor | None, k: int, name: str = "") -> None:
    """H must be a finite [K, K] tensor matching W's K input columns."""
    who = name or "layer"
    if h is None:
        raise ValueError(f"{who}: GPTQ/DPQ needs the layer Hessian: build it from calibration inputs")
    if h.dim() != 2 or tuple(h.shape) != (k, k):
        raise ValueError(
            f"{who}: the Hessian has shape {tuple(h.shape)} but the weight has K={k} input columns: "
            f"pass the [{k}, {k}] Hessian of this layer's inputs"
        )
    if not torch.isfinite(h).all():
        raise ValueError(f"{who}: the Hessian holds NaN or Inf: check the calibration inputs")


def check_group_size(k: int, group_size: int, name: str = "") -> int:
    """The effective group size (K for -1); a clear ValueError for <= 0 or > K."""
    try:
        return resolve_group_size(k, group_size)
    except ValueError as e:
        raise ValueError(f"{name or 'layer'}: {e}") from None


def weight_domain_scale(w: torch.Tensor, config: QuantConfig) -> float:
    """s_w = 2^ceil(log2(max|W| / P)); W4A16 methods use F = 448 (exact and harmless)."""
    f = config.fp8.fp8_max if config.fp8.fp8_max is not None else FP8_E4M3FN_MAX
    return weight_scale(w.abs().max().item(), f)


def param_source(w: torch.Tensor, config: QuantConfig, fp8_copy: bool) -> torch.Tensor:
    """The values group parameters are computed from, w [N, c] in the FP8 domain.

    With FP8 on, clamp to the protective range +-P (so every dequantized INT4
    value stays inside +-F); `fp8_copy` also casts to FP8 (the reference's W8).
    """
    f = config.fp8.fp8_max
    if f is None:
        return w
    p = protective_range(f)
    w = w.clamp(-p, p)
    return fp8_cast(w, f) if fp8_copy else w


def scale_dtype(config: QuantConfig) -> torch.dtype:
    return storage_dtype(config.weight.scale_dtype)


def as_solver_dtype(w: torch.Tensor) -> torch.Tensor:
    return w.detach().to(SOLVER_DTYPE)
