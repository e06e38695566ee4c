"""W4A8Linear through each backend: the Triton path (interpreter on the CPU) equals the reference path."""

import math

import pytest
import torch

from dpq.kernels import ops
from dpq.nn.linear import W4A8Linear
from dpq.numerics.fp8 import protective_range
from dpq.numerics.int4 import compute_group_params, quantize
from dpq.numerics.qweight import QuantizedWeight

FP8_GPU = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
DEVICE = torch.device("cuda" if FP8_GPU else "cpu")


def make_module(n=24, k=160, g=64, symmetric=False, fp8_max=448.0, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    f = 448.0 if fp8_max is None else fp8_max
    s_w = 2.0 ** math.ceil(math.log2(float(w.abs().max()) / protective_range(f)))
    scale, zero = compute_group_params(w / s_w, g, symmetric, torch.bfloat16)
    qw = QuantizedWeight(quantize(w / s_w, scale, zero, g), scale, zero, s_w, g, fp8_max)
    b = torch.randn(n, generator=gen) if bias else None
    m = W4A8Linear.from_quantized(qw, b)
    if fp8_max is not None:
        m.set_input_scale(0.05)
    return m.to(DEVICE)


@pytest.fixture(autouse=True)
def _reset_backend():
    ops.set_backend(None)
    yield
    ops.set_backend(None)


def run(module, x, backend):
    ops.set_backend(backend)
    with torch.no_grad():
        return module(x)


def test_auto_backend_on_cpu_is_reference(monkeypatch):
    monkeypatch.delenv("DPQ_KERNEL", raising=False)
    assert ops.choose_backend(torch.device("cpu")) == "reference"


def test_env_setting_and_bad_names(monkeypatch):
    monkeypatch.setenv("DPQ_KERNEL", "reference")
    assert ops.choose_backend(torch.device("cpu")) == "reference"
    monkeypatch.setenv("DPQ_KERNEL", "cuda")
    with pytest.raises(ValueError, match="DPQ_KERNEL"):
        ops.get_backend()
    with pytest.raises(ValueError, match="backend"):
        ops.set_backend("fast")


def test_forced_triton_on_cpu_without_interpreter_fails_clearly(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ops.set_backend("triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|triton is not installed"):
        ops.choose_backend(torch.device("cpu"))


triton_needed = pytest.mark.skipif(ops.triton_unavailable_reason(DEVICE) is not None,
                                   reason=str(ops.triton_unavailable_reason(DEVICE)))


@triton_needed
@pytest.mark.parametrize("sym,bias,fmax,g", [(False, True, 448.0, 64), (True, False, 240.0, 128)])
def test_module_triton_matches_reference(sym, bias, fmax, g):
    m = make_module(n=24, k=576 if g == 128 else 160, g=g, symmetric=sym, fp8_max=fmax, bias=bias)
    x = (torch.randn(2, 5, m.in_features) * 2).to(torch.bfloat16).to(DEVICE)  # [B, T, K]
    y_ref = run(m, x, "reference")
    y_tri = run(m, x, "triton")
    assert y_tri.shape == (2, 5, 24) and y_tri.dtype == torch.bfloat16
    # same FP8 operands, fp32 accumulation; only summation order differs, which can move the
    # BF16 rounding by one step (2^-8 relative, rtol 2^-7 for a flipped tie); atol for cancellation
    torch.testing.assert_close(y_tri.float(), y_ref.float(), rtol=2**-7, atol=1e-5 * float(y_ref.abs().max()))


@triton_needed
def test_kernel_state_cached_and_invalidated():
    from dpq.kernels.triton_linear import repack_for_kernel

    m = make_module()
    x = torch.randn(3, m.in_features).to(torch.bfloat16).to(DEVICE)
    y0 = run(m, x, "triton")
    state = m._kernel_state
    assert state is not None and repack_for_kernel(m) is state  # built once, reused
    m.weight.copy_(torch.flip(m.weight, dims=[1]))  # in place: the cached layout is stale
    y1 = run(m, x, "triton")
    assert m._kernel_state is not state and not torch.equal(y0, y1)
    torch.testing.assert_close(y1.float(), run(m, x, "reference").float(), rtol=2**-7,
                               atol=1e-5 * float(y1.float().abs().max()))  # as above
    m.set_input_scale(0.1)  # s_x is read from the buffer at every call: no repack needed
    torch.testing.assert_close(run(m, x, "triton").float(), run(m, x, "reference").float(), rtol=2**-7,
                               atol=1e-5 * float(y1.float().abs().max()))  # as above
    m.to(DEVICE)  # _apply invalidates
    assert m._kernel_state is None


@triton_needed
def test_w4a16_module_under_triton_runs_reference():
    m = make_module(fp8_max=None)
    x = torch.randn(4, m.in_features).to(torch.bfloat16).to(DEVICE)
    assert torch.equal(run(m, x, "triton"), run(m, x, "reference"))  # the same reference code runs


@pytest.fixture
def _reset_float_cache():
    ops.set_float_cache(None)
    yield
    ops.set_float_cache(None)


@pytest.mark.parametrize("fmax", [448.0, None])
def test_float_weight_cache_gives_identical_outputs(fmax, _reset_float_cache):
    m = make_module(fp8_max=fmax)
    x = (torch.randn(3, m.in_features) * 2).to(torch.bfloat16).to(DEVICE)
    ops.set_float_cache("off")
    y_off = run(m, x, "reference")
    assert m._float_cache is None
    ops.set_float_cache("on")
    y_on = run(m, x, "reference")
    assert torch.equal(y_on, y_off)  # the FP8 -> float32 cast is exact: bit-identical
    if fmax is not None:
        assert m._float_cache is not None and m._float_cache.dtype == torch.float32
        assert torch.equal(m._float_cache, m.dequantized_weight().float())


def test_float_weight_cache_is_dropped_with_new_buffers(_reset_float_cache):
    ops.set_float_cache("on")
    m, other = make_module(seed=0), make_module(seed=1)
    x = torch.randn(2, m.in_features).to(torch.bfloat16).to(DEVICE)
    run(m, x, "reference")
    m.load_state_dict(other.state_dict())
    assert m._float_cache is None
    assert torch.equal(run(m, x, "reference"), run(other, x, "reference"))


def test_float_cache_setting_auto_and_bad_names(monkeypatch, _reset_float_cache):
    monkeypatch.delenv("DPQ_FLOAT_CACHE", raising=False)
    assert ops.keep_float_weight(torch.device("cpu"))
    assert not ops.keep_float_weight(torch.device("cuda"))
    monkeypatch.setenv("DPQ_FLOAT_CACHE", "off")
    assert not ops.keep_float_weight(torch.device("cpu"))
    monkeypatch.setenv("DPQ_FLOAT_CACHE", "yes")
    with pytest.raises(ValueError, match="DPQ_FLOAT_CACHE='yes'.*auto, on, off"):
        ops.keep_float_weight(torch.device("cpu"))
    with pytest.raises(ValueError, match="float cache"):
        ops.set_float_cache("fp16")


# --- dequantized_weight: one meaning for both targets (issue 24, code review) --------------------

def _vllm_module(n=256, k=256, bias=True, seed=0):
    """A vllm-w4afp8 Linear from the solver (symmetric, g128), its QuantizedWeight and float weight."""
    from dpq.algorithms import solve
    from dpq.config import QuantConfig

    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.02
    qw = solve(w, None, QuantConfig.for_method("rtn-w4a8", target="vllm-w4afp8"))
    b = torch.randn(n, generator=gen) if bias else None
    return W4A8Linear.from_quantized(qw, b, target="vllm-w4afp8"), qw


def test_dequantized_weight_times_s_w_is_the_applied_weight_for_every_target():
    """W = dequantized_weight() * s_w: the paper target's W8 * s_w and vLLM's chan * fp8((q - 8) * s8)."""
    from dpq.numerics import vllm_w4afp8

    m, qw = _vllm_module()
    assert float(m.weight_scale) != 1.0  # so applying s_w twice would show
    want = vllm_w4afp8.effective_weight(qw.codes, qw.scale * qw.s_w, 128)
    assert torch.equal(m.dequantized_weight().float() * m.weight_scale, want)
    assert torch.equal(m.effective_weight(), want)
    for fmax in (448.0, 240.0, None):
        p = make_module(fp8_max=fmax).cpu()
        w8 = p.dequantized_weight()
        assert w8.dtype == (torch.float32 if fmax is None else torch.float8_e4m3fn)
        assert torch.equal(p.effective_weight(), w8.float() * p.weight_scale)


def test_vllm_forward_unchanged_by_the_new_meaning():
    """The module's vLLM forward equals per-token FP8 activations times the real-unit weight, bit for bit."""
    from dpq.kernels.reference import linear_per_token

    m, _ = _vllm_module()
    x = torch.randn(5, 7, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(m(x), linear_per_token(x, m.effective_weight(), m.bias))
        m.bias = None
        assert torch.equal(m(x), linear_per_token(x, m.effective_weight(), None))
