"""GAR, group-aware reordering (the method page, section 3).

The solver quantizes columns in an order driven by diag(H) like act-order, but
every group of g consecutive input channels stays together, so the result is
an ordinary sequential-group INT4 tensor with no g_idx at run time.
"""

from __future__ import annotations

import torch


def group_bounds(k: int, group_size: int) -> list[tuple[int, int]]:
    """[(start, end)] of each group of `group_size` columns out of K; the last may be shorter."""
    return [(s, min(s + group_size, k)) for s in range(0, k, group_size)]


def gar_permutation(diag: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """Quantization order of the K columns: perm [K] int64, column perm[j] goes j-th.

    diag: [K] diagonal of H. Inside each group columns are sorted by diag,
    descending; whole groups are ordered by their largest diag, descending.
    group_size -1 means one group of K columns. A short tail group (K not a
    multiple of group_size) keeps its own size.
    """
    if diag.shape != (k,):
        raise ValueError(f"gar_permutation: diag has shape {tuple(diag.shape)}, expected ({k},)")
    g = k if group_size == -1 else group_size
    if g <= 0:
        raise ValueError(f"gar_permutation: group_size={group_size}: use a positive size or -1")
    d = diag.detach().float().cpu()
    locals_, peaks = [], []
    for start, end in group_bounds(k, g):
        order = torch.argsort(d[start:end], descending=True, stable=True)  # local permutation
        locals_.append(order + start)
        peaks.append(d[start:end].max())
    gperm = torch.argsort(torch.stack(peaks), descending=True, stable=True)  # global permutation
    return torch.cat([locals_[i] for i in gperm.tolist()]).to(diag.device)


def invert_permutation(perm: torch.Tensor) -> torch.Tensor:
    """inv [K] with inv[perm[j]] = j."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv
