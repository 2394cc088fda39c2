"""What every matmul kernel's program does around its K loop: which output tile it computes, and the
epilogue that scales, biases and stores the tile. Used by the pointer and swapped kernels
(matmul.py), the TMA kernel (matmul_tma.py) and the quantized linear kernel (linear.py); the K range
of a split and the split-K ending are in split_k.py.
"""

from __future__ import annotations

import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig


def tile_count(M: int, N: int, config: MatmulConfig) -> int:
    """How many [block_m, block_n] output tiles cover an [M, N] output."""
    return (-(-M // config.block_m)) * (-(-N // config.block_n))  # ceil divisions, cheaper than triton.cdiv


@triton.jit
def grouped_tile(tile, tiles_m, tiles_n, GROUP_M):
    # (tile_m, tile_n) of the tile-th tile in grouped order (Triton's tutorial 09): tiles are taken
    # column by column within groups of GROUP_M tile rows, so that programs running together share
    # B columns (and A rows) in L2. The last group has the rows that are left.
    programs_per_group = GROUP_M * tiles_n
    first_tile_m = (tile // programs_per_group) * GROUP_M
    group_rows = min(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + (tile % programs_per_group) % group_rows
    tile_n = (tile % programs_per_group) // group_rows
    return tile_m, tile_n


@triton.jit
def column_operands(
    cols, scale_b_ptr, bias_ptr, stride_scale_b, stride_bias, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr
):
    # The epilogue's per-column factors in fp32, shaped to broadcast over the tile: scale_b per column
    # or one, bias per column (a placeholder without bias).
    if B_PER_CHANNEL:
        scale_b = tl.load(scale_b_ptr + cols * stride_scale_b).to(tl.float32)[None, :]
    else:
        scale_b = tl.load(scale_b_ptr).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]
    else:
        bias = tl.full((1, 1), 0, tl.float32)
    return scale_b, bias


@triton.jit
def epilogue_operands(
    rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
):  # fmt: skip
    # The epilogue's factors in fp32, shaped to broadcast over the tile: scale_a per row or one, and
    # the column operands.
    if A_PER_TOKEN:
        scale_a = tl.load(scale_a_ptr + rows * stride_scale_a).to(tl.float32)[:, None]
    else:
        scale_a = tl.load(scale_a_ptr).to(tl.float32)
    scale_b, bias = column_operands(cols, scale_b_ptr, bias_ptr, stride_scale_b, stride_bias, B_PER_CHANNEL, HAS_BIAS)
    return scale_a, scale_b, bias


@triton.jit
def scale_and_store(
    acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS: tl.constexpr
):
    # Epilogue in fp32, in the order of the definition: ((a @ b) * scale_a) * scale_b + bias.
    result = acc.to(tl.float32) * scale_a * scale_b
    if HAS_BIAS:
        result = result + bias
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :].to(tl.int64) * stride_on
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=mask)
