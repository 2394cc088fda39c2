"""Where the Gluon kernel's fp8 time goes against cuBLAS at a compute-bound point (issue 17): one call of
each variant inside a profiler range, for Nsight Compute, and their times in one interleaved run.

Variants (warp_specialize.py's): the vendor, torch._scaled_mm(use_fast_accum=True), and the two Gluon
forms that lead at large M: the cooperative 128x256 tile (two MMA warpgroups share it; the epilogue
stalls the tensor cores) and ping-pong 128x128 (one warpgroup's epilogue under the other's wgmma).
Each variant runs a few warm-up calls, then one call between torch.cuda.profiler.start() and stop(),
so `ncu --profile-from-start off` sees exactly one launch per variant. Then all are timed together
(bench.timing.time_interleaved) and printed with TFLOP/s.

    PYTHONPATH=src ncu --profile-from-start off --clock-control none --set full -o $OUT/gate_up \\
        python3 benchmarks/ab/gluon_profile.py
    ncu -i $OUT/gate_up.ncu-rep --page details > $OUT/gate_up_ncu.txt

Defaults: llama3-8b gate_up (N = 28672, K = 4096) at M = 4096, fp8 with per-token and per-channel
scales, a bias and a bf16 output. Under ncu the timing is skipped (`--no-time`): replays distort it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from warp_specialize import Gluon, Vendor  # benchmarks/ab/, beside this script

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.matmul_gluon import GluonConfig
from scaledmm.testing import make_operands

GLUON_FORMS = (
    GluonConfig(128, 256, 128, num_stages=4, consumer_groups=2, store_n=64),
    GluonConfig(128, 128, 128, num_stages=5, consumer_groups=2, store_n=64, schedule="pingpong"),
)
WARMUP_CALLS = 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="28672,4096", help="N,K of the weight")
    parser.add_argument("--m", type=int, default=4096)
    parser.add_argument("--no-time", action="store_true", help="profile ranges only (under ncu)")
    opts = parser.parse_args()
    N, K = (int(x) for x in opts.shape.split(","))
    device = torch.device("cuda")
    ops = make_operands(opts.m, N, K, torch.float8_e4m3fn, device)
    args = (ops.a, ops.b, ops.scale_a, ops.scale_b, ops.bias)
    variants = [Vendor(precise=False)] + [Gluon(c, precise=False) for c in GLUON_FORMS]
    for variant in variants:
        for _ in range(WARMUP_CALLS):
            variant.run(*args)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        variant.run(*args)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        print(f"profiled: {variant.label}", flush=True)
    if opts.no_time:
        return
    copies = rotation_count(ops.b.numel(), device)
    inputs = [make_operands(opts.m, N, K, torch.float8_e4m3fn, device) for _ in range(copies)]
    rotated = [(o.a, o.b, o.scale_a, o.scale_b, o.bias) for o in inputs]
    timings = time_interleaved([(v.run, rotated) for v in variants])
    flop = 2 * opts.m * N * K
    vendor_us = timings[0].median_us
    print(f"N={N} K={K} M={opts.m}, fp8 fast accumulation, {torch.cuda.get_device_name()}")
    for variant, timing in zip(variants, timings):
        us = timing.median_us
        print(f"{variant.label:40s} {us:9.1f} us {flop / us / 1e6:8.0f} TFLOP/s  vendor/this {vendor_us / us:.3f}")


if __name__ == "__main__":
    main()
