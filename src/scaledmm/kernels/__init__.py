"""Triton kernels, one module per kernel family."""
