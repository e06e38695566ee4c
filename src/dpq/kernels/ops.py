"""Dispatch of the quantized linear: the fast kernel where it runs, the reference elsewhere.

`DPQ_KERNEL=reference|triton|auto` (or `set_backend`) forces a backend;
"auto" uses Triton on a CUDA GPU with FP8 support (SM89+) and the pure-torch
reference otherwise.
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "reference", "triton")
_backend: str | None = None


def set_backend(name: str) -> None:
    """Force the backend for every W4A8 module ("auto", "reference", "triton")."""
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend {name!r}: use one of {', '.join(BACKENDS)}")
    _backend = name


def get_backend() -> str:
    name = _backend or os.environ.get("DPQ_KERNEL", "auto")
    if name not in BACKENDS:
        raise ValueError(f"DPQ_KERNEL={name!r}: use one of {', '.join(BACKENDS)}")
    return name


def fp8_gpu_available(device: torch.device) -> bool:
    """A CUDA device with FP8 tensor cores (compute capability 8.9 or newer)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def choose_backend(device: torch.device) -> str:
    """The backend that will run on `device` under the current setting."""
    name = get_backend()
    if name == "auto":
        return "triton" if fp8_gpu_available(device) else "reference"
    return name
