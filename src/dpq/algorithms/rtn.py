"""Round-to-nearest INT4: RTN W4A16 and RTN W4A8 share one path.

W4A8 differs only at inference: the dequantized group value is cast to FP8
(`QuantizedWeight.weight()` with fp8_max set).
"""

from __future__ import annotations

import time

import torch

from dpq.algorithms.common import (
    as_solver_dtype,
    check_group_size,
    check_weight,
    param_source,
    scale_dtype,
    weight_domain_scale,
)
from dpq.config import QuantConfig
from dpq.numerics.int4 import compute_group_params, quantize
from dpq.numerics.qweight import QuantizedWeight


def rtn_solve(w: torch.Tensor, config: QuantConfig, name: str = "") -> QuantizedWeight:
    """W [N, K] -> QuantizedWeight (codes [N, K], scale/zero [N, G]) by round to nearest.

    Group parameters come from W / s_w (clamped to +-P when FP8 is on).
    """
    t0 = time.perf_counter()
    check_weight(w, name)
    k = w.shape[1]
    g = check_group_size(k, config.weight.group_size, name)
    s_w = weight_domain_scale(w, config)
    wd = as_solver_dtype(w) / s_w  # exact: s_w is a power of two
    scale, zero = compute_group_params(
        param_source(wd, config, fp8_copy=False), g, config.weight.symmetric, scale_dtype(config)
    )
    codes = quantize(wd, scale, zero, g)
    return QuantizedWeight(
        codes=codes,
        scale=scale,
        zero=zero,
        s_w=s_w,
        group_size=g,
        fp8_max=config.fp8.fp8_max,
        solve_seconds=time.perf_counter() - t0,
        info={"algorithm": "rtn"},
    )
