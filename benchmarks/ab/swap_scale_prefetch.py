"""Block-scaled decode (issue 20): were the swapped kernel's scale loads what held its weight stream
at 72% of DRAM peak? ncu on session 11's kernel (M = 16, 24576 x 4096; session 12,
ncu_decode_swapped.txt) showed 54% of stall cycles on global loads, 4 of 32 bytes used per sector: the
per-block scales, loaded in the K loop after the operands and not pipelined with them.

Session 11's kernel (`--old`: kernels/matmul_block.py of a6739d0 or earlier) against variants, each
with the shipped bucket's config, in one interleaved timing per point (CUDA graphs, cold weights):
- `col-major sa`: session 11's kernel given scale_a [M, G] with strides (1, M).
- `prefetch`: the package's kernel (kernels/matmul_block.py) with the next block's scales loaded one
  iteration ahead, the weight tile's scale a vector as before (TILE_IN_ONE_SCALE_BLOCK off).
- `prefetch+scalar sb`: the package's kernel as it runs: and the tile's weight scale one scalar (the
  tile lies in one 128-row scale block where SCALE_N is a multiple of BLOCK_N).
- `prefetch+scalar sb, col-major sa`: with scale_a column-major.
The first run (session 12, `swap_scale_prefetch.log`) had these variants in this script, before the
package's kernel took the last form.

    git show a6739d0:src/scaledmm/kernels/matmul_block.py > /tmp/matmul_block_session11.py
    PYTHONPATH=src python3 benchmarks/ab/swap_scale_prefetch.py --old /tmp/matmul_block_session11.py [--m 16,32,64]
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/ab/swap_scale_prefetch.py --old ... --check   # CPU
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import MatmulConfig, plan
from scaledmm.kernels.matmul_block import _block_scaled_mm_swap_kernel, block_launch_arguments
from scaledmm.kernels.vendor import block_scale_a
from scaledmm.testing import assert_close, make_block_operands

OUT = torch.bfloat16
BLOCK = (128, 128)
SHAPES = ((24576, 4096), (7168, 16384), (24576, 1536), (4096, 12288), (6144, 4096), (2112, 7168))


def load_old_kernel(path: Path):
    """The swapped block kernel of another version of kernels/matmul_block.py (its imports resolve to
    this tree's scaledmm, whose helpers it calls have not changed since)."""
    spec = importlib.util.spec_from_file_location("matmul_block_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._block_scaled_mm_swap_kernel


class Variant:
    """One kernel variant with a config: called as the bench's methods are, (a, b, sa, sb, bias)."""

    def __init__(self, config: MatmulConfig, old_kernel=None, scalar_scale_b: bool = False):
        self.config, self.old_kernel, self.scalar_scale_b = config, old_kernel, scalar_scale_b

    def __call__(self, a, b, sa, sb, bias):
        out = torch.empty((a.shape[0], b.shape[1]), dtype=OUT, device=a.device)
        grid, args, kwargs = block_launch_arguments(a, b, sa, sb, bias, out, self.config, BLOCK)
        if self.old_kernel is None:
            kwargs["TILE_IN_ONE_SCALE_BLOCK"] = self.scalar_scale_b
            _block_scaled_mm_swap_kernel[grid](*args, **kwargs)
        else:  # session 11's kernel has no such argument
            del kwargs["TILE_IN_ONE_SCALE_BLOCK"]
            self.old_kernel[grid](*args, **kwargs)
        return out


def variants(config: MatmulConfig, old_kernel) -> dict[str, tuple[Variant, bool]]:
    """name -> (variant, whether it takes scale_a column-major)."""
    out = {
        "session 11": (Variant(config, old_kernel), False),
        "col-major sa": (Variant(config, old_kernel), True),
        "prefetch": (Variant(config), False),
    }
    if BLOCK[0] % config.block_n == 0:
        out["prefetch+scalar sb"] = (Variant(config, scalar_scale_b=True), False)
        out["prefetch+scalar sb, col-major sa"] = (Variant(config, scalar_scale_b=True), True)
    return out


def check_on_cpu(old_kernel) -> None:
    """Every variant against the float64 reference, ragged K and N and split K (the interpreter)."""
    for M, N, K, split in ((5, 256, 640, 1), (16, 384, 1024, 2), (3, 200, 520, 2)):
        config = MatmulConfig(16, 64, 128, num_warps=4, num_stages=2, split_k=split, kernel="swapped")
        ops = make_block_operands(M, N, K, "cpu", BLOCK)
        for name, (variant, column_major) in variants(config, old_kernel).items():
            scale_a = block_scale_a(ops.scale_a) if column_major else ops.scale_a
            assert_close(variant(ops.a, ops.b, scale_a, ops.scale_b, ops.bias), ops, "precise")
            print(f"M={M} N={N} K={K} split={split} {name}: ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="16,32,64")
    parser.add_argument("--old", type=Path, required=True, help="session 11's kernels/matmul_block.py")
    parser.add_argument("--check", action="store_true", help="check the variants on CPU (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    old_kernel = load_old_kernel(args.old)
    if args.check:
        check_on_cpu(old_kernel)
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
            for name, (variant, col) in variants(config, old_kernel).items():
                inputs = column_major if col else row_major
                assert_close(variant(*inputs[0]), ops[0], "precise")
                jobs.append((variant, inputs))
                names.append(name)
            times = [t.median_us for t in time_interleaved(jobs)]
            cells = "  ".join(f"{n} {t:.1f} ({times[0] / t:.2f}x)" for n, t in zip(names, times))
            print(f"{N:6d} {K:6d} M={M:3d} [{config}] | {cells}", flush=True)


if __name__ == "__main__":
    main()
