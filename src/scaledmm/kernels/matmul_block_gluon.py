"""A warp-specialised persistent block-scaled FP8 matmul for Hopper, in Gluon (issue 20; not a config
kind yet: `scaled_mm_block_gluon` launches it, the runtime and the tuner do not offer it).

The product of matmul_block.py (1 x 128 activation groups, 128 x 128 weight blocks, DeepSeek-V3's
format), on the machinery of matmul_gluon.py: its load warp (TMA copies of A and B into an mbarrier
ring), its persistent grouped tile order, its cooperative and ping-pong schedules and its chunked TMA
epilogue, imported from there. What differs is the MMA warpgroups' K loop, as DeepGEMM does it:

- The K step is the scale block (BLOCK_K = 128) and the tile is one weight block wide (BLOCK_N = 128),
  so each K step of a tile has one weight scale (a scalar) and one activation scale per row.
- Each K step's wgmma writes a fresh fp32 register accumulator (`partial`, use_acc=False: the sums of
  one block, in Hopper's reduced-precision accumulator), which is then promoted into the running fp32
  accumulator: acc += partial * scale_a[rows, kb] * scale_b[kb, nb].
- Each block's wgmma is waited for before its promotion. In the cooperative schedule with two
  warpgroups (DeepGEMM's), the tensor cores meanwhile run the other warpgroup's wgmma (the tile's
  other 64 rows). In ping-pong the turn order serialises the two warpgroups' K loops (a warpgroup
  passes the turn once its tile's last wgmma has run), so only the epilogues overlap and the FMAs
  are not hidden: the GPU A/B is to tell which wins.
  The next block's scales (plain loads, any strides) are loaded when this block's wgmma is
  issued and used a block later, so the FMAs do not wait on L2 (the block kernel's stall,
  docs/performance.md).

Registers: ptxas compiles every warp of the kernel for 168 registers (65,536 / 384 threads;
setmaxnreg moves them at run time only). The running accumulator and one partial, two 64 x 128 fp32
tensors per warpgroup, take 128 (no spills at the configs the tests compile). Keeping a second
partial in flight during the promotion (192) spilled, and ptxas then serialised every wgmma (C7514/
C7515); 128 rows per warpgroup would need 256: `block_config_error` refuses them.

Ragged M, N and K need no masks on A and B (TMA loads zeros past the edges, and zeros times any scale
add nothing); the scale indices are ceil-divided (the last block of K or N is partial), rows past M
load no scale, and the TMA store writes nothing past the output's edges.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait

from scaledmm.configs import device_limits
from scaledmm.kernels.launch import BoundLaunch, bind_launch
from scaledmm.kernels.matmul_gluon import (
    CONSUMER_REGISTERS,
    LOAD_REGISTERS,
    WGMMA_M,
    GluonConfig,
    _bias_and_store_chunk,
    _column_chunks,
    _grouped_tile,
    _load_partition,
    descriptors,
    gluon_eligible,
)

SCALE_BLOCK = 128  # the K and N of a weight scale block, and the K of an activation group
BLOCK_SIZE = (SCALE_BLOCK, SCALE_BLOCK)  # scaled_mm's block_size (block_n, block_k) this kernel computes
MAX_ROWS_PER_WARPGROUP = 64  # two 128-column fp32 tensors of 64 rows: 128 of ptxas's 168 registers


def block_config_error(config: GluonConfig) -> str | None:
    """Why this kernel cannot run `config`, or None: the tile must be one scale block wide and deep
    (block_n = block_k = 128, one accumulator, wgmma n = 128) and 64 rows per warpgroup of a tile."""
    if config.block_n != SCALE_BLOCK or config.block_k != SCALE_BLOCK:
        return f"block_n and block_k must be the scale block, {SCALE_BLOCK}"
    if config.epilogue_split != 1 or config.instr_n not in (None, SCALE_BLOCK):
        return "one accumulator (epilogue_split=1) and wgmma n = 128 (instr_n None or 128)"
    if config.block_m != MAX_ROWS_PER_WARPGROUP * config.tile_groups:
        return (
            f"block_m must be {MAX_ROWS_PER_WARPGROUP} rows per warpgroup of a tile (128 cooperative with two "
            f"warpgroups, 64 otherwise): the accumulator and the partial take 128 registers per thread"
        )
    return None


# ----------------------------------------------------------------------------------------- kernel


@gluon.jit
def _block_scales(scale_a_ptrs, row_mask, scale_b_ptr, block, stride_sak, stride_sbk):
    # The factor of K block `block`'s partial sums for each row of the tile: scale_a[rows, block] *
    # scale_b[block, tile_n] (scale_b_ptr already at the tile's column).
    scale_a = gl.load(scale_a_ptrs + block * stride_sak, mask=row_mask, other=0.0)
    return scale_a * gl.load(scale_b_ptr + block * stride_sbk)


@gluon.jit
def _block_wgmma(a_bufs, b_bufs, ready, step, registers):
    # Block `step`'s wgmma (a ring position) once its tiles have landed, issued asynchronously into a
    # fresh accumulator in `registers`' (use_acc=False: their values are not read).
    NUM_STAGES: gl.constexpr = a_bufs.shape[0]
    slot = step % NUM_STAGES
    mbarrier.wait(ready.index(slot), (step // NUM_STAGES) & 1)
    return warpgroup_mma(
        a_bufs.index(slot), b_bufs.index(slot).permute((1, 0)), registers, use_acc=False, is_async=True
    )


@gluon.jit
def _promote(partial, scale, acc, empty, step, OUTSTANDING: gl.constexpr):
    # Once block `step`'s wgmma has retired (OUTSTANDING later ones may still run): release its ring
    # slot to the load warp and add its sums, times their scales, to the fp32 accumulator. Returns the
    # accumulator and the retired partial (its registers, for a later wgmma to write).
    NUM_STAGES: gl.constexpr = empty.shape[0]
    partial = warpgroup_mma_wait(num_outstanding=OUTSTANDING, deps=(partial,))
    mbarrier.arrive(empty.index(step % NUM_STAGES))
    return gl.fma(partial, gl.expand_dims(scale, 1), acc), partial


@gluon.jit
def _block_mma_partition(
    a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr, scale_b_ptr, bias_ptr,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias, GROUP_M, NUM_PROGRAMS,
    HAS_BIAS: gl.constexpr, CONSUMER: gl.constexpr, CONSUMERS: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # The MMA warps of one consumer, as matmul_gluon._mma_partition: all of them (cooperative) or one
    # warpgroup of two taking this program's tiles in turn (ping-pong).
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    BUFFERS: gl.constexpr = out_bufs.shape[0] // CONSUMERS
    CHUNK_N: gl.constexpr = out_desc.block_type.shape[1]
    CHUNKS: gl.constexpr = BLOCK_N // CHUNK_N
    INSTR_K: gl.constexpr = 256 // a_desc.dtype.primitive_bitwidth
    layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[WGMMA_M, BLOCK_N, INSTR_K]
    )
    M = a_desc.shape[0]
    N = b_desc.shape[0]
    tiles_m = gl.cdiv(M, BLOCK_M)
    tiles_n = gl.cdiv(N, BLOCK_N)
    k_steps = gl.cdiv(a_desc.shape[1], BLOCK_K)
    # The C operand of every fresh partial (use_acc=False: its values are not read).
    zero = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout)

    local_tile = CONSUMER
    stored = 0
    for tile in range(gl.program_id(0) + CONSUMER * NUM_PROGRAMS, tiles_m * tiles_n, CONSUMERS * NUM_PROGRAMS):
        tile_m, tile_n = _grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        step = local_tile * k_steps
        rows = tile_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        row_mask = rows < M
        scale_a_ptrs = scale_a_ptr + rows * stride_sam
        tile_scale_b_ptr = scale_b_ptr + tile_n * stride_sbn
        if CONSUMERS == 2:
            mbarrier.wait(turn, (local_tile & 1) ^ 1)  # ping-pong's order (matmul_gluon._mma_partition)
        # One partial per block, waited for before its promotion (cooperative: meanwhile the tensor
        # cores run the other warpgroup's wgmma, the tile's other 64 rows).
        # A second partial in flight during the promotion would need 192 registers
        # per thread, and ptxas compiles every warp of the kernel for 168 (65,536 / 384; setmaxnreg
        # moves registers at run time only): it spilled, and its copies serialised every wgmma (C7514).
        partial = zero  # the registers of each block's fresh partial (its C operand, not read)
        acc = zero
        scale = _block_scales(scale_a_ptrs, row_mask, tile_scale_b_ptr, 0, stride_sak, stride_sbk)
        for k in range(k_steps):
            in_flight = _block_wgmma(a_bufs, b_bufs, ready, step, partial)
            # The next block's scales (this one's again at the last), loaded now and used a block later,
            # so that the promotion does not wait on L2.
            next_block = gl.minimum(k + 1, k_steps - 1)
            next_scale = _block_scales(scale_a_ptrs, row_mask, tile_scale_b_ptr, next_block, stride_sak, stride_sbk)
            acc, partial = _promote(in_flight, scale, acc, empty, step, 0)
            scale = next_scale
            step += 1
        if CONSUMERS == 2:
            mbarrier.arrive(turn)  # every wgmma of this tile has run: the other warpgroup's turn

        # The epilogue: the scales are applied; bias, cast and TMA stores in chunks.
        first_row = tile_m * BLOCK_M
        first_col = tile_n * BLOCK_N
        chunks = _column_chunks(acc, CHUNKS)
        for i in gl.static_range(CHUNKS):
            cols = first_col + i * CHUNK_N + gl.arange(0, CHUNK_N, layout=gl.SliceLayout(0, chunks[i].type.layout))
            stored = _bias_and_store_chunk(
                chunks[i], cols, first_row, first_col + i * CHUNK_N, N, out_desc, out_bufs, stored, bias_ptr,
                stride_bias, HAS_BIAS, CONSUMER * BUFFERS, BUFFERS,
            )  # fmt: skip
        local_tile += CONSUMERS
    tma.store_wait(pendings=0)


@gluon.jit(do_not_specialize=["GROUP_M", "NUM_PROGRAMS"])
def block_scaled_mm_gluon_kernel(
    a_desc, b_desc, out_desc, scale_a_ptr, scale_b_ptr, bias_ptr,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias, GROUP_M, NUM_PROGRAMS,
    HAS_BIAS: gl.constexpr, NUM_STAGES: gl.constexpr, STORE_BUFFERS: gl.constexpr, PINGPONG: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    # Shared memory, barriers and partitions as matmul_gluon.scaled_mm_gluon_kernel.
    CONSUMERS: gl.constexpr = 2 if PINGPONG else 1
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_STAGES] + a_desc.block_type.shape, a_desc.layout)  # noqa: RUF005
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_STAGES] + b_desc.block_type.shape, b_desc.layout)  # noqa: RUF005
    OUT_BUFFERS: gl.constexpr = CONSUMERS * STORE_BUFFERS
    out_bufs = gl.allocate_shared_memory(out_desc.dtype, [OUT_BUFFERS] + out_desc.block_type.shape, out_desc.layout)  # noqa: RUF005
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    mbarrier.init(turn, count=1)

    if PINGPONG:
        gl.warp_specialize(
            [
                (
                    _block_mma_partition,
                    (
                        a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr,
                        scale_b_ptr, bias_ptr, stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias, GROUP_M,
                        NUM_PROGRAMS, HAS_BIAS, 0, 2, num_warps,
                    ),
                ),
                (
                    _block_mma_partition,
                    (
                        a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr,
                        scale_b_ptr, bias_ptr, stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias, GROUP_M,
                        NUM_PROGRAMS, HAS_BIAS, 1, 2, num_warps,
                    ),
                ),
                (_load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, GROUP_M, NUM_PROGRAMS)),
            ],
            [num_warps, 1],
            [CONSUMER_REGISTERS, LOAD_REGISTERS],
        )  # fmt: skip
    else:
        gl.warp_specialize(
            [
                (
                    _block_mma_partition,
                    (
                        a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr,
                        scale_b_ptr, bias_ptr, stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias, GROUP_M,
                        NUM_PROGRAMS, HAS_BIAS, 0, 1, num_warps,
                    ),
                ),
                (_load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, GROUP_M, NUM_PROGRAMS)),
            ],
            [1],
            [LOAD_REGISTERS],
        )  # fmt: skip


# ----------------------------------------------------------------------------------------- launch


def block_gluon_eligible(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out: torch.Tensor,
    block_size: tuple[int, int],
    device: torch.device,
) -> bool:
    """Whether this kernel can compute a block-scaled call on `device`: fp8 e4m3 operands, 128 x 128
    blocks, float32 scales (any strides), and what the Gluon kernel needs (matmul_gluon.gluon_eligible:
    a Hopper GPU, TMA's layouts and 16-byte alignment, a bf16, fp16 or fp32 output)."""
    return (
        a.dtype == torch.float8_e4m3fn
        and tuple(block_size) == BLOCK_SIZE
        and scale_a.dtype == torch.float32
        and scale_b.dtype == torch.float32
        and gluon_eligible(a, b, out, device)
    )


def block_launch_arguments(a, b, scale_a, scale_b, bias, out, config: GluonConfig, num_sms: int):
    """(grid, positional arguments, keyword arguments) of one launch; the first six positional
    arguments change per call (three descriptors, the scales and the bias). The scales are checked
    by the caller: scale_a [M, ceil(K / 128)], scale_b [ceil(K / 128), ceil(N / 128)]."""
    error = block_config_error(config)
    if error is not None:
        raise ValueError(f"GluonConfig {config} for the block-scaled kernel: {error}")
    M = a.shape[0]
    N = b.shape[1]
    tiles = (-(-M // config.block_m)) * (-(-N // config.block_n))
    grid_size = min(tiles, num_sms)
    args = (
        *descriptors(a, b, out, config), scale_a, scale_b, bias,
        scale_a.stride(0), scale_a.stride(1), scale_b.stride(0), scale_b.stride(1),
        bias.stride(0) if bias is not None else 0, config.group_m, grid_size,
    )  # fmt: skip
    kwargs = dict(
        HAS_BIAS=bias is not None,
        NUM_STAGES=config.num_stages,
        STORE_BUFFERS=config.store_buffers,
        PINGPONG=config.schedule == "pingpong",
        num_warps=config.num_warps,
    )
    return (grid_size,), args, kwargs


class BlockGluonLaunch:
    """One call signature's bound launch of this kernel: `launch(a, b, scale_a, scale_b, bias, out)`
    for new tensors with the dtypes, shapes, strides and alignment of the ones it was bound with."""

    kernel = "block_gluon"
    precise = True  # promoted every scale block

    def __init__(self, bound: BoundLaunch, config: GluonConfig):
        self.bound = bound
        self.config = config

    def __call__(self, a, b, scale_a, scale_b, bias, out) -> None:
        self.bound(*descriptors(a, b, out, self.config), scale_a, scale_b, bias)

    def __repr__(self) -> str:
        return f"BlockGluonLaunch(config={self.config})"


def scaled_mm_block_gluon(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: GluonConfig,
) -> BlockGluonLaunch:
    """Write the block-scaled product (1 x 128 and 128 x 128 blocks) into `out` now and return the
    launch that does it again for new tensors of this signature. A [M, K] row-major, b = weight.t()
    [K, N], scale_a [M, ceil(K / 128)], scale_b [ceil(K / 128), ceil(N / 128)], M >= 1. ValueError
    where the kernel cannot serve the call (`block_gluon_eligible`, `block_config_error`, the scales'
    shapes) or its compiled form does not fit the device's shared memory."""
    if not isinstance(config, GluonConfig):
        raise TypeError(f"config must be a GluonConfig, got {type(config).__name__}")
    device = a.device
    if not block_gluon_eligible(a, b, scale_a, scale_b, out, BLOCK_SIZE, device):
        raise ValueError(
            "the block-scaled Gluon kernel needs a Hopper GPU, fp8 e4m3 operands, float32 scales, a bf16, fp16 or "
            "fp32 output, A row-major, B K-major (weight.t()), a row-major output and 16-byte aligned rows and "
            "pointers"
        )
    M, K = a.shape
    N = b.shape[1]
    blocks_k, blocks_n = -(-K // SCALE_BLOCK), -(-N // SCALE_BLOCK)
    if tuple(scale_a.shape) != (M, blocks_k) or tuple(scale_b.shape) != (blocks_k, blocks_n):
        raise ValueError(
            f"scale_a must be [M, ceil(K / 128)] = [{M}, {blocks_k}] and scale_b [ceil(K / 128), ceil(N / 128)] = "
            f"[{blocks_k}, {blocks_n}], got {list(scale_a.shape)} and {list(scale_b.shape)}"
        )
    num_sms, shared_memory = device_limits(device)
    grid, args, kwargs = block_launch_arguments(a, b, scale_a, scale_b, bias, out, config, num_sms)
    with torch.cuda.device(device):
        compiled = block_scaled_mm_gluon_kernel.warmup(*args, grid=grid, **kwargs)
    if compiled.metadata.shared > shared_memory:
        raise ValueError(
            f"GluonConfig {config} needs {compiled.metadata.shared} bytes of shared memory with a {out.dtype} output; "
            f"the device has {shared_memory}"
        )
    bound = bind_launch(block_scaled_mm_gluon_kernel, grid, args, kwargs, leading=6, device=device)
    return BlockGluonLaunch(bound, config)
