"""The untuned choice of a config: a rule on M and N that every tuned file must beat."""

from __future__ import annotations

import dataclasses

import torch
import triton

from scaledmm.configs.config import MatmulConfig

# Shared memory that Triton needs beyond the pipelined A and B tiles (barriers, epilogue layout
# conversion); kept free when the pipeline depth is chosen.
SHARED_MEMORY_RESERVE = 16 * 1024
_MIN_STAGES = 2
# The rule below was refit (issue 18, item 1b) on the winners of the 564 tuned buckets of the H100 and
# H200 files (llama3-8b and qwen3-4b, int8 and fp8, 23 values of M each) and the H200 tuner A/B on
# qwen2.5-7b (benchmarks/results/h200-2026-12-01/tuner_cost_ab_unpruned.log); bucket counts below are
# of those. `benchmarks/ab/heuristic_refit.py` prints the analysis, docs/performance.md ("Heuristic
# refit (issue 18): proposal") its tables; "x old" is the time of the rule before the refit over the
# winner's, timed together in the H200 tuning runs.

# M <= 32: the swapped kernel (the weight tile as the MMA's tall operand), 64 weight rows by K steps of
# 256, one tile row of 16 or 32 tokens, four warps, five stages; split in two where its tiles leave
# half the SMs idle and K is long. Up to M = 16 it won every point of the first H100 A/B
# (benchmarks/results/h100-2026-11-27-swap/heuristic_swap_ab.log). At M = 24 and 32 the 32-token
# swapped tile won 36 of 48 buckets (8 of them split in two, all on shapes this rule splits: 2560 x
# 9728, and 4096 x 14336 on the H200), where the rule before ran pointer tiles at x old 1.07-1.32 (H200).
# Before Hopper the MMA has no 64-row form to fill; not timed there.
_SWAP_TILE = MatmulConfig(16, 64, 256, group_m=8, num_warps=4, num_stages=5, kernel="swapped")
_SWAP_MAX_M = 32
_SWAP_SPLIT_MIN_K = 8192

# Above M = 32, a tile from a short list, chosen by a cost model of the grid (`_grid_cost`): a
# program's time per K step is its bm x bn multiply-adds plus _LOAD_COST for each of the bm + bn
# operand bytes it loads, and the busiest SM runs ceil(tiles / SMs) programs; the cheapest grid wins,
# ties going to the larger tile (lists run large to small). At decode the load term dominates, and the
# model takes the narrowest tile that still gives about every SM a program (64 x 32 on N <= 4096, 64 x
# 64 on N = 6144, 64 x 128 on N = 28672); at large M the multiply-adds dominate, and it weighs the
# larger tile's fewer loads per output against a ragged last wave (e.g. 128 x 256 where it fills the
# waves as well as 128 x 128). _LOAD_COST = 64 makes a 128 x 128 tile cost as much in loads as in
# multiply-adds; 32 to 96 pick the winner's family in 396-399 of the 564 buckets, 0 (waves alone) in 307.
_LOAD_COST = 64


@dataclasses.dataclass(frozen=True)
class _Tile:
    """A candidate of the rule and the deepest pipeline it takes where shared memory holds it."""

    config: MatmulConfig
    most_stages: int


# 32 < M <= 64: one tile row of 64 (the rows past M masked, never loaded), four warps, K steps of 256,
# or 512 where the grid is under one program per SM, K >= 8192 and shared memory still holds four
# stages of them (64 x 32 tiles: 8 of those 13 buckets won with 64 x 32 x 512, the other 5 with a
# swapped 64 x 64 x 256 tile split in two); all 50 winners had 64 rows, 40 K steps of 256 or 512.
# The rule before took K steps of 128: x old 1.26-1.87 on 14 of the 18 H200 buckets.
_DECODE_TILES = tuple(_Tile(MatmulConfig(64, bn, 256, group_m=8, num_warps=4), 5) for bn in (128, 64, 32))
_LONG_K = 8192
_LONG_STEP_MIN_STAGES = 4

# M > 64: 64 x 128 and 64 x 64 pointer tiles, four warps (all 110 64-row winners there), K steps of
# 256 up to M = 128 in int8 and 256 in fp8 (38 of those 47 winners), of 128 above (58 of 63), or a
# 128-row tile: in int8 the pointer kernel's 128 x 128 x 128 with four warps and three stages (54 of
# its 67 wins; 25 of the 32 H200 int8 buckets from M = 768, where the rule before, an eight-warp
# pointer or the TMA tile, ran x old 1.14-1.59); in fp8 on Hopper (shared memory for it) from M = 256
# the TMA kernel's 128 x 128 (four warps, five stages) or 128 x 256 (eight warps, three stages), 101
# of the 112 fp8 winners from M = 512, and below M = 256 the pointer kernel's (all 13 128-row fp8
# winners there). On the H100 the TMA kernel's 256 x 128 and 128 x 256 tiles won 32 of the 64 int8
# buckets from M = 768 (the H200: none); a rule on SM count and shared memory cannot tell the cards
# apart, and the pointer tile is the H200's choice.
_MID_TILES = (
    _Tile(MatmulConfig(64, 128, 256, group_m=8, num_warps=4), 5),
    _Tile(MatmulConfig(64, 64, 256, group_m=8, num_warps=4), 5),
)
_MID_LONG_STEP_MAX_M = 256
_MID_LONG_STEP_MAX_M_INT8 = 128
_MID_SHORT_STEP_STAGES = 4
_POINTER_BIG_TILE = _Tile(MatmulConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=3), 3)
_TMA_TILES = (
    _Tile(MatmulConfig(128, 256, 128, group_m=8, num_warps=8, num_stages=3, kernel="tma"), 3),
    _Tile(MatmulConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=5, kernel="tma"), 5),
)
_TMA_MIN_M = 256


def heuristic_config(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int, shared_memory: int) -> MatmulConfig:
    """A reasonable config for 8-bit operands of `dtype` without any tuning.

    Up to M = 32 the swapped kernel runs, 64 weight rows by 16 or 32 tokens, split in two where that
    leaves SMs idle on a long K. Above, a tile from a short list per M range, the one whose grid a
    cost model finds cheapest (`_grid_cost`: waves of programs, each its multiply-adds plus its
    loads): 64-row tiles up to M = 64; 64- or 128-row tiles above, the 128-row ones on the TMA kernel
    for fp8 from M = 256 on Hopper-class GPUs (shared memory for it), on the pointer kernel otherwise.
    The pipeline is as deep as shared memory allows, up to a depth per tile.
    """
    if M <= _SWAP_MAX_M:
        return _swap_config(M, N, K, num_sms, shared_memory)
    if M <= 64:
        tile = _cheapest(M, N, _DECODE_TILES, num_sms)
        bn = tile.config.block_n
        long_step = K >= _LONG_K and triton.cdiv(N, bn) < num_sms
        long_step = long_step and _LONG_STEP_MIN_STAGES * (64 + bn) * 512 <= shared_memory - SHARED_MEMORY_RESERVE
        return _fitted(tile, N, K, 512 if long_step else 256, shared_memory)
    big = [_POINTER_BIG_TILE]
    if dtype != torch.int8 and M >= _TMA_MIN_M:
        big = [t for t in _TMA_TILES if _tma_fits(t.config, N, K, shared_memory)] or big
    tile = _cheapest(M, N, (*big, *_MID_TILES), num_sms)
    long_step_max_m = _MID_LONG_STEP_MAX_M_INT8 if dtype == torch.int8 else _MID_LONG_STEP_MAX_M
    if tile in _MID_TILES and M > long_step_max_m:
        tile = _Tile(dataclasses.replace(tile.config, block_k=128), _MID_SHORT_STEP_STAGES)
    return _fitted(tile, N, K, tile.config.block_k, shared_memory)


def grid_waves(M: int, N: int, config: MatmulConfig, num_sms: int) -> int:
    """How many programs the busiest SM runs for an [M, N] output: ceil(programs / SMs), a program
    per output tile and K split (the pointer and swapped kernels' grid; the persistent TMA kernel
    loops over as many tiles per program)."""
    tiles = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n)
    return triton.cdiv(tiles * config.split_k, num_sms)


def _grid_cost(M: int, N: int, config: MatmulConfig, num_sms: int) -> int:
    """The busiest SM's work per K step: its programs (`grid_waves`) times each one's multiply-adds
    and operand loads."""
    per_program = config.block_m * config.block_n + _LOAD_COST * (config.block_m + config.block_n)
    return grid_waves(M, N, config, num_sms) * per_program


def _cheapest(M: int, N: int, tiles: tuple[_Tile, ...], num_sms: int) -> _Tile:
    """The tile of least `_grid_cost`; of equal ones, the first (the larger: lists run large to small)."""
    best, best_cost = tiles[0], _grid_cost(M, N, tiles[0].config, num_sms)
    for tile in tiles[1:]:
        cost = _grid_cost(M, N, tile.config, num_sms)
        if cost < best_cost:
            best, best_cost = tile, cost
    return best


def _fitted(tile: _Tile, N: int, K: int, block_k: int, shared_memory: int) -> MatmulConfig:
    """The tile no larger than the problem (but at least the tensor-core minimum), with its K step
    (halved where shared memory does not hold two stages of it: GPUs with less than Hopper's) and the
    deepest pipeline that shared memory holds."""
    config = tile.config
    if config.kernel == "tma":
        return config  # chosen only where the problem and shared memory hold it whole
    block_n = min(config.block_n, max(16, triton.next_power_of_2(N)))
    block_k = min(block_k, max(32, triton.next_power_of_2(K)))
    while block_k > 32 and _MIN_STAGES * (config.block_m + block_n) * block_k > shared_memory - SHARED_MEMORY_RESERVE:
        block_k //= 2
    stages = _stages(config.block_m, block_n, block_k, tile.most_stages, shared_memory)
    return dataclasses.replace(config, block_n=block_n, block_k=block_k, num_stages=stages)


def _tma_fits(config: MatmulConfig, N: int, K: int, shared_memory: int) -> bool:
    """Whether the TMA tile is no larger than the problem and shared memory holds its pipeline, half an
    fp32 output tile staged for the store, and the reserve: only Hopper-class GPUs (227 KB per block)
    have that much."""
    pipeline = config.num_stages * (config.block_m + config.block_n) * config.block_k
    needed = pipeline + config.block_m * config.block_n // 2 * 4 + SHARED_MEMORY_RESERVE
    fits_problem = config.block_n <= triton.next_power_of_2(N) and config.block_k <= triton.next_power_of_2(K)
    return fits_problem and needed <= shared_memory


def _swap_config(M: int, N: int, K: int, num_sms: int, shared_memory: int) -> MatmulConfig:
    tile = _Tile(
        dataclasses.replace(_SWAP_TILE, block_m=max(_SWAP_TILE.block_m, triton.next_power_of_2(M))),
        _SWAP_TILE.num_stages,
    )
    config = _fitted(tile, N, K, _SWAP_TILE.block_k, shared_memory)
    split = 2 if triton.cdiv(N, config.block_n) * 2 <= num_sms and K >= _SWAP_SPLIT_MIN_K else 1
    return dataclasses.replace(config, split_k=split)


def _stages(block_m: int, block_n: int, block_k: int, most: int, shared_memory: int) -> int:
    """The deepest pipeline up to `most` stages that shared memory holds (at least two)."""
    stage_bytes = (block_m + block_n) * block_k  # one byte per 8-bit element
    num_stages = most
    while num_stages > _MIN_STAGES and num_stages * stage_bytes > shared_memory - SHARED_MEMORY_RESERVE:
        num_stages -= 1
    return num_stages


# Without a tuned bucket, which backend `auto` runs. On Hopper (compute capability 9.0) the vendor's
# fp8 kernel from M = 65 on: in the H200 bench of 2026-12-01 the heuristic's tiles lost to
# torch._scaled_mm at all 8 public shapes from M = 256 on (0.70-0.97x fast, 0.59-0.71x precise, like
# for like) and at 5 of 8 at M = 128, and won at every point up to M = 64 (1.07-2.71x;
# benchmarks/results/h200-2026-12-01/bench-accumulation). Block-scaled fp8 follows the same rule: in
# its H200 re-tune of session 11 the block heuristic's time over the vendor's was 0.90 (geomean of 9
# shapes) at M = 64 and 1.12 at M = 96, 1.22 at 192, 2.1-2.6 from 384 on. INT8 stays ours (2.3x torch._int_mm plus
# its epilogue on an H100, docs/performance.md); other GPUs stay ours too, unmeasured. Where the
# vendor cannot serve a call, `auto` runs ours anyway (runtime.auto_backend).
UNTUNED_VENDOR_MIN_M = 65


# torch._scaled_mm's block mode refuses an M that is not a multiple of 4 (cuBLASLt wants scale_a's
# column stride, M floats, 16-byte aligned, and torch takes no stride but M): kernels/vendor.py runs
# such M on rows padded to one, at the cost of two pad kernels. In CUDA graphs on an H200 they added
# 6.4-8.6 us at M = 97-257 and 9-22 us at M = 1001 over the vendor at the next multiple of 4 (11
# block shapes; benchmarks/ab/block_vendor_ragged_m.py, session 12): about 6.5 us plus 1 us per MB of
# `a`. Without tuned times the padded vendor beat the block heuristic at every held-out point at M =
# 257 and 1001 (8 shapes) but at 5 of 16 at M = 97 and 131, so below UNTUNED_BLOCK_PADDED_MIN_M
# untuned calls at such M run ours.
VENDOR_BLOCK_M_ALIGN = 4
UNTUNED_BLOCK_PADDED_MIN_M = 256


def block_vendor_padding_us(M: int, K: int) -> float:
    """What padding the rows of an fp8 `a` [M, K] for torch._scaled_mm's block mode costs (0 where M
    needs none), per the H200 measurement above."""
    return 0.0 if M % VENDOR_BLOCK_M_ALIGN == 0 else 6.5 + M * K / 1e6


def padded_block_vendor_loses(M: int, K: int, vendor_us: float | None, triton_us: float | None) -> bool:
    """Whether a block-scaled call at M runs ours although its bucket's vendor was the faster at
    tuning (`vendor_us` against ours' `triton_us`; None where not recorded): where M must be padded
    for the vendor and the padding costs its lead, or, the times unknown, as untuned calls do."""
    if vendor_us is None or triton_us is None:
        return _untuned_block_runs_ours(M)
    return vendor_us + block_vendor_padding_us(M, K) >= triton_us


def _untuned_block_runs_ours(M: int) -> bool:
    return M % VENDOR_BLOCK_M_ALIGN != 0 and M < UNTUNED_BLOCK_PADDED_MIN_M


def untuned_backend(M: int, dtype: torch.dtype, capability: tuple[int, int], block: bool = False) -> str:
    """The backend `auto` takes for a shape no tuned file covers (`block`: with block scales)."""
    hopper = capability == (9, 0)
    vendor = hopper and dtype != torch.int8 and M >= UNTUNED_VENDOR_MIN_M
    return "torch" if vendor and not (block and _untuned_block_runs_ours(M)) else "triton"


# Block-scaled fp8 at decode (M <= 64): the swapped block kernel, 16 to 64 tokens by 64 weight rows,
# K steps of the scale block, four warps and four stages, split K as far as the grid takes (at most
# two programs per SM, two K blocks per split). In the H200 re-tune of session 11 (9 DeepSeek-V3 and
# qwen3-8b shapes, M = 1-64, 81 buckets; docs/performance.md) swapped configs won 73 (65 of them 64
# weight rows wide), the winner's split was this rule's in 59 and its whole tile (kind, rows,
# columns, split) in 53; the unsplit pointer tile of the rule before ran 1.0-2.8x the winner's time.
# Re-tuned in session 12 with the swapped kernel's scales prefetched (its next revision): swapped won
# 75 of 81, and this rule's tile ran 1.02x the winner's time (geomean; at most 1.23, 7168 x 2048 at
# M = 48-64, where a pointer tile won).
_BLOCK_HEURISTIC_SWAP_MAX_M = 64
_BLOCK_SPLITS = (8, 4, 2)
_BLOCK_MIN_K_BLOCKS_PER_SPLIT = 2


def fills_every_split(k_steps: int, split_k: int) -> bool:
    """Whether splitting k_steps K steps split_k ways leaves no split without steps: split_k.split_range
    gives each split ceil(k_steps / split_k) of them, so the last ones may get none (9 in 4: 3, 3, 3,
    0). An empty split is a program that loads nothing and still takes a slot and an arrival."""
    return triton.cdiv(k_steps, split_k) * (split_k - 1) < k_steps


def block_heuristic_config(M: int, N: int, K: int, block_k: int, num_sms: int, shared_memory: int) -> MatmulConfig:
    """An untuned tile for block-scaled fp8 (kernels/matmul_block.py): K steps of the scale block and
    the deepest pipeline up to 4 stages that shared memory holds. Up to M = 64 the swapped kernel,
    split where its grid leaves SMs idle (see _BLOCK_HEURISTIC_SWAP_MAX_M); above, pointer tiles of
    rows by M (a first rule; untuned calls run the vendor there on Hopper, `untuned_backend`)."""
    if M <= _BLOCK_HEURISTIC_SWAP_MAX_M:
        block_m, block_n = max(16, triton.next_power_of_2(M)), min(64, max(16, triton.next_power_of_2(N)))
        stages = _stages(block_m, block_n, block_k, 4, shared_memory)
        tiles = triton.cdiv(N, block_n)
        k_blocks = triton.cdiv(K, block_k)
        fits = [s for s in _BLOCK_SPLITS if tiles * s <= 2 * num_sms and k_blocks >= _BLOCK_MIN_K_BLOCKS_PER_SPLIT * s]
        # Only where the grid leaves SMs idle (the tuner's rule), and never with a split left without
        # blocks.
        split = next((s for s in fits if tiles < num_sms and fills_every_split(k_blocks, s)), 1)
        return MatmulConfig(
            block_m, block_n, block_k, group_m=8, num_warps=4, num_stages=stages, split_k=split, kernel="swapped"
        )
    if M <= 256:
        block_m, block_n, num_warps = 64, 128, 4
    else:
        block_m, block_n, num_warps = 128, 128, 8
    block_n = min(block_n, max(16, triton.next_power_of_2(N)))
    stages = _stages(block_m, block_n, block_k, 4, shared_memory)
    return MatmulConfig(block_m, block_n, block_k, group_m=8, num_warps=num_warps, num_stages=stages)
