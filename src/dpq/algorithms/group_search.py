"""Group parameters found by search in the FP8 domain (an option of the GPTQ/DPQ solver).

Plain min/max group parameters map a group's extreme values onto codes 0 and 15. Shrinking the
range can lower the error of the other values at the cost of clipping the extremes; which wins
depends on the Hessian and on the FP8 rounding of the dequantized weight. At each group's start
the solver calls `search_group_params` with the group's current (error-updated) values; every
candidate (shrink factors of the min and of the max, and the neighbouring zero points) is scored
by the Hessian-weighted error of the real inference weight `fp8((q - z) * s_g)`:

    loss(row) = || (w - fp8((q - z) * s)) @ U_gg^-1 ||^2

where U_gg is the group's diagonal block of the upper Cholesky factor U of H^-1 (in the solver's
visit order): U_gg^T U_gg is the group block of the inverse Hessian of the columns not yet
quantized, so this is the OBS loss of rounding the group while the later columns compensate.
The candidate list starts with plain min/max, so the search never scores worse than it.
"""

from __future__ import annotations

import torch

from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import MAXQ, SYM_ZERO

SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
"""Factors applied to a group's min and to its max (independently); 1.0 first (plain min/max)."""
ZERO_SHIFTS = (0, -1, 1)
"""Zero points tried around round(-min / s) (asymmetric only)."""
CHUNK = 12
"""Candidates scored at once (bounds memory: CHUNK x N x c floats)."""


def candidate_params(
    src: torch.Tensor, symmetric: bool, scale_dtype: torch.dtype,
    shrink: tuple[float, ...] = SHRINK, zero_shifts: tuple[int, ...] = ZERO_SHIFTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate (scale, zero) per row: src [N, c] -> scale, zero [C, N] float32.

    Candidate 0 is exactly `dpq.numerics.int4.group_params(src)` (plain min/max). Asymmetric: the
    S*S shrink pairs once per zero shift, zero shift outermost (C = S*S*Z).
    """
    scale, zero = _base_candidates(src, symmetric, scale_dtype, shrink)
    if symmetric:
        return scale, zero
    scales = torch.cat([scale for _ in zero_shifts])  # (S*S*Z, N), zero shift outermost
    zeros = torch.cat([(zero + dz).clamp(0, MAXQ) for dz in zero_shifts])
    return scales, zeros


def _base_candidates(src: torch.Tensor, symmetric: bool, scale_dtype: torch.dtype,
                     shrink: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidates before zero shifts: scale, zero [S, N] (symmetric) or [S*S, N] (asymmetric)."""
    src = src.float()
    f = torch.tensor(shrink, dtype=torch.float32, device=src.device)
    if symmetric:
        amax = src.abs().amax(dim=1)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)  # (N,)
        scale = (2 * (amax.unsqueeze(0) * f.unsqueeze(1)) / MAXQ).to(scale_dtype).float()  # (S, N)
        return scale, torch.full_like(scale, float(SYM_ZERO))
    wmin = src.amin(dim=1).clamp(max=0)
    wmax = src.amax(dim=1).clamp(min=0)
    both_zero = (wmin == 0) & (wmax == 0)
    wmin = torch.where(both_zero, -torch.ones_like(wmin), wmin)
    wmax = torch.where(both_zero, torch.ones_like(wmax), wmax)
    a, b = torch.meshgrid(f, f, indexing="ij")  # (S, S) factors of min and max
    lo = wmin.unsqueeze(0) * a.reshape(-1, 1)  # (S*S, N)
    hi = wmax.unsqueeze(0) * b.reshape(-1, 1)
    scale = ((hi - lo) / MAXQ).to(scale_dtype).float()
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(scale_dtype).tiny), scale)
    return scale, torch.round(-lo / scale).clamp(0, MAXQ)


def search_group_params(
    cur: torch.Tensor, src: torch.Tensor, u_gg: torch.Tensor, fp8_max: float | None,
    symmetric: bool, scale_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of one group with the least Hessian-weighted error.

    cur: [N, c] the group's current values (FP8 domain, solver visit order); src: [N, c] the values
    plain min/max would use (clamped to the protective range); u_gg: [c, c] the group's block of
    the upper Cholesky factor of H^-1 (same order). fp8_max None scores the INT4 weight (W4A16).
    Returns scale [N], zero [N] float32, as `group_params` does.
    """
    scales, zeros = candidate_params(src, symmetric, scale_dtype)  # (C, N)
    c = cur.shape[1]
    eye = torch.eye(c, dtype=u_gg.dtype, device=u_gg.device)
    u_inv = torch.linalg.solve_triangular(u_gg, eye, upper=True)  # (c, c), U_gg^-1
    cur = cur.float()
    base = scales.shape[0] // (1 if symmetric else len(ZERO_SHIFTS))  # candidates per zero shift
    loss = torch.empty_like(scales)  # (C, N)
    cast = (lambda x: x) if fp8_max is None else (lambda x: fp8_cast(x, fp8_max))
    for i in range(0, base, CHUNK):
        s = scales[i : i + CHUNK].unsqueeze(2)  # (B, N, 1): the same scales under every zero shift
        unclamped = cast(torch.round(cur.unsqueeze(0) / s) * s)  # (B, N, c), shared by the zero shifts
        for j in range(0, scales.shape[0], base):  # one pass per zero shift
            z = zeros[j + i : j + i + s.shape[0]].unsqueeze(2)
            # cast(clamp(r, -z, MAXQ - z) * s) (= cast((clamp(r + z, 0, MAXQ) - z) * s), integers) equals
            # clamping cast(r * s) to the cast ends: x -> cast(x * s) is monotone, the products the same.
            deq = torch.clamp(unclamped, cast(-z * s), cast((MAXQ - z) * s))
            loss[j + i : j + i + s.shape[0]] = ((cur.unsqueeze(0) - deq) @ u_inv).square().sum(dim=2)  # (B, N)
    pick = loss.argmin(dim=0)  # the first of equal losses: plain min/max (candidate 0) wins ties
    rows = torch.arange(cur.shape[0], device=cur.device)
    return scales[pick, rows], zeros[pick, rows]
