"""Quantized linear kernels: reference (pure torch) and Triton, behind `ops`."""
