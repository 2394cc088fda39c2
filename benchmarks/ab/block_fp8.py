"""Block-scaled FP8 (1 x 128 activations, 128 x 128 weights): scaledmm's untuned kernel against
torch._scaled_mm in its block mode, on the block-FP8 shapes of ../shared/shapes.json, in one run.

`scaledmm bench --block-size 128,128` runs the same comparison with tuned files (SCALEDMM_CONFIG_DIR);
this script stays as the A/B of the first slice (with tuned files in SCALEDMM_CONFIG_DIR, "ours" is
scaled_mm as `auto` runs it). Protocol of ../shared/BENCHMARKING.md: R copies of the inputs (cold
weights), the calls of each method captured in a CUDA graph and replayed in turn
(bench.timing.time_interleaved), bf16 bias and output.
torch._scaled_mm takes scale_a [M, K/128] outer-dim-major and scale_b [K/128, N/128]; it refuses
M = 1 (skipped). Each of our outputs is checked against the float64 reference first.

    PYTHONPATH=src python3 benchmarks/ab/block_fp8.py [--m 1,16,64,256,1024,4096]
"""

from __future__ import annotations

import argparse
import math

import torch

import scaledmm
from scaledmm.bench.shapes import BLOCK_FP8_MODELS, preset_shapes
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.testing import make_block_operands, max_error_ratio

# The block-FP8 shapes (N, K) of ../shared/shapes.json ("block_fp8"), as the bench's presets hold them.
SHAPES = {
    model: {shape.name.split(".", 1)[1]: (shape.n, shape.k) for shape in preset_shapes(model)}
    for model in BLOCK_FP8_MODELS
}
BLOCK = (128, 128)


def vendor_args(ops):
    """torch._scaled_mm's block-mode arguments: scale_a [M, K/128] and scale_b [K/128, N/128], both
    outer-dim-major (scale_b is weight_scale_inv.t(), which is)."""
    return ops.a, ops.b, ops.scale_a.t().contiguous().t(), ops.scale_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--m", default="1,16,64,256,1024,4096")
    args = parser.parse_args()
    ms = [int(m) for m in args.m.split(",")]
    shapes = SHAPES
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per call, median of graph replays")
    print(f"{'shape':<28}{'M':>6}{'ours':>10}{'vendor':>10}{'speedup':>9}{'TFLOP/s':>9}{'GB/s':>8}  check")
    ratios: dict[str, list[float]] = {"decode": [], "mid": [], "prefill": []}
    marks: set[tuple] = set()
    for model, layers in shapes.items():
        for layer, (N, K) in layers.items():
            for M in ms:
                copies = rotation_count(N * K, device)
                ops = [make_block_operands(M, N, K, device, BLOCK) for _ in range(copies)]
                ours_inputs = [(*o.args(), o.bias) for o in ops]

                def ours(a, b, sa, sb, bias):
                    return scaledmm.scaled_mm(a, b, sa, sb, torch.bfloat16, bias, block_size=BLOCK)

                check = max_error_ratio(ours(*ours_inputs[0]), ops[0])
                jobs = [(ours, ours_inputs)]
                if M > 1:

                    def vendor(a, b, sa, sb, bias):
                        return torch._scaled_mm(a, b, sa, sb, bias=bias, out_dtype=torch.bfloat16)

                    vendor_inputs = [(*vendor_args(o), o.bias) for o in ops]
                    try:
                        vendor(*vendor_inputs[0])
                    except RuntimeError:  # no bias in this mode: the vendor without it (marked *)
                        vendor_inputs = [(*v[:4], None) for v in vendor_inputs]
                        marks.add((model, layer, M))
                    jobs.append((vendor, vendor_inputs))
                times = [t.median_us for t in time_interleaved(jobs)]
                ours_us = times[0]
                vendor_us = times[1] if len(times) > 1 else None
                speedup = vendor_us / ours_us if vendor_us else None
                tflops = 2 * M * N * K / ours_us / 1e6
                gbps = (M * K + N * K + 2 * M * N) / ours_us / 1e3
                rng = "decode" if M <= 64 else "mid" if M <= 512 else "prefill"
                if speedup:
                    ratios[rng].append(speedup)
                mark = "*" if (model, layer, M) in marks else " "
                cells = f"{vendor_us:9.1f}{mark}{speedup:9.2f}" if vendor_us else f"{'-':>10}{'-':>9}"
                print(f"{model + '.' + layer:<28}{M:>6}{ours_us:10.1f}{cells}{tflops:9.0f}{gbps:8.0f}  {check:.3f}")
    for rng, values in ratios.items():
        if values:
            geomean = math.exp(sum(map(math.log, values)) / len(values))
            print(
                f"geomean over torch._scaled_mm (block), {rng}: {geomean:.2f} "
                f"({len(values)} points; min {min(values):.2f})"
            )
    if marks:
        print("*: torch._scaled_mm refused the bias in block mode and ran without it")


if __name__ == "__main__":
    main()
