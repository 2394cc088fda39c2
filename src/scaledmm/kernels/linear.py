"""The quantized linear kernel: quantize a float activation and multiply it by an 8-bit weight in one launch.

out = (quantize(x) @ w) * scale_x * scale_w + bias, where quantize(x) is exactly what
`quant._quantize_rows_kernel` computes (dynamic per-token scales, or one static scale), so the result
equals quantize_per_token (or quantize_per_tensor) followed by scaled_mm with the same config, bit
for bit.

It exists for host time, not GPU time: a W8A8Linear forward at small M is one allocation and one
launch instead of three and two. The price is on the GPU: every program reads its rows of x twice
(once for their absolute maxima, once to quantize them) and divides, rounds and converts them
before its dot, where the two-launch path does that once per row. Measured on an H100
(docs/performance.md, "Host overhead"): 25 us of host time instead of 61, but 1.3-2.8x the GPU time
of the two launches. So W8A8Linear uses it for M <= FUSED_QUANTIZE_MAX_M and outside CUDA-graph
capture only, where the host time it saves is what the caller waits for.

The tiles, their order (`common.grouped_tile`), the masking of rows past M (M < BLOCK_M) or their
wrapping, and the epilogue (`common.scale_and_store`) are `matmul._scaled_mm_kernel`'s, and with a
swapped config the MMA is `matmul._scaled_mm_swap_kernel`'s (weight tile first); there is no
split-K, and the epilogue's operands are loaded after the K loop (the matmul kernel's early loads at
decode have not been tried here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig
from scaledmm.kernels.common import column_operands, grouped_tile, scale_and_store
from scaledmm.kernels.launch import BoundLaunch, accumulator_kwargs, bind_launch, tile_kwargs, vector_stride
from scaledmm.kernels.quant import ABSMAX_FLOOR, QMAX, max_abs, row_scale, saturate_and_round

FUSED_QUANTIZE_MAX_M = 16  # rows up to which W8A8Linear quantizes inside the matmul


@triton.jit(do_not_specialize=["GROUP_M"])
def _quantized_linear_kernel(
    x_ptr, w_ptr, out_ptr, x_scale_ptr, w_scale_ptr, bias_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wk, stride_wn, stride_om, stride_on, stride_w_scale, stride_bias,
    GROUP_M,
    DYNAMIC: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr, FLOOR: tl.constexpr,
    W_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
    EVEN_K: tl.constexpr, MASK_M: tl.constexpr, SWAP_AB: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tile_m, tile_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    x_rows = x_ptr + rows[:, None] * stride_xm
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols[None, :] * stride_wn
    x_mask = (offs_m[:, None] < M) if MASK_M else tl.full((BLOCK_M, 1), 1, tl.int1)
    k_steps = tl.cdiv(K, BLOCK_K)

    # The scales of x: one per row (a first pass over K), or the given one.
    if DYNAMIC:
        absmax = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        for k in range(k_steps):
            k_mask = (offs_k[None, :] < K - k * BLOCK_K) if not EVEN_K else tl.full((1, BLOCK_K), 1, tl.int1)
            x = tl.load(x_rows + (k * BLOCK_K + offs_k[None, :]) * stride_xk, mask=x_mask & k_mask, other=0.0)
            absmax = tl.maximum(absmax, tl.abs(x.to(tl.float32)), propagate_nan=tl.PropagateNan.ALL)
        x_scale = row_scale(max_abs(absmax, axis=1), QMAX, FLOOR)[:, None]
    else:
        x_scale = tl.load(x_scale_ptr).to(tl.float32)

    # With SWAP_AB the product is taken as (w^T q^T)^T, the MMA scaled_mm's swapped kernel runs.
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC_DTYPE)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k in range(k_steps):
        if EVEN_K:
            x = tl.load(x_rows + (k * BLOCK_K + offs_k[None, :]) * stride_xk, mask=x_mask, other=0.0)
            w = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            x_ptrs = x_rows + (k * BLOCK_K + offs_k[None, :]) * stride_xk
            x = tl.load(x_ptrs, mask=x_mask & (offs_k[None, :] < k_left), other=0.0)
            w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        q = saturate_and_round(x.to(tl.float32) / x_scale, QMAX, IS_INT8).to(w_ptr.dtype.element_ty)
        if SWAP_AB:
            acc = tl.dot(tl.trans(w), tl.trans(q), acc, out_dtype=ACC_DTYPE, max_num_imprecise_acc=MAX_IMPRECISE)
        else:
            acc = tl.dot(q, w, acc, out_dtype=ACC_DTYPE, max_num_imprecise_acc=MAX_IMPRECISE)
        w_ptrs += BLOCK_K * stride_wk
    if SWAP_AB:
        acc = tl.trans(acc)

    # scaled_mm's epilogue, in fp32 and its order: ((q @ w) * scale_x) * scale_w + bias.
    w_scale, bias = column_operands(cols, w_scale_ptr, bias_ptr, stride_w_scale, stride_bias, W_PER_CHANNEL, HAS_BIAS)
    scale_and_store(acc, x_scale, w_scale, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS)


class QuantizedLinearLaunch:
    """One input signature's bound launch of the quantized linear kernel, with its weights:
    `launch(x, out)` writes the layer's output for a new x [M, K] of that signature."""

    def __init__(self, bound: BoundLaunch, weight_t, input_scale, weight_scale, bias, config: MatmulConfig):
        self.bound = bound
        self.weights = (weight_t, input_scale, weight_scale, bias)
        self.config = config

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        weight_t, input_scale, weight_scale, bias = self.weights
        self.bound(x, weight_t, out, input_scale, weight_scale, bias)

    def __repr__(self) -> str:
        return f"QuantizedLinearLaunch(config={self.config})"


def bind_quantized_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    input_scale: torch.Tensor | None,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
    precise: bool = False,
) -> QuantizedLinearLaunch:
    """Write the quantized linear of a float x [M, K] into `out` [M, N] now (dynamic per-token
    scales where `input_scale` is None, else that per-tensor scale; the 8-bit weight_t [K, N] with
    its per-channel or per-tensor scale; `precise`: fp8 accumulation promoted to fp32), and return
    the launch that does it again for a new x of this signature. The inputs must be checked;
    config.split_k is ignored."""
    M, K = x.shape
    N = weight_t.shape[1]
    device = x.device
    w_per_channel = weight_scale.numel() > 1
    args = (
        x, weight_t, out, input_scale, weight_scale, bias,
        M, N, K,
        x.stride(0), x.stride(1), weight_t.stride(0), weight_t.stride(1), out.stride(0), out.stride(1),
        vector_stride(weight_scale) if w_per_channel else 0, bias.stride(0) if bias is not None else 0,
        config.group_m,
    )  # fmt: skip
    kwargs = dict(
        DYNAMIC=input_scale is None,
        QMAX=QMAX[weight_t.dtype],
        IS_INT8=weight_t.dtype == torch.int8,
        FLOOR=ABSMAX_FLOOR,
        W_PER_CHANNEL=w_per_channel,
        HAS_BIAS=bias is not None,
        **accumulator_kwargs(weight_t.dtype, config.block_k, precise),
        EVEN_K=K % config.block_k == 0,
        MASK_M=M < config.block_m,
        SWAP_AB=config.kernel == "swapped",
        **tile_kwargs(config),
    )
    grid = (triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n),)
    bound = bind_launch(_quantized_linear_kernel, grid, args, kwargs, leading=6, device=device)
    return QuantizedLinearLaunch(bound, weight_t, input_scale, weight_scale, bias, config)
