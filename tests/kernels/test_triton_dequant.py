"""The large-M path (dequantize to FP8 once, then torch._scaled_mm) against the reference.

Under TRITON_INTERPRET=1 (the CPU) what is covered, exactly:
- the dequantize kernel: bit for bit equal to `reference.dequant_weight` (both weight layouts);
- the whole path: the activation-quantize kernel (bit-exact, test_triton_w4a8.py), the dequantize
  kernel and torch._scaled_mm composed as `w4a8_gemm(path="dequant")` does it, equal bit for bit
  to torch._scaled_mm called on the reference's own FP8 operands; and within BF16 rounding of the
  reference. It is not bit-equal to the reference on the CPU: torch's CPU _scaled_mm (oneDNN)
  multiplies s_x into the activations before the product (one fp32 rounding per element), where
  the reference, the fused kernel and cuBLASLt apply s_x * s_w to the fp32 accumulator.
What is not covered on the CPU: cuBLASLt's FP8 GEMM itself (the gpu-marked test below).
"""

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'dpq[triton]')")

from dpq.kernels import triton_w4a8 as tk  # noqa: E402  (after the interpreter is set in conftest)
from dpq.kernels.reference import dequant_weight, w4a8_linear  # noqa: E402
from dpq.kernels.triton_dequant import dequant_fp8  # noqa: E402
from dpq.kernels.triton_linear import w4a8_linear_module  # noqa: E402
from dpq.numerics.fp8 import FP8_DTYPE, quantize_activation  # noqa: E402
from dpq.numerics.int4 import resolve_group_size  # noqa: E402

from kernel_cases import DEVICE, FP8_GPU, assert_matches, make_input, make_layer, product_magnitude  # noqa: E402

gpu = pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU with FP8 tensor cores (SM89+)")
T = lambda a: a.t().contiguous().t()  # noqa: E731  (repack_for_kernel's N-contiguous layout)

DEQUANT_CASES = [  # N, K, g, symmetric, F
    (8, 96, 64, False, 448.0),     # tail group of 32; g < BLOCK_K: per-column group gather
    (24, 576, 128, True, 448.0),   # tail group of 64, N not a multiple of the N tile
    (64, 160, 64, False, 240.0),
    (40, 512, 256, False, 448.0),  # g a multiple of BLOCK_K: one group per tile
    (16, 97, 64, False, 448.0),    # odd K: the last byte holds one code and a zero pad
    (24, 160, -1, False, 448.0),   # per-channel: one group of 160
]


@pytest.mark.parametrize("n,k,g,sym,fmax", DEQUANT_CASES)
def test_dequant_kernel_is_bit_exact(n, k, g, sym, fmax):
    packed, scales, zeros, _, _ = make_layer(n, k, g, sym, fmax, False, seed=n + k)
    gg = resolve_group_size(k, g)
    ref = dequant_weight(packed, scales, zeros, k, gg, fmax).view(torch.uint8)
    for layout in (lambda a: a, T):  # checkpoint layout and the kernel layout, read through strides
        w8 = dequant_fp8(layout(packed), layout(scales), layout(zeros), k, gg, fmax)
        assert w8.dtype == FP8_DTYPE and w8.shape == (n, k) and w8.is_contiguous()
        assert torch.equal(w8.view(torch.uint8), ref)  # exact, NaN-free bytes


def test_dequant_kernel_saturates_at_f():
    # (q - z) * s beyond +-F must clamp to +-F, as fp8_cast does: codes 15 and 0 against zero 8, s = 64
    n, k = 16, 64
    codes = torch.tensor([0, 15] * (n * k // 2), dtype=torch.uint8).reshape(n, k)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(DEVICE)
    scales = torch.full((n, 1), 64.0, dtype=torch.bfloat16, device=DEVICE)
    zeros = torch.full((n, 1), 8, dtype=torch.uint8, device=DEVICE)
    w8 = dequant_fp8(packed, scales, zeros, k, k, 240.0).float().cpu()
    assert torch.equal(w8, dequant_weight(packed, scales, zeros, k, k, 240.0).float().cpu())
    assert w8.abs().max() == 240.0


@pytest.mark.parametrize("m,n,k,g,bias,fmax", [(5, 64, 576, 128, True, 240.0), (37, 32, 256, 64, False, 448.0),
                                               (3, 16, 160, -1, True, 448.0)])
def test_dequant_path_matches_reference(m, n, k, g, bias, fmax):
    packed, scales, zeros, s_w, b = make_layer(n, k, g, False, fmax, bias, seed=m)
    x, s_x = make_input(m, k, fmax, seed=m + 1)
    y = tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, g, fmax, path="dequant")
    ref = w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, g, fmax)
    assert_matches(y, ref, exact=False)  # not bit-exact on the CPU: see the module docstring
    # the composition is exact: the same bits as _scaled_mm on the reference's FP8 operands
    x8 = quantize_activation(x, s_x, fmax).to(FP8_DTYPE)
    w8 = dequant_weight(packed, scales, zeros, k, resolve_group_size(k, g), fmax)
    one = lambda v: torch.tensor([v], dtype=torch.float32, device=DEVICE)  # noqa: E731
    assert torch.equal(y, torch._scaled_mm(x8, w8.t(), scale_a=one(s_x), scale_b=one(s_w), bias=b,
                                           out_dtype=torch.bfloat16))


def test_dequant_path_with_a_float32_bias_adds_it_in_fp32():
    packed, scales, zeros, s_w, b = make_layer(32, 128, 64, False, 448.0, True, seed=21)
    x, s_x = make_input(4, 128, 448.0, seed=22)
    b32 = b.float() + 1e-3  # not a BF16 value: cuBLASLt's BF16 bias epilogue would round it
    y = tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b32, 64, 448.0, path="dequant")
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, b32, 64, 448.0), exact=False)


def test_the_rule_picks_the_path_by_m_and_sizes():
    big = tk.LARGE_M_THRESHOLD
    assert tk.choose_path(1, 4096, 4096) == "fused"          # no group size given: not the small-M kernels
    assert tk.choose_path(1, 4096, 4096, 128) == "small"
    assert tk.choose_path(16, 4096, 4096, 64) == "small"
    assert tk.choose_path(17, 4096, 4096, 128) == "fused"
    assert tk.choose_path(4, 4096, 4096, 48) == "fused"      # no K tile of >= 32 divides the group
    assert tk.choose_path(big - 1, 4096, 4096) == "fused"
    assert tk.choose_path(big, 4096, 4096) == "dequant"
    assert tk.choose_path(big, 4104, 4096) == "fused"   # N not a multiple of 16: cuBLASLt refuses
    assert tk.choose_path(big, 4096, 4100) == "fused"   # K likewise
    packed, scales, zeros, s_w, b = make_layer(24, 128, 64, False, 448.0, True)
    x, s_x = make_input(2, 128, 448.0)
    with pytest.raises(ValueError, match="multiples of 16"):
        tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, 64, 448.0, path="dequant")
    with pytest.raises(ValueError, match="path="):
        tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, 64, 448.0, path="cublas")


def test_module_forward_at_large_m_takes_the_dequant_path(monkeypatch):
    from dpq.nn.linear import W4A8Linear

    n, k, g = 32, 64, 32
    packed, scales, zeros, s_w, b = make_layer(n, k, g, False, 448.0, True, seed=31)
    mod = W4A8Linear(k, n, True, g, 448.0).to(DEVICE)
    mod.weight.copy_(packed), mod.scales.copy_(scales), mod.zeros.copy_(zeros), mod.bias.copy_(b)
    mod.weight_scale.fill_(s_w), mod.set_input_scale(0.05)
    seen = []
    real = tk.w4a8_gemm
    monkeypatch.setattr("dpq.kernels.triton_linear.w4a8_gemm",
                        lambda *a, **kw: seen.append((kw["path"], a[1].stride())) or real(*a, **kw))
    x = torch.randn(2, tk.LARGE_M_THRESHOLD // 2, k, generator=torch.Generator().manual_seed(32)).to(DEVICE)
    y = w4a8_linear_module(mod, x.to(torch.bfloat16))
    ref = w4a8_linear(x.to(torch.bfloat16), packed, scales, zeros, s_w, 0.05, b, g, 448.0)
    assert seen == [("dequant", packed.stride())]  # M = 1024 rows; the checkpoint layout
    assert_matches(y, ref, exact=False)
    w4a8_linear_module(mod, x[:1, :3].to(torch.bfloat16))
    assert seen[-1][0] == "small" and seen[-1][1] == T(packed).stride()  # M = 3: the small-M kernel
    w4a8_linear_module(mod, x[:1, :40].to(torch.bfloat16))
    assert seen[-1][0] == "fused" and seen[-1][1] == T(packed).stride()


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1024, 2048])
@pytest.mark.parametrize("path", ["fused", "dequant"])
def test_gpu_large_m_both_paths(m, path):
    packed, scales, zeros, s_w, b = make_layer(1024, 4096, 128, False, 448.0, True, seed=41, device="cuda")
    x, s_x = make_input(m, 4096, 448.0, seed=42)
    y = tk.w4a8_gemm(x.cuda(), packed, scales, zeros, s_w, s_x, b, 128, 448.0, path=path)
    assert_matches(y, w4a8_linear(x.cuda(), packed, scales, zeros, s_w, s_x, b, 128, 448.0), exact=False,
                   magnitude=product_magnitude(x, packed, scales, zeros, s_w, s_x, 128, 448.0))
    gg = resolve_group_size(4096, 128)
    assert torch.equal(dequant_fp8(packed, scales, zeros, 4096, gg, 448.0).view(torch.uint8),
                       dequant_weight(packed, scales, zeros, 4096, gg, 448.0).view(torch.uint8))
