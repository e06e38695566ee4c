"""What the solver learns from one set of Linears' calibration inputs: H, and C for GPTAQ.

Today's path (every new option off) adds each batch to the Hessian as it arrives, exactly as
before. The options beyond the paper need all of a set's inputs first, so they keep them (on the
CPU, one set at a time) and build the statistics in `finish`, once the static FP8 input scale
s_x is known:

- deployed_hessian: H of s_x * fp8(x / s_x), the inputs the deployed Linear multiplies;
- asym_alpha > 0: also C = (2/n) (X_f - X)^T X against the float model's inputs X_f of the same
  tokens (`dpq.algorithms.gptaq`), X the deployed inputs when deployed_hessian is on;
- token_clip: each token's weight in H (and C) is capped so that no token's energy ||x||^2
  counts more than token_clip times the median token energy (massive activations).
"""

from __future__ import annotations

import torch

from dpq.algorithms.gptaq import CrossAccumulator
from dpq.algorithms.hessian import HessianAccumulator
from dpq.config import QuantConfig
from dpq.numerics.fp8 import quantize_activation


def hessian_tokens(x: torch.Tensor, skip_first: int) -> torch.Tensor:
    """The tokens of a Linear's input x [B, T, K] that enter its Hessian: x[:, skip_first:] [B, T - skip_first, K]."""
    if skip_first == 0:
        return x
    if x.dim() != 3:
        raise ValueError(f"skip_first={skip_first} needs Linear inputs of shape [batch, tokens, features], "
                         f"got {tuple(x.shape)}: set skip_first=0 for this model")
    return x[:, skip_first:]


def token_weights(energy: torch.Tensor, clip: float) -> torch.Tensor:
    """Per-token weights [T] in (0, 1]: min(1, clip * median(energy) / energy); energy [T] = ||x_t||^2."""
    cap = clip * energy.median().clamp(min=torch.finfo(energy.dtype).tiny)
    return torch.where(energy > cap, cap / energy, torch.ones_like(energy))


class SetInputs:
    """Inputs of one set of Linears -> (H, C or None, top-token share).

    k: input size; name: for messages; ref: the float model's inputs of this set, one [b, T, K]
    CPU tensor per calibration batch in the same order (needed when asym_alpha > 0); store: where
    the deferred options keep the inputs until `finish` (an `ActivationStore`: memory or
    memory-mapped files; plain lists when None).
    """

    def __init__(self, k: int, name: str, device, config: QuantConfig, ref: list[torch.Tensor] | None = None,
                 store=None):
        sol = config.solver
        self.config, self.device, self.name, self.k = config, device, name, k
        self.ref = ref if sol.asym_alpha > 0 else None
        if sol.asym_alpha > 0 and ref is None:
            raise ValueError(f"{name}: asym_alpha > 0 needs the float model's inputs of this set")
        self.deferred = sol.defers_set_inputs
        self.hess = HessianAccumulator(k, name=name, device=device,
                                       lazy=sol.algorithm == "rtn" and not self.deferred)
        self.store = store
        self.records: list[torch.Tensor] = store.new_list() if store is not None and self.deferred else []

    def add(self, x: torch.Tensor) -> None:
        """One calibration batch of the set's input x [b, T, K] (in batch order)."""
        if not self.deferred:
            self.hess.add(hessian_tokens(x, self.config.calib.skip_first))
        else:
            self.records.append(x.detach().cpu())

    def finish(self, s_x: float | None, need_h: bool = True):
        """(X [n, K] or None, H [K, K] or None, C [K, K] or None, top-token share of tr(H)) once every batch
        was added. X: the tokens themselves while fewer than K were added on today's path (the output error
        is then cheaper from them); H is None only when X is given and need_h is False (round to nearest)."""
        if not self.deferred:
            x = self.hess.inputs
            h = self.hess.take() if x is None or need_h else None
            return x, h, None, self.hess.top_token_share()
        sol, skip = self.config.solver, self.config.calib.skip_first
        if self.ref is not None and len(self.ref) != len(self.records):
            raise ValueError(f"{self.name}: {len(self.ref)} float batches for {len(self.records)} quantized ones")
        weights = None
        if sol.token_clip > 0:
            energy = torch.cat([hessian_tokens(self._deployed(x, s_x), skip).reshape(-1, self.k).square().sum(1)
                                for x in self.records])
            weights = token_weights(energy, sol.token_clip).sqrt()
        cross = CrossAccumulator(self.k, self.name, self.device) if self.ref is not None else None
        start = 0
        for b, raw in enumerate(self.records):  # batch by batch: one deployed copy at a time
            x = hessian_tokens(self._deployed(raw, s_x), skip).reshape(-1, self.k)  # (T, K)
            scale = None if weights is None else weights[start : start + x.shape[0]].unsqueeze(1)
            start += x.shape[0]
            xw = x if scale is None else x * scale
            self.hess.add(xw.to(self.device))
            if cross is not None:
                xf = hessian_tokens(self.ref[b], skip).reshape(-1, self.k)
                cross.add((xf if scale is None else xf * scale).to(self.device), xw.to(self.device))
        if self.store is not None:
            self.store.release(self.records)
        self.records = []
        return None, self.hess.take(), None if cross is None else cross.cross(), self.hess.top_token_share()

    def _deployed(self, x: torch.Tensor, s_x: float | None) -> torch.Tensor:
        fp8_max = self.config.fp8.fp8_max
        if not self.config.solver.deployed_hessian or s_x is None or fp8_max is None:
            return x.float()
        return quantize_activation(x, s_x, fp8_max) * s_x
