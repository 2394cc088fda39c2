"""A/B of the heuristic refit (issue 18, item 1b) on shapes outside its fit: the old rule's config
(benchmarks/ab/heuristic_old.py, main before the refit) against the new rule's
(scaledmm.configs.heuristic) and the vendor kernel, in one run on one GPU, int8 and fp8, each output
checked against the exact reference, the three timed together, interleaved. Ratios are time over the
new rule's (> 1: the new rule faster); fp8 is like for like (fast accumulation on both sides), int8's
vendor is torch._int_mm plus the scaling epilogue (it refuses M <= 16).

    PYTHONPATH=src python3 benchmarks/ab/heuristic_refit_ab.py [--out FILE.json] \
        [--m 1,16,64,128,256,512,1024,4096] [--dtype fp8,int8] [--time-limit 200]

Shapes (hard-coded: shared/shapes.json is not on the GPU machine; bench/shapes.py presets): qwen3-32b
qkv and down (the held-out rows of benchmarks/results/h200-2026-12-01/tuner_cost_ab_pruned.json),
llama3-70b at tp 4 and qwen2.5-72b at tp 8 (fused qkv, o, gate_up, down). None of them is in the
refit's data (benchmarks/ab/heuristic_refit.py). Points are taken M by M, so that a run stopped by
--time-limit (no new point after it) still covers every shape and dtype at the M values it reached.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict

import torch
import triton
from heuristic_old import heuristic_config as old_heuristic_config  # benchmarks/ab/, beside this script

from scaledmm.bench.shapes import m_range
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits, heuristic_config
from scaledmm.configs.files import DTYPE_BY_NAME
from scaledmm.kernels.vendor import fast_accum_refused, unsupported_reason, vendor_scaled_mm
from scaledmm.testing import OUT_DTYPE, ErrorCheck, make_operands
from scaledmm.tune.runner import CandidateCall

SHAPES = (
    ("qwen3-32b.qkv", 10240, 5120),
    ("qwen3-32b.down", 5120, 25600),
    ("llama3-70b-tp4.qkv", 2560, 8192),
    ("llama3-70b-tp4.o", 8192, 2048),
    ("llama3-70b-tp4.gate_up", 14336, 8192),
    ("llama3-70b-tp4.down", 8192, 7168),
    ("qwen2.5-72b-tp8.qkv", 1280, 8192),
    ("qwen2.5-72b-tp8.o", 8192, 1024),
    ("qwen2.5-72b-tp8.gate_up", 7392, 8192),
    ("qwen2.5-72b-tp8.down", 8192, 3696),
)
REPLAYS = 30
SAME = 1.03  # ratios within 3% count as a tie in the win/loss counts


class VendorCall:
    def __init__(self, fast_accum: bool):
        self.fast_accum = fast_accum

    def __call__(self, a, b, scale_a, scale_b, bias):
        return vendor_scaled_mm(a, b, scale_a, scale_b, bias, OUT_DTYPE, self.fast_accum)


def vendor_for(dtype_name: str, inputs: list[tuple]) -> VendorCall | None:
    """The vendor kernel for this point, fp8 in fast accumulation (its precise mode where cuBLAS refuses
    fast for the shape), or None where it cannot serve it (torch._int_mm at M <= 16)."""
    if unsupported_reason(*inputs[0], OUT_DTYPE) is not None:
        return None
    vendor = VendorCall(fast_accum=dtype_name == "fp8")
    try:
        vendor(*inputs[0])
    except RuntimeError as err:
        if not fast_accum_refused(err):
            raise
        vendor = VendorCall(fast_accum=False)
    return vendor


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def measure(name: str, n: int, k: int, m: int, dtype_name: str, device: torch.device) -> dict:
    dtype = DTYPE_BY_NAME[dtype_name]
    limits = device_limits(device)
    old, new = old_heuristic_config(m, n, k, dtype, *limits), heuristic_config(m, n, k, dtype, *limits)
    ops = [make_operands(m, n, k, dtype, device) for _ in range(rotation_count(n * k, device))]
    inputs = [(*o.args(), o.bias) for o in ops]
    check = ErrorCheck(ops[0], OUT_DTYPE, "fast")
    vendor = vendor_for(dtype_name, inputs)
    calls = {"old": CandidateCall(old, "fast"), "new": CandidateCall(new, "fast")}
    if vendor is not None:
        calls["vendor"] = vendor
    errors = {label: check.ratio(call(*inputs[0])) for label, call in calls.items()}
    timings = time_interleaved([(call, inputs) for call in calls.values()], REPLAYS)
    us = {label: t.median_us for label, t in zip(calls, timings)}
    row = {
        "shape": name, "n": n, "k": k, "m": m, "dtype": dtype_name,
        "old": str(old), "new": str(new), "same_config": old == new,
        "us": {label: round(t, 3) for label, t in us.items()},
        "error_ratio": {label: round(e, 4) for label, e in errors.items()},
        "correct": errors["old"] <= 1.0 and errors["new"] <= 1.0,  # ours; the vendor's error is reported
        "vendor_mode": None if vendor is None else "fast" if vendor.fast_accum else "precise",
        "new_over_old": us["old"] / us["new"],
        "new_over_vendor": us["vendor"] / us["new"] if vendor else None,
        "old_over_vendor": us["vendor"] / us["old"] if vendor else None,
    }  # fmt: skip
    return row


def print_row(row: dict) -> None:
    vendor = row["us"].get("vendor")
    vendor_text = f"vendor {vendor:8.2f} us" if vendor else "vendor        -   "
    if row["vendor_mode"] == "precise":
        vendor_text += " (precise)"
    against_vendor = f"new/vendor x{row['new_over_vendor']:.2f}" if vendor else "new/vendor   -  "
    flag = "" if row["correct"] else f"  WRONG {row['error_ratio']}"
    if row["error_ratio"].get("vendor", 0) > 1:
        flag += f"  vendor outside the bound: {row['error_ratio']['vendor']}"
    print(
        f"{row['dtype']:4s} {row['shape']:24s} M={row['m']:5d}  old {row['us']['old']:8.2f} us "
        f"[{row['old']}]  new {row['us']['new']:8.2f} us [{row['new']}]  {vendor_text}  "
        f"new/old x{row['new_over_old']:.3f}  {against_vendor}{' (same config)' if row['same_config'] else ''}{flag}",
        flush=True,
    )


def summarize(rows: list[dict]) -> dict:
    """Per dtype and M range (and per M): geomean (min, max) of old/new and of vendor/new, vendor/old,
    and how many points the new rule wins and loses by more than 3%."""
    summary = defaultdict(dict)
    print("\ngeomean (min-max; points) of time over the new rule's (> 1: the new rule faster); correct points only")
    print(
        f"{'dtype':5s} {'M':8s} {'new vs old':>26s} {'wins/losses':>11s} {'new vs vendor':>26s} {'old vs vendor':>26s}"
    )
    for dtype_name in sorted({r["dtype"] for r in rows}):
        groups = defaultdict(list)
        for r in rows:
            if r["dtype"] == dtype_name and r["correct"]:
                groups[m_range(r["m"])].append(r)
                groups[f"M={r['m']}"].append(r)
        for label in (
            "decode",
            "mid",
            "prefill",
            *sorted((g for g in groups if g.startswith("M=")), key=lambda g: int(g[2:])),
        ):
            sel = groups.get(label)
            if not sel:
                continue
            cells, entry = [], {}
            for key in ("new_over_old", "new_over_vendor", "old_over_vendor"):
                xs = [r[key] for r in sel if r[key] is not None]
                entry[key] = {"geomean": geomean(xs), "min": min(xs, default=None), "max": max(xs, default=None)}
                cells.append(f"{geomean(xs):5.3f} ({min(xs):4.2f}-{max(xs):4.2f}; {len(xs):2d})" if xs else "-")
            wins = sum(r["new_over_old"] > SAME for r in sel)
            losses = sum(r["new_over_old"] < 1 / SAME for r in sel)
            entry["wins"], entry["losses"], entry["points"] = wins, losses, len(sel)
            summary[dtype_name][label] = entry
            print(
                f"{dtype_name:5s} {label:8s} {cells[0]:>26s} {f'{wins}/{losses}':>11s} {cells[1]:>26s} {cells[2]:>26s}"
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", default="1,16,64,128,256,512,1024,4096")
    parser.add_argument("--dtype", default="fp8,int8")
    parser.add_argument("--time-limit", type=float, default=200.0, help="start no new point after this many seconds")
    parser.add_argument("--shape", action="append", default=[], metavar="N,K", help="instead of the built-in shapes")
    parser.add_argument("--device", default="cuda:0", help="cpu (with TRITON_INTERPRET=1) only to try the script")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    shapes = [(text, *map(int, text.split(","))) for text in args.shape] or SHAPES
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(card, torch.__version__, triton.__version__, flush=True)
    start = time.monotonic()
    rows, skipped = [], 0
    for m in map(int, args.m.split(",")):
        for dtype_name in args.dtype.split(","):
            for name, n, k in shapes:
                if time.monotonic() - start > args.time_limit:
                    skipped += 1
                    continue
                rows.append(measure(name, n, k, m, dtype_name, device))
                print_row(rows[-1])
        print(f"-- M = {m} done at {time.monotonic() - start:.0f} s", flush=True)
    if skipped:
        print(f"time limit: {skipped} points not measured")
    wrong = [r for r in rows if not r["correct"]]
    print(f"{len(rows)} points, {len(wrong)} with an output outside the error bound")
    summary = summarize(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"card": card, "rows": rows, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
