"""Observers of a Linear's calibration inputs: the static FP8 activation scale."""

from __future__ import annotations

import torch

from dpq.config import ActSpec
from dpq.numerics.fp8 import act_scale_maxabs, act_scale_mse, act_scale_percentile

SAMPLE_LIMIT = 1 << 21
"""At most this many values are kept for percentile and MSE scales (between half of it and all of it
once that many were observed)."""


class ActObserver:
    """Running max|x| and, for percentile/MSE, a uniform random sample of the observed values of x.

    Every observed value, whatever its batch and the batch sizes, is expected in the sample the same
    number of times, `rate`: a batch of n values contributes about n * rate values drawn uniformly
    from it, and whenever the sample grows past SAMPLE_LIMIT the rate is halved and every kept value
    stays with probability 1/2. `observe(x)` takes any shape [..., K]; `scale(fp8_max)` returns s_x.
    """

    def __init__(self, spec: ActSpec, seed: int = 0) -> None:
        self.spec = spec
        self.amax = 0.0
        self.count = 0
        self.rate: float | None = None  # expected copies of each observed value in the sample
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
        flat = x.reshape(-1)  # [n]
        n = flat.numel()
        if self.rate is None:
            self.rate = min(1.0, SAMPLE_LIMIT / n)
        if self.rate >= 1.0:
            kept = flat.float().cpu()  # every value, once
        else:
            m = int(n * self.rate)
            m += int(torch.rand((), generator=self._gen) < n * self.rate - m)  # E[m] = n * rate
            idx = torch.randint(0, n, (m,), generator=self._gen).to(flat.device)
            kept = flat[idx].float().cpu()  # [m] drawn uniformly from this batch
        self._samples.append(kept)
        self._kept += kept.numel()
        while self._kept > SAMPLE_LIMIT:  # halve the rate for every value seen so far
            allv = torch.cat(self._samples)
            allv = allv[torch.rand(allv.numel(), generator=self._gen) < 0.5]
            self._samples, self._kept, self.rate = [allv], allv.numel(), self.rate / 2

    def sample(self) -> torch.Tensor:
        """The kept values: a uniform random sample of everything observed (see the class doc)."""
        return torch.cat(self._samples) if self._samples else torch.empty(0)

    def scale(self, fp8_max: float) -> float:
        if self.count == 0:
            raise ValueError("no calibration inputs reached this Linear: its activation scale cannot be measured")
        if self.spec.method == "maxabs":
            return act_scale_maxabs(self.amax, fp8_max, self.spec.pow2)
        # The sample may miss the extreme value; keep it so percentile 100 equals max-abs.
        sample = torch.cat([self.sample(), torch.tensor([self.amax])])
        if self.spec.method == "percentile":
            return act_scale_percentile(sample, self.spec.percentile, fp8_max, self.spec.pow2)
        return act_scale_mse(sample, fp8_max, self.spec.pow2)
