"""Pure layer solvers: f(W, H, config) -> QuantizedWeight. No hooks, no transformers."""

from __future__ import annotations

import torch

from dpq.algorithms.gar import gar_permutation, invert_permutation
from dpq.algorithms.gptq import gptq_solve
from dpq.algorithms.hessian import (
    SOLVER_DTYPE,
    HessianAccumulator,
    HessianError,
    hessian_from_inputs,
    inverse_cholesky,
    prepare_hessian,
)
from dpq.algorithms.rtn import rtn_solve
from dpq.config import QuantConfig
from dpq.numerics.fp8 import quantize_activation
from dpq.numerics.qweight import QuantizedWeight, inference_weight


def solve(w: torch.Tensor, h: torch.Tensor | None, config: QuantConfig, name: str = "") -> QuantizedWeight:
    """Quantize one Linear: W [N, K], H [K, K] (None is fine for RTN) -> QuantizedWeight."""
    if config.solver.algorithm == "rtn":
        return rtn_solve(w, config, name)
    return gptq_solve(w, h, config, name)


ERROR_ROWS = 256
"""Output rows the calibration driver's per-Linear error report uses (evenly spaced; all rows of a
smaller Linear): a diagnostic estimate that costs a fraction of the solve instead of as much."""


def error_rows(n: int, rows: int | None) -> torch.Tensor | None:
    """Evenly spaced row indices [rows] of an N-row weight, or None for all rows."""
    if rows is None or rows >= n:
        return None
    return torch.linspace(0, n - 1, rows).round().long().unique()


def _rows_of(w: torch.Tensor, q: QuantizedWeight, rows: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, W_q) restricted to `error_rows`: both [R, K] float32 on W's device."""
    w = w.detach().to(SOLVER_DTYPE)
    sel = error_rows(w.shape[0], rows)
    if sel is None:
        return w, q.weight().to(w.device)
    wq = inference_weight(q.codes[sel], q.scale[sel], q.zero[sel], q.s_w, q.group_size, q.fp8_max)
    return w[sel.to(w.device)], wq.to(w.device)


def relative_weight_error(w: torch.Tensor, qweight: QuantizedWeight, rows: int | None = None) -> float:
    """||W - W_q|| / ||W|| (the output error for white inputs, H = I), on `rows` evenly spaced rows."""
    w, wq = _rows_of(w, qweight, rows)
    return float(torch.linalg.norm(w - wq) / torch.linalg.norm(w))


def relative_output_error(
    w: torch.Tensor,
    qweight: QuantizedWeight,
    x_or_h: torch.Tensor,
    act_scale: float | None = None,
    rows: int | None = None,
) -> float:
    """||W X - W_q X|| / ||W X|| with W_q the inference weight (`qweight.weight()`).

    x_or_h: inputs X [..., K], or the Hessian H [K, K] (recognised as a
    symmetric K x K matrix), then err = sqrt(tr(D H D^T) / tr(W H W^T)), D = W - W_q.
    act_scale: with inputs X and an FP8 weight, also quantize X to FP8 with this
    static scale, so the error covers the full W4A8 numerics:
    W X  vs  s_x * fp8(X / s_x) @ W_q^T.
    rows: measure on this many evenly spaced output rows only (`error_rows`); None: all rows.
    """
    w, wq = _rows_of(w, qweight, rows)
    k = w.shape[1]
    is_h = x_or_h.dim() == 2 and tuple(x_or_h.shape) == (k, k) and torch.allclose(x_or_h, x_or_h.t())
    if is_h:
        if act_scale is not None:
            raise ValueError("act_scale needs the inputs X, not the Hessian")
        h = x_or_h.to(SOLVER_DTYPE)
        d = w - wq
        num = torch.einsum("nk,kl,nl->", d, h, d)
        den = torch.einsum("nk,kl,nl->", w, h, w)
        return float((num.clamp(min=0) / den).sqrt())
    if x_or_h.shape[-1] != k:
        raise ValueError(f"inputs have {x_or_h.shape[-1]} features, the weight has K={k}")
    x = x_or_h.reshape(-1, k).to(SOLVER_DTYPE)
    ref = x @ w.t()  # (T, N)
    if act_scale is not None and qweight.fp8_max is not None:
        x = quantize_activation(x, act_scale, qweight.fp8_max) * act_scale
    out = x @ wq.t()  # (T, N)
    return float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))


__all__ = [
    "ERROR_ROWS",
    "SOLVER_DTYPE",
    "HessianAccumulator",
    "HessianError",
    "gar_permutation",
    "gptq_solve",
    "hessian_from_inputs",
    "invert_permutation",
    "inverse_cholesky",
    "prepare_hessian",
    "error_rows",
    "relative_output_error",
    "relative_weight_error",
    "rtn_solve",
    "solve",
]
