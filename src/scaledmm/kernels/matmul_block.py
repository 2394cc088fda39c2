"""The block-scaled FP8 matmul: one scale per 1 x block_k group of each activation row and one per
block_k x block_n block of the weight, DeepSeek-V3's format (1 x 128 and 128 x 128):

    out[m, n] = sum over K blocks j of (sum_{k in block j} a[m, k] b[k, n]) * scale_a[m, j]
                * scale_b[j, n // block_n]  + bias[n]

The kernel's K step is the scale block (BLOCK_K = block_k). Each step's product comes from a fresh
tensor-core accumulator, is scaled by its block's factors in fp32 and added to the fp32 accumulator:
the partial sums are promoted every block_k K-elements by construction, so this kernel runs the same
code in both accumulation modes. Tiles, grouped order, wrapped edges and the epilogue are the pointer
kernel's (common.py); the weight's scale is gathered per column (`cols // SCALE_N`; one scalar where
the tile lies in one scale block), so BLOCK_N need not match block_n.

Split-K (SPLIT_K > 1) is the pointer kernel's (split_k.py): SPLIT_K programs share a tile's scale
blocks, each sums its blocks already scaled, and the last to arrive adds the fp32 partials up in
split order (so results repeat bitwise) and runs the epilogue with unit scales. It is for grids that
leave SMs idle while the weight streams (issue 20): in the H200 re-tune of session 11 split configs
won most decode buckets, up to 2.2x the unsplit ones, and in session 13 some at M = 96-192
(docs/performance.md).

A config with kernel="swapped" runs the operand-swapped form (`_block_scaled_mm_swap_kernel`), as
matmul.py's swapped kernel does for per-channel scales: the weight tile is the MMA's tall operand, so
a few tokens run fp8 wgmma instead of a 16-row tile's mma.sync on converted operands; the tuner
offers it up to M = 256 (tiles of up to 128 tokens). No TMA form.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig
from scaledmm.kernels.common import grouped_tile, scale_and_store, tile_count
from scaledmm.kernels.launch import BoundLaunch, bind_launch, tile_kwargs
from scaledmm.kernels.revision import revision
from scaledmm.kernels.split_k import split_k_buffers, split_k_finish, split_range


@triton.jit(do_not_specialize=["GROUP_M"])
def _block_scaled_mm_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias,
    GROUP_M,
    SCALE_N: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    TILE_IN_ONE_SCALE_BLOCK: tl.constexpr,
):  # fmt: skip
    # Where the tile lies in one scale block of the weight (TILE_IN_ONE_SCALE_BLOCK: SCALE_N a multiple
    # of BLOCK_N), its weight scale is one scalar per K block, folded into the row scales: each block
    # is then added in with one fp32 FMA per element instead of a multiply and an FMA (what ptxas
    # made of the per-column form), issue slots that the next block's wgmma waits on
    # (benchmarks/ab/block_pointer_fma.py: 1.08-1.38x per config at M = 128-4096 on an H200).
    tile_m, tile_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)  # wrapped, as in the pointer kernel: the store masks them
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    scale_a_ptrs = scale_a_ptr + rows * stride_sam
    if TILE_IN_ONE_SCALE_BLOCK:
        scale_b_ptrs = scale_b_ptr + (tile_n * BLOCK_N // SCALE_N).to(tl.int64) * stride_sbn
    else:
        scale_b_ptrs = scale_b_ptr + (cols // SCALE_N) * stride_sbn
    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk

    k_steps = tl.cdiv(K, BLOCK_K)
    k_first, k_last = (0, k_steps) if SPLIT_K == 1 else split_range(k_steps, SPLIT_K)
    if SPLIT_K > 1:  # a split starts at its first block; unsplit, no offset, so its code stays as it was
        a_ptrs += k_first * a_step
        b_ptrs += k_first * b_step

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for block in range(k_first, k_last):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - block * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        partial = tl.dot(a, b)  # a fresh accumulator per block: promoted to fp32 below
        scale_a = tl.load(scale_a_ptrs + block * stride_sak)
        scale_b = tl.load(scale_b_ptrs + block * stride_sbk)
        if TILE_IN_ONE_SCALE_BLOCK:
            acc = tl.fma(partial, (scale_a * scale_b)[:, None], acc)
        else:
            acc += partial * scale_a[:, None] * scale_b[None, :]
        a_ptrs += a_step
        b_ptrs += b_step

    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]
    else:
        bias = tl.full((1, 1), 0, tl.float32)
    # The block scales are applied in the K loop: the epilogue's scales are 1.
    if SPLIT_K == 1:
        scale_and_store(acc, 1.0, 1.0, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS)
    else:
        split_k_finish(
            acc, tl.program_id(0), tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N), 1.0, 1.0, bias, offs_m, offs_n, M, N,
            out_ptr, stride_om, stride_on, partials_ptr, arrivals_ptr, HAS_BIAS, tl.float32, SPLIT_K, BLOCK_M, BLOCK_N,
        )  # fmt: skip


@triton.jit
def _block_scaled_mm_swap_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias,
    SCALE_N: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    TILE_IN_ONE_SCALE_BLOCK: tl.constexpr,
):  # fmt: skip
    # The operand-swapped form for small M: the same [BLOCK_M, BLOCK_N] output tile computed as
    # (B^T A^T)^T, BLOCK_N weight rows as the MMA's tall side (64 or more: an fp8 wgmma) and the
    # tokens as its narrow side. Programs of one weight tile are neighbours (tile_m varies fastest),
    # so the weight tile streams from DRAM once. Each block's product is scaled as
    # (partial * scale_a) * scale_b, per token along the columns here; the unswapped kernel folds a
    # scalar scale_b into its row scales (one FMA), a change this kernel has not taken yet since it
    # would make its tuned decode buckets stale (docs/performance.md, session 13).
    # The scales of the next K block are loaded one iteration ahead, and where the tile lies in one
    # scale block of the weight (TILE_IN_ONE_SCALE_BLOCK: SCALE_N a multiple of BLOCK_N) its scale is
    # one scalar: loaded in the loop after the operands, they left warps waiting on global loads
    # (ncu, H200, session 12), and so they ran 1.00-1.08x faster at M = 16-32 on six shapes
    # (benchmarks/ab/swap_scale_prefetch.py).
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tile_m = pid % tiles_m
    tile_n = pid // tiles_m
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)  # wrapped in bounds; the token loads also mask them
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk
    k_steps = tl.cdiv(K, BLOCK_K)
    k_first, k_last = (0, k_steps) if SPLIT_K == 1 else split_range(k_steps, SPLIT_K)
    w_ptrs = b_ptr + cols[:, None] * stride_bn + offs_k[None, :] * stride_bk + k_first * b_step  # B^T tile
    x_ptrs = a_ptr + offs_k[:, None] * stride_ak + rows[None, :] * stride_am + k_first * a_step  # A^T tile
    scale_a_ptrs = scale_a_ptr + rows * stride_sam
    if TILE_IN_ONE_SCALE_BLOCK:
        scale_b_ptrs = scale_b_ptr + (tile_n * BLOCK_N // SCALE_N).to(tl.int64) * stride_sbn
    else:
        scale_b_ptrs = scale_b_ptr + (cols // SCALE_N) * stride_sbn

    x_cols = (offs_m < M)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    # An empty split (split_range's last ones may be) starts past the last block: it loads the last
    # block's scales instead, in bounds, and uses none. Unsplit, the first block is 0, as before.
    first = k_first
    if SPLIT_K > 1:
        first = tl.minimum(k_first, k_steps - 1)
    next_scale_a = tl.load(scale_a_ptrs + first * stride_sak)
    next_scale_b = tl.load(scale_b_ptrs + first * stride_sbk)
    for block in range(k_first, k_last):
        scale_a = next_scale_a
        scale_b = next_scale_b
        following = tl.minimum(block + 1, k_last - 1)  # the last block loads its own again, in bounds
        next_scale_a = tl.load(scale_a_ptrs + following * stride_sak)
        next_scale_b = tl.load(scale_b_ptrs + following * stride_sbk)
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs, mask=x_cols, other=0.0)
        else:
            k_left = K - block * BLOCK_K
            w = tl.load(w_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            x = tl.load(x_ptrs, mask=x_cols & (offs_k[:, None] < k_left), other=0.0)
        partial = tl.dot(w, x)  # a fresh accumulator per block: promoted to fp32 below
        if TILE_IN_ONE_SCALE_BLOCK:
            acc += partial * scale_a[None, :] * scale_b
        else:
            acc += partial * scale_a[None, :] * scale_b[:, None]
        w_ptrs += b_step
        x_ptrs += a_step

    # The ending is the unswapped kernel's, repeated rather than shared: that kernel's text is what the
    # revision of its shipped buckets hashes (as matmul.py's swapped kernel's is for the prologue above).
    acc = tl.trans(acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]
    else:
        bias = tl.full((1, 1), 0, tl.float32)
    if SPLIT_K == 1:
        scale_and_store(acc, 1.0, 1.0, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS)
    else:
        split_k_finish(
            acc, pid, tiles_m * tl.cdiv(N, BLOCK_N), 1.0, 1.0, bias, offs_m, offs_n, M, N, out_ptr, stride_om,
            stride_on, partials_ptr, arrivals_ptr, HAS_BIAS, tl.float32, SPLIT_K, BLOCK_M, BLOCK_N,
        )  # fmt: skip


# The kernel each block-scaled config's `kernel` names (configs.lookup.BLOCK_KERNELS), and what a
# tuned block-scaled bucket records as the revision of the kernel it was tuned with
# (kernels/revision.py): an edit of a kernel makes its buckets stale for `scaledmm tune`.
BLOCK_KERNEL_FUNCTIONS = {"pointer": _block_scaled_mm_kernel, "swapped": _block_scaled_mm_swap_kernel}
BLOCK_REVISIONS = {name: revision(kernel) for name, kernel in BLOCK_KERNEL_FUNCTIONS.items()}


def block_kernel_revision(config: MatmulConfig) -> str:
    """The revision of the block-scaled kernel that runs `config`."""
    return BLOCK_REVISIONS[config.kernel]


class BlockLaunch:
    """One call signature's bound launch of the block-scaled kernel: `launch(a, b, scale_a, scale_b,
    bias, out)` writes the product of new tensors of that signature."""

    kernel = "block"
    precise = True  # promoted every scale block whatever the mode

    def __init__(self, bound: BoundLaunch, config: MatmulConfig, M: int, N: int):
        self.bound = bound
        self.config = config
        self.M, self.N = M, N

    def __call__(self, a, b, scale_a, scale_b, bias, out) -> None:
        if self.config.split_k == 1:
            self.bound(a, b, out, scale_a, scale_b, bias, None, None)
        else:  # fresh partial sums per call, as the pointer kernel's launch takes them
            partials, arrivals = split_k_buffers(self.M, self.N, self.config, a.dtype, out.device)
            self.bound(a, b, out, scale_a, scale_b, bias, partials, arrivals)

    def __repr__(self) -> str:
        return f"BlockLaunch(config={self.config})"


def block_launch_arguments(a, b, scale_a, scale_b, bias, out, config: MatmulConfig, block_size: tuple[int, int]):
    """(grid, positional arguments, keyword arguments) of one launch of the config's kernel (pointer or
    swapped), split-K's scratch made for it (split_k.split_k_buffers; None without split-K); the first
    eight positional arguments change per call. config.block_k is the scale block's K (the checks
    ensure it)."""
    M, K = a.shape
    N = b.shape[1]
    partials, arrivals = split_k_buffers(M, N, config, a.dtype, a.device)
    args = (
        a, b, out, scale_a, scale_b, bias, partials, arrivals,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        scale_a.stride(0), scale_a.stride(1), scale_b.stride(0), scale_b.stride(1),
        bias.stride(0) if bias is not None else 0,
    )  # fmt: skip
    kwargs = dict(
        SCALE_N=block_size[0],
        HAS_BIAS=bias is not None,
        EVEN_K=K % config.block_k == 0,
        SPLIT_K=config.split_k,
        TILE_IN_ONE_SCALE_BLOCK=block_size[0] % config.block_n == 0,
    )
    if config.kernel == "pointer":  # the swapped kernel's order needs no grouping
        args += (config.group_m,)
    return (tile_count(M, N, config), config.split_k), args, dict(**kwargs, **tile_kwargs(config))


def bind_block_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
    block_size: tuple[int, int],
) -> BlockLaunch:
    """Write the block-scaled product into `out` now (the inputs checked, M >= 1), and return the
    launch that does it again for new tensors of this signature."""
    grid, args, kwargs = block_launch_arguments(a, b, scale_a, scale_b, bias, out, config, block_size)
    kernel = BLOCK_KERNEL_FUNCTIONS[config.kernel]
    bound = bind_launch(kernel, grid, args, kwargs, leading=8, device=a.device)
    return BlockLaunch(bound, config, a.shape[0], b.shape[1])


def compile_block_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
    block_size: tuple[int, int],
) -> None:
    """Compile the kernel for these arguments without launching it (the tuner's workers fill Triton's
    on-disk cache with it); as matmul.compile_scaled_mm, the tensors may be meta tensors."""
    grid, args, kwargs = block_launch_arguments(a, b, scale_a, scale_b, bias, out, config, block_size)
    BLOCK_KERNEL_FUNCTIONS[config.kernel].warmup(*args, grid=grid, **kwargs)
