"""GPTQ / DPQ solver: invariants, options, and clear errors on bad inputs."""

import dataclasses

import pytest
import torch

from dpq.algorithms import hessian_from_inputs, prepare_hessian, relative_output_error, solve
from dpq.algorithms.gptq import aligned_blocks
from dpq.config import QuantConfig, SolverSpec
from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import compute_group_params


def correlated_layer(n=48, k=256, tokens=1500, seed=0):
    """W [n, k] and H [k, k] from correlated, unevenly scaled inputs (like real activations)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = (torch.randn(tokens, k, generator=g) @ mix) * (torch.rand(k, generator=g) * 3 + 0.1)
    w = torch.randn(n, k, generator=g) * 0.05
    return w, hessian_from_inputs(x), x


@pytest.fixture(scope="module")
def layer():
    return correlated_layer()


@pytest.mark.parametrize("method", ["gptq-w4a16", "naive-w4a8", "dpq", "dpq-gar"])
@pytest.mark.parametrize("g", [32, 64, 128, 256, -1])
@pytest.mark.parametrize("symmetric", [False, True])
def test_shapes_and_storage(method, g, symmetric):
    w, h, _ = correlated_layer(n=8, k=576, tokens=700)  # K = 576: tail groups for 128 and 256
    qw = solve(w, h, QuantConfig.for_method(method, group_size=g, symmetric=symmetric))
    n_groups = 1 if g == -1 else -(-576 // g)
    assert qw.codes.shape == (8, 576) and qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 15
    assert qw.scale.shape == qw.zero.shape == (8, n_groups)
    assert torch.equal(qw.scale.to(torch.bfloat16).float(), qw.scale)  # rounded to the storage dtype
    if symmetric:
        assert (qw.zero == 8).all()
    if qw.fp8_max is not None:
        w8 = qw.weight() / qw.s_w
        assert torch.equal(fp8_cast(w8), w8) and w8.abs().max() <= qw.fp8_max
    assert qw.loss >= 0 and qw.solve_seconds > 0


def test_gptq_beats_rtn(layer):
    w, h, _ = layer
    for fp8 in ("w4a16", "w4a8"):
        rtn = relative_output_error(w, solve(w, h, QuantConfig.for_method(f"rtn-{fp8}")), h)
        gptq_name = "gptq-w4a16" if fp8 == "w4a16" else "naive-w4a8"
        gptq = relative_output_error(w, solve(w, h, QuantConfig.for_method(gptq_name)), h)
        assert gptq < 0.9 * rtn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpq_beats_naive_under_w4a8_numerics(seed):
    w, h, x = correlated_layer(seed=seed)
    s_x = x.abs().max().item() / 448
    naive = relative_output_error(w, solve(w, h, QuantConfig.for_method("naive-w4a8")), x, act_scale=s_x)
    dpq = relative_output_error(w, solve(w, h, QuantConfig.for_method("dpq")), x, act_scale=s_x)
    assert dpq < naive


def test_loss_is_the_quadratic_error(layer):
    w, h, _ = layer
    qw = solve(w, h, QuantConfig.for_method("dpq"))
    _, hd, _ = prepare_hessian(w, h, 0.01)
    d = w - qw.weight()
    torch.testing.assert_close(torch.tensor(qw.loss), (d @ hd @ d.t()).trace() / 2, rtol=2e-2, atol=0)


def test_frozen_params_come_from_fp8_copy_of_original(layer):
    w, h, _ = layer
    cfg = QuantConfig.for_method("dpq", group_params="frozen")
    qw = solve(w, h, cfg)
    p = 448 - 448 / 15
    s, z = compute_group_params(fp8_cast((w / qw.s_w).clamp(-p, p)), 128, False, torch.bfloat16)
    assert torch.equal(qw.scale, s) and torch.equal(qw.zero, z)
    upd = solve(w, h, QuantConfig.for_method("dpq"))
    assert not torch.equal(upd.scale, s)  # updated params differ once errors have been fed back


def test_act_order_uses_static_groups(layer):
    w, h, _ = layer
    qw = solve(w, h, QuantConfig.for_method("gptq-w4a16", act_order=True))
    assert qw.info["order"] == "act_order" and qw.info["group_params"] == "static"
    rtn = relative_output_error(w, solve(w, h, QuantConfig.for_method("rtn-w4a16")), h)
    assert relative_output_error(w, qw, h) < rtn


def test_dead_inputs_quantize_to_zero():
    w, _, x = correlated_layer(n=8, k=64, tokens=300)
    x[:, 5] = 0
    qw = solve(w, hessian_from_inputs(x), QuantConfig.for_method("dpq", group_size=32))
    assert (qw.weight()[:, 5] == 0).all() and qw.info["dead_inputs"] == 1


def test_relative_output_error_h_matches_x(layer):
    w, h, x = layer
    qw = solve(w, h, QuantConfig.for_method("gptq-w4a16"))
    assert abs(relative_output_error(w, qw, h) - relative_output_error(w, qw, x)) < 1e-4


# ---- bad inputs ------------------------------------------------------------------------------


def test_nan_and_inf_weight(layer):
    w, h, _ = layer
    for bad in (float("nan"), float("inf")):
        w2 = w.clone()
        w2[3, 7] = bad
        with pytest.raises(ValueError, match=r"q_proj: the weight holds NaN or Inf"):
            solve(w2, h, QuantConfig.for_method("dpq"), name="q_proj")
        with pytest.raises(ValueError, match="NaN or Inf"):
            solve(w2, None, QuantConfig.for_method("rtn-w4a8"))


def test_hessian_shape_mismatch(layer):
    w, h, _ = layer
    with pytest.raises(ValueError, match=r"Hessian has shape \(255, 255\).*K=256.*pass the \[256, 256\]"):
        solve(w, h[:255, :255], QuantConfig.for_method("dpq"))
    with pytest.raises(ValueError, match="needs the layer Hessian"):
        solve(w, None, QuantConfig.for_method("dpq"))
    h2 = h.clone()
    h2[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Hessian holds NaN or Inf"):
        solve(w, h2, QuantConfig.for_method("dpq"))


def test_weight_not_2d(layer):
    _, h, _ = layer
    with pytest.raises(ValueError, match=r"2-D \[N, K\]"):
        solve(torch.randn(256), h, QuantConfig.for_method("dpq"))


@pytest.mark.parametrize("method", ["dpq", "rtn-w4a16"])
def test_group_size_larger_than_k(layer, method):
    w, h, _ = layer
    with pytest.raises(ValueError, match=r"group_size=512 is larger than .*K=256.*use a group size <= 256"):
        solve(w, h, QuantConfig.for_method(method, group_size=512))


def test_group_size_not_positive():
    with pytest.raises(ValueError, match="group_size=0"):
        QuantConfig.for_method("dpq", group_size=0)


def test_fp8_aware_without_fp8(layer):
    w, h, _ = layer
    cfg = QuantConfig.for_method("gptq-w4a16")
    cfg = dataclasses.replace(cfg, solver=SolverSpec(fp8_aware=True, gar=False))
    with pytest.raises(ValueError, match="fp8_aware needs fp8_max"):
        solve(w, h, cfg)


@pytest.mark.parametrize("sizes", [[64, 128, 128], [32] * 9, [256, 256, 64], [576], [128, 64, 128]])
def test_blocks_align_with_groups(sizes):
    gid = torch.cat([torch.full((s,), i) for i, s in enumerate(sizes)])
    blocks = aligned_blocks(gid, 128)
    assert blocks[0][0] == 0 and blocks[-1][1] == gid.numel()
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:])) and all(0 < e - s <= 128 for s, e in blocks)
    # A group either lies inside one block or starts one (so its first column sees every update).
    for i, size in enumerate(sizes):
        gs = sum(sizes[:i])
        inside = any(s <= gs and gs + size <= e for s, e in blocks)
        assert inside or any(s == gs for s, _ in blocks)
