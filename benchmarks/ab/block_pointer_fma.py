"""Block-scaled fp8 at mid and large M (issue 20): the pointer block kernel spends per K block, after
each block's wgmma, a multiply and an FMA per output element (partial * scale_a[:, None] *
scale_b[None, :] as ptxas contracts it) to add the block's scaled partial in, issue slots the tensor
cores wait on since the next block's wgmma cannot start before them. Where the tile lies in one 128-row scale
block of the weight, scale_b is one scalar per K block: folded into the row scales, each block is one
FMA per element (the package's kernel, TILE_IN_ONE_SCALE_BLOCK).

Session 12's kernel (`--old`: kernels/matmul_block.py of da735ab) against the package's, each with the
same configs (the shipped bucket's Triton config where it is a pointer config, and two fixed tiles),
and torch._scaled_mm's block mode for scale, in one interleaved timing per point (CUDA graphs, cold
weights, bf16 out, bias):

    git show da735ab:src/scaledmm/kernels/matmul_block.py > /tmp/matmul_block_session12.py
    PYTHONPATH=src python3 benchmarks/ab/block_pointer_fma.py --old /tmp/matmul_block_session12.py [--m 128,256]
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/ab/block_pointer_fma.py --old ... --check   # CPU
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import MatmulConfig, plan
from scaledmm.kernels.matmul_block import _block_scaled_mm_kernel, block_launch_arguments
from scaledmm.kernels.vendor import block_scale_a, vendor_scaled_mm
from scaledmm.testing import assert_close, make_block_operands

OUT = torch.bfloat16
BLOCK = (128, 128)
SHAPES = ((2112, 7168), (24576, 1536), (7168, 16384), (4096, 7168), (7168, 2048), (6144, 4096), (24576, 4096))
FIXED = (
    MatmulConfig(64, 128, 128, group_m=8, num_warps=4, num_stages=4),
    MatmulConfig(128, 128, 128, group_m=8, num_warps=8, num_stages=4),
)


def load_old_kernel(path: Path):
    """The pointer block kernel of another version of kernels/matmul_block.py (its imports resolve to
    this tree's scaledmm, whose helpers it calls have not changed since)."""
    spec = importlib.util.spec_from_file_location("matmul_block_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._block_scaled_mm_kernel


class Variant:
    """The pointer kernel (this tree's, or `old_kernel`) with a config, called as the bench's methods are."""

    def __init__(self, config: MatmulConfig, old_kernel=None):
        self.config, self.old_kernel = config, old_kernel

    def __call__(self, a, b, sa, sb, bias):
        out = torch.empty((a.shape[0], b.shape[1]), dtype=OUT, device=a.device)
        grid, args, kwargs = block_launch_arguments(a, b, sa, sb, bias, out, self.config, BLOCK)
        if self.old_kernel is None:
            _block_scaled_mm_kernel[grid](*args, **kwargs)
        else:  # session 12's pointer kernel has no such argument
            del kwargs["TILE_IN_ONE_SCALE_BLOCK"]
            self.old_kernel[grid](*args, **kwargs)
        return out


def vendor(a, b, sa, sb, bias):
    return vendor_scaled_mm(a, b, sa, sb, bias, OUT, block_size=BLOCK)


def check_on_cpu(old_kernel) -> None:
    """Both kernels against the float64 reference, ragged K and N, a tile in one scale block or not."""
    for M, N, K, block_n in ((5, 256, 640, 64), (20, 200, 300, 128), (3, 192, 520, 64), (9, 256, 384, 256)):
        config = MatmulConfig(16, block_n, 128, num_warps=4, num_stages=2)
        ops = make_block_operands(M, N, K, "cpu", BLOCK)
        for name, variant in (("old", Variant(config, old_kernel)), ("new", Variant(config))):
            assert_close(variant(ops.a, ops.b, ops.scale_a, ops.scale_b, ops.bias), ops, "precise")
            print(f"M={M} N={N} K={K} BLOCK_N={block_n} {name}: ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="128,256,512,1024,4096")
    parser.add_argument("--old", type=Path, required=True, help="session 12's kernels/matmul_block.py")
    parser.add_argument("--check", action="store_true", help="check both kernels on CPU (TRITON_INTERPRET=1)")
    args = parser.parse_args()
    old_kernel = load_old_kernel(args.old)
    if args.check:
        check_on_cpu(old_kernel)
        return
    device = torch.device("cuda", 0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: per-call us, block-scaled fp8, bf16 out")
    print("config: old us, new us (old / new); vendor us; new / vendor = vendor us / new us")
    for N, K in SHAPES:
        copies = rotation_count(N * K, device)
        for M in map(int, args.m.split(",")):
            tuned = plan(M, N, K, torch.float8_e4m3fn, device, block_size=BLOCK).config
            configs = ([tuned] if tuned.kernel == "pointer" and tuned not in FIXED else []) + list(FIXED)
            ops = [make_block_operands(M, N, K, device, BLOCK) for _ in range(copies)]
            row_major = [(*o.args(), o.bias) for o in ops]
            column_major = [(o.a, o.b, block_scale_a(o.scale_a), o.scale_b, o.bias) for o in ops]
            jobs = [(vendor, column_major)]
            for config in configs:
                for variant in (Variant(config, old_kernel), Variant(config)):
                    assert_close(variant(*row_major[0]), ops[0], "precise")
                    jobs.append((variant, row_major))
            times = [t.median_us for t in time_interleaved(jobs)]
            cells = []
            for i, config in enumerate(configs):
                old, new = times[1 + 2 * i], times[2 + 2 * i]
                cells.append(f"[{config}] {old:.1f} {new:.1f} ({old / new:.2f}x; {times[0] / new:.2f} of vendor)")
            print(f"{N:6d} {K:6d} M={M:5d} vendor {times[0]:.1f} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
