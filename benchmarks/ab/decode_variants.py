"""A/B at decode in one run on one card, fp8, the eight shapes of llama3-8b and qwen3-4b at M = 1, 16
and 64: the pointer kernel with its shipped config against variants of it with the same tiles:

- early: the epilogue's scale and bias loads issued before the K loop, so that their latency
  overlaps the weight streaming instead of following it;
- early+evict_first: the same with the weight loads marked evict_first;
- w2: two warps instead of four;
- nested sk4/6/8 (M <= 16): a stream-K schedule, 4, 6 or 8 programs per SM sharing the (tile, K step)
  units out evenly, each running a pipelined K loop per tile it touches; tiles shared by programs are
  added up by the last to arrive.

    PYTHONPATH=src python3 benchmarks/ab/decode_variants.py [SHAPE_INDEX ...]

Written for the library as of the commit that added it, 3e203a3 (the pointer kernel before it took
the early epilogue loads, whose epilogue helpers it calls): run it there
(`git checkout 3e203a3`). Log in benchmarks/results/h100-2026-11-27-decode/decode_variants_ab.log.
"""

import itertools
import sys

import torch
import triton
import triton.language as tl

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits
from scaledmm.kernels import matmul as mm
from scaledmm.kernels.matmul import _scale_and_store
from scaledmm.testing import ErrorCheck, make_operands


@triton.jit
def _tile_offsets(tile, tiles_m, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = (tile % tiles_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (tile // tiles_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, (offs_m % M).to(tl.int64), (offs_n % N).to(tl.int64)


@triton.jit
def _first_unit(program, programs, units):
    return program * units // programs


@triton.jit
def _unit_owner(unit, programs, units):
    return ((unit + 1) * programs - 1) // units


@triton.jit
def _arrive_and_finish(
    acc, tile, slot, tiles_m, k_steps, programs, units, M, N,
    out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    stride_om, stride_on, stride_scale_a, stride_scale_b, stride_bias,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Slot 2p holds the partial of the tile program p starts in, 2p + 1 of the one it stops in; the
    # last program of a tile to arrive adds them up in program order and stores the tile.
    offs_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tl.store(partials_ptr + slot * (BLOCK_M * BLOCK_N) + offs_tile, acc)
    tl.debug_barrier()
    arrived = tl.atomic_add(arrivals_ptr + tile, 1, sem="acq_rel")
    tile_start = tile * k_steps
    first_owner = _unit_owner(tile_start, programs, units)
    last_owner = _unit_owner(tile_start + k_steps - 1, programs, units)
    if arrived == last_owner - first_owner:
        total = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for owner in range(first_owner, last_owner + 1):
            owner_slot = 2 * owner + (_first_unit(owner, programs, units) < tile_start).to(tl.int64)
            total += tl.load(partials_ptr + owner_slot * (BLOCK_M * BLOCK_N) + offs_tile, cache_modifier=".cg")
        offs_m, offs_n, rows, cols = _tile_offsets(tile, tiles_m, M, N, BLOCK_M, BLOCK_N)
        _scale_and_store(
            total, offs_m, offs_n, rows, cols, M, N, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr,
            stride_om, stride_on, stride_scale_a, stride_scale_b, stride_bias,
            A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS,
        )  # fmt: skip
        tl.store(arrivals_ptr + tile, 0)


@triton.jit
def _epilogue_operands(
    rows,
    cols,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    stride_scale_a,
    stride_scale_b,
    stride_bias,
    A_PER_TOKEN: tl.constexpr,
    B_PER_CHANNEL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    if A_PER_TOKEN:
        sa = tl.load(scale_a_ptr + rows * stride_scale_a).to(tl.float32)[:, None]
    else:
        sa = tl.load(scale_a_ptr).to(tl.float32)
    if B_PER_CHANNEL:
        sb = tl.load(scale_b_ptr + cols * stride_scale_b).to(tl.float32)[None, :]
    else:
        sb = tl.load(scale_b_ptr).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + cols * stride_bias).to(tl.float32)[None, :]
    else:
        bias = 0.0
    return sa, sb, bias


@triton.jit(do_not_specialize=["GROUP_M"])
def early_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    partials_ptr,
    arrivals_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_om,
    stride_on,
    stride_scale_a,
    stride_scale_b,
    stride_bias,
    GROUP_M,
    A_PER_TOKEN: tl.constexpr,
    B_PER_CHANNEL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    EVEN_K: tl.constexpr,
    MASK_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVICT: tl.constexpr = "",
):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    programs_per_group = GROUP_M * tiles_n
    first_tile_m = (pid // programs_per_group) * GROUP_M
    group_rows = min(tiles_m - first_tile_m, GROUP_M)
    tile_m = first_tile_m + (pid % programs_per_group) % group_rows
    tile_n = (pid % programs_per_group) // group_rows
    k_steps = tl.cdiv(K, BLOCK_K)
    if SPLIT_K == 1:
        k_first = 0
        k_last = k_steps
    else:
        steps_per_split = tl.cdiv(k_steps, SPLIT_K)
        k_first = tl.program_id(1) * steps_per_split
        k_last = min(k_first + steps_per_split, k_steps)
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    sa, sb, bias = _epilogue_operands(
        rows,
        cols,
        scale_a_ptr,
        scale_b_ptr,
        bias_ptr,
        stride_scale_a,
        stride_scale_b,
        stride_bias,
        A_PER_TOKEN,
        B_PER_CHANNEL,
        HAS_BIAS,
    )
    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak + k_first * a_step
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn + k_first * b_step
    a_rows = (offs_m[:, None] < M) if MASK_M else tl.full((BLOCK_M, 1), 1, tl.int1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k in range(k_first, k_last):
        if EVEN_K:
            if MASK_M:
                a = tl.load(a_ptrs, mask=a_rows, other=0.0)
            else:
                a = tl.load(a_ptrs)
            b = tl.load(b_ptrs, eviction_policy=EVICT)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=a_rows & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0, eviction_policy=EVICT)
        acc = tl.dot(a, b, acc, out_dtype=ACC_DTYPE)
        a_ptrs += a_step
        b_ptrs += b_step
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :].to(tl.int64) * stride_on
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        result = acc.to(tl.float32) * sa * sb + bias
        tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tiles = tiles_m * tiles_n
        offs_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        tile_partials = partials_ptr + pid.to(tl.int64) * (BLOCK_M * BLOCK_N) + offs_tile
        split_stride = tiles.to(tl.int64) * (BLOCK_M * BLOCK_N)
        tl.store(tile_partials + tl.program_id(1) * split_stride, acc)
        tl.debug_barrier()
        arrived = tl.atomic_add(arrivals_ptr + pid, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
            for split in range(SPLIT_K):
                total += tl.load(tile_partials + split * split_stride, cache_modifier=".cg")
            result = total.to(tl.float32) * sa * sb + bias
            tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(arrivals_ptr + pid, 0)


@triton.jit
def nested_kernel(
    a_ptr,
    b_ptr,
    out_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    partials_ptr,
    arrivals_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_om,
    stride_on,
    stride_scale_a,
    stride_scale_b,
    stride_bias,
    A_PER_TOKEN: tl.constexpr,
    B_PER_CHANNEL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    EVEN_K: tl.constexpr,
    MASK_M: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    k_steps = tl.cdiv(K, BLOCK_K)
    units = tiles_m * tl.cdiv(N, BLOCK_N) * k_steps.to(tl.int64)
    first = _first_unit(pid, programs, units)
    last = _first_unit(pid + 1, programs, units)
    offs_k = tl.arange(0, BLOCK_K)
    unit = first
    while unit < last:
        tile = unit // k_steps
        k_first = (unit - tile * k_steps).to(tl.int32)
        k_last = tl.minimum(k_steps, k_first + (last - unit)).to(tl.int32)
        offs_m, offs_n, rows, cols = _tile_offsets(tile, tiles_m, M, N, BLOCK_M, BLOCK_N)
        a_ptrs = a_ptr + rows[:, None] * stride_am + (k_first * BLOCK_K + offs_k)[None, :] * stride_ak
        b_ptrs = b_ptr + (k_first * BLOCK_K + offs_k)[:, None] * stride_bk + cols[None, :] * stride_bn
        a_rows = (offs_m[:, None] < M) if MASK_M else tl.full((BLOCK_M, 1), 1, tl.int1)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for _ in range(k_first, k_last):
            if MASK_M:
                a = tl.load(a_ptrs, mask=a_rows, other=0.0)
            else:
                a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
            acc = tl.dot(a, b, acc, out_dtype=ACC_DTYPE)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        if (k_first == 0) & (k_last == k_steps):
            _scale_and_store(
                acc,
                offs_m,
                offs_n,
                rows,
                cols,
                M,
                N,
                out_ptr,
                scale_a_ptr,
                scale_b_ptr,
                bias_ptr,
                stride_om,
                stride_on,
                stride_scale_a,
                stride_scale_b,
                stride_bias,
                A_PER_TOKEN,
                B_PER_CHANNEL,
                HAS_BIAS,
            )
        else:
            slot = 2 * pid.to(tl.int64) + (unit != first).to(tl.int64)
            _arrive_and_finish(
                acc,
                tile,
                slot,
                tiles_m,
                k_steps.to(tl.int64),
                programs,
                units,
                M,
                N,
                out_ptr,
                scale_a_ptr,
                scale_b_ptr,
                bias_ptr,
                partials_ptr,
                arrivals_ptr,
                stride_om,
                stride_on,
                stride_scale_a,
                stride_scale_b,
                stride_bias,
                A_PER_TOKEN,
                B_PER_CHANNEL,
                HAS_BIAS,
                ACC_DTYPE,
                BLOCK_M,
                BLOCK_N,
            )
        unit += k_last - k_first


BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn
device = torch.device("cuda", 0)
num_sms = device_limits(device)[0]
SHAPES = [
    ("llama3-8b qkv", 6144, 4096),
    ("llama3-8b o", 4096, 4096),
    ("llama3-8b gate_up", 28672, 4096),
    ("llama3-8b down", 4096, 14336),
    ("qwen3-4b qkv", 6144, 2560),
    ("qwen3-4b o", 2560, 4096),
    ("qwen3-4b gate_up", 19456, 2560),
    ("qwen3-4b down", 2560, 9728),
]


def variant(kernel, config, M, N, K, programs_per_sm=0, **extra):
    def run(a, b, sa, sb, bias):
        out = torch.empty(M, N, dtype=BF16, device=device)
        if programs_per_sm:
            tiles = triton.cdiv(M, config.block_m) * triton.cdiv(N, config.block_n)
            programs = min(programs_per_sm * num_sms, tiles * triton.cdiv(K, config.block_k))
            partials = torch.empty(2 * programs, config.block_m * config.block_n, dtype=torch.float32, device=device)
            _, args, kwargs = mm._launch_arguments(
                a, b, sa, sb, bias, out, partials, mm._arrivals(device, tiles), config
            )
            kwargs.pop("SPLIT_K")
            kernel[(programs,)](*args[:-1], **kwargs)  # no GROUP_M
        else:
            partials, arrivals = mm.split_k_buffers(M, N, config, a.dtype, device)
            grid, args, kwargs = mm._launch_arguments(a, b, sa, sb, bias, out, partials, arrivals, config)
            kernel[grid](*args, **kwargs, **extra)
        return out

    return run


print(torch.cuda.get_device_name(device), torch.__version__, triton.__version__)
picked = [SHAPES[int(i)] for i in sys.argv[1:]] or SHAPES
for (name, N, K), M in itertools.product(picked, (1, 16, 64)):
    ops = [make_operands(M, N, K, FP8, device) for _ in range(rotation_count(N * K, device))]
    inputs = [(*o.args(), o.bias) for o in ops]
    check = ErrorCheck(ops[0], BF16)
    shipped = scaledmm.select_config(M, N, K, FP8, device)
    tile = MatmulConfig(
        shipped.block_m, shipped.block_n, shipped.block_k, num_warps=shipped.num_warps, num_stages=shipped.num_stages
    )
    cands = {
        "shipped": variant(mm._scaled_mm_kernel, shipped, M, N, K),
        "early": variant(early_kernel, shipped, M, N, K),
        "early+evict_first": variant(early_kernel, shipped, M, N, K, EVICT="evict_first"),
        "w2": variant(mm._scaled_mm_kernel, MatmulConfig(**{**shipped.to_dict(), "num_warps": 2}), M, N, K),
    }
    if M <= 16:
        for sk in (4, 6, 8):
            cands[f"nested sk{sk} {tile}"] = variant(nested_kernel, tile, M, N, K, programs_per_sm=sk)
    labels, jobs = [], []
    for label, fn in cands.items():
        try:
            r = check.ratio(fn(*inputs[0]))
        except Exception as e:
            print("  ERR", label, type(e).__name__, str(e)[:100])
            continue
        if not r <= 1.0:
            print("  WRONG", label, r)
            continue
        labels.append(label)
        jobs.append(fn)
    times = [t.median_us for t in time_interleaved([(j, inputs) for j in jobs], 30)]
    base = times[0]
    print(f"== fp8 {name} (N={N}, K={K}) M={M} shipped {shipped}")
    for label, us in zip(labels, times):
        print(f"  {label:44s} {us:8.2f} us {N * K / us / 1e3:6.0f} GB/s  x{base / us:.3f}")
