"""Static activation-scale observers."""

from __future__ import annotations

import pytest
import torch

from dpq.config import ActSpec
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
