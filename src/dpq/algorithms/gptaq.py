"""The asymmetric correction (GPTAQ, Li et al. 2025): fit the float model's output, not the layer's own.

GPTQ fits each Linear to its own inputs X_q, the outputs of the already-quantized layers before
it: min ||W X_q - Q X_q||. GPTAQ's asymmetric objective fits the float model's output instead,
min ||W X_f - Q X_q||, so a layer also corrects the error that reached it. With dX = X_f - X_q
(rows are tokens, X [T, K]) and H = X_q^T X_q the objective is, up to a constant,

    || (Q - W') X_q^T ||^2,   W' = W + W (dX^T X_q) H^-1,

the same quadratic GPTQ minimises, with the target W' in place of W. So the solver runs unchanged
on W' (`asymmetric_target`), and alpha in [0, 1] weighs the correction (alpha = 1: the full
least-squares target). GPTAQ's paper spreads the same term over the column loop (its matrix P);
solving for W' up front is the exact minimiser of the asymmetric objective when the weights are
not rounded, and keeps the DPQ/GAR column loop as it is.

C = (2/n) dX^T X_q is accumulated alongside H, with the same running-mean scaling
(`CrossAccumulator`).
"""

from __future__ import annotations

import torch

from dpq.algorithms.hessian import SOLVER_DTYPE, HessianError, damp_hessian, damping_schedule, with_extra_damping


class CrossAccumulator:
    """Streaming C = (2/n) * sum_t (x_ref_t - x_t) x_t^T over token batches: [K, K] fp32.

    `add(x_ref, x)` takes the float model's inputs x_ref and the quantized model's x, both
    [..., K] with the same tokens in the same order.
    """

    def __init__(self, k: int, name: str = "", device: torch.device | str | None = None) -> None:
        self.k, self.name, self.n = k, name, 0
        self.c = torch.zeros(k, k, dtype=SOLVER_DTYPE, device=device)

    def add(self, x_ref: torch.Tensor, x: torch.Tensor) -> None:
        if x_ref.shape != x.shape or x.shape[-1] != self.k:
            raise HessianError(
                f"{self.name or 'layer'}: float inputs {tuple(x_ref.shape)} and quantized inputs {tuple(x.shape)} "
                f"must match and have K={self.k} features: run the float layer over the same calibration batches"
            )
        x = x.detach().reshape(-1, self.k).to(device=self.c.device, dtype=SOLVER_DTYPE)  # (T, K)
        d = x_ref.detach().reshape(-1, self.k).to(device=self.c.device, dtype=SOLVER_DTYPE) - x  # (T, K)
        m = x.shape[0]
        if m == 0:
            return
        total = self.n + m
        self.c.mul_(self.n / total)
        self.c.addmm_(d.t(), x, alpha=2.0 / total)  # (K, T) @ (T, K)
        self.n = total

    def cross(self) -> torch.Tensor:
        if self.n == 0:
            raise HessianError(f"{self.name or 'layer'}: no calibration tokens were added")
        return self.c.clone()


def asymmetric_target(w: torch.Tensor, h: torch.Tensor, c: torch.Tensor, alpha: float, damp: float) -> torch.Tensor:
    """W' = W + alpha * W C H^-1: w [N, K], h [K, K] (undamped), c [K, K] -> [N, K] fp32.

    H is damped as the solver damps it (`prepare_hessian`); dead inputs keep W's column.
    """
    return asymmetric_correction(h, c, alpha, damp)(w)


def asymmetric_correction(h: torch.Tensor, c: torch.Tensor, alpha: float, damp: float):
    """`asymmetric_target` for every Linear of a set that shares H and C: H is damped and factored once.

    Returns target(w): w [N, K] -> W' [N, K] fp32.
    """
    if alpha == 0:
        return lambda w: w.detach().to(SOLVER_DTYPE).clone()
    hd, dead = damp_hessian(h, damp)
    mean_diag = torch.mean(torch.diag(hd)).item()
    for extra in damping_schedule():  # as inverse_cholesky: retry with more damping
        lower, info = torch.linalg.cholesky_ex(with_extra_damping(hd, extra, mean_diag))
        if info.item() == 0:
            break
    else:
        raise HessianError("asymmetric correction: the Hessian is not positive definite; raise damping")
    del hd

    def target(w: torch.Tensor) -> torch.Tensor:
        w = w.detach().to(SOLVER_DTYPE)
        rhs = (w @ c.to(w.device, SOLVER_DTYPE)).t()  # (K, N)
        shift = torch.cholesky_solve(rhs, lower).t()  # (N, K) = W C H^-1 (H symmetric)
        out = w + alpha * shift
        out[:, dead] = w[:, dead]
        return out

    return target
