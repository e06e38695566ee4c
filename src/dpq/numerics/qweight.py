"""The quantized weight of one Linear and the exact weight inference multiplies."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dpq.numerics.fp8 import fp8_cast
from dpq.numerics.int4 import dequantize, pack_int4


def inference_weight(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    s_w: float,
    group_size: int,
    fp8_max: float | None,
) -> torch.Tensor:
    """The weight the hardware multiplies, in real units: [N, K] float32.

    W4A8: s_w * fp8((q - z) * s_g), the FP8 cast saturating at +-F.
    W4A16 (fp8_max None): s_w * (q - z) * s_g.
    codes [N, K] uint8; scale, zero [N, G].
    """
    w = dequantize(codes, scale, zero, group_size)
    if fp8_max is not None:
        w = fp8_cast(w, fp8_max)
    return w * s_w


@dataclass
class QuantizedWeight:
    """What a solver returns for one Linear W [N, K].

    codes: [N, K] uint8 in [0, 15]; scale: [N, G] float32 group scales in the
    FP8 domain (already rounded to their storage dtype); zero: [N, G] float32
    integer zero points; s_w: per-tensor power-of-two weight scale;
    group_size: the effective group size (K for per-channel); fp8_max: F, or
    None for W4A16; loss: the solver's objective sum((W - Wq) H (W - Wq)^T)/N
    style proxy reported for diagnostics; solve_seconds: wall time.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    s_w: float
    group_size: int
    fp8_max: float | None
    loss: float = float("nan")
    solve_seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def weight(self) -> torch.Tensor:
        """The inference weight [N, K] float32 (see `inference_weight`)."""
        return inference_weight(self.codes, self.scale, self.zero, self.s_w, self.group_size, self.fp8_max)

    def packed(self) -> torch.Tensor:
        """Codes packed two per byte: [N, ceil(K/2)] uint8."""
        return pack_int4(self.codes)
