"""Kernel tests run Triton on the CPU through its interpreter unless an FP8 GPU (SM89+) is present.

TRITON_INTERPRET must be set before dpq.kernels.triton_w4a8 (and its @triton.jit) is imported.
"""

import os

import torch

if not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)):
    os.environ.setdefault("TRITON_INTERPRET", "1")
