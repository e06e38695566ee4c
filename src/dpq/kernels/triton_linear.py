"""A W4A8Linear's forward through the Triton paths: the cached GPU layout and the choice of path.

`w4a8_linear_module` flattens x to [M, K] and picks the path with `triton_w4a8.choose_path`: the
fused kernel reads `repack_for_kernel`'s N-contiguous copy of the weight (built once per module);
the large-M path (`triton_dequant`) reads the checkpoint layout, K-contiguous like the FP8 weight it
writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpq.kernels.triton_w4a8 import choose_path, w4a8_gemm
from dpq.numerics.int4 import resolve_group_size


@dataclass
class KernelState:
    """A W4A8Linear's weight in the GPU layout: N-contiguous copies, handed to the kernel as [N, ...] views."""

    packed: torch.Tensor   # [N, ceil(K/2)] uint8 view of a [ceil(K/2), N] contiguous tensor
    scales: torch.Tensor   # [N, G] view of [G, N]
    zeros: torch.Tensor    # [N, G] uint8 view of [G, N]
    key: tuple             # (device, data_ptr, _version) of the source buffers: stale when any changed


def _buffers_key(module) -> tuple:
    return tuple((t.device, t.data_ptr(), t._version) for t in (module.weight, module.scales, module.zeros))


def repack_for_kernel(module) -> KernelState:
    """The GPU layout of a W4A8Linear, built once and cached in module._kernel_state."""
    state = module._kernel_state
    key = _buffers_key(module)
    if isinstance(state, KernelState) and state.key == key:
        return state
    state = KernelState(packed=module.weight.t().contiguous().t(), scales=module.scales.t().contiguous().t(),
                        zeros=module.zeros.t().contiguous().t(), key=key)
    module._kernel_state = state
    return state


def w4a8_linear_module(module, x: torch.Tensor, **kwargs) -> torch.Tensor:
    """A W4A8Linear's forward through the kernel: x [..., K] -> BF16 [..., N]. W4A16 runs the reference."""
    if module.fp8_max is None:
        from dpq.kernels.reference import linear_from_dequant

        return linear_from_dequant(x, module.dequantized_weight(), module.weight_scale.float(), None,
                                   module.bias, None)
    if x.shape[-1] != module.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects K={module.in_features}")
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    path = kwargs.pop("path", "auto")
    if path == "auto":
        path = choose_path(x2.shape[0], module.out_features, module.in_features,
                           resolve_group_size(module.in_features, module.group_size))
    if path == "dequant":  # the dequantize kernel reads the checkpoint layout, K-contiguous like its output
        w = (module.weight, module.scales, module.zeros)
    else:
        state = repack_for_kernel(module)
        w = (state.packed, state.scales, state.zeros)
    y = w4a8_gemm(x2, *w, module.weight_scale, module.input_scale, module.bias, module.group_size, module.fp8_max,
                  path=path, **kwargs)
    return y.reshape(*x.shape[:-1], module.out_features)
