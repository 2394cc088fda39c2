"""The float64 reference that tests, the benchmark and the tuner check the kernels against."""

from __future__ import annotations

import torch


def scaled_mm_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype = torch.float64,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """(a @ b) * scale_a * scale_b + bias computed in float64 on the operands' device.

    Takes the arguments of `scaledmm.scaled_mm` (already valid). 8-bit products and their sums are
    exact in float64 for any K a GPU can hold, so the only rounding is the final cast to `out_dtype`
    (none by default).
    """
    f64 = torch.float64
    out = a.to(f64) @ b.to(f64)
    out = out * scale_a.to(f64).reshape(-1, 1)  # [M, 1] or [1, 1]
    out = out * scale_b.to(f64).reshape(1, -1)  # [1, N] or [1, 1]
    if bias is not None:
        out = out + bias.to(f64)
    return out.to(out_dtype)
