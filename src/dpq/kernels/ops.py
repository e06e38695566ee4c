"""Dispatch of the quantized linear: the fast kernel where it runs, the reference elsewhere.

`DPQ_KERNEL=reference|triton|auto` (or `set_backend`) forces a backend;
"auto" uses Triton on a CUDA GPU with FP8 support (SM89+) and the pure-torch
reference otherwise. Forcing "triton" works on such a GPU, and on the CPU
when TRITON_INTERPRET=1 is set (Triton's interpreter: slow, for tests);
anywhere else it fails with a message that says what to do.

`DPQ_FLOAT_CACHE=auto|on|off` (or `set_float_cache`): whether the reference
path keeps a float32 copy of each FP8 weight instead of casting it on every
call. The values are identical (the cast is exact); "auto" keeps it on the
CPU, where the cast costs about as much as the matmul, and not on a GPU.
It costs 4 bytes per weight element.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "triton")
_backend: str | None = None


def set_backend(name: str | None) -> None:
    """Force the backend for every W4A8 module ("auto", "reference", "triton"); None defers to DPQ_KERNEL."""
    global _backend
    if name is not None and name not in BACKENDS:
        raise ValueError(f"kernel backend {name!r}: use one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    name = _backend or os.environ.get("DPQ_KERNEL", "auto")
    if name not in BACKENDS:
        raise ValueError(f"DPQ_KERNEL={name!r}: use one of {', '.join(BACKENDS)}")
    return name


FLOAT_CACHE_MODES = ("auto", "on", "off")
_float_cache: str | None = None


def set_float_cache(mode: str | None) -> None:
    """Force the reference path's float32 weight cache ("auto", "on", "off"); None defers to DPQ_FLOAT_CACHE."""
    global _float_cache
    if mode is not None and mode not in FLOAT_CACHE_MODES:
        raise ValueError(f"float cache {mode!r}: use one of {', '.join(FLOAT_CACHE_MODES)}")
    _float_cache = mode


@contextlib.contextmanager
def float_cache(mode: str | None):
    """`set_float_cache(mode)` inside the block only (the calibration driver turns the cache off: a
    layer's weights are then held once, in FP8, while its Linears are solved)."""
    global _float_cache
    before = _float_cache
    set_float_cache(mode)
    try:
        yield
    finally:
        _float_cache = before


def keep_float_weight(device: torch.device) -> bool:
    """Whether the reference path on `device` should cache float32 weights (see the module docstring)."""
    mode = _float_cache or os.environ.get("DPQ_FLOAT_CACHE", "auto")
    if mode not in FLOAT_CACHE_MODES:
        raise ValueError(f"DPQ_FLOAT_CACHE={mode!r}: use one of {', '.join(FLOAT_CACHE_MODES)}")
    if mode == "auto":
        return device.type == "cpu"
    return mode == "on"


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreter() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run on the CPU (read when the kernel module is first imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def fp8_gpu_available(device: torch.device) -> bool:
    """A CUDA device with FP8 tensor cores (compute capability 8.9 or newer)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernel can run on `device`, else why not and what to do."""
    if not triton_available():
        return "triton is not installed (pip install 'dpq[triton]')"
    if fp8_gpu_available(device):
        return None
    if device.type == "cpu" and triton_interpreter():
        return None
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        return f"{device} is SM{cap[0]}{cap[1]}; the W4A8 kernel needs FP8 tensor cores (SM89+)"
    return (f"the Triton kernel runs on a CUDA GPU with FP8 (SM89+); on {device.type} set "
            "TRITON_INTERPRET=1 before the first import of dpq.kernels.triton_w4a8, or use DPQ_KERNEL=reference")


def choose_backend(device: torch.device) -> str:
    """The backend that will run on `device` under the current setting.

    Raises RuntimeError when "triton" is forced where it cannot run.
    """
    name = get_backend()
    if name == "auto":
        return "triton" if fp8_gpu_available(device) and triton_available() else "reference"
    if name == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise RuntimeError(f"kernel backend 'triton' was forced but cannot run: {reason}")
    return name
