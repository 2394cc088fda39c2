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


def block_scaled_mm_ref(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    block_size: tuple[int, int],
    out_dtype: torch.dtype = torch.float64,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """The block-scaled product in float64: a [M, K] with scale_a [M, ceil(K / block_k)] (one scale per
    1 x block_k group of a row), b [K, N] with scale_b [ceil(K / block_k), ceil(N / block_n)] (one per
    block_k x block_n block), block_size = (block_n, block_k); each operand is scaled element by element,
    then multiplied, then the bias added."""
    block_n, block_k = block_size
    f64 = torch.float64
    K, N = b.shape
    a_scaled = a.to(f64) * scale_a.to(f64).repeat_interleave(block_k, dim=1)[:, :K]
    b_scales = scale_b.to(f64).repeat_interleave(block_k, dim=0)[:K].repeat_interleave(block_n, dim=1)[:, :N]
    out = a_scaled @ (b.to(f64) * b_scales)
    if bias is not None:
        out = out + bias.to(f64)
    return out.to(out_dtype)


def quantize_ref(
    x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What scaledmm's activation quantization computes, in torch: per-row (dynamic) scales when
    `scale` is None, else the one given scale. Same fp32 operations in the same order, so the GPU
    kernel must match it exactly (Triton's interpreter miscasts a few fp32 -> fp8 values)."""
    from scaledmm.kernels.quant import ABSMAX_FLOOR, QMAX

    qmax = QMAX[dtype]
    x32 = x.to(torch.float32)
    if scale is None:
        scale = x32.abs().amax(dim=-1, keepdim=True).clamp_min(ABSMAX_FLOOR) / qmax
    values = (x32 / scale.to(torch.float32)).clamp(-qmax, qmax)
    if dtype == torch.int8:
        values = values.round()  # half to even
    return values.to(dtype), scale


def quantize_groups_ref(x: torch.Tensor, dtype: torch.dtype, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What scaledmm.quantize_per_token_group computes, in torch: a scale per 1 x group_size group of
    each row of x [..., K] (the last group may be shorter), the same fp32 operations as quantize_ref."""
    K = x.shape[-1]
    groups = -(-K // group_size)
    padded = torch.nn.functional.pad(x.to(torch.float32), (0, groups * group_size - K))
    blocks = padded.reshape(*x.shape[:-1], groups, group_size)
    q, scale = quantize_ref(blocks, dtype)
    return q.reshape(*x.shape[:-1], groups * group_size)[..., :K], scale.squeeze(-1)
