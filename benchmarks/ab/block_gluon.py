"""A/B of the block-scaled FP8 Gluon kernel (kernels/matmul_block_gluon.py, issue 20) on an H200.

Per point, timed together (bench.timing.time_interleaved, R copies of the inputs, CUDA graphs):
- block:  scaled_mm with block_size=(128, 128) as shipped (the Triton pointer block kernel, or what
          tuned files in SCALEDMM_CONFIG_DIR pick);
- gluon:  matmul_block_gluon at each of CONFIGS (c2 = two MMA warpgroups sharing a 128-row tile, c1 =
          one, pp = ping-pong, s = stages, st64 = 64-column stores);
- vendor: torch._scaled_mm in its block mode (scale_a outer-dim-major, scale_b = weight_scale_inv.t()).
Every output is first checked against the float64 block reference (error over the package's bound,
testing.max_error_ratio; a variant beyond it is reported WRONG and not timed). A variant that fails to
compile or run is reported and left out. Prints time, TFLOP/s and the vendor's time over each
variant's (> 1: faster than the vendor), then geomeans per variant.

    PYTHONPATH=src python3 benchmarks/ab/block_gluon.py --out $OUT/block_gluon_ab.log   # ~2 min on an H200
"""

from __future__ import annotations

import argparse
import math
import sys
import traceback

import torch

import scaledmm
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.matmul_block_gluon import scaled_mm_block_gluon
from scaledmm.kernels.matmul_gluon import GluonConfig
from scaledmm.testing import make_block_operands, max_error_ratio

BLOCK = (128, 128)
BF16 = torch.bfloat16
SHAPES = {  # name: (N, K)
    "dsv3 q_b": (24576, 1536),
    "dsv3 gate_up": (7168, 16384),
    "dsv3 q_a_kv_a": (2112, 7168),
    "qwen3-8b qkv": (6144, 4096),
}
M_VALUES = (256, 1024, 4096)
CONFIGS = [
    GluonConfig(128, 128, 128, num_stages=5, consumer_groups=2, store_n=64),  # DeepGEMM's: two warpgroups
    GluonConfig(64, 128, 128, num_stages=6, consumer_groups=2, store_n=64, schedule="pingpong"),
    GluonConfig(64, 128, 128, num_stages=6, consumer_groups=1, store_n=64),
]


def vendor_scale_a(scale_a: torch.Tensor) -> torch.Tensor:
    return scale_a.t().contiguous().t()  # outer-dim-major, as torch._scaled_mm's block mode reads it


def block(a, b, sa, sb, bias):
    return scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, block_size=BLOCK)


def vendor(a, b, sa, sb, bias):
    return torch._scaled_mm(a, b, sa, sb, bias=bias, out_dtype=BF16)


def gluon_call(ops, config: GluonConfig):
    """The Gluon kernel bound on ops (compiled and run once), as a function of the call's tensors."""
    out = torch.empty(ops.a.shape[0], ops.b.shape[1], dtype=BF16, device=ops.a.device)
    launch = scaled_mm_block_gluon(*ops.args(), ops.bias, out, config)

    def run(a, b, sa, sb, bias):
        result = torch.empty(a.shape[0], b.shape[1], dtype=BF16, device=a.device)
        launch(a, b, sa, sb, bias, result)
        return result

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", type=int, nargs="+", default=list(M_VALUES))
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()
    log = open(args.out, "w") if args.out else None  # noqa: SIM115

    def say(line: str) -> None:
        print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()

    device = torch.device("cuda")
    say(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per call (median of graph replays)")
    names = ["block", *(str(c) for c in CONFIGS), "vendor"]
    ratios: dict[str, list[float]] = {name: [] for name in names[:-1]}
    say(f"{'shape':<16}{'M':>6}  {'variant':<34}{'us':>9}{'TFLOP/s':>9}{'vendor/x':>9}  check")
    for shape, (N, K) in SHAPES.items():
        for M in args.m:
            copies = rotation_count(N * K, device)
            ops = [make_block_operands(M, N, K, device, BLOCK) for _ in range(copies)]
            ours_inputs = [(*o.args(), o.bias) for o in ops]
            vendor_inputs = [(o.a, o.b, vendor_scale_a(o.scale_a), o.scale_b, o.bias) for o in ops]
            candidates = [("block", block, ours_inputs)]
            for config in CONFIGS:
                try:
                    candidates.append((str(config), gluon_call(ops[0], config), ours_inputs))
                except Exception as error:  # compile or launch failure: report, go on
                    say(f"{shape:<16}{M:>6}  {config!s:<34} FAILED: {type(error).__name__}: {error}")
                    traceback.print_exc(file=sys.stderr)
            candidates.append(("vendor", vendor, vendor_inputs))
            jobs, checked = [], []
            for name, fn, inputs in candidates:
                try:
                    check = max_error_ratio(fn(*inputs[0]), ops[0])
                except RuntimeError as error:
                    if name != "vendor":
                        say(f"{shape:<16}{M:>6}  {name:<34} FAILED: {type(error).__name__}: {error}")
                        continue
                    # torch._scaled_mm may refuse a bias in block mode (block_fp8.py): time it without
                    # (the check reads `nan`), as the bound to beat.
                    say(f"{shape:<16}{M:>6}  vendor refused the bias ({error}); timed without it")
                    inputs = [(*v[:4], None) for v in inputs]
                    fn(*inputs[0])
                    check = float("nan")
                    jobs.append((fn, inputs))
                    checked.append((name, check))
                    continue
                except Exception as error:
                    say(f"{shape:<16}{M:>6}  {name:<34} FAILED: {type(error).__name__}: {error}")
                    continue
                if not check <= 1.0:  # nan included
                    say(f"{shape:<16}{M:>6}  {name:<34} WRONG: error {check:.3g}x the bound; not timed")
                    continue
                jobs.append((fn, inputs))
                checked.append((name, check))
            times = [t.median_us for t in time_interleaved(jobs)]
            vendor_us = dict(zip((n for n, _ in checked), times)).get("vendor")
            for (name, check), us in zip(checked, times):
                tflops = 2 * M * N * K / us / 1e6
                speed = vendor_us / us if vendor_us else float("nan")
                if name != "vendor" and vendor_us:
                    ratios[name].append(speed)
                say(f"{shape:<16}{M:>6}  {name:<34}{us:9.1f}{tflops:9.0f}{speed:9.2f}  {check:.3f}")
    say("geomean of vendor time / variant time (> 1: faster than torch._scaled_mm's block mode):")
    for name, values in ratios.items():
        if values:
            geomean = math.exp(sum(map(math.log, values)) / len(values))
            say(f"  {name:<34}{geomean:6.2f}  ({len(values)} points; min {min(values):.2f}, max {max(values):.2f})")
    if log:
        log.close()


if __name__ == "__main__":
    main()
