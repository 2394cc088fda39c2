"""The persistent TMA variant of the scaled matmul, for compute-bound (prefill) shapes on Hopper and newer.

The same product as `matmul._scaled_mm_kernel`, computed differently:
- A, B and the output move through tensor descriptors: Hopper's copy engine (TMA) loads whole tiles
  into shared memory and stores the output tile, with no address arithmetic in the program. Tiles past
  M, N or K load zeros and store nothing, so there are neither wrapped offsets nor masks.
- The grid is persistent: one program per SM, each taking every NUM_PROGRAMS-th tile in grouped
  order (GROUP_M tile rows per column sweep). With `flatten`, Triton pipelines the tile loop and the K
  loop as one, so the loads of the next tile overlap the epilogue of this one.
- The epilogue runs in two halves along N: each half is scaled, biased and stored on its own, which
  halves the shared memory the output store stages through.

What TMA needs (`tma_eligible`): A row-major and B K-major (B = weight.t() of a row-major [N, K]
weight, as every linear layer passes it), row strides and data pointers 16-byte aligned, and an
output row of a multiple of 16 bytes. Other calls, and GPUs before Hopper, run the pointer kernel with
the same tile config (`matmul.py` chooses).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from scaledmm.configs import MatmulConfig
from scaledmm.kernels.common import epilogue_operands, grouped_tile, scale_and_store, tile_count
from scaledmm.kernels.launch import accumulator_kwargs, epilogue_arguments, tile_kwargs
from scaledmm.state import state

_TMA_ALIGNMENT = 16  # bytes: data pointers and every stride but the last


@triton.jit
def scale_columns_and_store(
    half, first_row, first_col, M, N, out_desc, scale_b_ptr, bias_ptr, stride_scale_b, stride_bias,
    B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, HALF_N: tl.constexpr,
):  # fmt: skip
    cols = first_col + tl.arange(0, HALF_N)
    in_n = cols < N
    if B_PER_CHANNEL:
        half = half * tl.load(scale_b_ptr + cols * stride_scale_b, mask=in_n, other=0.0).to(tl.float32)[None, :]
    else:
        half = half * tl.load(scale_b_ptr).to(tl.float32)
    if HAS_BIAS:
        half = half + tl.load(bias_ptr + cols * stride_bias, mask=in_n, other=0.0).to(tl.float32)[None, :]
    out_desc.store([first_row, first_col], half.to(out_desc.dtype))


# GROUP_M and NUM_PROGRAMS are run-time arguments (no compile per grouping or per GPU model).
@triton.jit(do_not_specialize=["GROUP_M", "NUM_PROGRAMS"])
def scaled_mm_tma_kernel(
    a_desc, b_desc, out_desc, scale_a_ptr, scale_b_ptr, bias_ptr,
    M, N, K, stride_scale_a, stride_scale_b, stride_bias,
    GROUP_M, NUM_PROGRAMS,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    MAX_IMPRECISE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    # flatten=True measured 1.04-1.12x faster than nested loops at M >= 4096 on an H100; Triton's warp
    # specialisation needs 4 warps, nested loops and a pointer store on sm_90 (scaled_mm_tma_ws_kernel
    # below; docs/performance.md, "Warp-specialised kernels").
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, flatten=True):
        tile_m, tile_n = grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        first_row = tile_m * BLOCK_M
        first_col = tile_n * BLOCK_N

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for k in range(k_steps):
            a = a_desc.load([first_row, k * BLOCK_K])
            b = b_desc.load([first_col, k * BLOCK_K])  # [BLOCK_N, BLOCK_K]: B is K-major
            acc = tl.dot(a, b.T, acc, out_dtype=ACC_DTYPE, max_num_imprecise_acc=MAX_IMPRECISE)

        # Epilogue in fp32, in the order of the definition: ((a @ b) * scale_a) * scale_b + bias.
        result = acc.to(tl.float32)
        if A_PER_TOKEN:
            rows = first_row + tl.arange(0, BLOCK_M)
            scale_a = tl.load(scale_a_ptr + rows * stride_scale_a, mask=rows < M, other=0.0)
            result = result * scale_a.to(tl.float32)[:, None]
        else:
            result = result * tl.load(scale_a_ptr).to(tl.float32)
        left, right = tl.split(tl.permute(tl.reshape(result, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        scale_columns_and_store(
            left, first_row, first_col, M, N, out_desc, scale_b_ptr, bias_ptr, stride_scale_b, stride_bias,
            B_PER_CHANNEL, HAS_BIAS, BLOCK_N // 2,
        )  # fmt: skip
        scale_columns_and_store(
            right, first_row, first_col + BLOCK_N // 2, M, N, out_desc, scale_b_ptr, bias_ptr,
            stride_scale_b, stride_bias, B_PER_CHANNEL, HAS_BIAS, BLOCK_N // 2,
        )  # fmt: skip


# Triton's own warp specialisation on Hopper, for the A/B of issue 17 (benchmarks/ab/warp_specialize.py;
# not a config kind yet). Triton 3.6 runs its Hopper pass (nvgpu-warp-specialization) on a loop marked
# warp_specialize only where the kernel has exactly 4 warps, the loops are not flattened into one and no
# `if` has an else branch; it then splits the program into a TMA-load warpgroup and two MMA warpgroups
# that each take half of the tile's rows (12 warps in all). The split must cover every op of the tile:
# the TMA kernel's epilogue (tl.split into halves, a descriptor store of the whole tile) fails it, so this
# variant loads B through the same descriptors but stores through pointers, rows and columns masked.
@triton.jit(do_not_specialize=["GROUP_M", "NUM_PROGRAMS"])
def scaled_mm_tma_ws_kernel(
    a_desc, b_desc, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr,
    M, N, K, stride_om, stride_scale_a, stride_scale_b, stride_bias,
    GROUP_M, NUM_PROGRAMS,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    MAX_IMPRECISE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, warp_specialize=True):
        tile_m, tile_n = grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for k in range(k_steps):
            a = a_desc.load([tile_m * BLOCK_M, k * BLOCK_K])
            b = b_desc.load([tile_n * BLOCK_N, k * BLOCK_K])  # [BLOCK_N, BLOCK_K]: B is K-major
            acc = tl.dot(a, b.T, acc, out_dtype=ACC_DTYPE, max_num_imprecise_acc=MAX_IMPRECISE)

        # Rows and columns past M and N wrap for the epilogue's loads; the store masks them.
        scale_a, scale_b, bias = epilogue_operands(
            offs_m % M, offs_n % N, scale_a_ptr, scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias,
            A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS,
        )  # fmt: skip
        scale_and_store(acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, 1, HAS_BIAS)


@state.cached
def device_has_tma(device: torch.device) -> bool:
    """Compute capability 9.0 or newer, or Triton's interpreter (CPU tensors), which emulates TMA."""
    if device.type != "cuda":
        return device.type == "cpu"  # the interpreter emulates descriptors
    return torch.cuda.get_device_capability(device) >= (9, 0)


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % _TMA_ALIGNMENT == 0


def tma_eligible(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, device: torch.device) -> bool:
    """Whether the TMA kernel can compute this call on `device` (see the module docstring): unit
    stride along each row (K for A and B, N for the output), rows that do not overlap (a row stride
    at least the row length: no broadcast or overlapping views), 16-byte alignment."""
    K, N = b.shape
    return (
        device_has_tma(device)
        and a.stride(1) == 1
        and b.stride(0) == 1
        and out.stride(1) == 1
        and all(
            t.stride(major) >= row and (t.stride(major) * t.element_size()) % _TMA_ALIGNMENT == 0 and _aligned(t)
            for t, major, row in ((a, 0, K), (b, 1, K), (out, 0, N))
        )
    )


def fits_in_shared_memory(grid: tuple, args: tuple, kwargs: dict, device: torch.device, shared_memory: int) -> bool:
    """Whether the kernel compiled for these arguments fits the device's shared memory. The tuner
    times bf16 outputs; an fp32 output stages twice the bytes, which the largest tiles may not hold
    (such calls then run the pointer kernel). Compiles on the first call of a signature, after that
    a lookup in Triton's cache."""
    if device.type != "cuda":
        return True
    return scaled_mm_tma_kernel.warmup(*args, grid=grid, **kwargs).metadata.shared <= shared_memory


def descriptors(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, config: MatmulConfig
) -> tuple[TensorDescriptor, TensorDescriptor, TensorDescriptor]:
    """The tensor descriptors of A [M, K], B as [N, K] (K-major) and the output [M, N]."""
    M, K = a.shape
    N = b.shape[1]
    return (
        TensorDescriptor(a, [M, K], [a.stride(0), 1], [config.block_m, config.block_k]),
        TensorDescriptor(b.t(), [N, K], [b.stride(1), 1], [config.block_n, config.block_k]),
        TensorDescriptor(out, [M, N], [out.stride(0), 1], [config.block_m, config.block_n // 2]),
    )


def programs(M: int, N: int, config: MatmulConfig, num_sms: int) -> int:
    """The persistent grid: one program per SM, or one per tile where there are fewer tiles."""
    return min(tile_count(M, N, config), num_sms)


def launch_arguments(
    a, b, scale_a, scale_b, bias, out, config: MatmulConfig, num_sms: int, precise: bool
) -> tuple[tuple, tuple, dict]:
    """(grid, positional arguments, keyword arguments) of one launch (`precise`: fp8 accumulation
    promoted to fp32); the first six positional arguments change per call (three descriptors, the
    scales and the bias)."""
    M, K = a.shape
    N = b.shape[1]
    grid_size = programs(M, N, config, num_sms)
    strides, epilogue = epilogue_arguments(a, scale_a, scale_b, bias)
    args = (
        *descriptors(a, b, out, config), scale_a, scale_b, bias,
        M, N, K, *strides, config.group_m, grid_size,
    )  # fmt: skip
    kwargs = dict(**epilogue, **accumulator_kwargs(a.dtype, config.block_k, precise), **tile_kwargs(config))
    return (grid_size,), args, kwargs


def ws_launch_arguments(
    a, b, scale_a, scale_b, bias, out, config: MatmulConfig, num_sms: int, precise: bool
) -> tuple[tuple, tuple, dict]:
    """`launch_arguments` for `scaled_mm_tma_ws_kernel`: the output as a pointer and its row stride (a
    row-major output, as `tma_eligible` asks). Triton warp-specialises it only with config.num_warps = 4."""
    grid, args, kwargs = launch_arguments(a, b, scale_a, scale_b, bias, out, config, num_sms, precise)
    M, N, K, *rest = args[6:]
    return grid, (*args[:2], out, *args[3:6], M, N, K, out.stride(0), *rest), kwargs
