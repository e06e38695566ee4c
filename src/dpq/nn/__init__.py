"""Quantized modules."""

from dpq.nn.linear import W4A8Linear

__all__ = ["W4A8Linear"]
