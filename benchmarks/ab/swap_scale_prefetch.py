"""Block-scaled decode (issue 20): were the swapped kernel's scale loads what held its weight stream
at 72% of DRAM peak? ncu on session 11's kernel (M = 16, 24576 x 4096; session 12,
ncu_decode_swapped.txt) showed 54% of stall cycles on global loads, 4 of 32 bytes used per sector: the
per-block scales, loaded in the K loop after the operands and not pipelined with them.

Session 11's kernel (kept here as `_swap_kernel_session11`) against variants, each with the shipped
bucket's config, in one interleaved timing per point (CUDA graphs, cold weights):
- `col-major sa`: session 11's kernel given scale_a [M, G] with strides (1, M).
- `prefetch`: the package's kernel (kernels/matmul_block.py) with the next block's scales loaded one
  iteration ahead, the weight tile's scale a vector as before (TILE_IN_ONE_SCALE_BLOCK off).
- `prefetch+scalar sb`: the package's kernel as it runs: and the tile's weight scale one scalar (the
  tile lies in one 128-row scale block where SCALE_N is a multiple of BLOCK_N).
- `prefetch+scalar sb, col-major sa`: with scale_a column-major.
The first run (session 12, `swap_scale_prefetch.log`) had these variants in this script, before the
package's kernel took the last form.

    PYTHONPATH=src python3 benchmarks/ab/swap_scale_prefetch.py [--m 16,32,64]
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/ab/swap_scale_prefetch.py --check   # CPU
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import MatmulConfig, plan
from scaledmm.kernels.common import scale_and_store
from scaledmm.kernels.matmul_block import _block_scaled_mm_swap_kernel, block_launch_arguments
from scaledmm.kernels.split_k import split_k_finish, split_range
from scaledmm.kernels.vendor import block_scale_a
from scaledmm.testing import assert_close, make_block_operands

OUT = torch.bfloat16
BLOCK = (128, 128)
SHAPES = ((24576, 4096), (7168, 16384), (24576, 1536), (4096, 12288), (6144, 4096), (2112, 7168))


@triton.jit
def _swap_kernel_session11(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    stride_sam, stride_sak, stride_sbk, stride_sbn, stride_bias,
    SCALE_N: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    TILE_IN_ONE_SCALE_BLOCK: tl.constexpr,  # unused: taken so that the package's arguments fit
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tile_m = pid % tiles_m
    tile_n = pid // tiles_m
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk
    k_steps = tl.cdiv(K, BLOCK_K)
    k_first, k_last = (0, k_steps) if SPLIT_K == 1 else split_range(k_steps, SPLIT_K)
    w_ptrs = b_ptr + cols[:, None] * stride_bn + offs_k[None, :] * stride_bk + k_first * b_step
    x_ptrs = a_ptr + offs_k[:, None] * stride_ak + rows[None, :] * stride_am + k_first * a_step
    scale_a_ptrs = scale_a_ptr + rows * stride_sam
    scale_b_ptrs = scale_b_ptr + (cols // SCALE_N) * stride_sbn

    x_cols = (offs_m < M)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for block in range(k_first, k_last):
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs, mask=x_cols, other=0.0)
        else:
            k_left = K - block * BLOCK_K
            w = tl.load(w_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            x = tl.load(x_ptrs, mask=x_cols & (offs_k[:, None] < k_left), other=0.0)
        partial = tl.dot(w, x)
        scale_a = tl.load(scale_a_ptrs + block * stride_sak)
        scale_b = tl.load(scale_b_ptrs + block * stride_sbk)
        acc += partial * scale_a[None, :] * scale_b[:, None]
        w_ptrs += b_step
        x_ptrs += a_step

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


class Variant:
    """One kernel variant with a config: called as the bench's methods are, (a, b, sa, sb, bias)."""

    def __init__(self, config: MatmulConfig, prefetch: bool, scalar_scale_b: bool = False):
        self.config, self.prefetch, self.scalar_scale_b = config, prefetch, scalar_scale_b

    def __call__(self, a, b, sa, sb, bias):
        out = torch.empty((a.shape[0], b.shape[1]), dtype=OUT, device=a.device)
        grid, args, kwargs = block_launch_arguments(a, b, sa, sb, bias, out, self.config, BLOCK)
        kwargs["TILE_IN_ONE_SCALE_BLOCK"] = self.scalar_scale_b
        kernel = _block_scaled_mm_swap_kernel if self.prefetch else _swap_kernel_session11
        kernel[grid](*args, **kwargs)
        return out


def variants(config: MatmulConfig) -> dict[str, tuple[Variant, bool]]:
    """name -> (variant, whether it takes scale_a column-major)."""
    out = {
        "session 11": (Variant(config, False), False),
        "col-major sa": (Variant(config, False), True),
        "prefetch": (Variant(config, True), False),
    }
    if BLOCK[0] % config.block_n == 0:
        out["prefetch+scalar sb"] = (Variant(config, True, True), False)
        out["prefetch+scalar sb, col-major sa"] = (Variant(config, True, True), True)
    return out


def check_on_cpu() -> None:
    """Every variant against the float64 reference, ragged K and N and split K (the interpreter)."""
    for M, N, K, split in ((5, 256, 640, 1), (16, 384, 1024, 2), (3, 200, 520, 2)):
        config = MatmulConfig(16, 64, 128, num_warps=4, num_stages=2, split_k=split, kernel="swapped")
        ops = make_block_operands(M, N, K, "cpu", BLOCK)
        for name, (variant, column_major) in variants(config).items():
            scale_a = block_scale_a(ops.scale_a) if column_major else ops.scale_a
            assert_close(variant(ops.a, ops.b, scale_a, ops.scale_b, ops.bias), ops, "precise")
            print(f"M={M} N={N} K={K} split={split} {name}: ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="16,32,64")
    parser.add_argument("--check", action="store_true", help="check the variants on CPU (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    if args.check:
        check_on_cpu()
        return
    device = torch.device("cuda", 0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: per-call us, block-scaled fp8, bf16 out")
    for N, K in SHAPES:
        copies = rotation_count(N * K, device)
        for M in map(int, args.m.split(",")):
            config = plan(M, N, K, torch.float8_e4m3fn, device, block_size=BLOCK).config
            if config.kernel != "swapped":
                print(f"{N:6d} {K:6d} M={M:3d} [{config}]: not a swapped bucket, skipped")
                continue
            ops = [make_block_operands(M, N, K, device, BLOCK) for _ in range(copies)]
            row_major = [(*o.args(), o.bias) for o in ops]
            column_major = [(o.a, o.b, block_scale_a(o.scale_a), o.scale_b, o.bias) for o in ops]
            jobs, names = [], []
            for name, (variant, col) in variants(config).items():
                inputs = column_major if col else row_major
                assert_close(variant(*inputs[0]), ops[0], "precise")
                jobs.append((variant, inputs))
                names.append(name)
            times = [t.median_us for t in time_interleaved(jobs)]
            cells = "  ".join(f"{n} {t:.1f} ({times[0] / t:.2f}x)" for n, t in zip(names, times))
            print(f"{N:6d} {K:6d} M={M:3d} [{config}] | {cells}", flush=True)


if __name__ == "__main__":
    main()
