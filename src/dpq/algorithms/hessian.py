"""The layer Hessian H = (2/n) * sum_tokens x x^T and what a solver does to it.

Pure torch, no hooks: the calibration driver feeds `HessianAccumulator.add`
with the inputs of one Linear, batch by batch; `prepare_hessian` handles dead
inputs and damping; `inverse_cholesky` gives the upper Cholesky factor of
H^-1 that GPTQ's error feedback uses, retrying with more damping when H is
too ill-conditioned.
"""

from __future__ import annotations

import torch

SOLVER_DTYPE = torch.float32
"""Precision of every Hessian and solver computation."""

TOP_TOKEN_FRACTION = 0.001
"""Fraction of tokens whose share of tr(H) `HessianAccumulator.top_token_share` reports."""

CHOLESKY_RETRIES = 3
"""Extra attempts of the Cholesky, each with ten times more damping."""


class HessianError(ValueError):
    """The Hessian cannot be built or factored; the message says what to do."""


class HessianAccumulator:
    """Streaming H = (2/n) * sum x x^T over token batches, as a running mean in fp32.

    k: input size of the Linear; name: the layer, used in error messages.
    `add(x)` takes x of shape [..., K] (all leading dims are tokens).
    While fewer than K tokens have been added it also keeps them (`inputs`, [n, K], no more memory
    than H itself), so an output error ||D X|| costs N K n instead of N K^2.
    lazy: do not accumulate H until more than K tokens arrived (a solver that ignores H, such as
    round-to-nearest, then pays nothing for it); `hessian()` builds it from the kept inputs.
    """

    def __init__(self, k: int, name: str = "", device: torch.device | str | None = None, lazy: bool = False) -> None:
        if k <= 0:
            raise HessianError(f"{name or 'layer'}: input size K={k} must be positive")
        self.k = k
        self.name = name
        self.n = 0
        self.lazy = lazy
        self.device = device
        self.h = None if lazy else torch.zeros(k, k, dtype=SOLVER_DTYPE, device=device)
        self._kept: list[torch.Tensor] | None = []  # the tokens while n < K; None once dropped
        self._energy: list[torch.Tensor] = []  # ||x||^2 of every token, for top_token_share

    def add(self, x: torch.Tensor) -> None:
        """Fold a batch of inputs x [..., K] into the running mean."""
        if x.shape[-1] != self.k:
            raise HessianError(
                f"{self.name or 'layer'}: inputs have {x.shape[-1]} features but the Hessian is for "
                f"K={self.k}: feed this accumulator the inputs of the Linear it was made for"
            )
        x = x.detach().reshape(-1, self.k).to(device=self.device if self.h is None else self.h.device, dtype=SOLVER_DTYPE)  # (T, K)
        m = x.shape[0]
        if m == 0:
            return
        if not torch.isfinite(x).all():
            raise HessianError(
                f"{self.name or 'layer'}: calibration inputs hold NaN or Inf: check the float model "
                "and the calibration data (run the model in float32)"
            )
        self._energy.append((x * x).sum(1).cpu())
        if self._kept is not None and self.n + m < self.k:
            self._kept.append(x)
        elif self._kept is not None:
            if self.h is None:  # lazy: fold the kept tokens in before going on
                self.h = torch.zeros(self.k, self.k, dtype=SOLVER_DTYPE, device=x.device)
                kept, self.n = self._kept, 0
                self._kept = None
                for t in kept:
                    self._fold(t)
            self._kept = None
        if self.h is not None:
            self._fold(x)
        else:
            self.n += m

    def _fold(self, x: torch.Tensor) -> None:
        """The running-mean update of H with tokens x [T, K]."""
        total = self.n + x.shape[0]
        self.h.mul_(self.n / total)
        x = x * (2.0 / total) ** 0.5
        self.h.addmm_(x.t(), x)  # (K, T) @ (T, K)
        self.n = total

    @property
    def inputs(self) -> torch.Tensor | None:
        """The added tokens [n, K] fp32 while n < K, else None."""
        if self._kept is None or not self._kept:
            return None
        return torch.cat(self._kept)

    def hessian(self) -> torch.Tensor:
        """H [K, K] fp32 (a copy). Raises when no token was added."""
        if self.n == 0:
            raise HessianError(
                f"{self.name or 'layer'}: no calibration tokens reached this layer: "
                "add calibration samples (or check that the layer is on the forward path)"
            )
        if self.h is None:  # lazy and fewer than K tokens: build it from the kept ones
            h = torch.zeros(self.k, self.k, dtype=SOLVER_DTYPE, device=self._kept[0].device)
            n = 0
            for x in self._kept:
                total = n + x.shape[0]
                h.mul_(n / total)
                xs = x * (2.0 / total) ** 0.5
                h.addmm_(xs.t(), xs)
                n = total
            return h
        return self.h.clone()

    def take(self) -> torch.Tensor:
        """H [K, K] without a copy (saves K^2 floats at solve time); the accumulator is spent afterwards."""
        h = self.hessian() if self.h is None or self.n == 0 else self.h
        self.h = None
        self._kept = None
        return h

    def top_token_share(self, fraction: float = TOP_TOKEN_FRACTION) -> float:
        """Share of tr(H) carried by the top `fraction` of tokens (at least one) by ||x||^2.

        About `fraction` when no token stands out; near 1 when a few tokens (massive
        activations) dominate H, so that a GPTQ-style solver fits them rather than the rest.
        """
        if self.n == 0:
            raise HessianError(f"{self.name or 'layer'}: no calibration tokens were added")
        if not 0 < fraction <= 1:
            raise HessianError(f"fraction={fraction} must be in (0, 1]")
        energy = torch.cat(self._energy)  # (n,)
        total = float(energy.sum())
        if total == 0:
            return 0.0
        k = max(1, int(energy.numel() * fraction))
        return float(energy.topk(k).values.sum()) / total


def hessian_from_inputs(x: torch.Tensor, name: str = "") -> torch.Tensor:
    """H [K, K] of all inputs x [..., K] at once (the batched twin of the accumulator)."""
    acc = HessianAccumulator(x.shape[-1], name, device=x.device)
    acc.add(x)
    return acc.hessian()


def prepare_hessian(
    w: torch.Tensor, h: torch.Tensor, damp: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dead inputs and damping, without touching the arguments.

    w [N, K], h [K, K] -> (w', h', dead [K] bool) where a dead input (diag(H) == 0)
    gets H[d, d] = 1 and W[:, d] = 0, and then H += damp * mean(diag(H)) * I.
    """
    h, dead = damp_hessian(h, damp)
    w = w.to(SOLVER_DTYPE).clone()
    w[:, dead] = 0.0
    return w, h, dead


def damp_hessian(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`prepare_hessian`'s treatment of H alone: h [K, K] -> (h' [K, K] a copy, dead [K] bool)."""
    h = h.to(SOLVER_DTYPE).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    idx = torch.arange(h.shape[0], device=h.device)
    h[idx, idx] += damp * torch.mean(torch.diag(h))
    return h, dead


def damping_schedule(retries: int = CHOLESKY_RETRIES):
    """The extra damping of each factorisation attempt, in units of mean(diag(H)): 0, then 0.01, 0.1, 1 ..."""
    yield 0.0
    extra = 0.01
    for _ in range(retries):
        yield extra
        extra *= 10


def with_extra_damping(h: torch.Tensor, extra: float, mean_diag: float) -> torch.Tensor:
    """h itself when extra is 0, else a copy with extra * mean_diag added to the diagonal."""
    if not extra:
        return h
    idx = torch.arange(h.shape[0], device=h.device)
    hd = h.clone()
    hd[idx, idx] += extra * mean_diag
    return hd


def inverse_cholesky(h: torch.Tensor, name: str = "", retries: int = CHOLESKY_RETRIES) -> torch.Tensor:
    """Upper Cholesky factor U of H^-1 (H^-1 = U^T U): [K, K] fp32.

    h should already be damped (`prepare_hessian`). When a factorisation fails,
    retry with extra damping of 0.01, 0.1, 1 ... times mean(diag(H)) (`damping_schedule`); when all
    attempts fail, raise HessianError naming the layer.
    """
    mean_diag = torch.mean(torch.diag(h)).item()
    for extra in damping_schedule(retries):
        lower, info = torch.linalg.cholesky_ex(with_extra_damping(h, extra, mean_diag))
        if info.item() == 0:
            hinv = torch.cholesky_inverse(lower)
            del lower  # at most three [K, K] matrices alive at once
            upper, info = torch.linalg.cholesky_ex(hinv, upper=True)
            del hinv
            if info.item() == 0 and torch.isfinite(upper).all():
                return upper
    raise HessianError(
        f"{name or 'layer'}: the Hessian is not positive definite even with "
        f"{retries} extra dampings (up to {extra:g} * mean diag): raise damping or add calibration samples"
    )
