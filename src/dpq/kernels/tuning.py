"""The autotune space of the fused W4A8 GEMM and the per-call choices made on the host.

Kept apart from the kernel (triton_w4a8.py) so the ahead-of-time compile check (aot.py) and the
benchmarks read the same lists the autotuner uses.
"""

from __future__ import annotations

import torch
import triton

M_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096)
SMALL_M_MAX = 16
"""`choose_path` runs M <= this on the small-M kernels (triton_small_m.py) where they take the group size."""
SMALL_M_BLOCK_K = 128


def _config(bm, bn, bk, warps, stages, group_m=8):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group_m},
                         num_warps=warps, num_stages=stages)


CONFIG_CLASSES = {  # M class -> (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    "small": [(16, 32, 128, 4, 4), (16, 64, 128, 8, 3), (16, 64, 128, 8, 4), (16, 128, 128, 8, 3),
              (16, 32, 256, 4, 3)],
    "mid": [(32, 64, 128, 4, 4), (32, 128, 128, 8, 3), (64, 64, 128, 4, 3), (64, 128, 128, 8, 3),
            (64, 128, 128, 8, 4)],
    "large": [(128, 64, 128, 8, 3), (128, 128, 128, 8, 2), (64, 256, 64, 8, 3)],
}
"""The autotune space. Every config compiles for sm_89, sm_90 and sm_100 without register spills
and within the smallest shared memory of the three (99 KiB on Ada): tests/kernels/test_compile.py
checks it on every CI run, benchmarks/results/kernel-compile/ holds the measured table. Configs
that spilled or overflowed Ada's shared memory were pruned (docs/kernel.md lists them). Not
tuned on a GPU yet: the GPU suite measures the kernel with whichever config the autotuner picks."""


def m_class(bucket: int) -> str:
    """small: buckets 1-16, M < 64 (decode, weight-bandwidth bound); mid: M < 1024; large: the rest."""
    return "small" if bucket <= 16 else "mid" if bucket <= 256 else "large"


def block_k_for_group(block_k: int, group_size: int) -> int:
    """A K tile spanning several whole groups would gather a scale and a zero point per column
    ([BLOCK_K, BLOCK_N] tiles, staged in shared memory: 147 KiB at 64x128x128 with g = 64, over Ada's
    99 KiB); such a tile shrinks to one group. An FP8 dot needs K >= 32."""
    if group_size < block_k and block_k % group_size == 0 and group_size >= 32:
        return group_size
    return block_k


def tune_configs(bucket: int | None, group_size: int | None) -> list[tuple]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) the autotuner tries for an M bucket and group
    size; None, None: every config of every class, as listed."""
    if bucket is None:
        return [c for cls in CONFIG_CLASSES.values() for c in cls]
    tiles = [(bm, bn, block_k_for_group(bk, group_size), w, s) for bm, bn, bk, w, s in CONFIG_CLASSES[m_class(bucket)]]
    return list(dict.fromkeys(tiles))


def gpu_configs() -> list:
    """Every config of CONFIG_CLASSES as a triton.Config."""
    return [_config(*c) for c in tune_configs(None, None)]


def m_bucket(m: int) -> int:
    """The autotuning bucket of M: the largest of M_BUCKETS not above M."""
    return max(b for b in M_BUCKETS if b <= max(m, 1))


def choose_split_k(m: int, n: int, k: int, device: torch.device) -> int:
    """Split K for small M when the output tiles alone cannot fill the GPU (heuristic, not tuned)."""
    if m > 64:
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    tiles = triton.cdiv(n, 64)
    split = 1
    while split < 8 and tiles * split * 2 <= 2 * sms and k // (split * 2) >= 512:
        split *= 2
    return split


def small_m_block_k(group_size: int) -> int:
    """The small-M kernels' K tile: SMALL_M_BLOCK_K, or the group when smaller (tiles hold whole groups;
    an FP8 dot needs K >= 32); 0 when no tile fits (the group is not a multiple of 32)."""
    bk = SMALL_M_BLOCK_K
    while bk >= 32 and group_size % bk:
        bk //= 2
    return bk if bk >= 32 else 0


def choose_small_split(n: int, k: int, block_n: int, block_k: int, device: torch.device) -> int:
    """Split K until the small-M grid has eight programs per SM, keeping at least 4 K tiles per split
    (measured on an H200 at Llama-3-8B shapes: split 8 fastest for N <= 6144, 4 for N = 28672)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    tiles, k_tiles, split = triton.cdiv(n, block_n), triton.cdiv(k, block_k), 1
    while split < 16 and tiles * split < 8 * sms and k_tiles // (split * 2) >= 4:
        split *= 2
    return split
