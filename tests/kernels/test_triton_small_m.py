"""The small-M kernels (swap: tensor cores on y^T; gemv: CUDA cores) against the reference."""

import pytest

pytest.importorskip("triton", reason="triton is not installed (pip install 'dpq[triton]')")

from dpq.kernels import triton_small_m as sm  # noqa: E402  (after the interpreter is set in conftest)
from dpq.kernels.reference import w4a8_linear  # noqa: E402
from kernel_cases import FP8_GPU, ON_GPU, assert_matches, make_input, make_layer, product_magnitude  # noqa: E402

gpu = pytest.mark.skipif(not (ON_GPU and FP8_GPU), reason="needs a CUDA GPU with FP8 (SM89+)")
cpu_only = pytest.mark.skipif(ON_GPU, reason="interpreter case")


@cpu_only
@pytest.mark.parametrize("variant", sm.VARIANTS)
@pytest.mark.parametrize("m,n,k,split,bias,symmetric", [
    (1, 64, 256, 1, True, False),
    (3, 40, 200, 2, False, False),   # tail K tile and tail group (K = 200, g = 128), N not a tile multiple
    (16, 64, 256, 2, True, True),
])
def test_small_m_matches_reference(variant, m, n, k, split, bias, symmetric):
    packed, scales, zeros, s_w, b = make_layer(n, k, 128, symmetric, 448.0, bias, seed=5)
    x, s_x = make_input(m, k, 448.0, seed=6)
    y = sm.small_m_call(x, packed, scales, zeros, s_w, s_x, b, 128, 448.0, variant=variant, split_k=split,
                        block_n=32, block_k=64)
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, 128, 448.0))


@cpu_only
def test_small_m_takes_prequantized_fp8_input():
    packed, scales, zeros, s_w, b = make_layer(32, 128, 64, False, 448.0, False, seed=7)
    x, s_x = make_input(2, 128, 448.0, seed=8)
    from dpq.numerics.fp8 import FP8_DTYPE, quantize_activation

    x8 = quantize_activation(x, s_x, 448.0).to(FP8_DTYPE)
    y = sm.small_m_call(x8, packed, scales, zeros, s_w, s_x, b, 64, 448.0, variant="gemv", block_n=32, block_k=64)
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, 64, 448.0))


@pytest.mark.parametrize("m,g,bk", [(17, 128, 64), (0, 128, 64), (4, 32, 64)])
def test_small_m_refuses_what_it_cannot_run(m, g, bk):
    assert not sm.small_m_supported(m, 256, g, bk)
    if m:
        packed, scales, zeros, s_w, b = make_layer(32, 256, g, False, 448.0, False)
        x, s_x = make_input(m, 256, 448.0)
        with pytest.raises(ValueError, match="small_m_gemm takes M <= 16"):
            sm.small_m_call(x, packed, scales, zeros, s_w, s_x, b, g, 448.0, block_k=bk)


def test_small_m_unknown_variant():
    with pytest.raises(ValueError, match="variant='tiles'"):
        sm.small_m_gemm(None, None, None, None, None, None, None, 128, 448.0, variant="tiles")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("variant", sm.VARIANTS)
@pytest.mark.parametrize("m", [1, 5, 16])
def test_gpu_small_m_llama_shape(variant, m):
    packed, scales, zeros, s_w, b = make_layer(1024, 4096, 128, False, 448.0, True, seed=11, device="cuda")
    x, s_x = make_input(m, 4096, 448.0, seed=12)
    y = sm.small_m_call(x.cuda(), packed, scales, zeros, s_w, s_x, b, 128, 448.0, variant=variant, split_k=2)
    assert_matches(y, w4a8_linear(x.cuda(), packed, scales, zeros, s_w, s_x, b, 128, 448.0),
                   magnitude=product_magnitude(x, packed, scales, zeros, s_w, s_x, 128, 448.0))


def test_product_magnitude_bounds_the_reference():
    # the GPU tests' accumulation bound is built on this helper: it must run on CPU tensors and bound |y|
    packed, scales, zeros, s_w, _ = make_layer(48, 256, 128, False, 448.0, False, seed=3)
    x, s_x = make_input(5, 256, 448.0, seed=4)
    mag = product_magnitude(x, packed, scales, zeros, s_w, s_x, 128, 448.0)
    ref = w4a8_linear(x, packed, scales, zeros, s_w, s_x, None, 128, 448.0).float()
    assert mag.shape == ref.shape and mag.dtype == ref.dtype
    assert (ref.abs() <= mag * (1 + 2**-7) + 1e-6).all() and float(mag.min()) > 0
