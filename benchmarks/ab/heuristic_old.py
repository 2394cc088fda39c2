"""A copy of src/scaledmm/configs/heuristic.py as of main ca325ff (before the refit of issue 18, item 1b):
the old rule, for benchmarks/ab/heuristic_refit.py and heuristic_refit_ab.py only. Not part of the
package; delete with those scripts once the refit is settled."""

from __future__ import annotations

import dataclasses

import torch
import triton

from scaledmm.configs.config import MatmulConfig

# Shared memory that Triton needs beyond the pipelined A and B tiles (barriers, epilogue layout
# conversion); kept free when the pipeline depth is chosen.
SHARED_MEMORY_RESERVE = 16 * 1024
_MIN_STAGES = 2
# Large M on Hopper and newer: the persistent TMA kernel's tile that won at M >= 4096 on every
# llama3-8b shape of the first H100 A/B in fp8, and came within 5% of the best in int8
# (benchmarks/results/h100-2026-11-27-tma/tma_variants_ab.log; at M = 1024 it lost on qkv). Taken
# from M = 2048 on where it makes at least 3 tiles per SM: with fewer, the last round of the
# persistent grid leaves SMs idle, and on llama3-70b's qkv at tp 4 (N = 2560) it lost to the
# 128x128 tile at M = 2048 and 4096 (heuristic_tma_ab.log, from which this rule was read).
_TMA_TILE = MatmulConfig(128, 256, 128, group_m=8, num_warps=8, num_stages=3, kernel="tma")
_TMA_MIN_M = 2048
_TMA_MIN_TILES_PER_SM = 3
# Its pipeline plus half an fp32 output tile staged for the store: only Hopper-class GPUs (227 KB
# per block) have that much shared memory; a GPU with that much but no TMA runs the pointer kernel.
_TMA_TILE_SHARED_MEMORY = (
    _TMA_TILE.num_stages * (_TMA_TILE.block_m + _TMA_TILE.block_n) * _TMA_TILE.block_k
    + _TMA_TILE.block_m * _TMA_TILE.block_n // 2 * 4
    + SHARED_MEMORY_RESERVE
)

# M <= 16: the swapped kernel (the weight tile as the MMA's tall operand) with 64 weight rows by K
# steps of 256, four warps, five stages, split in two where its tiles leave half the SMs idle and K is
# long. In the first A/B on the preset shapes (benchmarks/ab/small_m_forms.py) this tile won at every
# point, split in two on exactly the shapes this rule splits; on the shapes of llama3-70b (tp 4 and 8)
# and qwen2.5-7b it ran 1.03-1.48x as fast as the rules before it in fp8 and 1.01-1.40x in int8,
# split as here (benchmarks/results/h100-2026-11-27-swap/heuristic_swap_ab.log; splitting the wider
# grids or the shorter K as well ran 0.79-0.97x the unsplit tile). Measured on an H100 only; before
# Hopper the MMA has no 64-row form to fill, and the rule has not been timed there.
_SWAP_TILE = MatmulConfig(16, 64, 256, group_m=8, num_warps=4, num_stages=5, kernel="swapped")
_SWAP_SPLIT_MIN_K = 8192

# fp8 at 16 < M <= 32 with few column tiles (N <= 8448 on an H100): 64-row tiles, their rows past M
# masked. (Measured before the swapped tile took M <= 16:)
# The tuner chose them at M <= 32 in 34 of the 42 fp8 buckets of the presets' shapes with N <= 6144
# and in 3 of the 14 with N >= 19456 (none below M = 24), whose 16-row tiles have programs enough to
# stream the weight (benchmarks/tuning/h100-decode-64-rows.log). On the shapes of llama3-70b (tp 4
# and 8) and qwen2.5-7b they ran 0.98-1.51x as fast as the 16- and 32-row tiles in fp8 (27 of 30
# points faster) but lost in int8 at M = 1 and 16 (0.89-0.99x;
# benchmarks/results/h100-2026-11-27-decode/heuristic_decode_ab.log).
_DECODE_BLOCK_N = 32
_WIDE_TILE_MAX_PROGRAMS_PER_SM = 2


def heuristic_config(M: int, N: int, K: int, dtype: torch.dtype, num_sms: int, shared_memory: int) -> MatmulConfig:
    """A reasonable config for 8-bit operands of `dtype` without any tuning.

    Small M is memory-bound (the weight streams once). Up to M = 16 the swapped kernel runs, 64
    weight rows by 16 tokens, split in two where that leaves SMs idle on a long K. Up to M = 64 tiles
    are long in K and short in M (in fp8, 64 rows masked past M where N is narrow), and the N tile is
    the widest that still gives every SM a program. Large M is compute-bound and takes the classic
    128x128 tile, or from M = 2048 on, where it makes 3 tiles per SM and shared memory allows it
    (Hopper and newer), the TMA kernel's 128x256 tile. The pipeline is as deep as shared memory
    allows, up to 4 stages (5 for the swapped tile).
    """
    tiles = triton.cdiv(M, _TMA_TILE.block_m) * triton.cdiv(N, _TMA_TILE.block_n)
    big = M >= _TMA_MIN_M and N >= _TMA_TILE.block_n and K >= _TMA_TILE.block_k
    big = big and tiles >= _TMA_MIN_TILES_PER_SM * num_sms
    if big and shared_memory >= _TMA_TILE_SHARED_MEMORY:
        return _TMA_TILE
    if M <= _SWAP_TILE.block_m:
        return _swap_config(N, K, num_sms, shared_memory)
    narrow = triton.cdiv(N, _DECODE_BLOCK_N) <= _WIDE_TILE_MAX_PROGRAMS_PER_SM * num_sms
    if M <= 32 and narrow and dtype != torch.int8:
        block_m, block_k, num_warps = 64, 256, 4
    elif M <= 32:
        block_m, block_k, num_warps = 32, 256, 4
    elif M <= 128:
        block_m, block_k, num_warps = 64, 128, 4
    else:
        block_m, block_k, num_warps = 128, 128, 8

    if M <= 64:
        tiles_m = triton.cdiv(M, block_m)
        block_n = next(
            (bn for bn in (128, 64) if triton.cdiv(N, bn) * tiles_m >= num_sms),
            32,
        )
    else:
        block_n = 128

    # Tiles no larger than the problem (but at least the tensor-core minimum).
    block_n = min(block_n, max(16, triton.next_power_of_2(N)))
    block_k = min(block_k, max(32, triton.next_power_of_2(K)))

    return MatmulConfig(
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
        group_m=8,
        num_warps=num_warps,
        num_stages=_stages(block_m, block_n, block_k, 4, shared_memory),
    )


def _swap_config(N: int, K: int, num_sms: int, shared_memory: int) -> MatmulConfig:
    block_n = min(_SWAP_TILE.block_n, max(16, triton.next_power_of_2(N)))
    block_k = min(_SWAP_TILE.block_k, max(32, triton.next_power_of_2(K)))
    split = 2 if triton.cdiv(N, block_n) * 2 <= num_sms and K >= _SWAP_SPLIT_MIN_K else 1
    stages = _stages(_SWAP_TILE.block_m, block_n, block_k, _SWAP_TILE.num_stages, shared_memory)
    return dataclasses.replace(_SWAP_TILE, block_n=block_n, block_k=block_k, num_stages=stages, split_k=split)


def _stages(block_m: int, block_n: int, block_k: int, most: int, shared_memory: int) -> int:
    """The deepest pipeline up to `most` stages that shared memory holds (at least two)."""
    stage_bytes = (block_m + block_n) * block_k  # one byte per 8-bit element
    num_stages = most
    while num_stages > _MIN_STAGES and num_stages * stage_bytes > shared_memory - SHARED_MEMORY_RESERVE:
        num_stages -= 1
    return num_stages
