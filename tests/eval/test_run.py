"""dpq.eval.run: evaluating a checkpoint against the float model it records."""

from __future__ import annotations


def test_vs_float_needs_a_recorded_source(monkeypatch):
    """`evaluate_vs_float` (dpq eval --vs-float) names the problem before loading anything."""
    import pytest

    import dpq.io.checkpoint as ckpt
    from dpq.eval.run import evaluate_vs_float

    monkeypatch.setattr(ckpt, "read_quant_block", lambda path: {"method": "dpq-gar"})
    with pytest.raises(ValueError, match="records its source model"):
        evaluate_vs_float("some/checkpoint", ppl="wikitext2")
