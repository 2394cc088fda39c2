"""The search space: which configs are worth timing for one (M, N, K) on one GPU."""

from __future__ import annotations

import dataclasses
import itertools

import triton

from scaledmm.configs import MatmulConfig
from scaledmm.configs.heuristic import SHARED_MEMORY_RESERVE, fills_every_split
from scaledmm.configs.lookup import unfit_reason

MAX_ACCUMULATORS_PER_THREAD = 128  # 32-bit accumulators; more spills registers
MIN_ACCUMULATORS_PER_THREAD = 4  # fewer leaves warps idle
GROUP_M_CHOICES = (1, 4, 16)  # tried on the best few configs, which start with 8
SPLIT_K_CHOICES = (2, 4, 8, 16)
MIN_K_STEPS_PER_SPLIT = 2  # fewer leaves a program too little to stream for its fixed costs
# The TMA kernel's tiles (block_m, block_n), all with K steps of 128: K steps of 64 lost on every
# shape of the first H100 A/B (benchmarks/results/h100-2026-11-27-tma/tma_variants_ab.log).
TMA_TILES = ((64, 128), (64, 256), (128, 128), (128, 256), (256, 128))
TMA_BLOCK_K = 128
TMA_MIN_M = 128  # below, the weight streams (memory-bound) and the pointer kernel's small tiles win
OUT_BYTES_BUDGETED = 4  # the TMA kernel stages half an output tile in shared memory: fp32, the widest
# The pointer kernel's pipeline depths, warps and tallest tile, pruned by what won the 459 tuned
# buckets of the H100 and H200 files: two stages won 3, eight warps at M <= 64 one (with two stages),
# 256-row pointer tiles none (at large M the TMA kernel's 256-row tiles win where so tall a tile
# pays). Pruning them halves the space and the compile work with it; the A/B of the pruned tuner
# against the exhaustive one is benchmarks/ab/tuner_cost.py.
POINTER_STAGES = (3, 4, 5)
POINTER_MAX_BLOCK_M = 128
POINTER_DECODE_WARPS = (4,)  # M <= 64
SWAP_MAX_M = 64  # the swapped kernel's candidates: M small enough for one tile row of tokens
SWAP_BLOCK_N = (64, 128)  # its weight rows per program: Hopper's wgmma takes 64 per warp group
# The block-scaled kernel offers its swapped form and split-K further, to mid M (issue 20, session
# 13): at M = 96-256 the vendor's block mode streams the weight at 0.7-3.0 TB/s (2 * M flops per
# weight byte, around the H200's ~410 flops per HBM byte), while unsplit pointer tiles leave SMs idle
# on narrow weights (56 tiles of 128 x 128 on 7168 x 16384 at M = 128). Swapped tiles take at most
# SWAP_MAX_TOKENS tokens (M = 129-256: two rows of tiles): 256 tokens by 64 weight rows would hold
# 256 fp32 accumulators per thread with its block's partial, past the register rule.
BLOCK_SWAP_MAX_M = 256
SWAP_MAX_TOKENS = 128
# The Gluon kernel's candidates (kernels/matmul_gluon.py; Hopper only, `gluon_configs`): the three
# fastest of the first H200 A/B (llama3-8b gate_up, 28672 x 4096, M = 4096; session 9): ping-pong
# 128x128 s5 with 64-column stores (fp8 1,333 TFLOP/s against cuBLAS's 1,352 and our TMA kernel's
# 1,199; int8 1,565 TOP/s against 1,098), the same with whole-tile stores (1,296; int8 1,425) and
# ping-pong 64x256 s4 st64 (1,273; int8 1,416); and two cooperative forms whose sm_90 code was clean
# (docs/performance.md, "Warp-specialised kernels: registers..."): 128x128 c2 s6, the fastest
# cooperative one in int8 (1,371), and 128x256 c2 s4 st64, the widest tile without a spill (fp8 n = 256
# wgmma, A read half as often). From M = 256: with them from M = 128 on llama3-8b (session 10,
# docs/performance.md), they were the best Triton config in 17 of 40 buckets at M = 128-768, int8 by
# 1.08-1.34x over the previous winner from M = 256 on, and at M = 128 in one bucket of eight, by 2%.
GLUON_MIN_M = 256
GLUON_CONFIGS = (
    MatmulConfig(128, 128, 128, num_warps=4, num_stages=5, kernel="gluon", pingpong=True, store_n=64),
    MatmulConfig(128, 128, 128, num_warps=4, num_stages=5, kernel="gluon", pingpong=True),
    MatmulConfig(64, 256, 128, num_warps=4, num_stages=4, kernel="gluon", pingpong=True, store_n=64),
    MatmulConfig(128, 128, 128, num_warps=8, num_stages=6, kernel="gluon"),
    MatmulConfig(128, 256, 128, num_warps=8, num_stages=4, kernel="gluon", store_n=64),
)
GLUON_CAPABILITY = (9, 0)  # the Gluon kernel is written in sm_90's wgmma and setmaxnreg


def _block_m_choices(M: int) -> tuple[int, ...]:
    # Tiles of about M rows: shorter ones waste tensor-core work on padding rows, much taller ones
    # leave SMs idle. Large M also tries 256-row tiles (compute-bound, few programs needed). Small M
    # also tries 64-row tiles (the rows past M masked, never loaded): in a tuning run without them
    # (benchmarks/tuning/h100x4-decode-preload.log), the fp8 winners at M = 64, all 64-row tiles,
    # beat the 16-row winners at M = 16 on four of the eight preset shapes (qwen3-4b o: 7.5 against
    # 8.0 us), with four times the rows to read and compute.
    if M <= 16:
        return (16, 64)
    if M <= 64:
        return (16, 32, 64)
    if M <= 128:
        return (32, 64, 128)
    if M <= 512:
        return (64, 128)
    return (64, 128, 256)


def _pointer_block_k_choices(M: int) -> tuple[int, ...]:
    # K steps of 64 won none of the 459 tuned buckets of the H100 and H200 files, where they were
    # tried from M = 65 up: the pipeline's fixed cost per step is too large a share of so short a step.
    if M <= 64:
        return (128, 256, 512)
    if M <= 512:
        return (128, 256)
    return (128,)


def _splits(M: int, N: int, K: int, config: MatmulConfig, num_sms: int) -> list[int]:
    """Split-K exists for tile grids that leave SMs idle (small M, small N): split until there are
    at most two programs per SM, keeping a few K steps per program and none without
    (`fills_every_split`)."""
    tiles = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n)
    if tiles >= num_sms:
        return [1]
    k_steps = triton.cdiv(K, config.block_k)
    return [1] + [
        s
        for s in SPLIT_K_CHOICES
        if tiles * s <= 2 * num_sms and k_steps >= MIN_K_STEPS_PER_SPLIT * s and fills_every_split(k_steps, s)
    ]


def _split_k_choices(M: int, N: int, K: int, config: MatmulConfig, num_sms: int) -> list[int]:
    # Split programs stream the weight: the smallest block_m of the space, four warps and a pipeline
    # of 3+ stages are what won at small M in tuning runs without split-K; other configs stay unsplit.
    if config.block_m != _block_m_choices(M)[0] or config.num_warps != 4 or config.num_stages < 3:
        return [1]
    return _splits(M, N, K, config, num_sms)


def candidate_configs(
    M: int, N: int, K: int, shared_memory: int, num_sms: int, tma: bool = True, gluon: bool = False
) -> list[MatmulConfig]:
    """Configs to time at this M, group_m fixed at 8 (see `group_variants`), pruned by what the GPU
    can hold (shared memory for the pipeline, registers for the accumulator) and what fits the problem;
    split-K variants where the tile grid leaves SMs idle; the swapped kernel's tiles at small M; with
    `tma` (a GPU that has it), the TMA kernel's tiles at compute-bound M; with `gluon` (a Hopper GPU,
    GLUON_CAPABILITY), the Gluon kernel's few configs at large M."""
    # Tiles no larger than the problem: choices beyond it collapse onto the smallest that covers it.
    n_cap = max(32, triton.next_power_of_2(N))
    k_cap = max(32, triton.next_power_of_2(K))
    block_n_choices = sorted({min(bn, n_cap) for bn in (32, 64, 128, 256)})
    block_k_choices = sorted({min(bk, k_cap) for bk in _pointer_block_k_choices(M)})
    block_m_choices = [bm for bm in _block_m_choices(M) if bm <= POINTER_MAX_BLOCK_M]
    configs = []
    for bm, bn, bk, warps, stages in itertools.product(
        block_m_choices,
        block_n_choices,
        block_k_choices,
        POINTER_DECODE_WARPS if M <= SWAP_MAX_M else (4, 8),
        POINTER_STAGES,
    ):
        if stages * (bm + bn) * bk > shared_memory - SHARED_MEMORY_RESERVE:
            continue
        per_thread = bm * bn // (warps * 32)
        if not MIN_ACCUMULATORS_PER_THREAD <= per_thread <= MAX_ACCUMULATORS_PER_THREAD:
            continue
        config = MatmulConfig(bm, bn, bk, group_m=8, num_warps=warps, num_stages=stages)
        configs += [dataclasses.replace(config, split_k=s) for s in _split_k_choices(M, N, K, config, num_sms)]
    configs += _swap_configs(M, N, K, shared_memory, num_sms)
    configs += _tma_configs(M, N, K, shared_memory) if tma else []
    return configs + (gluon_configs(M, N, K, shared_memory) if gluon else [])


def _swap_configs(
    M: int,
    N: int,
    K: int,
    shared_memory: int,
    num_sms: int,
    block_ks: tuple[int, ...] = (128, 256, 512),
    max_m: int = SWAP_MAX_M,
    tiles_held: int = 1,
) -> list[MatmulConfig]:
    """The operand-swapped kernel's candidates up to `max_m`: tiles of 16 to SWAP_MAX_TOKENS tokens
    (one row of them up to SWAP_MAX_TOKENS), 64 or 128 weight rows (the MMA's tall side), four warps,
    K steps of 128 to 512 (`block_ks`; the block-scaled form's is its scale block) and 3 to 5
    stages, split where the grid leaves SMs idle; `tiles_held` fp32 tiles per program count against
    the register rule's upper bound (the block-scaled form holds its block's partial too). In the
    first A/B (fp8, M = 1, 4, 16, the eight preset shapes;
    benchmarks/results/h100-2026-11-27-swap/small_m_forms_ab.log) 64 weight rows by 256 won at every
    point, 3 or 5 stages, split in two on the K = 9728 and 14336 shapes."""
    if M > max_m:
        return []
    block_m = min(SWAP_MAX_TOKENS, max(16, triton.next_power_of_2(M)))
    n_cap = max(16, triton.next_power_of_2(N))
    k_cap = max(32, triton.next_power_of_2(K))
    configs = []
    for bn, bk, stages in itertools.product(
        sorted({min(bn, n_cap) for bn in SWAP_BLOCK_N}), sorted({min(bk, k_cap) for bk in block_ks}), (3, 4, 5)
    ):
        if stages * (block_m + bn) * bk > shared_memory - SHARED_MEMORY_RESERVE:
            continue
        per_thread = block_m * bn // (4 * 32)
        if per_thread < MIN_ACCUMULATORS_PER_THREAD or tiles_held * per_thread > MAX_ACCUMULATORS_PER_THREAD:
            continue
        config = MatmulConfig(block_m, bn, bk, group_m=8, num_warps=4, num_stages=stages, kernel="swapped")
        configs += [dataclasses.replace(config, split_k=s) for s in _splits(M, N, K, config, num_sms)]
    return configs


def _tma_configs(M: int, N: int, K: int, shared_memory: int) -> list[MatmulConfig]:
    """The persistent TMA kernel's candidates (compute-bound M only, tiles no larger than the problem).
    Their shared memory is estimated with half an fp32 output tile staged for the store, so that a
    config tuned with bf16 outputs mostly fits calls asking for fp32 too; where the compiled kernel
    still needs more, such calls run the pointer kernel (matmul_tma.fits_in_shared_memory)."""
    if M < TMA_MIN_M or TMA_BLOCK_K > max(32, triton.next_power_of_2(K)):
        return []
    configs = []
    for (bm, bn), warps, stages in itertools.product(TMA_TILES, (4, 8), (3, 4, 5)):
        if bm not in _block_m_choices(M) or bn > max(32, triton.next_power_of_2(N)):
            continue
        pipeline = stages * (bm + bn) * TMA_BLOCK_K
        epilogue = bm * bn // 2 * OUT_BYTES_BUDGETED
        if pipeline + epilogue > shared_memory - SHARED_MEMORY_RESERVE:
            continue
        if not MIN_ACCUMULATORS_PER_THREAD <= bm * bn // (warps * 32) <= MAX_ACCUMULATORS_PER_THREAD:
            continue
        configs.append(MatmulConfig(bm, bn, TMA_BLOCK_K, group_m=8, num_warps=warps, num_stages=stages, kernel="tma"))
    return configs


def gluon_configs(M: int, N: int, K: int, shared_memory: int) -> list[MatmulConfig]:
    """The Gluon kernel's candidates (GLUON_CONFIGS) from M = GLUON_MIN_M, tiles no larger than the
    problem, where shared memory holds them (configs.lookup.unfit_reason: the staging counted for bf16
    outputs, what the tuner times; a call whose output does not fit runs the TMA kernel instead)."""
    if M < GLUON_MIN_M:
        return []
    n_cap, k_cap = max(32, triton.next_power_of_2(N)), max(32, triton.next_power_of_2(K))
    return [
        c
        for c in GLUON_CONFIGS
        if c.block_n <= n_cap and c.block_k <= k_cap and unfit_reason(c, M, N, shared_memory) is None
    ]


def block_candidate_configs(
    M: int, N: int, K: int, block_k: int, shared_memory: int, num_sms: int
) -> list[MatmulConfig]:
    """The block-scaled kernel's candidates (kernels/matmul_block.py), group_m fixed at 8: its K step
    is the scale block (block_k), so the search is over the output tile, warps and stages. Tiles of
    about M rows as for the pointer kernel (16- and 64-row tiles at decode), 32 to 256 columns (no
    larger than N), 4 or 8 warps, 2 to 5 stages where shared memory holds them. The kernel holds two
    fp32 tiles per program (a block's fresh product and the running sum), so the register rule counts
    the accumulator twice. Split-K variants where the tile grid leaves SMs idle
    (`_block_split_k_choices`): in the H200 re-tune of session 11 they won most buckets from M = 1 to
    48. Up to BLOCK_SWAP_MAX_M, the swapped form's tiles as for per-channel scales (`_swap_configs`,
    K steps of one scale block, two fp32 tiles held)."""
    n_cap = max(32, triton.next_power_of_2(N))
    configs = []
    for bm, bn, warps, stages in itertools.product(
        _block_m_choices(M), sorted({min(bn, n_cap) for bn in (32, 64, 128, 256)}), (4, 8), (2, 3, 4, 5)
    ):
        if stages * (bm + bn) * block_k > shared_memory - SHARED_MEMORY_RESERVE:
            continue
        if not MIN_ACCUMULATORS_PER_THREAD <= 2 * bm * bn // (warps * 32) <= MAX_ACCUMULATORS_PER_THREAD:
            continue
        config = MatmulConfig(bm, bn, block_k, group_m=8, num_warps=warps, num_stages=stages)
        configs += [dataclasses.replace(config, split_k=s) for s in _block_split_k_choices(M, N, K, config, num_sms)]
    swapped = _swap_configs(M, N, K, shared_memory, num_sms, (block_k,), max_m=BLOCK_SWAP_MAX_M, tiles_held=2)
    return configs + [c for c in swapped if c.block_k == block_k]  # not shortened to a small K's size


def _block_split_k_choices(M: int, N: int, K: int, config: MatmulConfig, num_sms: int) -> list[int]:
    # At decode (M <= SWAP_MAX_M), the pointer kernel's rule. Above it every tile of 3+ stages may
    # split: at mid M a tall tile reads the weight fewer times than the smallest, and still leaves
    # SMs idle on a narrow weight (56 tiles of 128 x 128 on 7168 x 16384).
    if M <= SWAP_MAX_M:
        return _split_k_choices(M, N, K, config, num_sms)
    return _splits(M, N, K, config, num_sms) if config.num_stages >= 3 else [1]


def group_variants(config: MatmulConfig, M: int) -> list[MatmulConfig]:
    """The same tile with other program groupings; none where one tile row covers M or for the
    swapped kernel (no effect)."""
    if config.kernel == "swapped" or triton.cdiv(M, config.block_m) <= 1:
        return []
    return [dataclasses.replace(config, group_m=g) for g in GROUP_M_CHOICES if g != config.group_m]
