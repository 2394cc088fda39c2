"""The scaled matmul kernel: out = (a @ b) * scale_a * scale_b + bias, for int8 or fp8 operands.

One program computes one [BLOCK_M, BLOCK_N] output tile. Programs are ordered in groups of GROUP_M
tile rows so that consecutive programs share B columns (and A rows) in L2. Rows past M and columns
past N are wrapped (offset % M, % N) instead of masked: the loads stay in bounds without a mask and
the final store masks them out. K is masked only when BLOCK_K does not divide it.

The exception is M < BLOCK_M (decode): there the rows past M are masked instead, so the one tile
row loads M rows of A rather than BLOCK_M copies of them. Measured on an H100 (docs/performance.md):
masking is 1.0-1.45x faster at M = 1 and even at M = 4; wrapping is up to 1.18x faster at M >= 48.
"""

from __future__ import annotations

import hashlib
import inspect

import torch
import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig
from scaledmm.kernels.launch import BoundLaunch, bind_launch


# GROUP_M is a run-time argument, not a constexpr, so that the tuner tries groupings without a
# compile each; it costs one integer division per program.
@triton.jit(do_not_specialize=["GROUP_M"])
def _scaled_mm_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    stride_scale_a, stride_scale_b, stride_bias,
    GROUP_M,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, EVEN_K: tl.constexpr, MASK_M: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_tile_m = (pid // programs_per_group) * GROUP_M
    group_rows = min(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + (pid % programs_per_group) % group_rows
    tile_n = (pid % programs_per_group) // group_rows

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # int64 before any stride multiply, so operands of more than 2**31 elements address correctly.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)

    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk

    # All-true where rows wrap; with MASK_M the rows past M load nothing.
    a_rows = (offs_m[:, None] < M) if MASK_M else tl.full((BLOCK_M, 1), 1, tl.int1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            if MASK_M:
                a = tl.load(a_ptrs, mask=a_rows, other=0.0)
            else:
                a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=a_rows & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, out_dtype=ACC_DTYPE)
        a_ptrs += a_step
        b_ptrs += b_step

    # Epilogue in fp32, in the order of the definition: ((a @ b) * scale_a) * scale_b + bias.
    result = acc.to(tl.float32)
    if A_PER_TOKEN:
        result = result * tl.load(scale_a_ptr + rows * stride_scale_a).to(tl.float32)[:, None]
    else:
        result = result * tl.load(scale_a_ptr).to(tl.float32)
    if B_PER_CHANNEL:
        result = result * tl.load(scale_b_ptr + cols * stride_scale_b).to(tl.float32)[None, :]
    else:
        result = result * tl.load(scale_b_ptr).to(tl.float32)
    if HAS_BIAS:
        result = result + tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]

    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :].to(tl.int64) * stride_on
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=mask)


# The kernel's revision: a hash of its source. Tuned buckets record it, so that `scaledmm tune` knows
# which results an edit of the kernel has made stale (configs stay valid; only their times change).
KERNEL_REVISION = hashlib.sha1(inspect.getsource(_scaled_mm_kernel.fn).encode()).hexdigest()[:12]


def _vector_stride(scale: torch.Tensor) -> int:
    """Stride between consecutive elements of a per-token [M]/[M, 1] or per-channel [N]/[1, N]/[N, 1] scale."""
    if scale.dim() == 2 and scale.shape[0] == 1:
        return scale.stride(1)
    return scale.stride(0)


def _launch_arguments(a, b, scale_a, scale_b, bias, out, config: MatmulConfig) -> tuple[tuple, tuple, dict]:
    """(grid, positional arguments, keyword arguments) of one kernel launch."""
    M, K = a.shape
    N = b.shape[1]
    a_per_token = scale_a.numel() > 1
    b_per_channel = scale_b.numel() > 1
    grid = ((-(-M // config.block_m)) * (-(-N // config.block_n)),)  # ceil divisions, cheaper than triton.cdiv
    args = (
        a, b, out, scale_a, scale_b, bias,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        _vector_stride(scale_a) if a_per_token else 0,
        _vector_stride(scale_b) if b_per_channel else 0,
        bias.stride(0) if bias is not None else 0,
        config.group_m,
    )  # fmt: skip
    kwargs = dict(
        A_PER_TOKEN=a_per_token,
        B_PER_CHANNEL=b_per_channel,
        HAS_BIAS=bias is not None,
        ACC_DTYPE=tl.int32 if a.dtype == torch.int8 else tl.float32,
        EVEN_K=K % config.block_k == 0,
        MASK_M=M < config.block_m,
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return grid, args, kwargs


def launch_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
) -> None:
    """Write (a @ b) * scale_a * scale_b + bias into `out` ([M, N], any strides).

    The inputs must already be validated (scaledmm.api does that); M must be >= 1.
    """
    grid, args, kwargs = _launch_arguments(a, b, scale_a, scale_b, bias, out, config)
    _scaled_mm_kernel[grid](*args, **kwargs)


def bind_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
) -> BoundLaunch:
    """`launch_scaled_mm` now, and a BoundLaunch that repeats it for new (a, b, out, scale_a, scale_b,
    bias) with the dtypes, shapes, strides and pointer alignment of these."""
    grid, args, kwargs = _launch_arguments(a, b, scale_a, scale_b, bias, out, config)
    return bind_launch(_scaled_mm_kernel, grid, args, kwargs, leading=6, device=a.device)


def compile_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
) -> None:
    """Compile the kernel for these arguments without launching it (fills Triton's on-disk cache,
    so a later launch in another process only loads the binary). Only dtypes, pointer alignment and
    the integer arguments matter: the tensors' contents are never read."""
    grid, args, kwargs = _launch_arguments(a, b, scale_a, scale_b, bias, out, config)
    _scaled_mm_kernel.warmup(*args, grid=grid, **kwargs)
