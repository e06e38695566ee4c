"""The solver options beyond the paper: group search, asymmetric target, refinement's parametrisation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dpq.algorithms import hessian_from_inputs, prepare_hessian, relative_output_error, solve
from dpq.algorithms.gptaq import CrossAccumulator, asymmetric_target
from dpq.algorithms.group_search import candidate_params, search_group_params
from dpq.config import ConfigError, QuantConfig, SolverSpec
from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import MAXQ, group_params


def _layer(n=64, k=384, tokens=2400, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = (torch.randn(tokens, k, generator=g) @ mix) * (torch.rand(k, generator=g) * 3 + 0.1)
    return torch.randn(n, k, generator=g) * 0.05, x


def _with(cfg: QuantConfig, **solver) -> QuantConfig:
    return dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, **solver))


@pytest.mark.parametrize("symmetric", [False, True])
def test_first_candidate_is_plain_min_max(symmetric):
    src = torch.randn(16, 128) * 30
    scales, zeros = candidate_params(src, symmetric, torch.bfloat16)
    s, z = group_params(src, symmetric, torch.bfloat16)
    assert torch.equal(scales[0], s) and torch.equal(zeros[0], z)
    assert (zeros >= 0).all() and (zeros <= MAXQ).all()


def test_search_never_scores_worse_than_min_max():
    w, x = _layer(n=32, k=128)
    h = hessian_from_inputs(x)
    _, hd, _ = prepare_hessian(w, h, 0.01)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hd)), upper=True)
    cur = w / 2.0**-9  # an FP8-domain group of 128 columns
    u_inv = torch.linalg.inv(u)

    def loss(s, z):
        q = torch.clamp(torch.round(cur / s[:, None]) + z[:, None], 0, MAXQ)
        return ((cur - fp8_cast((q - z[:, None]) * s[:, None])) @ u_inv).square().sum(1)

    s0, z0 = group_params(cur, False, torch.bfloat16)
    s1, z1 = search_group_params(cur, cur, u, 448.0, False, torch.bfloat16)
    assert (loss(s1, z1) <= loss(s0, z0) + 1e-6).all()
    assert (loss(s1, z1) < loss(s0, z0)).float().mean() > 0.3  # most rows find a better range


def _search_one_candidate_at_a_time(cur, src, u, fp8_max, symmetric):
    """The search as specified: every candidate scored on its own, the first least loss kept."""
    scales, zeros = candidate_params(src, symmetric, torch.bfloat16)
    u_inv = torch.linalg.solve_triangular(u, torch.eye(u.shape[0]), upper=True)
    losses = []
    for s, z in zip(scales, zeros):
        q = torch.clamp(torch.round(cur / s[:, None]) + z[:, None], 0, MAXQ)
        deq = (q - z[:, None]) * s[:, None]
        deq = deq if fp8_max is None else fp8_cast(deq, fp8_max)
        losses.append(((cur - deq) @ u_inv).square().sum(1))
    pick = torch.stack(losses).argmin(0)
    rows = torch.arange(cur.shape[0])
    return scales[pick, rows], zeros[pick, rows], torch.stack(losses)


@pytest.mark.parametrize("fp8_max", [448.0, 240.0, None])
def test_clamping_after_the_cast_is_exact(fp8_max):
    """The search casts r * s once per scale and clamps to the cast ends per zero point: the same bits as
    casting each zero point's clamped codes (x -> fp8(x * s) is monotone)."""
    gen = torch.Generator().manual_seed(5)
    s = (torch.rand(6, 40, 1, generator=gen) * 30 + 1e-3).to(torch.bfloat16).float()
    r = torch.randint(-40, 41, (6, 40, 64), generator=gen).float()
    z = torch.randint(0, MAXQ + 1, (6, 40, 1), generator=gen).float()
    cast = (lambda x: x) if fp8_max is None else (lambda x: fp8_cast(x, fp8_max))
    direct = cast(torch.clamp(r, -z, MAXQ - z) * s)
    assert torch.equal(torch.clamp(cast(r * s), cast(-z * s), cast((MAXQ - z) * s)), direct)


@pytest.mark.parametrize("fp8_max", [448.0, 240.0, None])
@pytest.mark.parametrize("symmetric", [False, True])
def test_batched_search_picks_what_the_plain_search_picks(fp8_max, symmetric):
    gen = torch.Generator().manual_seed(3)
    cur = torch.randn(48, 64, generator=gen) * 3
    cur[0] = 0  # a dead row
    a = torch.randn(64, 64, generator=gen)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(a @ a.T + 64 * torch.eye(64))), upper=True)
    s_ref, z_ref, losses = _search_one_candidate_at_a_time(cur, cur, u, fp8_max, symmetric)
    s, z = search_group_params(cur, cur, u, fp8_max, symmetric, torch.bfloat16)
    scales, zeros = candidate_params(cur, symmetric, torch.bfloat16)
    chosen = ((scales == s) & (zeros == z)).float().argmax(0)  # (N,): which candidate each row got
    torch.testing.assert_close(losses[chosen, torch.arange(48)], losses.min(0).values, rtol=1e-6, atol=0)
    assert (s == s_ref).float().mean() > 0.95 and (z == z_ref).float().mean() > 0.95


@pytest.mark.parametrize("seed", [0, 1])
def test_group_search_lowers_the_held_out_deployed_error(seed):
    w, x = _layer(seed=seed)
    h = hessian_from_inputs(x[:1600])
    s_x = x[:1600].abs().max().item() / 448
    base = QuantConfig.for_method("dpq-gar")
    plain = relative_output_error(w, solve(w, h, base), x[1600:], act_scale=s_x)
    searched = relative_output_error(w, solve(w, h, _with(base, group_search=True)), x[1600:], act_scale=s_x)
    assert searched < 0.97 * plain


def test_cross_accumulator_streams():
    g = torch.Generator().manual_seed(0)
    xq, xf = torch.randn(300, 12, generator=g), torch.randn(300, 12, generator=g)
    acc = CrossAccumulator(12)
    for i in range(0, 300, 70):
        acc.add(xf[i : i + 70], xq[i : i + 70])
    torch.testing.assert_close(acc.cross(), 2 / 300 * (xf - xq).t() @ xq, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="must match"):
        acc.add(xf[:5], xq[:6])


def test_asymmetric_target_is_the_least_squares_fit_of_the_float_output():
    g = torch.Generator().manual_seed(1)
    xq = torch.randn(500, 16, generator=g)
    xf = xq + 0.2 * torch.randn(500, 16, generator=g)
    w = torch.randn(8, 16, generator=g)
    acc = CrossAccumulator(16)
    acc.add(xf, xq)
    target = asymmetric_target(w, hessian_from_inputs(xq), acc.cross(), alpha=1.0, damp=0.0)
    lstsq = torch.linalg.lstsq(xq, xf @ w.t()).solution.t()  # argmin_Q ||X_q Q^T - X_f W^T||
    torch.testing.assert_close(target, lstsq, rtol=1e-3, atol=1e-4)
    assert torch.equal(asymmetric_target(w, hessian_from_inputs(xq), acc.cross(), 0.0, 0.01), w)


def test_new_options_are_validated():
    with pytest.raises(ConfigError, match="group_search"):
        SolverSpec(group_search=True, group_params="frozen")
    with pytest.raises(ConfigError, match="asym_alpha"):
        SolverSpec(asym_alpha=-0.1)
    with pytest.raises(ConfigError, match="token_clip"):
        SolverSpec(token_clip=0.5)
    with pytest.raises(ConfigError, match="unknown solver options"):
        QuantConfig.for_method("dpq-gar", group_serach=True)
    cfg = QuantConfig.for_method("dpq-gar", group_search=True, asym_alpha=0.5)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg
    old = QuantConfig.for_method("dpq-gar").to_dict()
    for key in ("group_search", "deployed_hessian", "asym_alpha", "smooth", "token_clip", "refine_steps"):
        del old["solver"][key]  # a checkpoint written before the options existed
    assert QuantConfig.from_dict(old) == QuantConfig.for_method("dpq-gar")
