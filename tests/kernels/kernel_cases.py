"""Random quantized layers and inputs for the kernel tests, and the comparison with the reference."""

import math

import torch

from dpq.kernels import triton_w4a8 as tk
from dpq.numerics.fp8 import protective_range
from dpq.numerics.int4 import compute_group_params, pack_int4, quantize, resolve_group_size

ON_GPU = not tk.INTERPRET
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


def make_layer(n, k, group_size, symmetric, fp8_max, bias, seed=0, device=DEVICE):
    """A random quantized Linear in checkpoint layout: packed [N, ceil(K/2)], scales bf16 / zeros uint8 [N, G]."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    w[:, : max(1, k // 7)] *= 8  # a few wide groups, so codes span 0..15 and s_g varies
    g = resolve_group_size(k, group_size)
    s_w = 2.0 ** math.ceil(math.log2(float(w.abs().max()) / protective_range(fp8_max)))
    wd = w / s_w
    scale, zero = compute_group_params(wd, g, symmetric, torch.bfloat16)
    codes = quantize(wd, scale, zero, g)
    b = torch.randn(n, generator=gen).to(torch.bfloat16) if bias else None
    put = lambda t: None if t is None else t.to(device)  # noqa: E731
    return put(pack_int4(codes)), put(scale.to(torch.bfloat16)), put(zero.to(torch.uint8)), s_w, put(b)


def make_input(m, k, fp8_max, seed=1, dtype=torch.bfloat16):
    """x [M, K] with outliers, and an fp32-representable s_x that saturates the largest few."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen) * 3
    x[:, ::11] *= 20
    s_x = float(torch.tensor(0.7 * float(x.abs().max()) / fp8_max, dtype=torch.float32))
    return x.to(dtype).to(DEVICE), s_x


TENSOR_CORE_ACC = 2.0**-10
"""On a GPU, FP8 tensor-core sums (Hopper's wgmma, and cuBLASLt's FP8 GEMM behind torch._scaled_mm)
keep fewer bits than fp32 between promotions: measured on an H200 (benchmarks/results/gpu/), such
paths land up to ~8000 of 1M outputs outside one BF16 rounding of an fp64 product of the same FP8
operands, all near-cancelling outputs. The bound allowed for them is this fraction of the output's
sum of |products| (a few 2^-14 truncations per tile, with margin); a wrong code, scale or layout
moves outputs by whole products, far more."""


def product_magnitude(x, packed, scales, zeros, s_w, s_x, group_size, fp8_max):
    """sum_k |x8[m, k] * w8[n, k]| * s_x * s_w: [M, N] float32 on the CPU (the scale of the sums)."""
    from dpq.kernels.reference import dequant_weight
    from dpq.numerics.fp8 import quantize_activation

    x8 = quantize_activation(x.float().cpu(), s_x, fp8_max).float().abs()
    w8 = dequant_weight(packed.cpu(), scales.cpu(), zeros.cpu(), x.shape[-1], group_size, fp8_max).float().abs()
    return (x8 @ w8.t()) * (s_x * s_w)


def assert_matches(y, ref, exact=not ON_GPU, magnitude=None):
    """y (a kernel's BF16 output) against the reference's.

    exact (the default under the interpreter): bit for bit. The kernel and the reference multiply
    the same FP8 operands (products exact in fp32) and round the same fp32 epilogue once to BF16;
    only the order of the fp32 sums differs (K tiles and split-K partials against torch's matmul),
    which can change a BF16 result only where a sum lies within a few fp32 ulps of a BF16 rounding
    boundary. Measured: no output of any case differed. If one ever does, the message says how far
    it sits from the boundary.

    magnitude (GPU tests of paths on FP8 tensor cores: `product_magnitude`): also allow
    TENSOR_CORE_ACC of each output's sum of |products|.

    Otherwise (a GPU: the tensor cores' own accumulation order; or a path that is not exact on the
    CPU) within one BF16 rounding: the fp32 order error is ~K * 2^-24 relative to sum|products|,
    far below BF16's step 2^-8 (rtol 2^-7 covers a tie flipped either way); atol covers outputs
    that cancel to near zero, where that error is relative to the products, not to the output.
    """
    assert y.dtype == torch.bfloat16 and y.shape == ref.shape
    assert torch.isfinite(y).all()
    y, ref = y.float().cpu(), ref.float().cpu()
    if exact:
        bad = (y != ref).nonzero()
        assert bad.numel() == 0, (f"{len(bad)} of {y.numel()} outputs differ from the reference, first at "
                                  f"{bad[0].tolist()}: {y[tuple(bad[0])]} vs {ref[tuple(bad[0])]} (one BF16 step "
                                  "apart means a summation-order tie: see assert_matches)")
        return
    atol = 1e-5 * float(ref.abs().max())
    if magnitude is None:
        torch.testing.assert_close(y, ref, rtol=2**-7, atol=atol)
        return
    bound = 2**-7 * ref.abs() + atol + TENSOR_CORE_ACC * magnitude.float().cpu()
    bad = ((y - ref).abs() > bound).nonzero()
    assert bad.numel() == 0, (f"{len(bad)} of {y.numel()} outputs outside one BF16 rounding plus the tensor cores' "
                              f"accumulation bound, first at {bad[0].tolist()}: {y[tuple(bad[0])]} vs "
                              f"{ref[tuple(bad[0])]} (bound {bound[tuple(bad[0])]})")
