"""How much room cuBLAS leaves at compute-bound M (issue 17): its tensor pipe's busy share and clock.

Issue 17 asks for 1.10x torch._scaled_mm at M >= 1024 in fp8. No kernel can beat another by more than
the inverse of the other's share of the tensor pipe at the same clock, so this measures that share.
Every point runs, once each inside a profiler range (for `ncu --profile-from-start off`):
torch._scaled_mm(use_fast_accum=True) and scaledmm.scaled_mm(backend="triton"), our best tuned
Triton config (or the heuristic's where no bucket is tuned). `report` then reads ncu's CSV and prints
per point each kernel's duration, SM clock and "Compute (SM) Throughput" (on these kernels the tensor
pipe, ncu's SpeedOfLight section), and the ceiling 1 / vendor's share.

    PYTHONPATH=src ncu --profile-from-start off --clock-control none --section SpeedOfLight --csv \\
        python3 benchmarks/ab/vendor_headroom.py --model llama3-8b,qwen3-4b --m 1024,4096 > $OUT/headroom.csv 2>&1
    PYTHONPATH=src python3 benchmarks/ab/vendor_headroom.py --report $OUT/headroom.csv

The launches print their labels to stderr in order (hence 2>&1), which `report` pairs with ncu's rows:
it needs one kernel per call, and stops where the counts differ. fp8, per-token and per-channel
scales, a bias, bf16 output.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections import defaultdict

import torch

WARMUP_CALLS = 3
# ncu scales its units per value (us or ms, GHz or MHz): factors to microseconds and to GHz.
TO_US = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
TO_GHZ = {"ghz": 1.0, "mhz": 1e-3, "khz": 1e-6, "hz": 1e-9, "cycle/nsecond": 1.0, "cycle/usecond": 1e-3}
VARIANTS = ("vendor", "scaledmm-triton")


def run(models: list[str], ms: list[int]) -> None:
    import scaledmm
    from scaledmm.bench.shapes import preset_shapes
    from scaledmm.kernels.vendor import vendor_scaled_mm
    from scaledmm.testing import make_operands

    device = torch.device("cuda")
    shapes = {(s.n, s.k): s.name for model in models for s in preset_shapes(model)}
    for (N, K), name in shapes.items():
        for M in ms:
            ops = make_operands(M, N, K, torch.float8_e4m3fn, device)
            args = (ops.a, ops.b, ops.scale_a, ops.scale_b)
            calls = {
                "vendor": lambda: vendor_scaled_mm(*args, ops.bias, torch.bfloat16, fast_accum=True),  # noqa: B023
                "scaledmm-triton": lambda: scaledmm.scaled_mm(*args, torch.bfloat16, ops.bias, backend="triton"),  # noqa: B023
            }
            for label, call in calls.items():
                for _ in range(WARMUP_CALLS):
                    call()
                torch.cuda.synchronize()
                torch.cuda.profiler.start()
                call()
                torch.cuda.synchronize()
                torch.cuda.profiler.stop()
                print(f"launch\t{name}\t{N}\t{K}\t{M}\t{label}", file=sys.stderr, flush=True)


def report(path: str) -> None:
    """Per point: both kernels' time, clock and SM throughput, and the vendor's ceiling."""
    with open(path) as f:
        lines = f.read().splitlines()
    labels = [line.split("\t")[1:] for line in lines if line.startswith("launch\t")]
    header = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    rows = csv.DictReader([lines[header]] + [line for line in lines[header + 1 :] if line.startswith('"')])
    metrics: dict[int, dict[str, float]] = defaultdict(dict)
    names: dict[int, str] = {}
    for row in rows:
        metric_id = int(row["ID"])
        names[metric_id] = row["Kernel Name"]
        value = float(row["Metric Value"].replace(",", "") or "nan")
        unit = row["Metric Unit"].lower()
        if row["Metric Name"] == "Duration":
            value *= TO_US[unit]
        elif row["Metric Name"] == "SM Frequency":
            value *= TO_GHZ[unit]
        metrics[metric_id][row["Metric Name"]] = value
    if len(metrics) != len(labels):
        raise SystemExit(f"{len(metrics)} profiled kernels for {len(labels)} launches: not one kernel per call")
    points: dict[tuple, dict[str, tuple]] = defaultdict(dict)
    for metric_id, (name, N, K, M, label) in zip(sorted(metrics), labels):
        m = metrics[metric_id]
        points[(name, int(N), int(K), int(M))][label] = (
            m["Duration"], m["SM Frequency"], m["Compute (SM) Throughput"], names[metric_id][:60]
        )  # fmt: skip
    print(f"{'shape':22s} {'M':>5s} | {'vendor us':>9s} {'GHz':>5s} {'SM %':>5s} | {'ours us':>8s} {'GHz':>5s} "
          f"{'SM %':>5s} | ceiling  vendor kernel")  # fmt: skip
    ceilings = []
    for (name, _n, _k, M), v in sorted(points.items(), key=lambda point: point[0][1:]):
        vendor, ours = v["vendor"], v["scaledmm-triton"]
        ceiling = 100.0 / vendor[2]
        ceilings.append(ceiling)
        print(f"{name:22s} {M:5d} | {vendor[0]:9.1f} {vendor[1]:5.2f} {vendor[2]:5.1f} | {ours[0]:8.1f} {ours[1]:5.2f} "
              f"{ours[2]:5.1f} | {ceiling:6.3f}  {vendor[3]}")  # fmt: skip
    geomean = math.exp(sum(map(math.log, ceilings)) / len(ceilings))
    print(f"ceiling over the vendor (1 / its SM throughput share), geomean over {len(ceilings)} points: {geomean:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama3-8b,qwen3-4b", help="comma-separated bench presets")
    parser.add_argument("--m", default="1024,4096", help="comma-separated M values")
    parser.add_argument("--report", metavar="CSV", help="read ncu's CSV (with this script's stderr) and report")
    opts = parser.parse_args()
    if opts.report:
        report(opts.report)
    else:
        run(opts.model.split(","), [int(m) for m in opts.m.split(",")])


if __name__ == "__main__":
    main()
