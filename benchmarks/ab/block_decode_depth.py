"""Block-scaled decode (issue 20): would deeper pipelines or more splits than the tuner's space offers
stream the weight faster? For each shape and M, the shipped bucket's config (swapped or pointer, as
tuned) against variants of it: 6 and 8 stages, the split doubled and quadrupled (up to 8 programs per
SM; the space stops at 2), 8 warps. One interleaved timing per point (CUDA graphs, cold weights).

    PYTHONPATH=src python3 benchmarks/ab/block_decode_depth.py [--m 16,32,64]
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

import scaledmm
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import plan
from scaledmm.configs.lookup import device_limits, unfit_reason
from scaledmm.testing import assert_close, make_block_operands

OUT = torch.bfloat16
BLOCK = (128, 128)
SHAPES = ((24576, 4096), (7168, 16384), (24576, 1536), (4096, 12288), (6144, 4096), (2112, 7168))


def variants(config, K):
    k_blocks = -(-K // 128)
    out = {"shipped": config}
    for stages in (6, 8):
        out[f"stages {stages}"] = dataclasses.replace(config, num_stages=stages)
    for factor in (2, 4):
        split = config.split_k * factor
        if k_blocks >= 2 * split:
            out[f"split x{factor}"] = dataclasses.replace(config, split_k=split)
    out["warps 8"] = dataclasses.replace(config, num_warps=8)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="16,32,64")
    args = parser.parse_args()
    device = torch.device("cuda", 0)
    shared = device_limits(device)[1]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: per-call us, block-scaled fp8, bf16 out")
    for N, K in SHAPES:
        copies = rotation_count(N * K, device)
        for M in map(int, args.m.split(",")):
            shipped = plan(M, N, K, torch.float8_e4m3fn, device, block_size=BLOCK).config
            ops = [make_block_operands(M, N, K, device, BLOCK) for _ in range(copies)]
            inputs = [(*o.args(), o.bias) for o in ops]
            jobs, names = [], []
            for name, config in variants(shipped, K).items():
                if unfit_reason(config, M, N, shared, BLOCK) is not None:
                    continue

                def call(a, b, sa, sb, bias, config=config):
                    return scaledmm.scaled_mm(a, b, sa, sb, OUT, bias, config=config, block_size=BLOCK)

                try:
                    assert_close(call(*inputs[0]), ops[0], "precise")
                except Exception as err:  # a variant that does not compile or fit: reported, not timed
                    print(f"  {N}x{K} M={M} {name}: {type(err).__name__}: {str(err)[:80]}")
                    continue
                jobs.append((call, inputs))
                names.append(name)
            times = [t.median_us for t in time_interleaved(jobs)]
            base = times[0]
            cells = "  ".join(f"{n} {t:.1f} ({base / t:.2f}x)" for n, t in zip(names, times))
            gbps = N * K / base / 1e3
            print(f"{N:6d} {K:6d} M={M:3d} [{shipped}] {gbps:.0f} GB/s | {cells}", flush=True)


if __name__ == "__main__":
    main()
