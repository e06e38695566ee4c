"""INT4 group quantization along the input dimension, and packing.

Notation: a weight W has shape [N, K] (N output rows, K input columns).
Columns are cut into G = ceil(K / g) groups of g consecutive columns; when g
does not divide K the last group is shorter (K = 576, g = 128 gives four
groups of 128 and one of 64). Per-channel is g = K (one group per row).

Codes q are integers in [0, 15] held in uint8; a group's value is
`(q - z) * s` with scale s and zero point z (z = 8 when symmetric).

Packed layout (checkpoint and CPU reference): two codes per byte along K,
little nibble first: `packed[n, j] = q[n, 2j] | (q[n, 2j + 1] << 4)`; an odd K
is padded with one zero code. Shape [N, ceil(K / 2)], dtype uint8.
"""

from __future__ import annotations

import torch

MAXQ = 15
SYM_ZERO = 8

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def storage_dtype(name: str) -> torch.dtype:
    """torch dtype of a scale storage name ("bfloat16", "float16", "float32")."""
    return _DTYPES[name]


def resolve_group_size(k: int, group_size: int) -> int:
    """The effective group size for K input columns: -1 (per-channel) becomes K.

    Raises ValueError for group_size <= 0 (other than -1) or larger than K.
    """
    if group_size == -1:
        return k
    if group_size <= 0:
        raise ValueError(f"group_size={group_size}: use a positive size or -1 for per-channel")
    if group_size > k:
        raise ValueError(
            f"group_size={group_size} is larger than the layer's input size K={k}: "
            f"use a group size <= {k} or -1 for per-channel"
        )
    return group_size


def num_groups(k: int, group_size: int) -> int:
    """G = ceil(K / g)."""
    g = resolve_group_size(k, group_size)
    return (k + g - 1) // g


def group_index(k: int, group_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Group of each input column: [K] int64, `col // g`."""
    g = resolve_group_size(k, group_size)
    return torch.arange(k, device=device) // g


def expand_groups(t: torch.Tensor, k: int, group_size: int) -> torch.Tensor:
    """Per-group values [N, G] -> per-column values [N, K] (tail group included)."""
    return t[:, group_index(k, group_size, t.device)]


def group_params(
    w: torch.Tensor, symmetric: bool = False, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of the rows of one group of columns.

    w: [N, c] (c columns of one group). Returns scale [N] float32 (already
    rounded to `scale_dtype`) and zero [N] float32 integer-valued in [0, 15].
    Asymmetric: s = (max - min) / 15 over a range widened to include 0,
    z = round(-min / s). Symmetric: s = 2 * amax / 15, z = 8. A zero range
    becomes [-1, 1].
    """
    w = w.float()
    if symmetric:
        amax = w.abs().amax(dim=1)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        scale = (2 * amax / MAXQ).to(scale_dtype).float()
        zero = torch.full_like(scale, float(SYM_ZERO))
        return scale, zero
    wmin = w.amin(dim=1).clamp(max=0)
    wmax = w.amax(dim=1).clamp(min=0)
    both_zero = (wmin == 0) & (wmax == 0)
    wmin = torch.where(both_zero, -torch.ones_like(wmin), wmin)
    wmax = torch.where(both_zero, torch.ones_like(wmax), wmax)
    scale = ((wmax - wmin) / MAXQ).to(scale_dtype).float()
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(scale_dtype).tiny), scale)
    zero = torch.round(-wmin / scale).clamp(0, MAXQ)
    return scale, zero


def compute_group_params(
    w: torch.Tensor, group_size: int, symmetric: bool = False, scale_dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group parameters of a whole weight: w [N, K] -> scale [N, G], zero [N, G]."""
    n, k = w.shape
    g = resolve_group_size(k, group_size)
    scales, zeros = [], []
    for start in range(0, k, g):
        s, z = group_params(w[:, start : start + g], symmetric, scale_dtype)
        scales.append(s)
        zeros.append(z)
    return torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Round to codes with matching-shape (or broadcast) scale/zero: q = clamp(round(w/s) + z, 0, 15).

    Returns float codes with w's shape (float so solvers can keep computing).
    """
    return torch.clamp(torch.round(w.float() / scale) + zero, 0, MAXQ)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """w [N, K], scale/zero [N, G] -> codes [N, K] uint8 in [0, 15]."""
    k = w.shape[1]
    q = quantize_codes(w, expand_groups(scale, k, group_size), expand_groups(zero, k, group_size))
    return q.to(torch.uint8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """codes [N, K], scale/zero [N, G] -> (q - z) * s, [N, K] float32."""
    k = q.shape[1]
    s = expand_groups(scale.float(), k, group_size)
    z = expand_groups(zero.float(), k, group_size)
    return (q.float() - z) * s


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """codes [N, K] (values 0..15) -> packed [N, ceil(K/2)] uint8, low nibble = even column."""
    if q.dim() != 2:
        raise ValueError(f"pack_int4 expects a 2-D code matrix, got shape {tuple(q.shape)}")
    q = q.to(torch.uint8)
    if q.numel() and int(q.max()) > MAXQ:
        raise ValueError("pack_int4: codes must be in [0, 15]")
    n, k = q.shape
    if k % 2:
        q = torch.cat([q, torch.zeros(n, 1, dtype=torch.uint8, device=q.device)], dim=1)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """packed [N, ceil(K/2)] uint8 -> codes [N, K] uint8."""
    if packed.dtype != torch.uint8 or packed.dim() != 2:
        raise ValueError(f"unpack_int4 expects 2-D uint8, got {packed.dtype} {tuple(packed.shape)}")
    if packed.shape[1] != (k + 1) // 2:
        raise ValueError(f"unpack_int4: {packed.shape[1]} bytes per row cannot hold K={k} codes")
    low = packed & 0x0F
    high = packed >> 4
    q = torch.stack([low, high], dim=2).reshape(packed.shape[0], -1)
    return q[:, :k]


def pack_int4_int32(q: torch.Tensor) -> torch.Tensor:
    """codes [N, K] -> [N, ceil(K/8)] int32, eight codes per word, code j of a word in bits 4j..4j+3.

    This is the compressed-tensors `pack-quantized` layout (K padded with zeros).
    """
    n, k = q.shape
    pad = (-k) % 8
    q = q.to(torch.int32)
    if pad:
        q = torch.cat([q, torch.zeros(n, pad, dtype=torch.int32, device=q.device)], dim=1)
    q = q.reshape(n, -1, 8)
    shifts = torch.arange(8, device=q.device, dtype=torch.int32) * 4
    words = torch.zeros(q.shape[:2], dtype=torch.int64, device=q.device)
    for j in range(8):
        words |= q[:, :, j].to(torch.int64) << int(shifts[j])
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32)
