"""Observers of a Linear's calibration inputs: the static FP8 activation scale."""

from __future__ import annotations

import torch

from dpq.config import ActSpec
from dpq.numerics.fp8 import act_scale_maxabs, act_scale_mse, act_scale_percentile

SAMPLE_LIMIT = 1 << 21
"""Values kept (uniformly subsampled) for percentile and MSE scales."""


class ActObserver:
    """Running max|x| and, for percentile/MSE, a bounded random subsample of x.

    `observe(x)` takes any shape [..., K]; `scale(fp8_max)` returns s_x.
    """

    def __init__(self, spec: ActSpec, seed: int = 0) -> None:
        self.spec = spec
        self.amax = 0.0
        self.count = 0
        self._samples: list[torch.Tensor] = []
        self._kept = 0
        self._gen = torch.Generator().manual_seed(seed)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        if not torch.isfinite(x).all():
            raise ValueError("calibration activations hold NaN or Inf: check the model and the calibration text")
        self.amax = max(self.amax, float(x.abs().max()))
        self.count += x.numel()
        if self.spec.method == "maxabs":
            return
        flat = x.reshape(-1).float().cpu()
        keep = min(flat.numel(), max(SAMPLE_LIMIT // 16, 1))
        idx = torch.randint(0, flat.numel(), (keep,), generator=self._gen)
        self._samples.append(flat[idx])
        self._kept += keep
        if self._kept > SAMPLE_LIMIT:  # thin out uniformly
            allv = torch.cat(self._samples)
            sel = torch.randperm(allv.numel(), generator=self._gen)[: SAMPLE_LIMIT // 2]
            self._samples = [allv[sel]]
            self._kept = sel.numel()

    def scale(self, fp8_max: float) -> float:
        if self.count == 0:
            raise ValueError("no calibration inputs reached this Linear: its activation scale cannot be measured")
        if self.spec.method == "maxabs":
            return act_scale_maxabs(self.amax, fp8_max, self.spec.pow2)
        sample = torch.cat(self._samples)
        # The sample may miss the extreme value; keep it so percentile 100 equals max-abs.
        sample = torch.cat([sample, torch.tensor([self.amax])])
        if self.spec.method == "percentile":
            return act_scale_percentile(sample, self.spec.percentile, fp8_max, self.spec.pow2)
        return act_scale_mse(sample, fp8_max, self.spec.pow2)
