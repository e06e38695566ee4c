"""The Triton W4A8 kernel against its pure-torch twin (`reference.w4a8_linear`).

On the CPU these run under TRITON_INTERPRET=1 (set in conftest.py), with small
K and N to keep the interpreter fast; on an FP8 GPU (SM89+) they run on it.
"""

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install 'dpq[triton]')")

from dpq.kernels import triton_w4a8 as tk  # noqa: E402  (after the interpreter is set in conftest)
from dpq.kernels.reference import w4a8_linear  # noqa: E402
from dpq.numerics.fp8 import FP8_DTYPE, fp8_cast, quantize_activation  # noqa: E402
from dpq.numerics.int4 import pack_int4  # noqa: E402
from kernel_cases import DEVICE, FP8_GPU, ON_GPU, assert_matches, make_input, make_layer, product_magnitude  # noqa: E402

gpu = pytest.mark.skipif(not FP8_GPU, reason="needs a CUDA GPU with FP8 tensor cores (SM89+)")


CASES = [  # M, N, K, g, symmetric, bias, F
    (1, 8, 96, 64, False, True, 448.0),      # tail group of 32 columns
    (3, 24, 576, 128, True, False, 448.0),   # tail group of 64; N not a multiple of the N tile
    (17, 64, 160, 64, False, True, 240.0),
    (64, 24, 512, 256, False, False, 448.0),
    (333, 8, 96, 64, True, True, 240.0),
    (5, 64, 576, 128, False, True, 240.0),
    (64, 8, 256, 128, True, True, 448.0),
    (1, 24, 160, -1, False, False, 448.0),   # per-channel: one group of 160, not a multiple of BLOCK_K
    (333, 64, 576, 128, False, True, 448.0),
    (17, 8, 576, 256, True, True, 448.0),    # g = 256 with a tail group of 64
    (4, 16, 97, 64, False, True, 448.0),     # odd K: the last byte holds one code and a zero pad
]


@pytest.mark.parametrize("m,n,k,g,sym,bias,fmax", CASES)
def test_matches_reference(m, n, k, g, sym, bias, fmax):
    packed, scales, zeros, s_w, b = make_layer(n, k, g, sym, fmax, bias)
    x, s_x = make_input(m, k, fmax)
    y = tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, g, fmax)  # path "auto": each case takes its path
    exact = not ON_GPU and tk.choose_path(m, n, k, g) != "dequant"  # dequant: not bit-exact on the CPU
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, g, fmax), exact=exact)


@pytest.mark.parametrize("act_quant", ["fused", "separate"])
@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_split_k_and_activation_modes(act_quant, split_k):
    packed, scales, zeros, s_w, b = make_layer(24, 576, 128, False, 448.0, True, seed=3)
    x, s_x = make_input(7, 576, 448.0, seed=4)
    y = tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, 128, 448.0, act_quant=act_quant, split_k=split_k)
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, 128, 448.0))


@pytest.mark.parametrize("g,block_k", [(32, 64), (64, 128), (128, 64), (256, 128)])
def test_group_path_per_column_and_per_tile(g, block_k):
    # g % BLOCK_K != 0 takes the per-column group gather; otherwise one group per K tile.
    packed, scales, zeros, s_w, b = make_layer(16, 288, g, False, 448.0, False, seed=5)
    x, s_x = make_input(9, 288, 448.0, seed=6, dtype=torch.float32)
    config = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=block_k)
    y = tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, g, 448.0, config=config)
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, b, g, 448.0))


def test_repacked_layout_equals_checkpoint_layout():
    packed, scales, zeros, s_w, b = make_layer(32, 192, 64, False, 448.0, True, seed=7)
    x, s_x = make_input(5, 192, 448.0, seed=8)
    y_ckpt = tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, 64, 448.0)
    # N-contiguous storage seen through [N, ...] views, as repack_for_kernel makes it
    t = lambda a: a.t().contiguous().t()  # noqa: E731
    y_gpu = tk.w4a8_gemm(x, t(packed), t(scales), t(zeros), s_w, s_x, b, 64, 448.0)
    assert torch.equal(y_ckpt, y_gpu)  # same kernel, same tiles and order: bit-identical


def test_prequantized_fp8_input():
    packed, scales, zeros, s_w, _ = make_layer(16, 128, 64, True, 448.0, False, seed=9)
    x, s_x = make_input(4, 128, 448.0, seed=10)
    x8 = quantize_activation(x.float().cpu(), s_x, 448.0).to(FP8_DTYPE).to(DEVICE)
    y = tk.w4a8_gemm(x8, packed, scales, zeros, s_w, s_x, None, 64, 448.0)
    assert_matches(y, w4a8_linear(x, packed, scales, zeros, s_w, s_x, None, 64, 448.0))


@pytest.mark.parametrize("fmax", [448.0, 240.0])
def test_quantize_kernel_rounds_like_fp8_cast(fmax):
    # Every E4M3 grid value, the midpoints between neighbours (ties: RNE), one fp32 ulp either
    # side of each midpoint, values beyond +-F (saturate) and subnormals: the cast must be exact.
    grid = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).float()
    grid = grid[torch.isfinite(grid) & (grid >= 0)].unique().sort().values
    mids = (grid[1:] + grid[:-1]) / 2
    vals = torch.cat([grid, mids, torch.nextafter(mids, grid[1:]), torch.nextafter(mids, grid[:-1]),
                      torch.tensor([fmax * 1.01, 500.0, 1e30, 2.0**-10, 2.0**-11, 3 * 2.0**-11])])
    vals = torch.cat([vals, -vals])
    out = tk.quantize_fp8(vals.to(DEVICE), 1.0, fmax)
    assert out.dtype == FP8_DTYPE
    # exact: the kernel and fp8_cast both round to nearest even onto one grid
    assert torch.equal(out.float().cpu(), fp8_cast(vals, fmax))


def test_bf16_output_rounds_to_nearest_even():
    # y = 1 * 1 + bias with bias = j * 2^-8: odd j puts y exactly halfway between two BF16 values,
    # where only round-to-nearest-even gives torch's answer. Exact comparison: no sum to reorder.
    n, k = 16, 64
    codes = torch.full((n, k), 8, dtype=torch.uint8)
    codes[:, 0] = 9  # (9 - 8) * 1 = 1 in column 0, zero elsewhere
    packed = pack_int4(codes).to(DEVICE)
    scales = torch.ones(n, 1, dtype=torch.bfloat16, device=DEVICE)
    zeros = torch.full((n, 1), 8, dtype=torch.uint8, device=DEVICE)
    bias = (torch.arange(n) * 2.0**-8).to(torch.bfloat16).to(DEVICE)
    x = torch.zeros(1, k, dtype=torch.bfloat16, device=DEVICE)
    x[0, 0] = 1.0
    y = tk.w4a8_gemm(x, packed, scales, zeros, 1.0, 1.0, bias, k, 448.0)
    assert torch.equal(y[0].cpu(), (1.0 + bias.float().cpu()).to(torch.bfloat16))


def test_empty_batch():
    packed, scales, zeros, s_w, b = make_layer(8, 64, 64, False, 448.0, True)
    y = tk.w4a8_gemm(torch.zeros(0, 64, dtype=torch.bfloat16, device=DEVICE), packed, scales, zeros, s_w, 1.0,
                     b, 64, 448.0)
    assert y.shape == (0, 8)


def test_bad_inputs_fail_clearly():
    packed, scales, zeros, s_w, b = make_layer(16, 128, 64, False, 448.0, True)
    x, s_x = make_input(2, 128, 448.0)
    args = (packed, scales, zeros, s_w, s_x, b, 64, 448.0)
    with pytest.raises(TypeError, match="x dtype"):
        tk.w4a8_gemm(x.to(torch.int32), *args)
    with pytest.raises(ValueError, match="K mismatch"):
        tk.w4a8_gemm(x[:, :96], *args)
    with pytest.raises(TypeError, match="uint8"):
        tk.w4a8_gemm(x, packed.to(torch.int32), *args[1:])
    with pytest.raises(ValueError, match="multiple of 8"):
        tk.w4a8_gemm(x, packed[:12], scales[:12], zeros[:12], s_w, s_x, None, 64, 448.0)
    with pytest.raises(ValueError, match=r"\[N, G\]"):
        tk.w4a8_gemm(x, packed, scales[:, :1], zeros, s_w, s_x, b, 64, 448.0)
    with pytest.raises(ValueError, match="bias"):
        tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b[:8], 64, 448.0)
    with pytest.raises(ValueError, match="E4M3 value"):
        tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, 64, 300.0)
    with pytest.raises(ValueError, match="W4A16"):
        tk.w4a8_gemm(x, packed, scales, zeros, s_w, s_x, b, 64, None)
    with pytest.raises(ValueError, match="2-D"):
        tk.w4a8_gemm(x[None], *args)


@pytest.mark.skipif(ON_GPU, reason="checks the CPU refusal without the interpreter")
def test_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(tk, "INTERPRET", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        tk._check_device(torch.device("cpu"))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m", [1, 16, 200, 1024])
@pytest.mark.parametrize("act_quant", ["fused", "separate"])
def test_gpu_llama_shape(m, act_quant):
    # Real sizes through autotuning, split-K and the hardware FP8 cast and dot.
    packed, scales, zeros, s_w, b = make_layer(1024, 4096, 128, False, 448.0, True, seed=11, device="cuda")
    x, s_x = make_input(m, 4096, 448.0, seed=12)
    y = tk.w4a8_gemm(x.cuda(), packed, scales, zeros, s_w, s_x, b, 128, 448.0, act_quant=act_quant)
    assert_matches(y, w4a8_linear(x.cuda(), packed, scales, zeros, s_w, s_x, b, 128, 448.0),
                   magnitude=product_magnitude(x, packed, scales, zeros, s_w, s_x, 128, 448.0))


def test_interpreter_flag_matches_environment():
    assert tk.INTERPRET == (os.environ.get("TRITON_INTERPRET") == "1")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("m,path", [(1, "fused"), (8, "fused"), (1024, "dequant")])
def test_gpu_cuda_graph_capture_and_replay(m, path):
    # Decode runs under CUDA graphs: a captured call (autotuned beforehand) must replay on new inputs
    # exactly as an eager call computes them (same kernels, same config, fixed split-K order).
    packed, scales, zeros, s_w, b = make_layer(1024, 4096, 128, False, 448.0, True, seed=13, device="cuda")
    x, s_x = make_input(m, 4096, 448.0, seed=14)
    x = x.cuda()
    # scales as device tensors, as W4A8Linear holds them: a Python float would be copied to the GPU
    # inside the capture, which CUDA graphs do not allow
    scale = lambda v: torch.tensor(v, dtype=torch.float32, device="cuda")  # noqa: E731
    args = (packed, scales, zeros, scale(s_w), scale(s_x), b, 128, 448.0)
    tk.w4a8_gemm(x, *args, path=path)  # autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = tk.w4a8_gemm(x, *args, path=path)
    x2, _ = make_input(m, 4096, 448.0, seed=15)
    x.copy_(x2.cuda())
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, tk.w4a8_gemm(x, *args, path=path))
