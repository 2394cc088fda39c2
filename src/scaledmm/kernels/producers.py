"""Producer kernels with the activation quantization fused in: RMSNorm + per-token quantize, and
SiLU(gate) * up + per-token quantize.

In a decoder each W8A8 linear's input is made by one small kernel (a norm, the MLP's activation)
and then read again by a separate quantization kernel. These kernels compute the producer's output
and quantize it in the same program, so the float activation is never written.

The arithmetic is the producer's as transformers writes it, then `quant._quantize_rows_kernel`'s:

- RMSNorm (LlamaRMSNorm, Qwen3RMSNorm): in fp32, x * rsqrt(mean(x^2) + eps), rounded to x's dtype,
  times the weight (of x's dtype; the product rounded to x's dtype, as torch's elementwise multiply does);
- SwiGLU: silu(gate) rounded to the gate's dtype, times up, rounded again (torch's `act_fn(gate) * up`).

With QUANTIZE=False the kernels write that float value instead: quantizing it with
quantize_per_token gives the fused kernels' bits exactly (tests/kernels/test_producers.py), which
is what "the same arithmetic" means here. Against transformers' own modules the float values agree
to rounding (the sum of squares is reduced in another order, and exp and rsqrt are the GPU's
approximations, as torch's are).

One program handles one row, in passes over K of at most MAX_BLOCK_K elements: RMSNorm reads the
row three times (sum of squares; the normalized values' absolute maximum; quantize), SwiGLU twice
(absolute maximum; quantize); the values are recomputed in each pass, so every pass sees the same bits.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scaledmm.kernels.launch import BoundLaunch, bind_launch
from scaledmm.kernels.quant import ABSMAX_FLOOR, MAX_BLOCK_K, QMAX, max_abs, row_scale, saturate_and_round


@triton.jit
def _rms_normalized(x_row, w_ptr, k, offs, K, rstd, stride_xk, stride_w):
    """weight * (x * rstd rounded to x's dtype), rounded to x's dtype, as fp32, for the block at k."""
    FLOAT = x_row.dtype.element_ty
    mask = k + offs < K
    x = tl.load(x_row + (k + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + (k + offs) * stride_w, mask=mask, other=0.0).to(tl.float32)
    return (w * (x * rstd).to(FLOAT).to(tl.float32)).to(FLOAT).to(tl.float32)


@triton.jit
def _rms_norm_quantize_kernel(
    x_ptr, w_ptr, q_ptr, scale_ptr, K, eps,
    stride_xm, stride_xk, stride_w, stride_qm,
    QUANTIZE: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr, FLOOR: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)

    squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_row + (k + offs) * stride_xk, mask=k + offs < K, other=0.0).to(tl.float32)
        squares += x * x
    rstd = tl.math.rsqrt(tl.sum(squares, axis=0) / K + eps)

    if QUANTIZE:
        absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            y = _rms_normalized(x_row, w_ptr, k, offs, K, rstd, stride_xk, stride_w)
            absmax = tl.maximum(absmax, tl.abs(y), propagate_nan=tl.PropagateNan.ALL)
        scale = row_scale(max_abs(absmax, axis=0), QMAX, FLOOR)
        tl.store(scale_ptr + row, scale)
    for k in range(0, K, BLOCK_K):
        y = _rms_normalized(x_row, w_ptr, k, offs, K, rstd, stride_xk, stride_w)
        if QUANTIZE:
            y = saturate_and_round(y / scale, QMAX, IS_INT8)
        tl.store(q_row + k + offs, y.to(q_ptr.dtype.element_ty), mask=k + offs < K)


@triton.jit
def _swiglu(gate_row, up_row, k, offs, K, stride_gk, stride_uk):
    """silu(gate) rounded to gate's dtype, times up, rounded again, as fp32, for the block at k."""
    FLOAT = gate_row.dtype.element_ty
    mask = k + offs < K
    g = tl.load(gate_row + (k + offs) * stride_gk, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_row + (k + offs) * stride_uk, mask=mask, other=0.0).to(tl.float32)
    silu = (g / (1.0 + tl.exp(-g))).to(FLOAT).to(tl.float32)
    return (silu * u).to(FLOAT).to(tl.float32)


@triton.jit
def _silu_mul_quantize_kernel(
    gate_ptr, up_ptr, q_ptr, scale_ptr, K,
    stride_gm, stride_gk, stride_um, stride_uk, stride_qm,
    QUANTIZE: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr, FLOOR: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    gate_row = gate_ptr + row * stride_gm
    up_row = up_ptr + row * stride_um
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)

    if QUANTIZE:
        absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k in range(0, K, BLOCK_K):
            h = _swiglu(gate_row, up_row, k, offs, K, stride_gk, stride_uk)
            absmax = tl.maximum(absmax, tl.abs(h), propagate_nan=tl.PropagateNan.ALL)
        scale = row_scale(max_abs(absmax, axis=0), QMAX, FLOOR)
        tl.store(scale_ptr + row, scale)
    for k in range(0, K, BLOCK_K):
        h = _swiglu(gate_row, up_row, k, offs, K, stride_gk, stride_uk)
        if QUANTIZE:
            h = saturate_and_round(h / scale, QMAX, IS_INT8)
        tl.store(q_row + k + offs, h.to(q_ptr.dtype.element_ty), mask=k + offs < K)


def _row_kwargs(K: int, out: torch.Tensor) -> dict:
    quantize = out.dtype in QMAX
    return dict(
        QUANTIZE=quantize,
        QMAX=QMAX[out.dtype] if quantize else 1.0,
        IS_INT8=out.dtype == torch.int8,
        FLOOR=ABSMAX_FLOOR,
        BLOCK_K=min(MAX_BLOCK_K, triton.next_power_of_2(K)),
        num_warps=4 if K <= 4096 else 8,
    )


def bind_rms_norm_quantize(
    x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None, eps: float
) -> BoundLaunch:
    """RMSNorm the rows of `x` ([M, K], any strides; `weight` [K] of x's dtype) into `out` ([M, K],
    unit column stride) now, and return a BoundLaunch repeating it for new (x, weight, out, scale).

    `out` int8 or float8_e4m3fn: quantized per row, each row's scale written to `scale` ([M]
    contiguous float32); `out` of x's dtype: the normalized values (`scale` unused)."""
    M, K = x.shape
    args = (x, weight, out, scale, K, eps, x.stride(0), x.stride(1), weight.stride(0), out.stride(0))
    return bind_launch(_rms_norm_quantize_kernel, (M,), args, _row_kwargs(K, out), leading=4, device=x.device)


def bind_silu_mul_quantize(
    gate: torch.Tensor, up: torch.Tensor, out: torch.Tensor, scale: torch.Tensor | None
) -> BoundLaunch:
    """silu(gate) * up over rows ([M, K] each, any strides, one dtype) into `out` ([M, K], unit column
    stride) now, quantized per row as `bind_rms_norm_quantize` does; return the BoundLaunch that
    repeats it for new (gate, up, out, scale)."""
    M, K = gate.shape
    args = (gate, up, out, scale, K, gate.stride(0), gate.stride(1), up.stride(0), up.stride(1), out.stride(0))
    return bind_launch(_silu_mul_quantize_kernel, (M,), args, _row_kwargs(K, out), leading=4, device=gate.device)
