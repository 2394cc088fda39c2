"""A warp-specialised persistent scaled matmul for Hopper, written in Gluon (issue 17): the kernel of
MatmulConfig(kernel="gluon"), which the tuner offers on Hopper at large M (tune/space.py) and matmul.py
launches from a tuned bucket (`GluonConfig.from_matmul_config`); `bind_scaled_mm_gluon` launches any
GluonConfig, the tuned subset's fields and the A/B's (epilogue_split, instr_n) alike.

The same product as the TMA kernel (matmul_tma.py), scheduled by hand instead of by Triton's pipeliner:
- One program per SM takes every NUM_PROGRAMS-th output tile in grouped order, as the TMA kernel does.
- A load partition of one warp issues the TMA copies of A and B tiles into a ring of NUM_STAGES
  shared-memory slots. Each slot has two mbarriers: `ready` (the copy engine signals when both tiles
  have landed) and `empty` (the MMA partition signals when its wgmma has finished reading the slot).
- The MMA side, in one of two schedules (GluonConfig.schedule):
  - "cooperative": one MMA partition (the kernel's num_warps: one or two warpgroups, each taking 64
    rows of the tile per wgmma) waits on `ready`, issues asynchronous wgmma and keeps one K step in
    flight, releasing a slot as soon as the wgmma that read it has retired. It then scales, biases and
    stores the tile through shared memory by TMA. Meanwhile the load warp fills the ring with the next
    tile's K steps, but the tensor cores wait for the epilogue.
  - "pingpong" (CUTLASS's name): two MMA partitions of one warpgroup each, each computing whole tiles,
    taking this program's tiles in turn. A third mbarrier, `turn`, orders their K loops: a warpgroup
    starts issuing wgmma once the other has issued its tile's last, so one's epilogue runs while the
    other's wgmma do. (The order is also what keeps the ring's parity waits exact: without it the
    second warpgroup would wait on a slot two phases ahead and pass at once.)
- Triton gives the registers out: with 12 warps it sets the kernel's maxnreg to 168 (65,536 / 384)
  and moves them by setmaxnreg, the load warp's warpgroup down to LOAD_REGISTERS = 40 and the MMA
  warpgroups up to 232, enough for 128 fp32 accumulators per thread (a 128x256 tile over two
  warpgroups, or a 128x128 or 64x256 tile per warpgroup in ping-pong).
- The tile's N columns may be split into two accumulators (EPILOGUE_SPLIT = 2), each a wgmma of half
  the width. One accumulator issues the wider wgmma (fp8 n = 256), which reads the A tile from shared
  memory half as often.
- The epilogue may store an accumulator in column chunks (GluonConfig.store_n, through two staging
  buffers): only one chunk's scale_b and bias values are then live beside the accumulator (a whole
  128x256 accumulator's spill at 232 registers), and the staging buffers take a quarter of a tile's
  shared memory, leaving room for one more stage (128x256: 4 instead of 3).

Operands: fp8 e4m3 or int8, A [M, K] row-major and B = weight.t() of a row-major [N, K] weight (both
K-major in shared memory, as 8-bit wgmma requires); scales per token and per channel or per tensor;
an optional bias; bf16, fp16 or fp32 output. Ragged M, N and K need no masks: TMA loads zeros past the
edges and stores nothing there. fp8 accumulates in Hopper's reduced-precision accumulator ("fast"), or
with `precise`, promoted to fp32 every 128 K-elements by wgmma's max_num_imprecise_acc, as tl.dot does.

Gluon compiles for NVIDIA sm_90 only (no interpreter): on other devices `gluon_eligible` is False,
matmul.py runs a gluon config's tiles on the TMA kernel (or the pointer kernel) instead, and
`bind_scaled_mm_gluon` refuses the call. Importing this module needs no GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from scaledmm.configs import MatmulConfig, device_limits
from scaledmm.kernels.launch import BoundLaunch, accumulator_kwargs, bind_launch, epilogue_arguments
from scaledmm.kernels.matmul_tma import tma_eligible
from scaledmm.state import state

# The load warp's registers after setmaxnreg (CUTLASS gives its producer warpgroup 40); the rest of
# the register file goes to the MMA warpgroups.
LOAD_REGISTERS = gl.constexpr(40)
MAX_ACCUMULATORS_PER_THREAD = 128  # more spill: a 128x256 fp32 tile needs two warpgroups
INT8_MAX_INSTR_N = 224
WGMMA_M = gl.constexpr(16)  # rows per warp of one wgmma instruction (a warpgroup covers 64)

SCHEDULES = ("cooperative", "pingpong")
CONSUMER_REGISTERS = gl.constexpr(232)  # the second MMA warpgroup's in ping-pong (a worker partition)

OPERAND_DTYPES = {torch.float8_e4m3fn: gl.float8e4nv, torch.int8: gl.int8}
OUT_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}


@dataclass(frozen=True)
class GluonConfig:
    """Tiles and schedule of one launch of the Gluon kernel.

    block_m/block_n/block_k: the output tile and the K step (one ring slot holds an A and a B tile).
    num_stages: ring slots. consumer_groups: MMA warpgroups sharing a tile (1 or 2; 4 warps each).
    epilogue_split: accumulators per tile along N (1 or 2), each stored on its own.
    group_m: tile rows per column sweep of the grouped order.
    instr_n: the wgmma instruction's N; None takes the accumulator's width for fp8 in fast
        accumulation and at most 128 otherwise (`instruction_n`).
    store_n: columns per step of the epilogue: each accumulator is scaled, converted and stored by TMA
        in column chunks this wide, through two shared-memory buffers, so that only one chunk's
        scale_b and bias values are live at a time (a whole 128 x 256 tile's spill beside its
        accumulator). None: the accumulator's width, in one step and one buffer.
    schedule: "cooperative" (the consumer warpgroups share each tile, 64 rows each) or "pingpong"
        (consumer_groups = 2: each warpgroup computes whole tiles, the two take this program's tiles
        in turn, and one's epilogue runs while the other's wgmma do; CUTLASS's ping-pong schedule).
    """

    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    num_stages: int = 3
    consumer_groups: int = 2
    epilogue_split: int = 1
    group_m: int = 8
    instr_n: int | None = None
    store_n: int | None = None
    schedule: str = "cooperative"

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k", "num_stages", "consumer_groups", "epilogue_split", "group_m"):
            if type(getattr(self, name)) is not int:
                raise TypeError(f"GluonConfig.{name} must be an int, got {type(getattr(self, name)).__name__}")
        if self.consumer_groups not in (1, 2):
            raise ValueError(f"GluonConfig.consumer_groups must be 1 or 2, got {self.consumer_groups}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"GluonConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "pingpong" and self.consumer_groups != 2:
            raise ValueError(f"GluonConfig: the pingpong schedule takes consumer_groups=2, got {self}")
        if self.block_m not in (64, 128, 256) or self.block_m < 64 * self.tile_groups:
            raise ValueError(
                f"GluonConfig.block_m must be 64, 128 or 256, 64 rows or more per warpgroup of a tile, got {self}"
            )
        if self.block_n not in (64, 128, 256):
            raise ValueError(f"GluonConfig.block_n must be 64, 128 or 256, got {self.block_n}")
        if self.block_k not in (64, 128, 256):
            raise ValueError(f"GluonConfig.block_k must be 64, 128 or 256, got {self.block_k}")
        if not 2 <= self.num_stages <= 8:
            raise ValueError(f"GluonConfig.num_stages must be in [2, 8], got {self.num_stages}")
        if self.epilogue_split not in (1, 2) or self.block_n // self.epilogue_split < 64:
            raise ValueError(f"GluonConfig.epilogue_split must be 1 or 2, leaving 64 columns or more, got {self}")
        if not 1 <= self.group_m <= 64:
            raise ValueError(f"GluonConfig.group_m must be in [1, 64], got {self.group_m}")
        if self.store_n is not None and (
            type(self.store_n) is not int or self.store_n < 32 or self.accumulator_n % self.store_n
            or self.accumulator_n // self.store_n > 4
        ):  # fmt: skip
            raise ValueError(
                f"GluonConfig.store_n must divide the accumulator's width into 1, 2 or 4 chunks of 32 columns "
                f"or more, got {self}"
            )
        per_thread = self.block_m * self.block_n // (128 * self.tile_groups)
        if per_thread > MAX_ACCUMULATORS_PER_THREAD:
            raise ValueError(
                f"GluonConfig {self}: {per_thread} accumulators per thread (more than "
                f"{MAX_ACCUMULATORS_PER_THREAD} spill); use consumer_groups=2 (cooperative) or a smaller tile"
            )
        if self.instr_n is not None and (
            type(self.instr_n) is not int or self.instr_n % 16 or (self.block_n // self.epilogue_split) % self.instr_n
        ):
            raise ValueError(f"GluonConfig.instr_n must be a multiple of 16 dividing the accumulator width, got {self}")

    @classmethod
    def from_matmul_config(cls, config: MatmulConfig) -> GluonConfig:
        """The GluonConfig of a MatmulConfig(kernel="gluon"): its consumer warpgroups are num_warps / 4
        (cooperative) or two of 4 warps each (ping-pong); one accumulator per tile, the instruction's N
        chosen by `instruction_n`."""
        if config.kernel != "gluon":
            raise ValueError(f"a GluonConfig is made from a config with kernel='gluon', got {config}")
        return cls(
            config.block_m, config.block_n, config.block_k, config.num_stages,
            consumer_groups=2 if config.pingpong else config.num_warps // 4, group_m=config.group_m,
            store_n=config.store_n or None, schedule="pingpong" if config.pingpong else "cooperative",
        )  # fmt: skip

    @property
    def tile_groups(self) -> int:
        """Warpgroups that share one tile's accumulator: all consumers (cooperative) or one (pingpong)."""
        return self.consumer_groups if self.schedule == "cooperative" else 1

    @property
    def num_warps(self) -> int:
        """Warps of the default partition, the kernel's num_warps: every MMA warpgroup (cooperative) or
        the first (pingpong; the second is a worker partition). The load warp comes on top."""
        return 4 * self.tile_groups

    @property
    def accumulator_n(self) -> int:
        return self.block_n // self.epilogue_split

    @property
    def chunk_n(self) -> int:
        """Columns per epilogue step (per TMA store)."""
        return self.store_n or self.accumulator_n

    @property
    def store_buffers(self) -> int:
        """Output staging buffers per MMA partition: two where the epilogue stores in chunks (one
        chunk is written while the last is still being copied out), else one."""
        return 1 if self.store_n is None else 2

    def __str__(self) -> str:
        text = f"{self.block_m}x{self.block_n}x{self.block_k} g{self.group_m}"
        text += f" c{self.consumer_groups} s{self.num_stages}"
        if self.epilogue_split > 1:
            text += f" e{self.epilogue_split}"
        if self.instr_n is not None:
            text += f" n{self.instr_n}"
        if self.store_n is not None:
            text += f" st{self.store_n}"
        if self.schedule == "pingpong":
            text += " pp"
        return text + " gluon"


# ----------------------------------------------------------------------------------------- kernel


@gluon.jit
def _grouped_tile(tile, tiles_m, tiles_n, GROUP_M):
    # common.grouped_tile in Gluon (a Gluon kernel calls Gluon functions only): the grouped order of
    # Triton's tutorial 09, GROUP_M tile rows per column sweep.
    programs_per_group = GROUP_M * tiles_n
    first_tile_m = (tile // programs_per_group) * GROUP_M
    group_rows = min(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + (tile % programs_per_group) % group_rows
    tile_n = (tile % programs_per_group) // group_rows
    return tile_m, tile_n


@gluon.jit
def _load_partition(a_desc, b_desc, a_bufs, b_bufs, ready, empty, GROUP_M, NUM_PROGRAMS):
    # One warp: the TMA copies of every K step of every tile of this program, in order, into the ring.
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    NUM_STAGES: gl.constexpr = a_bufs.shape[0]
    tiles_m = gl.cdiv(a_desc.shape[0], BLOCK_M)
    tiles_n = gl.cdiv(b_desc.shape[0], BLOCK_N)
    k_steps = gl.cdiv(a_desc.shape[1], BLOCK_K)

    step = 0  # K steps loaded so far by this program, over all its tiles: the ring position
    for tile in range(gl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS):
        tile_m, tile_n = _grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        for k in range(k_steps):
            slot = step % NUM_STAGES
            # Wait until the MMA partition has released the slot's previous contents. A fresh
            # barrier counts as having completed the phase before its first, so the first pass
            # through the ring (parity 1) does not wait.
            mbarrier.wait(empty.index(slot), ((step // NUM_STAGES) & 1) ^ 1)
            landed = ready.index(slot)
            # The copy engine counts the whole box's bytes, zeros past the edges included.
            mbarrier.expect(landed, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [tile_m * BLOCK_M, k * BLOCK_K], landed, a_bufs.index(slot))
            tma.async_copy_global_to_shared(b_desc, [tile_n * BLOCK_N, k * BLOCK_K], landed, b_bufs.index(slot))
            step += 1


@gluon.jit
def _wgmma(a, b, acc, MAX_IMPRECISE: gl.constexpr):
    # An asynchronous wgmma of A [BLOCK_M, BLOCK_K] and B [BLOCK_K, n] (shared memory) into acc; with
    # MAX_IMPRECISE, fp8 sums are promoted to fp32 every MAX_IMPRECISE K-elements ("precise").
    if MAX_IMPRECISE:
        return warpgroup_mma(a, b, acc, is_async=True, max_num_imprecise_acc=MAX_IMPRECISE)
    return warpgroup_mma(a, b, acc, is_async=True)


@gluon.jit
def _column_halves(x):
    # The left and right halves of x's columns. In the wgmma accumulator's layout the top bit of the
    # column is held in registers (each thread has columns 8 apart), so this moves no data.
    ROWS: gl.constexpr = x.shape[0]
    COLS: gl.constexpr = x.shape[1]
    return x.reshape([ROWS, 2, COLS // 2]).permute((0, 2, 1)).split()


@gluon.jit
def _scale_and_store_chunk(
    chunk, first_row, first_col, N, out_desc, out_bufs, stored, scale_b_ptr, bias_ptr, stride_scale_b, stride_bias,
    B_PER_CHANNEL: gl.constexpr, HAS_BIAS: gl.constexpr, FIRST_BUFFER: gl.constexpr, BUFFERS: gl.constexpr,
):  # fmt: skip
    # One chunk of columns (already times scale_a, in fp32): * scale_b + bias, cast and stored by TMA
    # through the next of this consumer's BUFFERS staging buffers (out_bufs[FIRST_BUFFER:][:BUFFERS]);
    # columns past N are not written. Returns the count of chunks stored, which picks the buffer.
    cols = first_col + gl.arange(0, chunk.shape[1], layout=gl.SliceLayout(0, chunk.type.layout))
    if B_PER_CHANNEL:
        scale_b = gl.load(scale_b_ptr + cols * stride_scale_b, mask=cols < N, other=0.0).to(gl.float32)
        result = chunk * gl.expand_dims(scale_b, 0)
    else:
        result = chunk * gl.load(scale_b_ptr).to(gl.float32)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + cols * stride_bias, mask=cols < N, other=0.0).to(gl.float32)
        result = result + gl.expand_dims(bias, 0)
    buffer = out_bufs.index(FIRST_BUFFER + stored % BUFFERS)
    tma.store_wait(pendings=BUFFERS - 1)  # the store that last read this buffer has read it
    buffer.store(result.to(out_desc.dtype))
    fence_async_shared()  # order the register writes before the copy engine's reads
    tma.async_copy_shared_to_global(out_desc, [first_row, first_col], buffer)
    return stored + 1


@gluon.jit
def _scale_and_store(
    acc, scale_a, first_row, first_col, N, out_desc, out_bufs, stored, scale_b_ptr, bias_ptr, stride_scale_b,
    stride_bias, B_PER_CHANNEL: gl.constexpr, HAS_BIAS: gl.constexpr, FIRST_BUFFER: gl.constexpr,
    BUFFERS: gl.constexpr,
):  # fmt: skip
    # One accumulator's epilogue in fp32, in the order of the definition: ((a @ b) * scale_a) * scale_b
    # + bias, in chunks of the output box's width (1, 2 or 4). Returns the count of chunks stored.
    CHUNK_N: gl.constexpr = out_desc.block_type.shape[1]
    CHUNKS: gl.constexpr = acc.shape[1] // CHUNK_N
    scaled = acc.to(gl.float32) * scale_a
    if CHUNKS == 1:
        stored = _scale_and_store_chunk(
            scaled, first_row, first_col, N, out_desc, out_bufs, stored, scale_b_ptr, bias_ptr, stride_scale_b,
            stride_bias, B_PER_CHANNEL, HAS_BIAS, FIRST_BUFFER, BUFFERS,
        )  # fmt: skip
    else:
        left, right = _column_halves(scaled)
        if CHUNKS == 2:
            chunks = (left, right)
        else:
            left_left, left_right = _column_halves(left)
            right_left, right_right = _column_halves(right)
            chunks = (left_left, left_right, right_left, right_right)
        for i in gl.static_range(CHUNKS):
            stored = _scale_and_store_chunk(
                chunks[i], first_row, first_col + i * CHUNK_N, N, out_desc, out_bufs, stored, scale_b_ptr, bias_ptr,
                stride_scale_b, stride_bias, B_PER_CHANNEL, HAS_BIAS, FIRST_BUFFER, BUFFERS,
            )  # fmt: skip
    return stored


@gluon.jit
def _mma_partition(
    a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr, scale_b_ptr, bias_ptr,
    stride_scale_a, stride_scale_b, stride_bias, GROUP_M, NUM_PROGRAMS,
    A_PER_TOKEN: gl.constexpr, B_PER_CHANNEL: gl.constexpr, HAS_BIAS: gl.constexpr, ACC_DTYPE: gl.constexpr,
    MAX_IMPRECISE: gl.constexpr, INSTR_N: gl.constexpr, SPLIT: gl.constexpr, CONSUMER: gl.constexpr,
    CONSUMERS: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    # The MMA warps of one consumer: all of them (cooperative, CONSUMERS = 1) or one warpgroup of two
    # that take this program's tiles in turn (ping-pong, CONSUMER 0 or 1 of CONSUMERS = 2).
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
    ACC_N: gl.constexpr = BLOCK_N // SPLIT  # columns per accumulator
    NUM_STAGES: gl.constexpr = a_bufs.shape[0]
    BUFFERS: gl.constexpr = out_bufs.shape[0] // CONSUMERS  # this consumer's staging buffers
    # All warps along M: warpgroup w takes rows [64 w, 64 w + 64) of each 64 * num_warps / 4 rows.
    INSTR_K: gl.constexpr = 256 // a_desc.dtype.primitive_bitwidth  # 32 for 8-bit operands
    layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[WGMMA_M, INSTR_N, INSTR_K]
    )
    M = a_desc.shape[0]
    N = b_desc.shape[0]
    tiles_m = gl.cdiv(M, BLOCK_M)
    tiles_n = gl.cdiv(N, BLOCK_N)
    k_steps = gl.cdiv(a_desc.shape[1], BLOCK_K)

    local_tile = CONSUMER  # this program's tiles in order 0, 1, 2, ...: this consumer takes every CONSUMERS-th
    stored = 0  # chunks stored by this consumer: its staging buffers in turn
    for tile in range(gl.program_id(0) + CONSUMER * NUM_PROGRAMS, tiles_m * tiles_n, CONSUMERS * NUM_PROGRAMS):
        tile_m, tile_n = _grouped_tile(tile, tiles_m, tiles_n, GROUP_M)
        step = local_tile * k_steps  # the ring position of the tile's first K step, as the load warp counts
        if CONSUMERS == 2:
            # Ping-pong: this tile's wgmma start once the previous tile's (the other warpgroup's) are all
            # issued; it arrives on `turn` after each K loop, so the barrier completes phase t when local
            # tile t has issued. The first tile passes (a fresh barrier has completed the phase before).
            # The order also keeps the parity waits on the ring exact: every earlier K step has landed,
            # so no slot is more than one phase behind the step this consumer waits for.
            mbarrier.wait(turn, (local_tile & 1) ^ 1)
        acc = gl.zeros((BLOCK_M, ACC_N), ACC_DTYPE, layout)
        if SPLIT == 2:
            acc_right = gl.zeros((BLOCK_M, ACC_N), ACC_DTYPE, layout)
        for k in range(k_steps):
            slot = step % NUM_STAGES
            mbarrier.wait(ready.index(slot), (step // NUM_STAGES) & 1)
            a = a_bufs.index(slot)
            b = b_bufs.index(slot)  # [BLOCK_N, BLOCK_K]: its transposed view is the K-major B wgmma reads
            if SPLIT == 2:
                acc = _wgmma(a, b.slice(0, ACC_N).permute((1, 0)), acc, MAX_IMPRECISE)
                acc_right = _wgmma(a, b.slice(ACC_N, ACC_N).permute((1, 0)), acc_right, MAX_IMPRECISE)
                # Every wgmma issued before this step's two has retired.
                acc, acc_right = warpgroup_mma_wait(num_outstanding=2, deps=(acc, acc_right))
            else:
                acc = _wgmma(a, b.permute((1, 0)), acc, MAX_IMPRECISE)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            # The previous step's wgmma no longer reads its slot: the load warp may refill it.
            mbarrier.arrive(empty.index((step + NUM_STAGES - 1) % NUM_STAGES), pred=k > 0)
            step += 1
        if CONSUMERS == 2:
            mbarrier.arrive(turn)  # the other warpgroup's next tile may issue behind this one's last wgmma
        if SPLIT == 2:
            acc, acc_right = warpgroup_mma_wait(num_outstanding=0, deps=(acc, acc_right))
        else:
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        mbarrier.arrive(empty.index((step + NUM_STAGES - 1) % NUM_STAGES))

        first_row = tile_m * BLOCK_M
        first_col = tile_n * BLOCK_N
        if A_PER_TOKEN:
            rows = first_row + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
            scale_a = gl.load(scale_a_ptr + rows * stride_scale_a, mask=rows < M, other=0.0).to(gl.float32)
            scale_a = gl.expand_dims(scale_a, 1)
        else:
            scale_a = gl.load(scale_a_ptr).to(gl.float32)
        stored = _scale_and_store(
            acc, scale_a, first_row, first_col, N, out_desc, out_bufs, stored, scale_b_ptr, bias_ptr, stride_scale_b,
            stride_bias, B_PER_CHANNEL, HAS_BIAS, CONSUMER * BUFFERS, BUFFERS,
        )  # fmt: skip
        if SPLIT == 2:
            stored = _scale_and_store(
                acc_right, scale_a, first_row, first_col + ACC_N, N, out_desc, out_bufs, stored, scale_b_ptr,
                bias_ptr, stride_scale_b, stride_bias, B_PER_CHANNEL, HAS_BIAS, CONSUMER * BUFFERS, BUFFERS,
            )  # fmt: skip
        local_tile += CONSUMERS
    tma.store_wait(pendings=0)


# GROUP_M and NUM_PROGRAMS are run-time arguments, as in the TMA kernel; M, N and K are the descriptors'.
@gluon.jit(do_not_specialize=["GROUP_M", "NUM_PROGRAMS"])
def scaled_mm_gluon_kernel(
    a_desc, b_desc, out_desc, scale_a_ptr, scale_b_ptr, bias_ptr,
    stride_scale_a, stride_scale_b, stride_bias, GROUP_M, NUM_PROGRAMS,
    A_PER_TOKEN: gl.constexpr, B_PER_CHANNEL: gl.constexpr, HAS_BIAS: gl.constexpr, ACC_DTYPE: gl.constexpr,
    MAX_IMPRECISE: gl.constexpr, INSTR_N: gl.constexpr, NUM_STAGES: gl.constexpr, SPLIT: gl.constexpr,
    STORE_BUFFERS: gl.constexpr, PINGPONG: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    CONSUMERS: gl.constexpr = 2 if PINGPONG else 1
    # The rings of A and B tiles ([NUM_STAGES, rows, BLOCK_K]; Gluon lists take no starred items), and
    # each consumer's STORE_BUFFERS output staging buffers.
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [NUM_STAGES] + a_desc.block_type.shape, a_desc.layout)  # noqa: RUF005
    b_bufs = gl.allocate_shared_memory(b_desc.dtype, [NUM_STAGES] + b_desc.block_type.shape, b_desc.layout)  # noqa: RUF005
    OUT_BUFFERS: gl.constexpr = CONSUMERS * STORE_BUFFERS
    out_bufs = gl.allocate_shared_memory(out_desc.dtype, [OUT_BUFFERS] + out_desc.block_type.shape, out_desc.layout)  # noqa: RUF005
    ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())  # ping-pong's K-loop order
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    mbarrier.init(turn, count=1)

    # The default partition (num_warps warps, the only one that may take tensors) is the MMA partition
    # of the first (or only) consumer; the load partition is one warp with LOAD_REGISTERS registers,
    # and in ping-pong the second consumer a warpgroup with CONSUMER_REGISTERS. Triton 3.6 sets the
    # kernel's maxnreg to the register file's share of every warp (65536 / (32 * warps), 168 at 12
    # warps) and gives the default partition, by setmaxnreg, what the workers' requests leave (232).
    if PINGPONG:
        gl.warp_specialize(
            [
                (
                    _mma_partition,
                    (
                        a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr,
                        scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias, GROUP_M, NUM_PROGRAMS,
                        A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS, ACC_DTYPE, MAX_IMPRECISE, INSTR_N, SPLIT, 0, 2, num_warps,
                    ),
                ),
                (
                    _mma_partition,
                    (
                        a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr,
                        scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias, GROUP_M, NUM_PROGRAMS,
                        A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS, ACC_DTYPE, MAX_IMPRECISE, INSTR_N, SPLIT, 1, 2, num_warps,
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
                    _mma_partition,
                    (
                        a_desc, b_desc, out_desc, a_bufs, b_bufs, out_bufs, ready, empty, turn, scale_a_ptr,
                        scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias, GROUP_M, NUM_PROGRAMS,
                        A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS, ACC_DTYPE, MAX_IMPRECISE, INSTR_N, SPLIT, 0, 1, num_warps,
                    ),
                ),
                (_load_partition, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, GROUP_M, NUM_PROGRAMS)),
            ],
            [1],
            [LOAD_REGISTERS],
        )  # fmt: skip


# ----------------------------------------------------------------------------------------- launch


@state.cached
def device_has_wgmma(device: torch.device) -> bool:
    """Hopper (compute capability 9.x): the only GPUs with wgmma, which this kernel is written in."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9


def gluon_eligible(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, device: torch.device) -> bool:
    """Whether the Gluon kernel can compute this call on `device`: a Hopper GPU, 8-bit operands of one
    dtype, a bf16, fp16 or fp32 output, and the TMA kernel's layout and alignment (matmul_tma.tma_eligible)."""
    return (
        a.dtype in OPERAND_DTYPES
        and b.dtype == a.dtype
        and out.dtype in OUT_DTYPES
        and device_has_wgmma(device)
        and tma_eligible(a, b, out, device)
    )


def instruction_n(config: GluonConfig, dtype: torch.dtype, precise: bool = False) -> int:
    """The wgmma instruction's N: config.instr_n, else the accumulator's width for fp8 in fast
    accumulation, and at most 128 for int8 and for fp8 in precise accumulation. Triton 3.6 lowers int8
    wgmma up to n = 224 only (NVGPUToLLVM asserts on n = 256, which the hardware has): ValueError
    beyond. Precise fp8 sums each instruction's products in a second accumulator of its width before
    adding them to the tile's: at n = 256 that is 256 registers per thread, which spill in the K loop
    (benchmarks/ab/gluon_codegen.py --accumulation precise), at n = 128 it fits."""
    n = config.instr_n
    if n is None:
        narrow = dtype == torch.int8 or precise
        n = min(config.accumulator_n, 128) if narrow else config.accumulator_n
    if dtype == torch.int8 and n > INT8_MAX_INSTR_N:
        raise ValueError(f"GluonConfig.instr_n {n}: Triton 3.6 lowers int8 wgmma up to n = {INT8_MAX_INSTR_N}")
    return n


def descriptors(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, config: GluonConfig
) -> tuple[TensorDescriptor, TensorDescriptor, TensorDescriptor]:
    """The tensor descriptors of A [M, K], B as [N, K] (K-major) and the output [M, N] (one box per
    epilogue chunk), in the NVMMA shared layouts that TMA writes and wgmma reads."""
    M, K = a.shape
    N = b.shape[1]
    operand = OPERAND_DTYPES[a.dtype]
    a_block = [config.block_m, config.block_k]
    b_block = [config.block_n, config.block_k]
    out_block = [config.block_m, config.chunk_n]
    return (
        TensorDescriptor(a, [M, K], [a.stride(0), 1], a_block, gl.NVMMASharedLayout.get_default_for(a_block, operand)),
        TensorDescriptor(
            b.t(), [N, K], [b.stride(1), 1], b_block, gl.NVMMASharedLayout.get_default_for(b_block, operand)
        ),
        TensorDescriptor(
            out, [M, N], [out.stride(0), 1], out_block,
            gl.NVMMASharedLayout.get_default_for(out_block, OUT_DTYPES[out.dtype]),
        ),
    )  # fmt: skip


def _rebased(descriptor: TensorDescriptor, tensor: torch.Tensor) -> TensorDescriptor:
    # A copy over `tensor`, without the dataclass's checks and the layouts' computation: 7 us for a
    # call's three descriptors on the host, against 95 us for `descriptors` (the TMA kernel's take 20).
    copy = TensorDescriptor.__new__(TensorDescriptor)
    copy.__dict__.update(descriptor.__dict__)
    copy.base = tensor
    return copy


def call_descriptors(
    bound: tuple[TensorDescriptor, ...], a: torch.Tensor, b: torch.Tensor, out: torch.Tensor
) -> tuple[TensorDescriptor, TensorDescriptor, TensorDescriptor]:
    """The descriptors of a later call of the signature that `bound` (its first call's `descriptors`)
    was made for: the same dtypes, shapes, strides and alignment (the prepared call's key), so the same
    descriptors over the new tensors."""
    return _rebased(bound[0], a), _rebased(bound[1], b.t()), _rebased(bound[2], out)


def launch_arguments(
    a, b, scale_a, scale_b, bias, out, config: GluonConfig, num_sms: int, precise: bool
) -> tuple[tuple, tuple, dict]:
    """(grid, positional arguments, keyword arguments) of one launch; the first six positional
    arguments change per call (three descriptors, the scales and the bias)."""
    M = a.shape[0]
    N = b.shape[1]
    tiles = (-(-M // config.block_m)) * (-(-N // config.block_n))
    grid_size = min(tiles, num_sms)
    strides, epilogue = epilogue_arguments(a, scale_a, scale_b, bias)
    args = (*descriptors(a, b, out, config), scale_a, scale_b, bias, *strides, config.group_m, grid_size)
    kwargs = dict(
        **epilogue,
        **accumulator_kwargs(a.dtype, config.block_k, precise),
        INSTR_N=instruction_n(config, a.dtype, precise),
        NUM_STAGES=config.num_stages,
        SPLIT=config.epilogue_split,
        STORE_BUFFERS=config.store_buffers,
        PINGPONG=config.schedule == "pingpong",
        num_warps=config.num_warps,
    )
    return (grid_size,), args, kwargs


def fits_in_shared_memory(grid: tuple, args: tuple, kwargs: dict, device: torch.device, shared_memory: int) -> bool:
    """Whether the kernel compiled for these arguments fits the device's shared memory: the tuner
    times bf16 outputs, and an fp32 output stages twice the bytes. Compiles on the first call of a
    signature, after that a lookup in Triton's cache."""
    with torch.cuda.device(device):
        compiled = scaled_mm_gluon_kernel.warmup(*args, grid=grid, **kwargs)
    return compiled.metadata.shared <= shared_memory


class GluonLaunch:
    """One call signature's bound launch of the Gluon kernel, called like matmul.MatmulLaunch:
    `launch(a, b, scale_a, scale_b, bias, out)` for new tensors with the dtypes, shapes, strides and
    alignment of the ones it was bound with (`descriptors`: those of its first call)."""

    kernel = "gluon"

    def __init__(self, bound: BoundLaunch, config: GluonConfig, precise: bool, descriptors: tuple):
        self.bound = bound
        self.config = config
        self.precise = precise
        self.descriptors = descriptors

    def __call__(self, a, b, scale_a, scale_b, bias, out) -> None:
        self.bound(*call_descriptors(self.descriptors, a, b, out), scale_a, scale_b, bias)

    def __repr__(self) -> str:
        accumulation = "precise" if self.precise else "fast"
        return f"GluonLaunch(config={self.config}, accumulation={accumulation})"


def bind_scaled_mm_gluon(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: GluonConfig,
    precise: bool = False,
) -> GluonLaunch:
    """Write scaled_mm into `out` now with the Gluon kernel (the inputs checked as for scaled_mm, M >= 1)
    and return the GluonLaunch that does it again for new tensors of this signature. ValueError where
    the kernel cannot serve the call (`gluon_eligible`) or its compiled form does not fit the device's
    shared memory (an fp32 output of a wide tile)."""
    if not isinstance(config, GluonConfig):
        raise TypeError(f"config must be a GluonConfig, got {type(config).__name__}")
    device = a.device
    if not gluon_eligible(a, b, out, device):
        raise ValueError(
            "the Gluon kernel needs a Hopper GPU, fp8 e4m3 or int8 operands of one dtype, a bf16, fp16 or fp32 "
            "output, A row-major, B K-major (weight.t()), a row-major output and 16-byte aligned rows and pointers"
        )
    num_sms, shared_memory = device_limits(device)
    grid, args, kwargs = launch_arguments(a, b, scale_a, scale_b, bias, out, config, num_sms, precise)
    if not fits_in_shared_memory(grid, args, kwargs, device, shared_memory):
        raise ValueError(
            f"GluonConfig {config} needs more shared memory with a {out.dtype} output than the device's "
            f"{shared_memory} bytes"
        )
    bound = bind_launch(scaled_mm_gluon_kernel, grid, args, kwargs, leading=6, device=device)
    return GluonLaunch(bound, config, precise, args[:3])
