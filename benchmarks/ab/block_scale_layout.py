"""Block-scaled FP8 (1 x 128 activations, 128 x 128 weights): scale_a outer-dim-major, as
quantize_per_token_group now writes it, against the row-major layout it wrote before, in one run.

Where the tuned files make `backend="auto"` run torch._scaled_mm's block mode, a row-major scale_a is
copied into the outer-dim-major layout cuBLASLt reads on every call (kernels/vendor.block_scale_a);
the quantizer's own layout is passed as it is. Per shape and M, timed together (CUDA graphs replayed
in turn, bench.timing.time_interleaved; R copies of the inputs, no bias, bf16 out):
  vendor     torch._scaled_mm alone, scale_a outer-dim-major
  auto       scaled_mm(backend="auto"), scale_a outer-dim-major (no copy where it runs the vendor)
  auto-rm    scaled_mm(backend="auto"), the same scale_a row-major (the copy where it runs the vendor)
  quant      quantize_per_token_group's launch writing its scales outer-dim-major, and row-major
             (quant-rm): what the layout costs the quantizer itself (x [M, K] bf16)
First, checks on the GPU: the quantizer's scales are outer-dim-major and taken by block_scale_a
without a copy (2-D and 3-D x), and equal the torch reference bit for bit.

Expected: where `auto` runs the vendor ("torch" in the backend column), auto / vendor about 1.00 and
auto-rm 2-3 us slower; where it runs ours, auto and auto-rm about equal (our kernel takes any scale
strides); quant and quant-rm about equal.

    PYTHONPATH=src python3 benchmarks/ab/block_scale_layout.py [--model deepseek-v3] \
        [--m 16,64,256,1024,4096] [--out FILE.log]
"""

from __future__ import annotations

import argparse
import math
import sys

import torch

import scaledmm
from scaledmm import runtime
from scaledmm.bench.shapes import BLOCK_FP8_MODELS, preset_shapes
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.quant import bind_quantize_groups
from scaledmm.kernels.vendor import block_scale_a
from scaledmm.reference import quantize_groups_ref
from scaledmm.testing import make_block_operands, max_error_ratio

BLOCK = (128, 128)
OUT_DTYPE = torch.bfloat16


class Report:
    """Prints each line, and keeps it for --out."""

    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)


def check_the_quantizer(device: torch.device, report: Report) -> None:
    for shape in [(64, 7168), (4, 16, 2048), (1, 7168)]:
        x = torch.randn(*shape, device=device, dtype=torch.bfloat16) * 3
        q, scale = scaledmm.quantize_per_token_group(x, 128)
        rows = scale.reshape(-1, scale.shape[-1])
        M = rows.shape[0]
        assert M == 1 or rows.stride() == (1, M), f"{shape}: scale rows strides {rows.stride()}, not (1, {M})"
        assert block_scale_a(rows) is rows, f"{shape}: block_scale_a copied the quantizer's scales"
        ref_q, ref_scale = quantize_groups_ref(x, torch.float8_e4m3fn, 128)
        assert torch.equal(scale, ref_scale), f"{shape}: scales differ from the reference"
        assert torch.equal(q.view(torch.uint8), ref_q.view(torch.uint8)), f"{shape}: values differ from the reference"
    report("checks: quantize_per_token_group's scales are outer-dim-major, not copied, and the reference's bits")


def scaled_mm_auto(a, b, scale_a, scale_b):
    return scaledmm.scaled_mm(a, b, scale_a, scale_b, OUT_DTYPE, block_size=BLOCK)


def vendor(a, b, scale_a, scale_b):
    return torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=OUT_DTYPE)


def quantize_launches(M: int, K: int, copies: int, device: torch.device):
    """Two bound launches of the group quantizer, one writing the scales outer-dim-major and one
    row-major, with their inputs (x, q, scale) per copy."""
    groups = -(-K // 128)
    launches = []
    for layout in ("outer-dim-major", "row-major"):
        inputs = []
        for _ in range(copies):
            x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
            q = torch.empty(M, K, device=device, dtype=torch.float8_e4m3fn)
            if layout == "row-major":
                scale = torch.empty(M, groups, device=device)
            else:
                scale = torch.empty(groups, M, device=device).t()
            inputs.append((x, q, scale))
        launches.append((bind_quantize_groups(*inputs[0], 128), inputs))
    return launches


def measure(name: str, N: int, K: int, M: int, device: torch.device) -> tuple[str, float | None, float | None]:
    """One table row, and vendor / auto and vendor / auto-rm (None without the vendor)."""
    copies = rotation_count(N * K, device)
    ops = [make_block_operands(M, N, K, device, BLOCK, bias_dtype=None) for _ in range(copies)]
    outer = [o.args() for o in ops]
    row_major = [(a, b, sa.contiguous(), sb) for a, b, sa, sb in outer]
    check = max(max_error_ratio(scaled_mm_auto(*args[0]), ops[0]) for args in (outer, row_major))
    key = runtime.scaled_mm_signature(*outer[0], OUT_DTYPE, None, None, "auto", "fast", BLOCK)
    backend = runtime.prepared[key].backend
    jobs = [(scaled_mm_auto, outer), (scaled_mm_auto, row_major)]
    try:
        vendor(*outer[0])
        jobs.append((vendor, outer))
    except (RuntimeError, ValueError):  # M = 1, or a call torch refuses: no vendor column
        pass
    jobs += quantize_launches(M, K, copies, device)
    times = [t.median_us for t in time_interleaved(jobs)]
    auto_us, row_us, quant_us, quant_row_us = times[0], times[1], times[-2], times[-1]
    if len(times) == 5:
        vendor_us = times[2]
        ratios = vendor_us / auto_us, vendor_us / row_us
        cells = f"{vendor_us:8.1f}{auto_us:8.1f}{row_us:9.1f}{auto_us / vendor_us:8.2f}{row_us / vendor_us:7.2f}"
    else:
        ratios = None, None
        cells = f"{'-':>8}{auto_us:8.1f}{row_us:9.1f}{'-':>8}{'-':>7}"
    line = f"{name:<24}{M:>6}  {backend:<8}{cells}{quant_us:7.1f}{quant_row_us:7.1f}  {check:.3f}"
    return line, *ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="deepseek-v3", choices=BLOCK_FP8_MODELS)
    parser.add_argument("--m", default="16,64,256,1024,4096")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    ms = [int(m) for m in args.m.split(",")]
    device = torch.device("cuda")
    report = Report()
    report(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per call, median of graph replays")
    check_the_quantizer(device, report)
    report(
        f"{'shape':<24}{'M':>6}  {'backend':<8}{'vendor':>8}{'auto':>8}{'auto-rm':>9}"
        f"{'auto/v':>8}{'rm/v':>7}{'quant':>7}{'q-rm':>7}  check"
    )
    ratios: dict[str, list[float]] = {"auto": [], "auto-rm": []}
    for shape in preset_shapes(args.model):
        for M in ms:
            line, auto_ratio, row_ratio = measure(shape.name, shape.n, shape.k, M, device)
            report(line)
            if auto_ratio is not None:
                ratios["auto"].append(auto_ratio)
                ratios["auto-rm"].append(row_ratio)
    for name, values in ratios.items():
        if values:
            geomean = math.exp(sum(map(math.log, values)) / len(values))
            report(f"vendor / {name}: geomean {geomean:.3f} over {len(values)} points (min {min(values):.2f})")
    if args.out:
        with open(args.out, "w") as f:
            f.write(" ".join(sys.argv) + "\n" + "\n".join(report.lines) + "\n")


if __name__ == "__main__":
    main()
