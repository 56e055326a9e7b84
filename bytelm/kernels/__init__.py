"""Kernels: one folder per op, each with a PyTorch reference and a Triton fast path."""
