"""Static activation-scale observers."""

from __future__ import annotations

import pytest
import torch

from dpq.config import ActSpec
from dpq.models import observers
from dpq.models.observers import ActObserver
from dpq.numerics.fp8 import fp8_roundtrip_error


def _observe(method, chunks, **kw):
    obs = ActObserver(ActSpec(method=method, **kw))
    for c in chunks:
        obs.observe(c)
    return obs


def test_maxabs_is_running_max_over_batches():
    chunks = [torch.randn(4, 8, 16) for _ in range(3)]
    chunks[1][0, 0, 0] = -50.0
    assert _observe("maxabs", chunks).scale(448.0) == pytest.approx(50.0 / 448.0)


def test_percentile_clips_an_outlier():
    torch.manual_seed(0)
    x = torch.randn(100_000)
    x[0] = 1000.0
    s_max = _observe("maxabs", [x]).scale(448.0)
    s_pct = _observe("percentile", [x], percentile=99.9).scale(448.0)
    assert s_pct < s_max / 100


def test_mse_scale_is_no_worse_than_maxabs():
    torch.manual_seed(0)
    x = torch.randn(50_000) * torch.rand(50_000) ** 4 * 10
    x[0] = 200.0
    s_max = _observe("maxabs", [x]).scale(448.0)
    s_mse = _observe("mse", [x]).scale(448.0)
    assert fp8_roundtrip_error(x, s_mse) <= fp8_roundtrip_error(x, s_max)


def test_pow2_rounds_up():
    s = _observe("maxabs", [torch.tensor([3.0])], pow2=True).scale(448.0)
    assert s == 2.0 ** -7 and s >= 3.0 / 448.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN or Inf"):
        _observe("maxabs", [torch.tensor([1.0, float("nan")])])
    with pytest.raises(ValueError, match="no calibration inputs"):
        ActObserver(ActSpec()).scale(448.0)


# --- the kept sample is uniform over everything observed (percentile and MSE scales) ----------------

def _batch_shares(sample: torch.Tensor, n_batches: int, parts: int = 4) -> list[float]:
    """Share of the sample from each of `parts` equal runs of batches (batch i holds the value i)."""
    per = n_batches // parts
    return [float(((sample >= q * per) & (sample < (q + 1) * per)).float().mean()) for q in range(parts)]


def test_sample_is_uniform_over_forty_equal_batches(monkeypatch):
    """Fed 40 equal batches, each quarter of them gives a quarter of the sample (was 8% first, 57% last)."""
    monkeypatch.setattr(observers, "SAMPLE_LIMIT", 1 << 14)
    obs = ActObserver(ActSpec(method="percentile"))
    for i in range(40):
        obs.observe(torch.full((4, 16, 256), float(i)))  # 16,384 values each
    sample = obs.sample()
    assert (1 << 13) <= sample.numel() <= (1 << 14)
    shares = _batch_shares(sample, 40)
    assert all(abs(s - 0.25) < 0.03 for s in shares), shares  # binomial sd about 0.005


def test_sample_is_uniform_per_value_with_unequal_batches(monkeypatch):
    """A batch of 20x the values contributes 20x the sample."""
    monkeypatch.setattr(observers, "SAMPLE_LIMIT", 1 << 14)
    obs = ActObserver(ActSpec(method="mse"))
    for i in range(30):
        obs.observe(torch.full((1000 if i % 2 else 20_000,), float(i % 2)))
    small = float((obs.sample() == 1).float().mean())
    assert abs(small - 1000 / 21_000) < 0.01, small


def test_percentile_scale_of_many_batches_matches_all_data(monkeypatch):
    """The percentile scale from 40 batches of growing magnitude equals the scale of all values at once."""
    monkeypatch.setattr(observers, "SAMPLE_LIMIT", 1 << 15)
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(8, 4096, generator=gen) * (1 + i / 4) for i in range(40)]
    exact = torch.quantile(torch.cat(chunks).abs().flatten()[::7], 0.9).item()  # quantile needs < 16M values
    s = _observe("percentile", chunks, percentile=90.0).scale(448.0)
    assert s * 448.0 == pytest.approx(exact, rel=0.03)


def test_small_inputs_are_kept_whole():
    obs = ActObserver(ActSpec(method="percentile"))
    x = torch.arange(100.0)
    obs.observe(x)
    obs.observe(-x)
    assert torch.equal(obs.sample(), torch.cat([x, -x]))
