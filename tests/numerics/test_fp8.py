"""FP8 cast, the protective range, and INT4 -> FP8 dequantization never overflowing F."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpq.numerics.fp8 import fp8_cast, protective_range, weight_scale
from dpq.numerics.int4 import compute_group_params, dequantize, quantize


def test_fp8_cast_matches_torch_inside_range():
    x = torch.randn(10000) * 100
    x = x[x.abs() <= 448]
    assert torch.equal(fp8_cast(x, 448.0), x.to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("f", [448.0, 240.0])
def test_fp8_cast_saturates(f):
    x = torch.tensor([1e6, -1e6, f * 1.01, -f * 1.01, 239.9, 447.0])
    y = fp8_cast(x, f)
    assert y.abs().max() <= f
    assert y[0] == f and y[1] == -f


def test_fp8_cast_gaudi_grid_equals_e4m3fn_below_240():
    x = torch.linspace(-240, 240, 4001)
    assert torch.equal(fp8_cast(x, 240.0), x.to(torch.float8_e4m3fn).float())


def test_weight_scale_is_pow2_and_protects():
    for amax in [1e-3, 0.37, 1.0, 5.5, 1234.0]:
        s = weight_scale(amax, 448.0)
        assert math.log2(s) == round(math.log2(s))
        assert amax / s <= protective_range(448.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        weight_scale(float("nan"))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    k=st.integers(1, 300),
    g=st.sampled_from([32, 64, 128, -1]),
    log_amp=st.floats(-6, 6),
    f=st.sampled_from([448.0, 240.0]),
    symmetric=st.booleans(),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    seed=st.integers(0, 2**16),
)
def test_dequantized_int4_never_overflows_fp8(n, k, g, log_amp, f, symmetric, dtype, seed):
    """s_g * (q - z) stays inside +-F for any weight brought into the FP8 domain W / s_w."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 10.0**log_amp
    w[:, : max(1, k // 7)] *= 30  # outliers
    wd = w / weight_scale(w.abs().max().item(), f)
    assert wd.abs().max() <= protective_range(f)
    g = g if g == -1 or g <= k else -1
    scale, zero = compute_group_params(wd, g, symmetric, dtype)
    for codes in (quantize(wd, scale, zero, g), torch.zeros(n, k, dtype=torch.uint8), torch.full((n, k), 15, dtype=torch.uint8)):
        assert dequantize(codes, scale, zero, g).abs().max() <= f
