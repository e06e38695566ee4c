"""Stateless INT4 / FP8 math. Knows nothing of models."""

from dpq.numerics.fp8 import (
    act_scale_maxabs,
    act_scale_mse,
    act_scale_percentile,
    fp8_cast,
    protective_range,
    quantize_activation,
    weight_scale,
)
from dpq.numerics.int4 import (
    compute_group_params,
    dequantize,
    expand_groups,
    num_groups,
    pack_int4,
    quantize,
    unpack_int4,
)
from dpq.numerics.qweight import QuantizedWeight, inference_weight

__all__ = [
    "QuantizedWeight",
    "act_scale_maxabs",
    "act_scale_mse",
    "act_scale_percentile",
    "compute_group_params",
    "dequantize",
    "expand_groups",
    "fp8_cast",
    "inference_weight",
    "num_groups",
    "pack_int4",
    "protective_range",
    "quantize",
    "quantize_activation",
    "unpack_int4",
    "weight_scale",
]
