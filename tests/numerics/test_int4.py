"""INT4 group parameters, quantize/dequantize and packing, incl. tail groups."""

import pytest
import torch

from dpq.numerics.int4 import (
    compute_group_params,
    dequantize,
    num_groups,
    pack_int4,
    quantize,
    resolve_group_size,
    unpack_int4,
)

SHAPES_GROUPS = [(8, 576, 32), (8, 576, 64), (8, 576, 128), (8, 576, 256), (8, 576, -1), (5, 100, 32), (3, 7, 4)]


@pytest.mark.parametrize("n,k,g", SHAPES_GROUPS)
def test_pack_unpack_round_trip(n, k, g):
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (n, (k + 1) // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed, k), q)


@pytest.mark.parametrize("n,k,g", SHAPES_GROUPS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_quant_dequant_round_trip(n, k, g, symmetric):
    w = torch.randn(n, k)
    scale, zero = compute_group_params(w, g, symmetric, torch.float32)
    assert scale.shape == (n, num_groups(k, g))
    q = quantize(w, scale, zero, g)
    assert q.shape == (n, k) and int(q.max()) <= 15
    wq = dequantize(q, scale, zero, g)
    # Each value is within half a step of its group's scale (inside the range).
    gs = resolve_group_size(k, g)
    step = scale[:, torch.arange(k) // gs]
    slack = 0.5 + (1.0 if symmetric else 0.0)  # symmetric clips +amax to 7 steps
    assert ((wq - w).abs() <= slack * step + 1e-6).all()
    # Dequantized codes quantize back to the same codes (a fixed point).
    assert torch.equal(quantize(wq, scale, zero, g), q)


def test_tail_group_has_its_own_params():
    w = torch.randn(4, 576)
    w[:, 512:] *= 100  # the 64-wide tail group of g = 128
    scale, _ = compute_group_params(w, 128)
    assert scale.shape == (4, 5)
    assert (scale[:, 4] > 10 * scale[:, :4].max(dim=1).values).all()


@pytest.mark.parametrize("bad", [0, -2, 1000])
def test_bad_group_size(bad):
    with pytest.raises(ValueError, match="group_size"):
        resolve_group_size(576, bad)


def test_zero_weight_group():
    scale, zero = compute_group_params(torch.zeros(2, 64), 32)
    q = quantize(torch.zeros(2, 64), scale, zero, 32)
    assert torch.equal(dequantize(q, scale, zero, 32), torch.zeros(2, 64))
