"""A/B at decode of kernel forms the library does not ship, in one run on one card, fp8, the eight
shapes of llama3-8b and qwen3-4b at M = 1, 4 and 16, against the shipped (tuned) config:

- gemv (M <= 4): no tensor cores. A program owns BLOCK_N weight rows ([N, K] view of the weight, K
  contiguous) and all M rows of A, multiplies in fp32 and sums over K, per K step ("step") or once
  after the loop from a [BLOCK_N, BLOCK_K] register accumulator ("late", M = 1 only). Weight loads
  go straight to registers: no shared-memory staging and no 16-row padding.
- swap (M <= 16): the operand-swapped form, out^T = B^T A^T: the weight is the tall operand of the
  MMA (64 or 128 rows, which Hopper's wgmma wants) and the M tokens its narrow side (16 columns).
- ptr: the library's pointer kernel with tiles its search space leaves out: 16x16 tiles (2 or 4
  warps), and split-K on grids the space does not split.

The gemv and swap kernels split K the way the library's kernel does (partials, the last program to
arrive adds them up in split order). All forms assume the bench's operands: row-major A, the
weight column-major (K contiguous), per-token scale_a [M, 1], per-channel scale_b [1, N], bf16
bias, bf16 out. Every variant's output is checked against the exact result first.

Each point is timed in two rounds: round one times every variant (time_interleaved) and picks each
form's fastest; round two times the shipped config and those picks again, and is what the summary
reports, so that picking the luckiest of many noisy timings does not flatter a form.

The log (benchmarks/results/h100-2026-11-27-swap/small_m_forms_ab.log) was taken before the library
had the swapped kernel: at later commits "shipped" is mostly the swapped kernel itself, and the
split "ptr" variant splits it. Run it at commit 25c0838 to repeat the comparison.

    PYTHONPATH=src python3 benchmarks/ab/small_m_forms.py [SHAPE_INDEX ...]
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/ab/small_m_forms.py --smoke   # CPU check
"""

import itertools
import math
import sys

import torch
import triton
import triton.language as tl

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.shapes import preset_shapes
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits
from scaledmm.testing import ErrorCheck, make_operands

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16


@triton.jit
def _split_sum(acc, tile, tiles, partials_ptr, arrivals_ptr, SPLIT_K: tl.constexpr, R: tl.constexpr, C: tl.constexpr):
    # Leaves this program's partial in partials[split, tile]; the last of the tile's SPLIT_K programs
    # to arrive gets their sum in split order (and last = True), the others zeros (and False).
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
    k_steps = K // BLOCK_K
    per_split = tl.cdiv(k_steps, SPLIT_K)
    k_first = tl.program_id(1) * per_split
    return k_first, min(k_first + per_split, k_steps)


@triton.jit
def gemv_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K, stride_am, stride_bn, stride_om,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    LATE_SUM: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    offs_r = tl.arange(0, ROWS)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_first, k_last = _k_range(K, BLOCK_K, SPLIT_K)
    w_ptrs = b_ptr + cols[:, None] * stride_bn + offs_k[None, :] + k_first * BLOCK_K
    x_ptrs = a_ptr + offs_r[:, None] * stride_am + offs_k[None, :] + k_first * BLOCK_K
    rows_ok = offs_r[:, None] < M
    scale_a = tl.load(scale_a_ptr + offs_r, mask=offs_r < M, other=0.0)[:, None]
    scale_b = tl.load(scale_b_ptr + cols)[None, :]
    bias = tl.load(bias_ptr + cols).to(tl.float32)[None, :]
    if LATE_SUM:
        wide = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    else:
        acc = tl.zeros((ROWS, BLOCK_N), tl.float32)
    for _ in range(k_first, k_last):
        w = tl.load(w_ptrs).to(tl.float32)
        x = tl.load(x_ptrs, mask=rows_ok, other=0.0).to(tl.float32)
        if LATE_SUM:
            wide += w * x
        else:
            acc += tl.sum(x[:, None, :] * w[None, :, :], axis=2)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if LATE_SUM:
        acc = tl.sum(wide, axis=1)[None, :]
    last = True
    if SPLIT_K > 1:
        acc, last = _split_sum(acc, tile, tl.num_programs(0), partials_ptr, arrivals_ptr, SPLIT_K, ROWS, BLOCK_N)
    result = acc * scale_a * scale_b + bias
    out_ptrs = out_ptr + offs_r[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, result.to(tl.bfloat16), mask=rows_ok & (offs_n[None, :] < N) & last)


@triton.jit
def swap_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K, stride_am, stride_bn, stride_om,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    k_first, k_last = _k_range(K, BLOCK_K, SPLIT_K)
    w_ptrs = b_ptr + cols[:, None] * stride_bn + offs_k[None, :] + k_first * BLOCK_K  # [BLOCK_N, BLOCK_K]
    x_ptrs = a_ptr + offs_m[None, :] * stride_am + offs_k[:, None] + k_first * BLOCK_K  # [BLOCK_K, BLOCK_M]
    m_ok = offs_m < M
    scale_a = tl.load(scale_a_ptr + offs_m, mask=m_ok, other=0.0)[None, :]
    scale_b = tl.load(scale_b_ptr + cols)[:, None]
    bias = tl.load(bias_ptr + cols).to(tl.float32)[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for _ in range(k_first, k_last):
        w = tl.load(w_ptrs)
        x = tl.load(x_ptrs, mask=m_ok[None, :], other=0.0)
        acc = tl.dot(w, x, acc)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    last = True
    if SPLIT_K > 1:
        acc, last = _split_sum(acc, tile, tl.num_programs(0), partials_ptr, arrivals_ptr, SPLIT_K, BLOCK_N, BLOCK_M)
    result = acc * scale_a * scale_b + bias
    out_ptrs = out_ptr + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out_ptrs, result.to(tl.bfloat16), mask=m_ok[None, :] & (offs_n[:, None] < N) & last)


def form(kernel, M, N, K, block_n, block_k, split_k, warps, stages, device, **constexprs):
    """A function of (a, b, scale_a, scale_b, bias) that runs `kernel` with these parameters."""
    tiles = triton.cdiv(N, block_n)
    rows = constexprs.get("ROWS", constexprs.get("BLOCK_M"))
    arrivals = torch.zeros(tiles, dtype=torch.int32, device=device)  # the kernel leaves them zero

    def run(a, b, scale_a, scale_b, bias):
        assert a.stride(1) == 1 and b.stride(0) == 1 and K % (block_k * 1) == 0
        out = torch.empty((M, N), dtype=BF16, device=device)
        partials = torch.empty((split_k, tiles, rows * block_n), dtype=torch.float32, device=device)
        kernel[(tiles, split_k)](
            a, b, out, scale_a, scale_b, bias, partials, arrivals, M, N, K, a.stride(0), b.stride(1), out.stride(0),
            BLOCK_N=block_n, BLOCK_K=block_k, SPLIT_K=split_k, num_warps=warps, num_stages=stages, **constexprs,
        )  # fmt: skip
        return out

    return run


def library(config):
    return lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, config=config)


def splits(tiles, k_steps, num_sms, choices=(1, 2, 4)):
    """Split-K factors that keep at least two K steps a program and at most four programs an SM."""
    return [s for s in choices if s == 1 or (tiles * s <= 4 * num_sms and k_steps >= 2 * s)]


def candidates(M, N, K, device, num_sms):
    cands = {"shipped": library(None)}
    shipped = scaledmm.select_config(M, N, K, FP8, device)
    if M <= 4:
        rows = triton.next_power_of_2(M)
        for bn, bk, warps, stages in itertools.product((8, 16, 32), (256, 512), (4,), (1, 3)):
            for s in splits(triton.cdiv(N, bn), K // bk, num_sms):
                label = f"gemv step {bn}x{bk} w{warps} s{stages} k{s}"
                cands[label] = form(gemv_kernel, M, N, K, bn, bk, s, warps, stages, device, ROWS=rows, LATE_SUM=False)
                if M == 1 and bn * bk <= 8192:
                    cands[label.replace("step", "late")] = form(
                        gemv_kernel, M, N, K, bn, bk, s, warps, stages, device, ROWS=1, LATE_SUM=True
                    )
    for bn, bk, stages in itertools.product((64, 128), (128, 256), (3, 5)):
        for s in splits(triton.cdiv(N, bn), K // bk, num_sms):
            label = f"swap {bn}x{bk} w4 s{stages} k{s}"
            cands[label] = form(swap_kernel, M, N, K, bn, bk, s, 4, stages, device, BLOCK_M=16)
    for bk, warps, stages in itertools.product((256, 512), (2, 4), (3, 5)):
        cands[f"ptr {MatmulConfig(16, 16, bk, num_warps=warps, num_stages=stages)}"] = library(
            MatmulConfig(16, 16, bk, num_warps=warps, num_stages=stages)
        )
    tile = MatmulConfig(**{**shipped.to_dict(), "group_m": 8, "split_k": 1})
    tiles = triton.cdiv(M, tile.block_m) * triton.cdiv(N, tile.block_n)
    for s in splits(tiles, K // tile.block_k, num_sms, (2, 4)):
        config = MatmulConfig(**{**tile.to_dict(), "split_k": s})
        cands[f"ptr {config}"] = library(config)
    return shipped, cands


def family(label):
    return label.split()[0]


def main(argv):
    smoke = "--smoke" in argv
    device = torch.device("cpu" if smoke else "cuda")
    num_sms = device_limits(device)[0] if not smoke else 4
    if smoke:
        shapes, ms = [("tiny", 96, 1024)], (1, 3, 16)
    else:
        print(torch.cuda.get_device_name(device), torch.__version__, triton.__version__)
        shapes = [(s.name, s.n, s.k) for s in preset_shapes("llama3-8b") + preset_shapes("qwen3-4b")]
        picked = [int(i) for i in argv if i.isdigit()]
        shapes, ms = [shapes[i] for i in picked] or shapes, (1, 4, 16)
    summary = []
    for (name, N, K), M in itertools.product(shapes, ms):
        ops = [make_operands(M, N, K, FP8, device) for _ in range(rotation_count(N * K, device))]
        inputs = [(*o.args(), o.bias) for o in ops]
        check = ErrorCheck(ops[0], BF16)
        shipped, cands = candidates(M, N, K, device, num_sms)
        labels, jobs = [], []
        for label, fn in cands.items():
            try:
                ratio = check.ratio(fn(*inputs[0]))
            except Exception as e:  # a variant that does not compile is reported, not fatal
                print(f"  ERR {label}: {type(e).__name__} {str(e)[:120]}")
                continue
            if not ratio <= 1.0:
                print(f"  WRONG {label}: error ratio {ratio}")
                continue
            labels.append(label)
            jobs.append(fn)
        first = [t.median_us for t in time_interleaved([(j, inputs) for j in jobs], 20)]
        picks = {"shipped": 0}
        for i, label in enumerate(labels):
            f = family(label)
            if f != "shipped" and (f not in picks or first[i] < first[picks[f]]):
                picks[f] = i
        second = [t.median_us for t in time_interleaved([(jobs[i], inputs) for i in picks.values()], 30)]
        base = second[0]
        print(f"== fp8 {name} (N={N}, K={K}) M={M}: shipped {shipped}, {len(jobs)} variants")
        for i, label in enumerate(labels):
            print(f"   round 1 {label:36s} {first[i]:8.2f} us")
        for (f, i), us in zip(picks.items(), second):
            print(f"  round 2 {labels[i]:36s} {us:8.2f} us {N * K / us / 1e3:6.0f} GB/s  x{base / us:.3f}")
            summary.append((f, name, M, base / us))
    print("== round 2, best of each form over shipped")
    for f in sorted({s[0] for s in summary} - {"shipped"}):
        ratios = [s[3] for s in summary if s[0] == f]
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"  {f:6s} geomean x{geo:.3f}  min x{min(ratios):.3f}  max x{max(ratios):.3f}  ({len(ratios)} points)")


if __name__ == "__main__":
    main(sys.argv[1:])
