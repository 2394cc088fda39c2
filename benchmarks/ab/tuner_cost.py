"""The tuner's cost and quality: today's tuner (successive halving: a brief screen of every candidate,
then the fastest correct few timed properly) against the exhaustive one it replaced (every candidate
timed properly), on shapes that were not used to design the screen.

1. Each tuner runs `scaledmm tune` in a process of its own, from an empty Triton cache (compiling is
   part of the cost, as for a user), on the same jobs; wall time per tuner.
2. Quality: for every job, the two winners (backend and config) timed together, interleaved, in one
   process; the ratio of the achieved times (halving over exhaustive; > 1 means the cheap tuner
   chose slower), and its geomean.

    PYTHONPATH=src python3 benchmarks/ab/tuner_cost.py --old-src .old/src --out $OUT/tuner
        [--shape 4608,3584 --shape 3584,18944 --m 1,16,64,128,256,1024,4096 --dtype fp8]

`--old-src` is a source tree of the exhaustive tuner (`git archive 6bb307c src | tar -x -C .old`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs.files import DTYPE_BY_NAME, file_name, load_table
from scaledmm.configs.lookup import device_name
from scaledmm.kernels.vendor import vendor_scaled_mm
from scaledmm.testing import OUT_DTYPE, make_operands
from scaledmm.tune.runner import CandidateCall


def run_tuner(src: Path, out: Path, args: argparse.Namespace) -> float:
    """`scaledmm tune` from `src` with an empty Triton cache; its wall time in seconds."""
    cache = tempfile.mkdtemp(prefix="triton-cache-")
    env = {**os.environ, "PYTHONPATH": str(src), "TRITON_CACHE_DIR": cache, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "scaledmm", "tune", "--dtype", args.dtype, "--m", args.m, "--out", str(out)]
    for shape in args.shape:
        command += ["--shape", shape]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def winner_call(bucket, accumulation: str):
    """The call a tuned bucket makes: the vendor kernel or our kernel with its config."""
    if bucket.backend == "torch":
        fast = accumulation == "fast"
        return lambda a, b, sa, sb, bias: vendor_scaled_mm(a, b, sa, sb, bias, OUT_DTYPE, fast)
    return CandidateCall(bucket.config, accumulation)


def describe(bucket) -> str:
    return "torch" if bucket.backend == "torch" else str(bucket.config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", action="append", default=[])
    parser.add_argument("--m", default="1,16,64,128,256,1024,4096")
    parser.add_argument("--dtype", default="fp8")
    args = parser.parse_args()
    args.shape = args.shape or ["4608,3584", "3584,18944"]
    new_src = Path(__file__).resolve().parents[2] / "src"
    device = torch.device("cuda", 0)
    card = device_name(device)

    seconds = {}
    for name, src in (("exhaustive", args.old_src.resolve()), ("halving", new_src)):
        seconds[name] = run_tuner(src, args.out / name, args)
        print(f"{name}: {seconds[name]:.1f} s", flush=True)

    rows, ratios = [], []
    dtype = DTYPE_BY_NAME[args.dtype]
    for shape in args.shape:
        n, k = map(int, shape.split(","))
        tables = {name: load_table(args.out / name / file_name(card, n, k, args.dtype)) for name in seconds}
        copies = rotation_count(n * k, device)
        for m in map(int, args.m.split(",")):
            buckets = {name: next(b for b in table.buckets if b.m == m) for name, table in tables.items()}
            ops = [make_operands(m, n, k, dtype, device) for _ in range(copies)]
            inputs = [(*o.args(), o.bias) for o in ops]
            calls = [(winner_call(buckets[name], "fast"), inputs) for name in seconds]
            old_us, new_us = (t.median_us for t in time_interleaved(calls, 30))
            ratios.append(new_us / old_us)
            rows.append(
                {
                    "n": n, "k": k, "m": m, "exhaustive_us": round(old_us, 3), "halving_us": round(new_us, 3),
                    "exhaustive": describe(buckets["exhaustive"]), "halving": describe(buckets["halving"]),
                }
            )  # fmt: skip
            print(
                f"N={n:6d} K={k:6d} M={m:5d}  exhaustive {old_us:9.2f} us  halving {new_us:9.2f} us  "
                f"ratio {new_us / old_us:5.3f}  [{rows[-1]['exhaustive']} | {rows[-1]['halving']}]",
                flush=True,
            )
    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
    summary = {
        "card": card,
        "torch": torch.__version__,
        "jobs": len(ratios),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "speedup": round(seconds["exhaustive"] / seconds["halving"], 2),
        "quality_geomean_halving_over_exhaustive": round(geomean, 4),
        "worst": round(max(ratios), 4),
        "rows": rows,
    }
    (args.out / "tuner_cost.json").write_text(json.dumps(summary, indent=1))
    print(
        f"\n{card}: {len(ratios)} jobs; exhaustive {seconds['exhaustive']:.0f} s, halving {seconds['halving']:.0f} s "
        f"({summary['speedup']}x cheaper); achieved time halving/exhaustive geomean {geomean:.4f}, "
        f"worst {max(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
