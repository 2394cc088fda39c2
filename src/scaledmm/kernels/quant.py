"""Activation quantization kernels: float [M, K] -> int8 or fp8 [M, K] with float32 scales.

Dynamic per-token: each row's scale is max(|x_row|, FLOOR) / QMAX (QMAX = 127 for int8, 448 for
e4m3), so every row uses the whole 8-bit range; the floor keeps all-zero rows finite (they quantize
to zeros). Static per-tensor: one given scale. Values are divided by the scale in fp32, clamped to
[-QMAX, QMAX] (saturation), and rounded to nearest even: for int8 with the 1.5 * 2**23 trick (exact
in fp32 for |v| <= 2**22, and the clamp keeps |v| <= 127), for fp8 by the hardware's RNE conversion.

NaN in, NaN out, as torch.nn.Linear and the torch reference (reference.quantize_ref) have it: every
max and clamp here propagates NaN (Triton's defaults, like fmax, return the other operand, which
would turn a NaN activation into a finite scale, or saturate it to +-QMAX).
- Dynamic: a row holding a NaN gets a NaN scale, so all its values are NaN after the division: NaN in
  fp8; int8 has no NaN, and what the fp32 -> int8 conversion gives for NaN is unspecified. The NaN
  scale is what makes every element of that row of a scaled_mm output NaN (out = acc * scale_a *
  scale_b), for int8 too.
- Dynamic, a row holding +-inf (and no NaN): scale inf; its finite values quantize to +-0 and its
  infinities to NaN (inf / inf), as in the reference; a scaled_mm output row is then all non-finite
  (NaN or +-inf: acc * inf), as torch.nn.Linear's would be.
- Static: a NaN value is NaN in fp8 and unspecified in int8 (the shared scale cannot carry it: a
  static int8 activation loses NaN); +-inf saturates to +-QMAX, as torch.clamp does.

One program quantizes one row, in two passes over K: the absolute maximum, then the scaled values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scaledmm.kernels.launch import BoundLaunch, bind_launch

QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
ABSMAX_FLOOR = 1e-10  # an all-zero row gets this absmax: a finite scale, zeros out
MAX_BLOCK_K = 4096
# 1.5 * 2**23: adding and subtracting it rounds an fp32 to the nearest integer, ties to even.
_RNE_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def saturate_and_round(values, QMAX: tl.constexpr, IS_INT8: tl.constexpr):
    """fp32 values already divided by their scale -> the values of the 8-bit format (still fp32 for
    int8, which the cast then takes exactly; fp8's cast rounds to nearest even itself)."""
    values = tl.maximum(values, -QMAX, propagate_nan=tl.PropagateNan.ALL)
    values = tl.minimum(values, QMAX, propagate_nan=tl.PropagateNan.ALL)
    if IS_INT8:
        values = (values + _RNE_MAGIC) - _RNE_MAGIC
    return values


@triton.jit
def row_scale(absmax, QMAX: tl.constexpr, FLOOR: tl.constexpr):
    """A row's dynamic scale from its absolute maximum (fp32); NaN stays NaN."""
    return tl.maximum(absmax, FLOOR, propagate_nan=tl.PropagateNan.ALL) / QMAX


@triton.jit
def max_abs(values, axis):
    """max |values| (fp32) along `axis`, NaN where that slice holds a NaN: tl.max skips NaN (maxnum
    on the GPU, np.nanmax in the interpreter), so it reduces the bit patterns as integers instead.
    With the sign bit cleared, IEEE floats order as their patterns do, and NaN's lie above +inf's:
    one integer maximum, the cost of tl.max's."""
    bits = values.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.max(bits, axis=axis).to(tl.float32, bitcast=True)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, scale_ptr, K,
    stride_xm, stride_xk, stride_qm,
    DYNAMIC: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr, FLOOR: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)
    if DYNAMIC:
        absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            mask = k + offs < K
            x = tl.load(x_row + (k + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32)
            absmax = tl.maximum(absmax, tl.abs(x), propagate_nan=tl.PropagateNan.ALL)
        scale = row_scale(max_abs(absmax, axis=0), QMAX, FLOOR)
        tl.store(scale_ptr + row, scale)
    else:
        scale = tl.load(scale_ptr).to(tl.float32)
    for k in range(0, K, BLOCK_K):
        mask = k + offs < K
        x = tl.load(x_row + (k + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32)
        q = saturate_and_round(x / scale, QMAX, IS_INT8)
        tl.store(q_row + k + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def bind_quantize_rows(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, dynamic: bool) -> BoundLaunch:
    """Quantize the rows of `x` ([M, K], any strides) into `q` ([M, K], unit column stride) now, and
    return a BoundLaunch that repeats it for new (x, q, scale) of the same signature.

    dynamic: write each row's scale into `scale` ([M] or [M, 1], contiguous float32);
    static: read the one scale in `scale`.
    """
    M, K = x.shape
    args = (x, q, scale, K, x.stride(0), x.stride(1), q.stride(0))
    kwargs = dict(
        DYNAMIC=dynamic,
        QMAX=QMAX[q.dtype],
        IS_INT8=q.dtype == torch.int8,
        FLOOR=ABSMAX_FLOOR,
        BLOCK_K=min(MAX_BLOCK_K, triton.next_power_of_2(K)),
        num_warps=4 if K <= 4096 else 8,
    )
    return bind_launch(_quantize_rows_kernel, (M,), args, kwargs, leading=3, device=x.device)


@triton.jit
def _quantize_groups_kernel(
    x_ptr, q_ptr, scale_ptr, K,
    stride_xm, stride_xk, stride_qm, stride_sm, stride_sg,
    QMAX: tl.constexpr, FLOOR: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    # One program per (row, group of GROUP elements): the group's scale, then its values.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * GROUP + tl.arange(0, GROUP)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs * stride_xk, mask=mask, other=0.0).to(tl.float32)
    scale = row_scale(max_abs(tl.abs(x), axis=0), QMAX, FLOOR)
    tl.store(scale_ptr + row * stride_sm + tl.program_id(1) * stride_sg, scale)
    q = saturate_and_round(x / scale, QMAX, False)
    tl.store(q_ptr + row * stride_qm + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def bind_quantize_groups(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, group_size: int) -> BoundLaunch:
    """Quantize each 1 x group_size group of the rows of `x` ([M, K], any strides) into `q` ([M, K],
    unit column stride) with its own scale, written to `scale` ([M, ceil(K / group_size)], any
    strides: row-major, or column-major as torch._scaled_mm's block mode reads it), now; return a
    BoundLaunch that repeats it for new (x, q, scale) of the same signature. fp8 only: the
    block-scaled matmul's activation format."""
    M, K = x.shape
    args = (x, q, scale, K, x.stride(0), x.stride(1), q.stride(0), scale.stride(0), scale.stride(1))
    kwargs = dict(QMAX=QMAX[q.dtype], FLOOR=ABSMAX_FLOOR, GROUP=group_size, num_warps=4)
    grid = (M, triton.cdiv(K, group_size))
    return bind_launch(_quantize_groups_kernel, grid, args, kwargs, leading=3, device=x.device)
