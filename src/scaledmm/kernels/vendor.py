"""The vendor kernels as a scaledmm backend ("torch"): torch._scaled_mm for fp8 (cuBLASLt) and
torch._int_mm (cuBLASLt) plus an fp32 scale and bias epilogue for int8.

`scaled_mm(backend="auto")` runs them where a tuned file says they are faster; the benchmark and the
tuner time them as the baselines. They accept fewer layouts and scale forms than our kernel:
`unsupported_reason` says when they cannot serve a call.
"""

from __future__ import annotations

import torch


def _row_major(t: torch.Tensor) -> bool:
    # cuBLASLt wants distinct rows (no stride-0 or overlapping views) at 16-byte-aligned offsets.
    return t.stride(1) == 1 and t.stride(0) >= t.shape[1] and t.stride(0) % 16 == 0


def _column_major(t: torch.Tensor) -> bool:
    return t.stride(0) == 1 and t.stride(1) >= t.shape[0] and t.stride(1) % 16 == 0


def misaligned_pointer(*tensors: torch.Tensor | None) -> bool:
    """Whether any data pointer is off the 16-byte alignment cuBLASLt needs (views at odd offsets).
    Checked where the call runs, not in the traced argument checks: a pointer is not metadata."""
    return any(t is not None and t.data_ptr() % 16 for t in tensors)


def unsupported_reason(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> str | None:
    """Why the vendor kernel cannot compute this (valid) call, or None if it can."""
    if not a.is_cuda:
        return "the vendor kernels need CUDA tensors"
    M, K = a.shape
    N = b.shape[1]
    if not (_row_major(a) and _column_major(b)):
        return "the vendor kernels need a row-major and b column-major, with 16-aligned leading dimensions"
    if a.dtype == torch.int8:
        if M <= 16 or K % 8 or N % 8:
            return "torch._int_mm needs M > 16 and K, N multiples of 8"
        return None
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        return "torch._scaled_mm is used for float8_e4m3fn operands only"
    if K % 16 or N % 16:
        return "torch._scaled_mm needs K and N multiples of 16"
    if scale_a.dtype != torch.float32 or scale_b.dtype != torch.float32:
        return "torch._scaled_mm needs float32 scales"
    if not (scale_a.is_contiguous() and scale_b.is_contiguous()):
        return "torch._scaled_mm needs contiguous scales"
    per_tensor = scale_a.numel() == 1 and scale_b.numel() == 1
    rowwise = scale_a.numel() == M and scale_b.numel() == N
    if not (per_tensor or rowwise):
        return "torch._scaled_mm needs both scales per-tensor or per-token x per-channel"
    if rowwise and out_dtype != torch.bfloat16:
        return "torch._scaled_mm is used with row-wise scales for bfloat16 output only"
    if bias is not None and (bias.dtype != out_dtype or out_dtype == torch.float32):
        return "torch._scaled_mm takes a bias of the output dtype, bfloat16 or float16"
    if bias is not None and bias.stride(0) != 1:
        return "torch._scaled_mm reads the bias as contiguous"
    return None


def vendor_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    fast_accum: bool = False,
) -> torch.Tensor:
    """(a @ b) * scale_a * scale_b + bias through the vendor kernels (call only where supported).

    fast_accum: fp8's `use_fast_accum` (Hopper's reduced-precision accumulator, never promoted; our
    "fast" accumulation); False promotes to fp32 as our "precise" mode does. cuBLAS refuses it for
    some shapes (a RuntimeError, CUBLAS_STATUS_NOT_SUPPORTED): `fast_accum_refused` tells."""
    if a.dtype == torch.int8:
        out = torch._int_mm(a, b).float() * scale_a.reshape(-1, 1) * scale_b.reshape(1, -1)
        if bias is not None:
            out = out + bias
        return out.to(out_dtype)
    rowwise = scale_a.numel() > 1 or scale_b.numel() > 1
    if rowwise:
        scale_a, scale_b = scale_a.reshape(-1, 1), scale_b.reshape(1, -1)
    else:
        scale_a, scale_b = scale_a.reshape(()), scale_b.reshape(())
    return torch._scaled_mm(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype, use_fast_accum=fast_accum)


def fast_accum_refused(err: RuntimeError) -> bool:
    """Whether a vendor call failed because cuBLAS has no fast-accumulation kernel for its shape."""
    return "NOT_SUPPORTED" in str(err)
