"""A/B of FP8 accumulation modes on Hopper (issue 16), in one run on one card: precision and speed.

Triton's NVIDIA backend lets every fp8 `tl.dot` on sm_90 accumulate in the tensor core's reduced-precision
accumulator (`max_num_imprecise_acc_default = 2**30`): about 14 significant bits, truncated, per wgmma
instruction of 32 K-elements (docs/accumulation-notes.md). The modes compared, each in prototype copies
of the package's three kernels (pointer, swapped, persistent TMA; the package's own kernels are not
touched), selected by one constexpr:

- fast:     `tl.dot(a, b, acc)`, Triton's default (the package's "fast" accumulation);
- mnia:     `tl.dot(a, b, acc, max_num_imprecise_acc=min(BLOCK_K, 128))`: Triton accumulates each
            128 K-elements in a fresh wgmma accumulator and adds it into the fp32 one;
- twolevel: `acc += tl.dot(a, b)` on K steps of at most 128 (a BLOCK_K of 256 is loaded in two halves);
- mnia32:   `max_num_imprecise_acc=32`: every wgmma instruction promoted (the most precise wgmma form;
            in the precision part by default, in the timing part with --modes).

Part 1, precision on the GPU: fp8 e4m3 operands, per-tensor scales, fp32 output, M = 128, N = 256,
K in {512, 4096, 16384}, every prototype tile and mode and torch._scaled_mm (both use_fast_accum), against
a float64 reference of the same operands: max abs error, relative Frobenius error, elements outside
rtol = atol = 2e-3, and error over three bounds: the package's precise-mode `testing.error_bound` ("pkg"), the worst
case of the accumulator model ("model") and the model's partial-sum bound ("psum"). Each kernel's
matrix instructions, promotion adds and ptxas diagnostics are printed with it.

Part 2, speed by ../shared/BENCHMARKING.md: llama3-8b qkv, gate_up and down at M = 1 .. 4096, fp8
per-token x per-channel scales, bf16 bias and output, the package's untuned heuristic tile per point
(swapped at M <= 16, pointer up to 1024, TMA from 2048), every mode against torch._scaled_mm with
use_fast_accum True and False, all timed together (time_interleaved). Where cuBLAS refuses fast
accumulation, its precise time stands in the fast column, marked '*'. Each output's first 128 rows
are checked against the float64 reference first (error / package bound, printed after the table).

    PYTHONPATH=src python3 benchmarks/ab/accumulation.py                 # GPU, about 2-4 minutes
    PYTHONPATH=src python3 benchmarks/ab/accumulation.py --modes fast mnia twolevel mnia32
    PYTHONPATH=src python3 benchmarks/ab/accumulation.py --compile-report   # no GPU: sm_90 SASS facts
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/ab/accumulation.py --smoke   # CPU logic check
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import os
import re
import subprocess
import tempfile

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits, heuristic_config
from scaledmm.reference import scaled_mm_ref
from scaledmm.testing import ErrorCheck, Operands, error_bound, make_operands, sm90_target

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# The ACC_MODE constexpr of each mode (mode_constexprs gives max_num_imprecise_acc and the dot's K).
FAST, LIMIT, TWO_LEVEL = 0, 1, 2
PROMOTE_K = 128  # the precise modes' promotion interval: DeepSeek-V3's N_C, CUTLASS's 4 wgmma of k32
MODES = {"fast": FAST, "mnia": LIMIT, "twolevel": TWO_LEVEL, "mnia32": LIMIT}
WGMMA_K = 32  # K-elements of one fp8 wgmma instruction

# The accumulator model of docs/accumulation-notes.md: each wgmma instruction truncates the incoming
# accumulator and its result to 14 significant bits (relative error < 2**-13 each); fp32 adds round to
# nearest (2**-24).
U_TENSOR_CORE = 2.0**-13
U_FP32 = 2.0**-24

PRECISION_FORMS = [
    MatmulConfig(16, 64, 256, num_warps=4, num_stages=5, kernel="swapped"),  # the heuristic's decode tile
    MatmulConfig(32, 64, 256, num_warps=4, num_stages=4),  # 32 rows: mma.sync, not wgmma (M < 64)
    MatmulConfig(64, 64, 256, num_warps=4, num_stages=4),
    MatmulConfig(128, 128, 128, num_warps=8, num_stages=4),
    MatmulConfig(128, 256, 128, num_warps=8, num_stages=3, kernel="tma"),  # the heuristic's prefill tile
]
SHAPES = {"qkv": (6144, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
# Also timed where the heuristic runs the TMA kernel's 128x256 tile: with a second accumulator the
# precise modes spill registers there (255 registers and 92 bytes of spills in --compile-report), on
# these tiles they do not (128x128: 170 registers; 256x128 with mnia: 254).
ALT_TMA_TILES = (
    MatmulConfig(128, 128, 128, num_warps=8, num_stages=4, kernel="tma"),
    MatmulConfig(256, 128, 128, num_warps=8, num_stages=3, kernel="tma"),
)


# ----------------------------------------------------------------------------------------- kernels


@triton.jit
def _mma(a, b, acc, ACC_MODE: tl.constexpr, MAX_IMPRECISE: tl.constexpr):
    # One K step of the product in the chosen mode. TWO_LEVEL adds a product taken from a zero
    # accumulator; Triton's combine pass keeps the add because the fp8 dot's max_num_imprecise_acc is
    # not 0 on sm_90 (elsewhere it folds the add into the dot, which is then just as precise).
    if ACC_MODE == 0:
        acc = tl.dot(a, b, acc)
    elif ACC_MODE == 1:
        acc = tl.dot(a, b, acc, max_num_imprecise_acc=MAX_IMPRECISE)
    else:
        acc += tl.dot(a, b)
    return acc


@triton.jit
def _split_k_total(acc, tile, tiles, partials_ptr, arrivals_ptr, SPLIT_K: tl.constexpr, R: tl.constexpr,
                   C: tl.constexpr):  # fmt: skip
    # The package's split-K ending: this program's partial goes to partials[split, tile]; the last of
    # the tile's programs to arrive gets their sum in split order (last = True) and resets the count.
    offs = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    slot = partials_ptr + tile.to(tl.int64) * (R * C) + offs
    split_stride = tiles.to(tl.int64) * (R * C)
    tl.store(slot + tl.program_id(1) * split_stride, acc)
    tl.debug_barrier()
    arrived = tl.atomic_add(arrivals_ptr + tile, 1, sem="acq_rel")
    last = arrived == SPLIT_K - 1
    total = tl.zeros((R, C), tl.float32)
    if last:
        for split in range(SPLIT_K):
            total += tl.load(slot + split * split_stride, cache_modifier=".cg")
        tl.store(arrivals_ptr + tile, 0)
    return total, last


@triton.jit
def _k_range(K, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    # This program's K steps: all of them, or its share of them under split-K (program_id(1)).
    k_steps = tl.cdiv(K, BLOCK_K)
    if SPLIT_K == 1:
        k_first = 0
        k_last = k_steps
    else:
        per_split = tl.cdiv(k_steps, SPLIT_K)
        k_first = tl.program_id(1) * per_split
        k_last = min(k_first + per_split, k_steps)
    return k_first, k_last


@triton.jit
def _epilogue_operands(rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_sa, stride_sb, HAS_BIAS: tl.constexpr):
    # scale_a per row and scale_b per column (stride 0 for a per-tensor scale), bias per column.
    scale_a = tl.load(scale_a_ptr + rows * stride_sa)[:, None]
    scale_b = tl.load(scale_b_ptr + cols * stride_sb)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    else:
        bias = tl.full((1, 1), 0, tl.float32)
    return scale_a, scale_b, bias


@triton.jit
def _store(acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, HAS_BIAS: tl.constexpr):
    result = acc * scale_a * scale_b
    if HAS_BIAS:
        result = result + bias
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit(do_not_specialize=["GROUP_M"])
def pointer_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K, stride_am, stride_bn, stride_om, stride_sa, stride_sb, GROUP_M,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, MASK_M: tl.constexpr, PRELOAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STEP_K: tl.constexpr,
    SPLIT_K: tl.constexpr, ACC_MODE: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
):  # fmt: skip
    # The package's pointer kernel (grouped tiles, rows wrapped or masked, split-K, epilogue loads
    # before the loop at decode) for A row-major and B = weight.t(); each K step of BLOCK_K is taken
    # as BLOCK_K // STEP_K dots of STEP_K.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_tile_m = (pid // programs_per_group) * GROUP_M
    group_rows = min(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + (pid % programs_per_group) % group_rows
    tile_n = (pid % programs_per_group) // group_rows
    k_first, k_last = _k_range(K, BLOCK_K, SPLIT_K)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, STEP_K)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] + k_first * BLOCK_K
    b_ptrs = b_ptr + cols[None, :] * stride_bn + offs_k[:, None] + k_first * BLOCK_K
    if PRELOAD:
        scale_a, scale_b, bias = _epilogue_operands(
            rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_sa, stride_sb, HAS_BIAS
        )

    a_rows = (offs_m[:, None] < M) if MASK_M else tl.full((BLOCK_M, 1), 1, tl.int1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_first, k_last):
        for h in tl.static_range(BLOCK_K // STEP_K):
            if EVEN_K:
                a = tl.load(a_ptrs + h * STEP_K, mask=a_rows, other=0.0)
                b = tl.load(b_ptrs + h * STEP_K)
            else:
                k_left = K - k * BLOCK_K - h * STEP_K
                a = tl.load(a_ptrs + h * STEP_K, mask=a_rows & (offs_k[None, :] < k_left), other=0.0)
                b = tl.load(b_ptrs + h * STEP_K, mask=offs_k[:, None] < k_left, other=0.0)
            acc = _mma(a, b, acc, ACC_MODE, MAX_IMPRECISE)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if not PRELOAD:
        scale_a, scale_b, bias = _epilogue_operands(
            rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_sa, stride_sb, HAS_BIAS
        )
    if SPLIT_K == 1:
        _store(acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, HAS_BIAS)
    else:
        total, last = _split_k_total(acc, pid, tiles_m * tiles_n, partials_ptr, arrivals_ptr, SPLIT_K, BLOCK_M, BLOCK_N)
        if last:
            _store(total, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, HAS_BIAS)


@triton.jit
def swap_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K, stride_am, stride_bn, stride_om, stride_sa, stride_sb,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STEP_K: tl.constexpr,
    SPLIT_K: tl.constexpr, ACC_MODE: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
):  # fmt: skip
    # The package's swapped kernel: the [BLOCK_M, BLOCK_N] tile as (B^T A^T)^T, the weight tile the
    # tall wgmma operand; token rows past M masked, epilogue operands loaded before the loop.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tile_m = pid % tiles_m
    tile_n = pid // tiles_m
    k_first, k_last = _k_range(K, BLOCK_K, SPLIT_K)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, STEP_K)
    w_ptrs = b_ptr + cols[:, None] * stride_bn + offs_k[None, :] + k_first * BLOCK_K  # B^T tile
    x_ptrs = a_ptr + rows[None, :] * stride_am + offs_k[:, None] + k_first * BLOCK_K  # A^T tile
    scale_a, scale_b, bias = _epilogue_operands(
        rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_sa, stride_sb, HAS_BIAS
    )

    x_cols = (offs_m < M)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k in range(k_first, k_last):
        for h in tl.static_range(BLOCK_K // STEP_K):
            if EVEN_K:
                w = tl.load(w_ptrs + h * STEP_K)
                x = tl.load(x_ptrs + h * STEP_K, mask=x_cols, other=0.0)
            else:
                k_left = K - k * BLOCK_K - h * STEP_K
                w = tl.load(w_ptrs + h * STEP_K, mask=offs_k[None, :] < k_left, other=0.0)
                x = tl.load(x_ptrs + h * STEP_K, mask=x_cols & (offs_k[:, None] < k_left), other=0.0)
            acc = _mma(w, x, acc, ACC_MODE, MAX_IMPRECISE)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K

    acc = tl.trans(acc)
    if SPLIT_K == 1:
        _store(acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, HAS_BIAS)
    else:
        tiles = tiles_m * tl.cdiv(N, BLOCK_N)
        total, last = _split_k_total(acc, pid, tiles, partials_ptr, arrivals_ptr, SPLIT_K, BLOCK_M, BLOCK_N)
        if last:
            _store(total, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, HAS_BIAS)


@triton.jit
def _scale_columns_and_store(half, first_row, first_col, N, out_desc, scale_b_ptr, bias_ptr, stride_sb,
                             HAS_BIAS: tl.constexpr, HALF_N: tl.constexpr):  # fmt: skip
    cols = first_col + tl.arange(0, HALF_N)
    in_n = cols < N
    half = half * tl.load(scale_b_ptr + cols * stride_sb, mask=in_n, other=0.0)[None, :]
    if HAS_BIAS:
        half = half + tl.load(bias_ptr + cols, mask=in_n, other=0.0).to(tl.float32)[None, :]
    out_desc.store([first_row, first_col], half.to(out_desc.dtype))


@triton.jit(do_not_specialize=["GROUP_M", "NUM_PROGRAMS"])
def tma_kernel(
    a_desc, b_desc, out_desc, scale_a_ptr, scale_b_ptr, bias_ptr,
    M, N, K, stride_sa, stride_sb, GROUP_M, NUM_PROGRAMS,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    STEP_K: tl.constexpr, ACC_MODE: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
):  # fmt: skip
    # The package's persistent TMA kernel: descriptors of A, B as [N, K] and the output, one program
    # per SM over the tiles in grouped order, the tile and K loops flattened, the epilogue in halves.
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    programs_per_group = GROUP_M * tiles_n
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, NUM_PROGRAMS, flatten=True):
        first_tile_m = (tile // programs_per_group) * GROUP_M
        group_rows = min(tiles_m - first_tile_m, GROUP_M)
        first_row = (first_tile_m + (tile % programs_per_group) % group_rows) * BLOCK_M
        first_col = ((tile % programs_per_group) // group_rows) * BLOCK_N

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(k_steps):
            for h in tl.static_range(BLOCK_K // STEP_K):
                a = a_desc.load([first_row, k * BLOCK_K + h * STEP_K])
                b = b_desc.load([first_col, k * BLOCK_K + h * STEP_K])
                acc = _mma(a, b.T, acc, ACC_MODE, MAX_IMPRECISE)

        rows = first_row + tl.arange(0, BLOCK_M)
        result = acc * tl.load(scale_a_ptr + rows * stride_sa, mask=rows < M, other=0.0)[:, None]
        left, right = tl.split(tl.permute(tl.reshape(result, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
        _scale_columns_and_store(
            left, first_row, first_col, N, out_desc, scale_b_ptr, bias_ptr, stride_sb, HAS_BIAS, BLOCK_N // 2
        )
        _scale_columns_and_store(
            right, first_row, first_col + BLOCK_N // 2, N, out_desc, scale_b_ptr, bias_ptr, stride_sb, HAS_BIAS,
            BLOCK_N // 2,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------ launch


def mode_constexprs(mode: str, block_k: int) -> dict:
    """ACC_MODE, MAX_IMPRECISE and STEP_K of a mode on a K step of block_k."""
    step_k = min(block_k, PROMOTE_K) if mode == "twolevel" else block_k
    limit = {"mnia": min(block_k, PROMOTE_K), "mnia32": 32}.get(mode)
    return dict(ACC_MODE=MODES[mode], MAX_IMPRECISE=limit, STEP_K=step_k)


def promotion_interval(mode: str, config: MatmulConfig, K: int) -> int:
    """K-elements summed in the tensor core's accumulator before an fp32 add (K per program: fast)."""
    if mode == "fast":
        return triton.cdiv(triton.cdiv(K, config.block_k), config.split_k) * config.block_k
    return 32 if mode == "mnia32" else min(config.block_k, PROMOTE_K)


def form_name(config: MatmulConfig) -> str:
    kind = "tma" if config.kernel == "tma" else "swap" if config.kernel == "swapped" else "ptr"
    split = f" k{config.split_k}" if config.split_k > 1 else ""
    return f"{kind} {config.block_m}x{config.block_n}x{config.block_k} w{config.num_warps} s{config.num_stages}{split}"


class Runner:
    """A function of (a, b, scale_a, scale_b, bias) running one prototype kernel in one mode, for A
    [M, K] row-major, b = weight.t() (K contiguous), scale_a [M, 1] and scale_b [1, N] at any stride
    (0 for a per-tensor scale expanded), bias [N] or None. Keeps the compiled kernel (`compiled`)."""

    def __init__(self, config: MatmulConfig, mode: str, M: int, N: int, out_dtype: torch.dtype, device, num_sms: int):
        self.config, self.mode, self.M, self.N = config, mode, M, N
        self.out_dtype, self.device, self.num_sms = out_dtype, device, num_sms
        self.compiled = None
        self.tiles = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n)
        self.arrivals = torch.zeros(self.tiles, dtype=torch.int32, device=device)  # left zeroed by the kernel

    def arguments(self, a, b, scale_a, scale_b, bias, out) -> tuple[tuple, tuple, dict]:
        c, M, N, K = self.config, self.M, self.N, a.shape[1]
        assert a.stride(1) == 1 and b.stride(0) == 1 and out.stride(1) == 1
        constexprs = dict(
            HAS_BIAS=bias is not None,
            BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k,
            num_warps=c.num_warps, num_stages=c.num_stages, **mode_constexprs(self.mode, c.block_k),
        )  # fmt: skip
        bias_arg = bias if bias is not None else scale_b  # a placeholder pointer without bias
        strides = (scale_a.stride(0), scale_b.stride(1))
        if c.kernel == "tma":
            step_k = constexprs["STEP_K"]
            descs = (
                TensorDescriptor(a, [M, K], [a.stride(0), 1], [c.block_m, step_k]),
                TensorDescriptor(b.t(), [N, K], [b.stride(1), 1], [c.block_n, step_k]),
                TensorDescriptor(out, [M, N], [out.stride(0), 1], [c.block_m, c.block_n // 2]),
            )
            programs = min(self.tiles, self.num_sms)
            args = (*descs, scale_a, scale_b, bias_arg, M, N, K, *strides, c.group_m, programs)
            return (programs,), args, constexprs
        partials = None
        if c.split_k > 1:
            partials = torch.empty((c.split_k, self.tiles, c.block_m * c.block_n), dtype=torch.float32, device=a.device)
        args = (
            a, b, out, scale_a, scale_b, bias_arg, partials, self.arrivals,
            M, N, K, a.stride(0), b.stride(1), out.stride(0), *strides,
        )  # fmt: skip
        constexprs.update(EVEN_K=K % c.block_k == 0, SPLIT_K=c.split_k)
        if c.kernel == "swapped":
            return (self.tiles, c.split_k), args, constexprs
        preload = M <= c.block_m and c.block_m * c.block_n <= 64 * 128  # the package's rule
        constexprs.update(MASK_M=M < c.block_m, PRELOAD=preload)
        return (self.tiles, c.split_k), (*args, c.group_m), constexprs

    def kernel(self):
        return (
            tma_kernel
            if self.config.kernel == "tma"
            else swap_kernel
            if self.config.kernel == "swapped"
            else pointer_kernel
        )

    def __call__(self, a, b, scale_a, scale_b, bias):
        out = torch.empty((self.M, self.N), dtype=self.out_dtype, device=a.device)
        grid, args, kwargs = self.arguments(a, b, scale_a, scale_b, bias, out)
        self.compiled = self.kernel()[grid](*args, **kwargs)
        return out

    def warmup(self, a, b, scale_a, scale_b, bias):
        """Compile without launching (used with a fake sm_90 target by --compile-report)."""
        out = torch.empty((self.M, self.N), dtype=self.out_dtype, device=a.device)
        grid, args, kwargs = self.arguments(a, b, scale_a, scale_b, bias, out)
        self.compiled = self.kernel().warmup(*args, grid=grid, **kwargs)
        return self.compiled


def vendor(use_fast_accum: bool, out_dtype: torch.dtype = BF16):
    def run(a, b, scale_a, scale_b, bias):
        return torch._scaled_mm(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype, use_fast_accum=use_fast_accum)

    return run


# ------------------------------------------------------------------------------------------ bounds


def model_eps(promote: int, K: int) -> float:
    """Worst case of the model, over sum_k |a_ik b_kj| |scales|: 2 truncations per wgmma instruction
    within a promotion interval, then one fp32 add per interval."""
    inside = 2 * U_TENSOR_CORE * triton.cdiv(min(promote, K), WGMMA_K)
    return inside + U_FP32 * (triton.cdiv(K, promote) - 1)


def partial_sum_bound(ops: Operands, promote: int) -> torch.Tensor:
    """The model's bound from the actual partial sums (first order): 2 * 2**-13 * sum_j |S_j| over the
    wgmma instructions j, S_j the exact partial sum after instruction j within its promotion interval,
    plus 2**-24 * |running fp32 sum| per promotion, times |scale_a scale_b|."""
    a, b = ops.a.to(torch.float64), ops.b.to(torch.float64)
    promote = min(promote, a.shape[1])
    pad = -a.shape[1] % promote  # zeros past K: a ragged last interval sums as the kernel's does
    a, b = torch.nn.functional.pad(a, (0, pad)), torch.nn.functional.pad(b, (0, 0, 0, pad))
    M, K = a.shape
    N = b.shape[1]
    chunks = torch.einsum("mjk,jkn->jmn", a.reshape(M, K // WGMMA_K, WGMMA_K), b.reshape(K // WGMMA_K, WGMMA_K, N))
    groups = chunks.reshape(K // promote, promote // WGMMA_K, M, N)
    inside = 2 * U_TENSOR_CORE * groups.cumsum(1).abs().sum((0, 1))
    outside = U_FP32 * groups.sum(1).cumsum(0)[1:].abs().sum(0)
    scales = ops.scale_a.to(torch.float64).abs().reshape(-1, 1) * ops.scale_b.to(torch.float64).abs().reshape(1, -1)
    return (inside + outside) * scales


def error_row(out: torch.Tensor, ops: Operands, promote: int) -> str:
    """max abs error, relative Frobenius error, elements outside rtol = atol = 2e-3, and the largest
    error over the package's bound, the model's worst case and its partial-sum bound."""
    exact = scaled_mm_ref(*ops.args())
    magnitude = scaled_mm_ref(ops.a.to(torch.float64).abs(), ops.b.to(torch.float64).abs(), ops.scale_a, ops.scale_b)
    err = (out.to(torch.float64) - exact).abs()
    outside = int((err > 2e-3 + 2e-3 * exact.abs()).sum())
    rel = (torch.linalg.norm(out.to(torch.float64) - exact) / torch.linalg.norm(exact)).item()
    pkg = (err / error_bound(ops, out.dtype, "precise")).max().item()  # the fp32-promotion bound
    model = (err / (model_eps(promote, ops.a.shape[1]) * magnitude + 1e-300)).max().item()
    psum = (err / (partial_sum_bound(ops, promote) + 1e-300)).max().item()
    if INTERPRET:  # Triton's interpreter sums exactly: any mode outside the bound is a bug
        assert pkg <= 1, pkg
    return f"{err.max().item():10.4g} {rel:9.3g} {outside:6d} {pkg:7.3f} {model:7.3f} {psum:7.3f}"


# --------------------------------------------------------------------------------- kernel reports


def kernel_report(compiled) -> str:
    """Matrix instructions, fp32 adds and wgmma waits in the PTX; registers, spills and the ptxas
    diagnostics about wgmma (C75xx: serialized pipelines, injected waits) from ptxas -v."""
    if compiled is None or INTERPRET:
        return ""
    ptx = compiled.asm["ptx"]
    counts = {
        "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
        "mma.sync": len(re.findall(r"\bmma\.sync", ptx)),
        "add.f32": len(re.findall(r"\badd(?:\.rn)?\.f32\b", ptx)),
        "wait_group": len(re.findall(r"wgmma\.wait_group", ptx)),
    }
    arch = re.search(r"\.target\s+(sm_\w+)", ptx).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run(
            [triton.knobs.nvidia.ptxas.path, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True,
            text=True,
        ).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    codes = sorted(set(re.findall(r"\((C75\d\d)\)", log)))
    kinds = sorted(set(re.findall(r"(wgmma\.mma_async\.\S+?|mma\.sync\.aligned\.\S+?)\s", ptx)))
    return (
        " ".join(f"{k}={v}" for k, v in counts.items())
        + f" regs={regs.group(1) if regs else '?'} spills={spills.group(1) if spills else '?'}"
        + f" ptxas={','.join(codes) or '-'} [{'; '.join(kinds)}]"
    )


# ----------------------------------------------------------------------------------------- parts


def precision(device, num_sms: int, modes: list[str], ks: tuple[int, ...], M: int, N: int, forms) -> None:
    print(f"== precision: fp8 e4m3, per-tensor scales, fp32 out, M={M} N={N}; err vs float64 of the same operands")
    print("   out = elements outside rtol=atol=2e-3; pkg/model/psum = max error over the package bound,")
    print("   the model's worst case and its partial-sum bound (promotion interval P as shown)")
    reports = {}
    # Signed operands, then positive ones at the largest K: partial sums that only grow are the fast
    # mode's worst case (about 13x the package bound at K = 16384 in the model's simulation).
    for data, K in [*(("randn", K) for K in ks), ("|randn|", max(ks))]:
        gen = torch.Generator(device=device).manual_seed(K)
        ops = make_operands(M, N, K, FP8, device, per_token=False, per_channel=False, bias_dtype=None, gen=gen)
        if data == "|randn|":  # clear the fp8 sign bits
            positive = [x.view(torch.uint8).bitwise_and(0x7F).view(FP8) for x in (ops.a, ops.b)]
            ops = Operands(*positive, ops.scale_a, ops.scale_b, None)
        # the prototypes read vector scales at a stride: a per-tensor scale is one expanded to stride 0
        sa, sb = ops.scale_a.reshape(1, 1).expand(M, 1), ops.scale_b.reshape(1, 1).expand(1, N)
        print(f"-- K={K}, {data} operands")
        print(f"   {'kernel':34s} {'mode':8s} {'P':>6s} {'max abs':>10s} {'rel fro':>9s} {'out':>6s} "
              f"{'pkg':>7s} {'model':>7s} {'psum':>7s}")  # fmt: skip
        for config in forms:
            for mode in modes:
                runner = Runner(config, mode, M, N, torch.float32, device, num_sms)
                label = f"{form_name(config):34s} {mode:8s}"
                try:
                    out = runner(ops.a, ops.b, sa, sb, None)
                except Exception as e:  # a form that does not compile or fit is reported, not fatal
                    print(f"   {label} ERR {type(e).__name__}: {str(e)[:150]}")
                    continue
                promote = promotion_interval(mode, config, K)
                print(f"   {label} {promote:6d} {error_row(out, ops, promote)}")
                reports.setdefault((form_name(config), mode), kernel_report(runner.compiled))
        if device.type == "cuda":
            for fast in (False, True):
                label = f"{'torch._scaled_mm (cuBLASLt)':34s} {'fast' if fast else 'precise':8s}"
                try:
                    out = vendor(fast, torch.float32)(*ops.args(), None)
                except RuntimeError as e:
                    print(f"   {label} refused: {str(e)[:120]}")
                    continue
                promote = K if fast else PROMOTE_K  # assumed: cuBLAS's precise mode promotes every 128
                print(f"   {label} {promote:6d} {error_row(out, ops, promote)}")
    if reports and not INTERPRET:
        print("-- kernels (PTX counts per kernel; ptxas C7511/C7514/C7515 = wgmma serialized, C7517 = wait injected)")
        for (name, mode), report in reports.items():
            print(f"   {name:34s} {mode:8s} {report}")


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def speed(device, num_sms: int, shared: int, modes: list[str], shapes: dict, ms: tuple[int, ...],
          configs: dict | None = None, alt_tiles: tuple = ALT_TMA_TILES) -> None:  # fmt: skip
    precise = [m for m in modes if m != "fast"]
    print("== speed: fp8 per-token x per-channel, bf16 bias and out; us per call (median of 20 graph replays)")
    print("   ratios are over fast mode on the heuristic's tile (the first row of a point)")
    head = " ".join(f"{m:>9s}" for m in modes) + " " + " ".join(f"{m + '/f':>11s}" for m in precise)
    print(f"   {'shape':8s} {'M':>5s} {'tile':30s} {head} {'cuBLAS fast':>11s} {'precise':>9s}")
    rows, checks = [], []
    for name, (N, K) in shapes.items():
        for M in ms:
            config = (configs or {}).get(M) or heuristic_config(M, N, K, FP8, num_sms, shared)
            tiles = [config, *(alt_tiles if config.kernel == "tma" else ())]
            ops = [make_operands(M, N, K, FP8, device) for _ in range(rotation_count(N * K, device))]
            inputs = [(*o.args(), o.bias) for o in ops]
            rows_checked = min(M, 128)
            first = ops[0]
            check = ErrorCheck(
                Operands(first.a[:rows_checked], first.b, first.scale_a[:rows_checked], first.scale_b, first.bias),
                BF16,
            )
            jobs, labels = [], []
            for tile in tiles:
                for mode in modes:
                    jobs.append(Runner(tile, mode, M, N, BF16, device, num_sms))
                    labels.append((form_name(tile), mode))
            refused = False
            if device.type == "cuda":
                try:
                    vendor(True)(*inputs[0])
                except RuntimeError:  # CUBLAS_STATUS_NOT_SUPPORTED: its precise mode stands in, marked
                    refused = True
                jobs += [vendor(not refused), vendor(False)]
                labels += [("cuBLAS", "fast"), ("cuBLAS", "precise")]
            ratios = {label: check.ratio(job(*inputs[0])[:rows_checked]) for label, job in zip(labels, jobs)}
            if INTERPRET:  # Triton's interpreter sums exactly: any mode outside the bound is a bug
                assert max(ratios.values()) <= 1, ratios
            checks.append((name, M, ratios))
            times = [t.median_us for t in time_interleaved([(j, inputs) for j in jobs], 20)]
            us = dict(zip(labels, times))
            base = us[(form_name(config), "fast")]
            for i, tile in enumerate(tiles):
                cells = " ".join(f"{us[(form_name(tile), m)]:9.1f}" for m in modes) + " "
                cells += " ".join(f"{us[(form_name(tile), m)] / base:11.3f}" for m in precise)
                if device.type == "cuda" and i == 0:
                    cells += (
                        f" {us[('cuBLAS', 'fast')]:10.1f}{'*' if refused else ' '} {us[('cuBLAS', 'precise')]:9.1f}"
                    )
                print(f"   {name:8s} {M:5d} {form_name(tile):30s} {cells}")
            point = {m: us[(form_name(config), m)] for m in modes}
            point.update({f"best {m}": min(us[(form_name(t), m)] for t in tiles) for m in precise})
            if device.type == "cuda":
                point.update({"cuBLAS fast": us[("cuBLAS", "fast")], "cuBLAS precise": us[("cuBLAS", "precise")]})
            rows.append((M, point))
    print("-- error / package bound on the first 128 rows (the precise modes and cuBLAS precise must be <= 1)")
    for name, M, ratios in checks:
        cells = " ".join(
            f"{'-'.join(tile.split()[:2])}:{mode}={r:.3f}{'!' if r > 1 else ''}" for (tile, mode), r in ratios.items()
        )
        print(f"   {name:8s} {M:5d} {cells}")
    print("-- geomeans of time ratios (best = the faster of the timed tiles, over fast on the heuristic tile)")
    for low, high, label in ((1, 64, "M <= 64"), (128, 512, "128 <= M <= 512"), (1024, 1 << 30, "M >= 1024")):
        sel = [point for M, point in rows if low <= M <= high]
        if not sel:
            continue
        cells = [f"{m}/fast {geomean([p[m] / p['fast'] for p in sel]):.3f}" for m in precise]
        cells += [f"best {m}/fast {geomean([p[f'best {m}'] / p['fast'] for p in sel]):.3f}" for m in precise]
        line = f"   {label:16s} " + ", ".join(cells)
        if device.type == "cuda":
            like = [f"cuBLAS fast/fast {geomean([p['cuBLAS fast'] / p['fast'] for p in sel]):.3f}"]
            like += [f"cuBLAS precise/best {m} {geomean([p['cuBLAS precise'] / p[f'best {m}'] for p in sel]):.3f}"
                     for m in precise]  # fmt: skip
            line += " | like for like: " + ", ".join(like)
        print(line)


# ----------------------------------------------------------------------------------------- offline


def compile_report(modes: list[str]) -> None:
    """The speed part's kernels compiled for sm_90 on the host: what each mode does to the code."""
    print("== sm_90 compile report (no GPU; H200/H100 limits: 132 SMs, 227 KB shared memory)")
    num_sms, shared = 132, 232448
    cpu = torch.device("cpu")
    seen = set()
    with sm90_target():
        for N, K in SHAPES.values():
            for M in (1, 16, 64, 256, 4096):
                config = heuristic_config(M, N, K, FP8, num_sms, shared)
                key = (config, M < config.block_m, M <= config.block_m)  # MASK_M and PRELOAD
                if key in seen:
                    continue
                seen.add(key)
                # only dtypes, shapes, strides and alignment matter to the compiler: no data
                ops = Operands(
                    torch.empty(M, K, dtype=FP8), torch.empty(N, K, dtype=FP8).t(),
                    torch.empty(M, 1), torch.empty(1, N), torch.empty(N, dtype=BF16),
                )  # fmt: skip
                for tile, mode in itertools.product(
                    [config, *(ALT_TMA_TILES if config.kernel == "tma" else ())], modes
                ):
                    runner = Runner(tile, mode, M, N, BF16, cpu, num_sms)
                    try:
                        compiled = runner.warmup(*ops.args(), ops.bias)
                        report = kernel_report(compiled) + f" smem={compiled.metadata.shared}"
                    except Exception as e:
                        report = f"ERR {type(e).__name__}: {str(e)[:150]}"
                    print(f"   M={M:5d} {form_name(tile):32s} {mode:8s} {report}")


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", nargs="+", default=["fast", "mnia", "twolevel"], choices=list(MODES))
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1)")
    parser.add_argument("--compile-report", action="store_true", help="sm_90 PTX/ptxas facts per kernel, no GPU")
    parser.add_argument("--skip-precision", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    opts = parser.parse_args()
    modes = list(dict.fromkeys(["fast", *opts.modes]))  # fast is every ratio's base

    if opts.compile_report:
        compile_report(modes)
        return
    if opts.smoke:
        if not INTERPRET:
            parser.error("--smoke runs in Triton's interpreter: set TRITON_INTERPRET=1 before starting")
        device = torch.device("cpu")
        num_sms, shared = device_limits(device)
        forms = [
            MatmulConfig(16, 64, 256, num_warps=4, num_stages=2, kernel="swapped"),
            MatmulConfig(16, 32, 256, num_warps=4, num_stages=2, split_k=2, kernel="swapped"),
            MatmulConfig(32, 32, 256, num_warps=4, num_stages=2, split_k=2),
            MatmulConfig(64, 64, 128, num_warps=4, num_stages=2),
            MatmulConfig(32, 64, 128, num_warps=4, num_stages=2, kernel="tma"),
        ]
        # K = 640 leaves a ragged last K step for the 256-wide tiles (masked), whole for the 128-wide
        precision(device, num_sms, [*modes, "mnia32"], (640,), 48, 64, forms)
        configs = {1: forms[1], 40: forms[2], 96: forms[4]}
        alt = (MatmulConfig(64, 64, 128, num_warps=4, num_stages=2, kernel="tma"),)
        speed(device, num_sms, shared, modes, {"tiny": (96, 512)}, (1, 40, 96), configs, alt)
        return

    device = torch.device("cuda")
    num_sms, shared = device_limits(device)
    query = ["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm", "--format=csv,noheader", "-i", "0"]
    try:
        smi = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    except OSError:  # no nvidia-smi on the path
        smi = ""
    print(f"{torch.cuda.get_device_name(device)} ({num_sms} SMs), driver, SM clock, max: {smi or '?'}; "
          f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}; "
          f"{datetime.date.today()}; modes {modes}")  # fmt: skip
    if not opts.skip_precision:
        precision(device, num_sms, list(dict.fromkeys([*modes, "mnia32"])), (512, 4096, 16384), 128, 256,
                  PRECISION_FORMS)  # fmt: skip
    if not opts.skip_speed:
        speed(device, num_sms, shared, modes, SHAPES, (1, 16, 64, 256, 1024, 4096))


if __name__ == "__main__":
    main()
