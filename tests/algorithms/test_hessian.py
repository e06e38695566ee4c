"""Streaming Hessian, dead inputs, damping, the Cholesky retry and its failure message."""

import pytest
import torch

from dpq.algorithms.hessian import (
    TOP_TOKEN_FRACTION,
    HessianAccumulator,
    HessianError,
    hessian_from_inputs,
    inverse_cholesky,
    prepare_hessian,
)


def test_streaming_equals_batched():
    x = torch.randn(3, 50, 24)
    acc = HessianAccumulator(24)
    for chunk in (x[0], x[1, :7], x[1, 7:], x[2:]):  # uneven batches, 2-D and 3-D
        acc.add(chunk)
    full = x.reshape(-1, 24)
    expect = 2.0 / full.shape[0] * full.t() @ full
    assert acc.n == 150
    torch.testing.assert_close(acc.hessian(), expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hessian_from_inputs(x), expect, rtol=1e-5, atol=1e-5)


def test_accumulator_rejects_bad_inputs():
    acc = HessianAccumulator(8, "layers.0.q_proj")
    with pytest.raises(HessianError, match=r"layers\.0\.q_proj: no calibration tokens"):
        acc.hessian()
    with pytest.raises(HessianError, match="inputs have 9 features.*K=8"):
        acc.add(torch.randn(4, 9))
    bad = torch.randn(4, 8)
    bad[1, 2] = float("nan")
    with pytest.raises(HessianError, match="NaN or Inf"):
        acc.add(bad)
    bad[1, 2] = float("inf")
    with pytest.raises(HessianError, match="NaN or Inf"):
        acc.add(bad)


def test_dead_inputs_and_damping_do_not_touch_arguments():
    x = torch.randn(100, 6)
    x[:, 2] = 0
    h = hessian_from_inputs(x)
    w = torch.randn(4, 6)
    w0, h0 = w.clone(), h.clone()
    w2, h2, dead = prepare_hessian(w, h, 0.01)
    assert dead.tolist() == [False, False, True, False, False, False]
    assert (w2[:, 2] == 0).all() and torch.equal(w, w0) and torch.equal(h, h0)
    h_dead = h.clone()
    h_dead[2, 2] = 1
    damp = 0.01 * torch.diag(h_dead).mean()
    torch.testing.assert_close(torch.diag(h2), torch.diag(h_dead) + damp)


def test_inverse_cholesky_is_factor_of_inverse():
    x = torch.randn(200, 16)
    _, h, _ = prepare_hessian(torch.zeros(1, 16), hessian_from_inputs(x), 0.01)
    u = inverse_cholesky(h)
    torch.testing.assert_close(u.t() @ u, torch.linalg.inv(h), rtol=1e-3, atol=1e-4)
    assert torch.equal(u, torch.triu(u))


def test_cholesky_retries_with_more_damping():
    h = torch.ones(8, 8)  # rank one: fails without extra damping
    u = inverse_cholesky(h, "layers.3.mlp.down_proj")
    assert torch.isfinite(u).all()


def test_cholesky_failure_names_layer_and_fix():
    h = -torch.eye(8)  # negative definite: no damping helps
    with pytest.raises(HessianError, match=r"layers\.3\.mlp\.down_proj.*raise damping or add calibration samples"):
        inverse_cholesky(h, "layers.3.mlp.down_proj")


def test_top_token_share_flags_a_few_dominant_tokens():
    torch.manual_seed(0)
    x = torch.randn(4, 1000, 16)  # 4000 tokens: the top 0.1% is 4 of them
    plain = HessianAccumulator(16)
    plain.add(x)
    energy = (x.reshape(-1, 16) ** 2).sum(1)
    expect = float(energy.topk(4).values.sum() / energy.sum())
    assert plain.top_token_share() == pytest.approx(expect, rel=1e-5)
    assert TOP_TOKEN_FRACTION < plain.top_token_share() < 0.01  # no token stands out
    x[:, 0] *= 100  # a massive activation at position 0 of every sequence
    massive = HessianAccumulator(16)
    for chunk in x:  # streamed batches give the same share as one batch
        massive.add(chunk)
    assert massive.top_token_share() > 0.9
    assert massive.top_token_share(1.0) == pytest.approx(1.0)


def test_top_token_share_bad_inputs():
    acc = HessianAccumulator(8, "layers.3.mlp.down_proj")
    with pytest.raises(HessianError, match="down_proj: no calibration tokens"):
        acc.top_token_share()
    acc.add(torch.randn(10, 8))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(HessianError, match=r"must be in \(0, 1\]"):
            acc.top_token_share(bad)
    zeros = HessianAccumulator(8)
    zeros.add(torch.zeros(5, 8))
    assert zeros.top_token_share() == 0.0


def test_lazy_accumulation_is_the_same_hessian_bit_for_bit():
    x = torch.randn(5, 9, 16)
    eager, lazy = HessianAccumulator(16), HessianAccumulator(16, lazy=True)
    for b in x:  # 45 tokens in batches of 9: lazy keeps them until the 2nd batch passes K = 16
        eager.add(b)
        lazy.add(b)
    assert torch.equal(eager.hessian(), lazy.hessian()) and lazy.n == eager.n == 45
    few = HessianAccumulator(16, lazy=True)
    few.add(x[0])  # 9 < K tokens: nothing accumulated yet, the tokens are kept
    assert few.h is None and torch.equal(few.inputs, x[0])
    one = HessianAccumulator(16)
    one.add(x[0])
    assert torch.equal(few.hessian(), one.hessian())


def test_inputs_are_kept_only_below_k_tokens_and_take_hands_h_over():
    acc = HessianAccumulator(8)
    acc.add(torch.randn(5, 8))
    assert acc.inputs.shape == (5, 8)
    acc.add(torch.randn(5, 8))  # 10 >= K: the tokens are dropped, H stays
    assert acc.inputs is None
    h = acc.hessian()
    taken = acc.take()
    assert torch.equal(h, taken) and acc.h is None


def test_the_damping_schedule_is_shared_by_the_solver_and_the_asymmetric_correction():
    from dpq.algorithms.gptaq import asymmetric_correction
    from dpq.algorithms.hessian import HessianError, damping_schedule

    assert list(damping_schedule(3)) == [0.0, 0.01, 0.1, 1.0]
    h = torch.ones(8, 8)  # rank one: the first factorisation fails, the first extra damping succeeds
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    out = asymmetric_correction(h, torch.eye(8) * 0.1, 0.5, 0.0)(w)
    assert out.shape == w.shape and torch.isfinite(out).all() and not torch.equal(out, w)
    with pytest.raises(HessianError, match="asymmetric correction"):
        asymmetric_correction(-torch.eye(8), torch.eye(8), 0.5, 0.0)
