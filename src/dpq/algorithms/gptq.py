"""GPTQ and DPQ: one column-by-column solver with error feedback (the method page, section 2).

All work happens in the FP8 domain W / s_w (s_w a power of two, so exact).
With `fp8_aware` (DPQ) the error fed back is against the weight the hardware
multiplies, fp8((q - z) * s_g) (saturating at +-F), instead of (q - z) * s_g.
"""

from __future__ import annotations

import time

import torch

from dpq.algorithms.common import (
    as_solver_dtype,
    check_group_size,
    check_hessian,
    check_weight,
    param_source,
    scale_dtype,
    weight_domain_scale,
)
from dpq.algorithms.gar import gar_permutation, invert_permutation
from dpq.algorithms.group_search import search_group_params
from dpq.algorithms.hessian import SOLVER_DTYPE, inverse_cholesky, prepare_hessian
from dpq.config import QuantConfig
from dpq.numerics import vllm_w4afp8
from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import MAXQ, compute_group_params, group_params
from dpq.numerics.qweight import QuantizedWeight


def column_order(diag: torch.Tensor, k: int, g: int, gar: bool, act_order: bool) -> torch.Tensor:
    """The order the solver visits columns: perm [K] (GAR, act-order or identity)."""
    if gar:
        return gar_permutation(diag, k, g)
    if act_order:
        return torch.argsort(diag, descending=True, stable=True)
    return torch.arange(k, device=diag.device)


def aligned_blocks(gid: torch.Tensor, block_size: int) -> list[tuple[int, int]]:
    """Lazy-batch blocks [(i1, i2)] over the visit order; a group lies inside one block or starts one.

    gid: [K] group of each visited column. Whole groups are packed into blocks
    of at most block_size columns; a larger group is cut into block_size chunks.
    Then a group's parameters, taken at its first column, see every update.
    """
    starts = [0] + [j for j in range(1, gid.numel()) if gid[j] != gid[j - 1]] + [gid.numel()]
    blocks, i1 = [], 0
    for s, e in zip(starts[:-1], starts[1:]):
        if e - i1 > block_size and s > i1:  # this group does not fit: close the block before it
            blocks.append((i1, s))
            i1 = s
        while e - i1 > block_size:  # a group larger than a block: full chunks
            blocks.append((i1, i1 + block_size))
            i1 += block_size
    if i1 < gid.numel():
        blocks.append((i1, gid.numel()))
    return blocks


def gptq_solve(w: torch.Tensor, h: torch.Tensor, config: QuantConfig, name: str = "") -> QuantizedWeight:
    """W [N, K], H [K, K] -> QuantizedWeight (codes [N, K] in original column order, scale/zero [N, G]).

    config.solver: fp8_aware (DPQ), group_params ("updated" | "frozen"),
    gar, act_order, damp, block_size. The loss is sum_i err_i^2 / U_ii^2 / 2
    in real units, GPTQ's proxy of ||(W - Wq) X||^2 / n.
    """
    t0 = time.perf_counter()
    check_weight(w, name)
    n, k = w.shape
    check_hessian(h, k, name)
    spec, f = config.solver, config.fp8.fp8_max
    g = check_group_size(k, config.weight.group_size, name)
    sym, sdtype = config.weight.symmetric, scale_dtype(config)
    vllm = config.target == "vllm-w4afp8"  # simulate vLLM's W4AFP8 numerics (QuantConfig enforces its rules)
    static = spec.group_params == "frozen" or spec.act_order or vllm  # vLLM: a row's groups are known up front
    if spec.fp8_aware and f is None:
        raise ValueError(f"{name or 'layer'}: fp8_aware needs fp8_max; use fp8_aware=False for W4A16")
    w = as_solver_dtype(w).to(h.device)

    # 1. Per-tensor power-of-two scale; dead inputs and damping of H.
    s_w = weight_domain_scale(w, config)
    w, h, dead = prepare_hessian(w, h, spec.damp)
    w = w / s_w  # (N, K) FP8 domain, exact

    # 2. Static group parameters from the original weights (frozen / act-order).
    if static:
        scale, zero = compute_group_params(param_source(w, config, spec.fp8_aware), g, sym, sdtype)
    else:
        n_groups = (k + g - 1) // g
        scale = torch.zeros(n, n_groups, dtype=SOLVER_DTYPE, device=w.device)
        zero = torch.zeros_like(scale)
    if vllm:  # what vLLM builds at load from the real-unit scales (its floor acts in real units)
        s8, chan = vllm_w4afp8.load_time_scales(scale * s_w)
        chan = (chan / s_w).unsqueeze(1)  # (N, 1), back in the W / s_w domain (exact: power of two)

    # 3. Visit order (GAR / act-order / sequential), applied to W's columns and to H.
    perm = column_order(torch.diag(h), k, g, spec.gar, spec.act_order)
    w, h = w[:, perm].contiguous(), h[perm[:, None], perm[None, :]]  # one [K, K] copy, not two
    gid = (perm // g).tolist()  # group of each visited column
    run_end = _run_ends(gid)

    # 4. Upper Cholesky factor of H^-1 (retries with more damping).
    u = inverse_cholesky(h, name)
    del h  # the solver's largest temporaries are [K, K]: keep as few alive as possible

    q_all = torch.zeros_like(w)
    losses = torch.zeros(n, dtype=SOLVER_DTYPE, device=w.device)
    for i1, i2 in aligned_blocks(perm // g, spec.block_size):
        w1 = w[:, i1:i2].clone()  # (N, B) columns of this block, updated as we go
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, grp = i1 + i, gid[i1 + i]
            # 5. A group's parameters from the error-updated weights at its first column.
            if not static and (col == 0 or gid[col - 1] != grp):
                end = run_end[col]  # groups are contiguous in the visit order (GAR keeps them)
                cur = w1[:, i : end - i1] if end <= i2 else w[:, col:end]  # the latter only at i == 0
                scale[:, grp], zero[:, grp] = _group_params_at(cur, u[col:end, col:end], config)
            # 6. Round to INT4, and the value the solver compares against.
            x = w1[:, i]
            q, xq = _round_column(x, scale[:, grp], zero[:, grp], config,
                                  (s8[:, grp], chan[:, 0]) if vllm else None)
            q_all[:, col] = q
            # 7. Error feedback to the rest of the block.
            d = u1[i, i]
            e = (x - xq) / d
            losses += (x - xq) ** 2 / d**2 / 2
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err1[:, i] = e
        # 8. Lazy batch: the block's error reaches all later columns at once.
        w[:, i2:] -= err1 @ u[i1:i2, i2:]  # (N, B) @ (B, K - i2)

    # 9. Codes back to the original column order; parameters are per original group already.
    codes = q_all[:, invert_permutation(perm)].to(torch.uint8)
    info = {"algorithm": "gptq", "fp8_aware": spec.fp8_aware, "group_params": "static" if static else "updated",
            "order": "gar" if spec.gar else "act_order" if spec.act_order else "sequential",
            "dead_inputs": int(dead.sum()), "target": config.target, "group_search": spec.group_search}
    return QuantizedWeight(codes=codes.cpu(), scale=scale.cpu(), zero=zero.cpu(), s_w=s_w, group_size=g, fp8_max=f,
                           loss=float(losses.sum()) * s_w**2, solve_seconds=time.perf_counter() - t0, info=info)


def _group_params_at(cur: torch.Tensor, u_gg: torch.Tensor, config: QuantConfig):
    """Scale and zero [N] of a group from its error-updated columns cur [N, g] (step 5): min/max, or with
    group_search the best shrunk range / shifted zero on the FP8 inference weight (u_gg: its [g, g] block of U)."""
    sym, sdtype = config.weight.symmetric, scale_dtype(config)
    if config.solver.group_search:
        return search_group_params(cur, param_source(cur, config, False), u_gg, config.fp8.fp8_max, sym, sdtype)
    return group_params(param_source(cur, config, False), sym, sdtype)


def _round_column(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, config: QuantConfig, vllm_scales=None):
    """Codes q [N] of column x [N] and the value xq [N] the solver compares against (step 6): (q - z) * s for
    W4A16 and naive W4A8; with fp8_aware the FP8 weight the hardware multiplies (vLLM: fp8(q * s8) * chan)."""
    q = torch.clamp(torch.round(x / s) + z, 0, MAXQ)
    xq = (q - z) * s
    if config.solver.fp8_aware and vllm_scales is not None:
        s8, chan = vllm_scales
        xq = fp8_cast((q - z) * s8) * chan
    elif config.solver.fp8_aware:
        xq = fp8_cast(xq, config.fp8.fp8_max)  # saturates at F
    return q, xq


def _run_ends(gid: list[int]) -> list[int]:
    """For each visit position, the end (exclusive) of its run of equal group ids."""
    ends = [0] * len(gid)
    end = len(gid)
    for j in range(len(gid) - 1, -1, -1):
        if j + 1 < len(gid) and gid[j + 1] != gid[j]:
            end = j + 1
        ends[j] = end
    return ends
