"""The W4A8 Linear: packed INT4 codes, group scales, zero points, s_w and s_x.

Buffers (what the checkpoint stores, per Linear with weight [N, K]):
    weight       [N, ceil(K/2)] uint8   two INT4 codes per byte (see numerics.int4; named `weight` so that a
                                         loader without dpq fails on its shape instead of loading random weights)
    scales       [N, G]  scale dtype    group scales in the FP8 domain
    zeros        [N, G]  uint8          zero points (8 everywhere when symmetric)
    weight_scale []      float32        s_w, a power of two
    input_scale  []      float32        s_x, static FP8 activation scale (W4A8, target "paper" only)
    bias         [N]     bfloat16       when the original Linear had one
"""

from __future__ import annotations

import torch
from torch import nn

from dpq.config import TARGETS, check_target
from dpq.kernels import ops
from dpq.kernels.reference import ACC_DTYPE, OUT_DTYPE, dequant_weight, linear_from_dequant, linear_per_token, vllm_dequant_weight
from dpq.numerics.int4 import num_groups, pack_int4, storage_dtype
from dpq.numerics.qweight import QuantizedWeight


class W4A8Linear(nn.Module):
    """Drop-in replacement for nn.Linear running W4A8 (or W4A16 when fp8_max is None).

    target "paper": static per-tensor FP8 activations, weight fp8((q - z) * s_g) * s_w.
    target "vllm-w4afp8": what vLLM's W4AFP8 path computes (dpq.numerics.vllm_w4afp8):
    dynamic per-token FP8 activations (no input_scale), symmetric codes, the
    group scales s_g * s_w re-quantized to FP8 with a per-channel scale.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        group_size: int,
        fp8_max: float | None,
        scale_dtype: str = "bfloat16",
        target: str = "paper",
    ) -> None:
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target {target!r}: use one of {', '.join(TARGETS)}")
        check_target(target, fp8_max=fp8_max, group_size=in_features if group_size == -1 else group_size)
        self.target = target
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = in_features if group_size == -1 else group_size
        self.fp8_max = fp8_max
        g = num_groups(in_features, self.group_size)
        self.register_buffer("weight", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, g, dtype=storage_dtype(scale_dtype)))
        self.register_buffer("zeros", torch.full((out_features, g), 8, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.tensor(1.0, dtype=torch.float32))
        if fp8_max is not None and not self.dynamic_act:
            self.register_buffer("input_scale", torch.tensor(1.0, dtype=torch.float32))
        else:
            self.input_scale = None
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16))
        else:
            self.bias = None
        self._dequant_cache: torch.Tensor | None = None
        self._float_cache: torch.Tensor | None = None
        self._kernel_state: object | None = None

    @classmethod
    def from_quantized(
        cls, qw: QuantizedWeight, bias: torch.Tensor | None, scale_dtype: str = "bfloat16", target: str = "paper"
    ) -> "W4A8Linear":
        """Build from a solver's result; the input scale is set later by calibration."""
        n, k = qw.shape
        m = cls(k, n, bias is not None, qw.group_size, qw.fp8_max, scale_dtype, target)
        m.weight.copy_(pack_int4(qw.codes))
        m.scales.copy_(qw.scale.to(m.scales.dtype))
        m.zeros.copy_(qw.zero.to(torch.uint8))
        m.weight_scale.fill_(float(qw.s_w))
        if bias is not None:
            m.bias.copy_(bias.detach().to(torch.bfloat16))
        return m.to(qw.codes.device)

    @property
    def is_w4a8(self) -> bool:
        return self.fp8_max is not None

    @property
    def dynamic_act(self) -> bool:
        """Activations quantized per token at run time (target vllm-w4afp8), not with a static s_x."""
        return self.target == "vllm-w4afp8"

    def set_input_scale(self, s_x: float) -> None:
        if self.input_scale is None:
            raise ValueError("this Linear has no static activation scale (W4A16, or per-token dynamic FP8)")
        self.input_scale.fill_(float(s_x))

    def invalidate_cache(self) -> None:
        """Drop cached dequantized weights and kernel layouts (after loading new buffers)."""
        self._dequant_cache = None
        self._float_cache = None
        self._kernel_state = None

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: D401 - torch hook
        self.invalidate_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self.invalidate_cache()
        return super()._apply(fn, recurse)

    def dequantized_weight(self) -> torch.Tensor:
        """The quantized weight divided by s_w, [N, K], cached: for every target the weight this Linear
        applies is `dequantized_weight().float() * weight_scale` (see `effective_weight`).

        target "paper", W4A8: W8 = fp8((q - z) * s_g), float8_e4m3fn; W4A16: (q - z) * s_g, float32.
        target "vllm-w4afp8": chan * fp8((q - 8) * s8) / s_w, float32 (dpq.numerics.vllm_w4afp8; exact,
        s_w is a power of two).
        """
        if self._dequant_cache is None and self.dynamic_act:
            real = vllm_dequant_weight(
                self.weight, self.scales.float() * self.weight_scale.float(), self.in_features, self.group_size
            )
            self._dequant_cache = real / self.weight_scale.float()
        if self._dequant_cache is None:
            self._dequant_cache = dequant_weight(
                self.weight, self.scales, self.zeros, self.in_features, self.group_size, self.fp8_max
            )
        return self._dequant_cache

    def effective_weight(self) -> torch.Tensor:
        """The weight this Linear applies, in real units, [N, K] float32 (not cached):
        `dequantized_weight() * s_w` for every target."""
        return self.dequantized_weight().to(ACC_DTYPE) * self.weight_scale.to(ACC_DTYPE)

    def reference_weight(self) -> torch.Tensor:
        """The weight the reference path multiplies: `dequantized_weight()`, or its exact float32
        copy, cached, where `ops.keep_float_weight` says so (on the CPU by default)."""
        w = self.dequantized_weight()
        if w.dtype == ACC_DTYPE or not ops.keep_float_weight(w.device):
            return w
        if self._float_cache is None:
            self._float_cache = w.to(ACC_DTYPE)
        return self._float_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backend = ops.choose_backend(x.device)
        s_w = self.weight_scale
        s_x = self.input_scale
        if self.dynamic_act:  # no fast kernel for per-token dynamic FP8 yet: the reference
            y = linear_per_token(x, self.reference_weight(), None) * s_w.to(OUT_DTYPE)  # exact: s_w = 2^e
            if self.bias is not None:
                y = y + self.bias.to(OUT_DTYPE)
        elif backend == "triton":
            from dpq.kernels.triton_linear import w4a8_linear_module  # imported only where used

            y = w4a8_linear_module(self, x)
        else:
            y = linear_from_dequant(x, self.reference_weight(), s_w.float(), None if s_x is None else s_x.float(),
                                    self.bias, self.fp8_max)
        return y.to(x.dtype)

    def weight_bytes(self) -> int:
        """Bytes of everything stored for this Linear's weight (codes, scales, zeros, s_w, s_x)."""
        total = 0
        for name in ("weight", "scales", "zeros", "weight_scale", "input_scale"):
            t = getattr(self, name)
            if t is not None:
                total += t.numel() * t.element_size()
        return total

    def extra_repr(self) -> str:
        kind = f"W4A8 F={self.fp8_max:g}" if self.is_w4a8 else "W4A16"
        if self.dynamic_act:
            kind += " vllm-w4afp8 (per-token act)"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}, {kind}"
        )
