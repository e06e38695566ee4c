"""vLLM W4AFP8 numerics (dpq.numerics.vllm_w4afp8): invariants of what the engine computes."""

from __future__ import annotations

import pytest
import torch

from dpq.numerics import vllm_w4afp8 as v
from dpq.numerics.fp8 import fp8_cast


def _codes_scales(n=256, k=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scales = (torch.rand(n, k // 128, generator=g) * 0.02 + 1e-3).to(torch.bfloat16).float()
    return codes, scales


def test_load_time_scales_are_fp8_with_headroom():
    _, s = _codes_scales()
    s8, chan = v.load_time_scales(s)
    assert torch.equal(s8, fp8_cast(s8))  # FP8 values
    assert float(s8.max()) <= 448 / 8  # head-room: |q * s8| <= 8 * 56 = 448
    assert torch.allclose(s8.amax(dim=1), torch.full((s.shape[0],), 56.0))  # each row's max maps to 448/8
    # s8 * chan reproduces the BF16 scale up to two FP8 roundings (3 mantissa bits each): < 2 * 2^-4 relative
    assert ((s8 * chan.unsqueeze(1) - s) / s).abs().max() < 2 * 2**-4


def test_power_of_two_equivariance():
    """Scaling the group scales by 2^e leaves s8 unchanged and scales chan by 2^e, while the row scale stays
    above vLLM's floor 1/(448*512); below it (tiny weights) the floor changes s8: the solver must therefore
    evaluate these numerics on the real-unit scales s_g * s_w, not in its W / s_w domain."""
    _, s = _codes_scales()
    s8, chan = v.load_time_scales(s)
    s8b, chanb = v.load_time_scales(s * 2.0**5)
    assert torch.equal(s8, s8b)
    assert torch.equal(chan * 2.0**5, chanb)
    s8c, chanc = v.load_time_scales(s * 2.0**-7)  # row max ~1.6e-4 < 448 * MIN_SCALE: the floor applies
    assert torch.all(chanc == 8 * v.MIN_SCALE)
    assert not torch.equal(s8, s8c)


def test_gemm_weight_never_saturates_and_is_fp8():
    codes, s = _codes_scales()
    s8, _ = v.load_time_scales(s)
    w = v.gemm_weight(codes, s8)
    assert torch.equal(w, fp8_cast(w))
    exact = (codes.float() - 8) * s8.repeat_interleave(128, dim=1)
    assert exact.abs().max() <= 448  # so fp8(q * s8) only rounds, never clamps
    # rounding to 3 mantissa bits: relative error <= 2^-4 per element
    nz = exact != 0
    assert ((w - exact)[nz] / exact[nz]).abs().max() <= 2**-4 + 1e-7


def test_per_token_scales():
    x = torch.randn(5, 256)
    x[2] = 0.0
    x8, a = v.quantize_per_token(x)
    assert torch.allclose(a[[0, 1, 3, 4]], x[[0, 1, 3, 4]].abs().amax(dim=1) / 448)
    assert float(a[2]) == pytest.approx(v.MIN_SCALE)  # the floor 1 / (448 * 512)
    assert torch.equal(x8[2], torch.zeros(256))
    assert float(x8.abs().max()) == 448.0


def test_linear_matches_explicit_formula():
    codes, s = _codes_scales(n=128, k=256, seed=1)
    x = torch.randn(3, 7, 256)
    bias = torch.randn(128)
    y = v.linear(x, codes, s, bias)
    assert y.shape == (3, 7, 128) and y.dtype == torch.bfloat16
    s8, chan = v.load_time_scales(s)
    w = fp8_cast((codes.float() - 8) * s8.repeat_interleave(128, dim=1)) * chan.unsqueeze(1)
    x2 = x.reshape(-1, 256)
    a = (x2.abs().amax(dim=1) / 448).clamp(min=v.MIN_SCALE)
    ref = (fp8_cast(x2 / a.unsqueeze(1)) * a.unsqueeze(1)) @ w.t()
    ref = (ref.to(torch.bfloat16) + bias.to(torch.bfloat16)).reshape(3, 7, 128)
    # same products, other summation order / scale placement: a few BF16 ulps
    assert torch.allclose(y.float(), ref.float(), rtol=2**-7, atol=1e-3)


def test_effective_weight_close_to_plain_dequant():
    """The weight vLLM applies differs from (q - 8) * s (what transformers computes) by the two FP8 roundings."""
    codes, s = _codes_scales(seed=2)
    plain = (codes.float() - 8) * s.repeat_interleave(128, dim=1)
    eff = v.effective_weight(codes, s)
    rel = float((eff - plain).norm() / plain.norm())
    assert 0 < rel < 0.06
