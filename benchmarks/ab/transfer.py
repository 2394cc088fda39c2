"""The untuned path: the plan `auto` runs (the lookup as built: a neighbour's tuned bucket where one
is lent, for fp8 above TRANSFER_FP8_MAX_M by a neighbour of the same N only, else the heuristic)
against the heuristic with its backend rule, and the vendor kernel, interleaved, on shapes without a
file of their own. Ratios are vendor time over ours (> 1: ours faster), like for like (fp8: fast
accumulation on both sides). Each row names the file that lent the bucket ("-": none, the
heuristic's plan); the summary is given over every point and over the points a neighbour lent.

    PYTHONPATH=src python3 benchmarks/ab/transfer.py --config-dir DIR [--shape N,K ...] \
        [--m 1,16,64,128,256,512,1024,2048,4096] [--dtype fp8,int8] [--out FILE.json]

The default shapes are mistral-nemo-12b's and gemma-2-9b's (o, down, qkv and gate_up): no file
ships for them, and each has a shipped H200 neighbour of the same N.

DIR holds the tuned files to borrow from (e.g. an H200 tuning run of llama3-8b); shapes that have a
file of their own there are skipped (they are not untuned).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import defaultdict

import torch

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs.files import DTYPE_BY_NAME
from scaledmm.configs.heuristic import heuristic_config, untuned_backend
from scaledmm.configs.lookup import CONFIG_DIR_ENV, Plan, clear_cache, device_capability, device_limits, plan
from scaledmm.kernels.vendor import fast_accum_refused, unsupported_reason, vendor_scaled_mm
from scaledmm.testing import OUT_DTYPE, make_operands
from scaledmm.tune.runner import CandidateCall

# mistral-nemo-12b o, down, qkv and gate_up, gemma-2-9b o, down and gate_up (its qkv, 8192 x 3584, ships).
DEFAULT_SHAPES = [(5120, 4096), (5120, 14336), (6144, 5120), (28672, 5120), (3584, 4096), (3584, 14336), (28672, 3584)]


class VendorCall:
    def __init__(self, fast_accum: bool):
        self.fast_accum = fast_accum

    def __call__(self, a, b, scale_a, scale_b, bias):
        return vendor_scaled_mm(a, b, scale_a, scale_b, bias, OUT_DTYPE, self.fast_accum)


def call_of(chosen: Plan, vendor: VendorCall):
    return vendor if chosen.backend == "torch" else CandidateCall(chosen.config, "fast")


def label(chosen: Plan) -> str:
    return "torch" if chosen.backend == "torch" else str(chosen.config)


def m_range(m: int) -> str:
    return "decode" if m <= 64 else "mid" if m <= 512 else "prefill"


def geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--shape", action="append", default=[], metavar="N,K")
    parser.add_argument("--m", default="1,16,64,128,256,512,1024,2048,4096")
    parser.add_argument("--dtype", default="fp8,int8")
    parser.add_argument("--out")
    args = parser.parse_args()
    started = time.perf_counter()
    os.environ[CONFIG_DIR_ENV] = args.config_dir
    clear_cache()
    device = torch.device("cuda", 0)
    shapes = [tuple(map(int, text.split(","))) for text in args.shape] or DEFAULT_SHAPES
    rows = []
    for dtype_name in args.dtype.split(","):
        dtype = DTYPE_BY_NAME[dtype_name]
        for n, k in shapes:
            for m in map(int, args.m.split(",")):
                vendor = VendorCall(fast_accum=dtype_name == "fp8")
                transfer = plan(m, n, k, dtype, device)
                if transfer.source is not None and f"N={n},K={k}," in transfer.source.name:
                    continue  # the shape's own file: not an untuned shape
                rule = Plan(
                    untuned_backend(m, dtype, device_capability(device)),
                    heuristic_config(m, n, k, dtype, *device_limits(device)),
                    None,
                )
                copies = rotation_count(n * k, device)
                inputs = [(*o.args(), o.bias) for o in (make_operands(m, n, k, dtype, device) for _ in range(copies))]
                if unsupported_reason(*inputs[0], OUT_DTYPE) is not None:
                    continue  # torch._int_mm takes M > 16 only
                try:
                    vendor(*inputs[0])
                except RuntimeError as err:  # cuBLAS refuses fast accumulation for some shapes: its precise mode
                    if not fast_accum_refused(err):
                        raise
                    vendor = VendorCall(fast_accum=False)
                jobs = [(call_of(transfer, vendor), inputs), (call_of(rule, vendor), inputs), (vendor, inputs)]
                t_transfer, t_rule, t_vendor = (t.median_us for t in time_interleaved(jobs, 30))
                row = {
                    "dtype": dtype_name, "n": n, "k": k, "m": m,
                    "borrowed_from": transfer.source.name if transfer.source else None,
                    "transfer": label(transfer), "heuristic": label(rule),
                    "vendor_us": round(t_vendor, 3), "transfer_us": round(t_transfer, 3),
                    "heuristic_us": round(t_rule, 3),
                    "transfer_x": t_vendor / t_transfer, "heuristic_x": t_vendor / t_rule,
                }  # fmt: skip
                rows.append(row)
                lender = transfer.source.name.split(",device_name")[0] if transfer.source else "-"
                print(
                    f"{dtype_name:4s} N={n:6d} K={k:6d} M={m:5d}  vendor {t_vendor:8.2f} us  "
                    f"transfer {row['transfer_x']:5.2f}x [{row['transfer']}] from {lender}  "
                    f"heuristic {row['heuristic_x']:5.2f}x [{row['heuristic']}]",
                    flush=True,
                )
    summary = defaultdict(dict)
    print(f"\n{torch.cuda.get_device_name(device)}: x vendor, geomean (min) per M range")
    for dtype_name in args.dtype.split(","):
        for r in ("decode", "mid", "prefill"):
            for points, lent_only in (("all", False), ("lent", True)):
                sel = [
                    row
                    for row in rows
                    if row["dtype"] == dtype_name
                    and m_range(row["m"]) == r
                    and (row["borrowed_from"] is not None or not lent_only)
                ]
                if not sel:
                    continue
                t = [row["transfer_x"] for row in sel]
                h = [row["heuristic_x"] for row in sel]
                key = r if points == "all" else f"{r} lent"
                summary[dtype_name][key] = {"transfer": geomean(t), "transfer_min": min(t), "heuristic": geomean(h)}
                summary[dtype_name][key]["heuristic_min"] = min(h)
                summary[dtype_name][key]["points"] = len(sel)
                print(
                    f"{dtype_name:4s} {r:8s} {points:4s} transfer {geomean(t):5.2f}x (min {min(t):4.2f})   "
                    f"heuristic {geomean(h):5.2f}x (min {min(h):4.2f})   points {len(sel)}"
                )
    print(f"{time.perf_counter() - started:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "summary": summary, "card": torch.cuda.get_device_name(device)}, f, indent=1)


if __name__ == "__main__":
    main()
