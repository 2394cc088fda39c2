"""The lookup's transfer rule for fp8 above decode (issue 18), offline (CPU only), leave one out: for
each shipped fp8 file of a card (fast mode) and each of its buckets above TRANSFER_FP8_MAX_M, the
shape's own winner against what the lookup would lend were the file missing, under two rules:

- same N: the nearest neighbour of the same N (K within TRANSFER_MAX_RATIO) lends, else the
  heuristic's backend rule (`heuristic.untuned_backend`: the vendor on Hopper) serves (the rule as
  built, `lookup.plan`);
- any N: the nearest neighbour of any N lends (the rule before TRANSFER_FP8_MAX_M), else the rule.

    PYTHONPATH=src python3 benchmarks/ab/transfer_loo.py [--device-name "NVIDIA H200"] [--verbose]

A winner is the bucket's backend and, where that is ours, its kernel and output tile
(block_m x block_n: the "family", which sets the tile grid, so the waves); "tile" adds the K step,
the warps and split-K. Where the tuner timed the pick at the held-out shape (the vendor, or ours with
the shape's own best Triton config: its baselines), the pick's speed against the tuned winner is
given too. A lent bucket is taken as `plan` takes it: the first neighbour, nearest first,
whose bucket for M exists and fits the card (`unfit_reason`, 132 SMs and 227 KiB as on H100/H200).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from statistics import geometric_mean

import torch

from scaledmm.configs.files import Bucket, load_table, normalize_device_name, parse_file_name
from scaledmm.configs.heuristic import untuned_backend
from scaledmm.configs.lookup import (
    _DEFAULT_SHARED_MEMORY,
    SHIPPED_DIR,
    TRANSFER_FP8_MAX_M,
    nearby_files,
    unfit_reason,
)

HOPPER = (9, 0)


def lent(name: str, m: int, n: int, k: int, same_n: bool) -> tuple[Bucket, str] | None:
    """The neighbour's bucket `plan` would lend at M (with the lender's file name), or None."""
    for path in nearby_files(name, n, k, "fp8", "fast", same_n):
        bucket = load_table(path).bucket_for(m)
        if bucket is not None and unfit_reason(bucket.config, m, n, _DEFAULT_SHARED_MEMORY) is None:
            return bucket, path.name.split(",device_name")[0]
    return None


def winner(bucket: Bucket | None, vendor: str, detail: bool = False) -> tuple:
    """The backend and, where ours, kernel and output tile (with `detail`, also the K step, warps and
    split-K) that runs: the bucket's, or the heuristic's backend rule without one (vendor: "torch",
    whose config is not compared; else ours with a config unknown here, never equal to a bucket's)."""
    backend = bucket.backend if bucket is not None else vendor
    if backend == "torch":
        return ("torch",)
    if bucket is None:
        return ("heuristic",)
    c = bucket.config
    key = (c.kernel, c.block_m, c.block_n)
    return (*key, c.block_k, c.num_warps, c.split_k) if detail else key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-name", default="NVIDIA H200")
    parser.add_argument("--verbose", action="store_true", help="one line per bucket")
    args = parser.parse_args()
    exact = normalize_device_name(args.device_name)
    vendor = untuned_backend(TRANSFER_FP8_MAX_M + 1, torch.float8_e4m3fn, HOPPER)
    # Per case (how the two rules' lenders relate), per rule: buckets, same winner, same winner and tile.
    counts: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    speeds: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(SHIPPED_DIR.glob("*.json")):
        key = parse_file_name(path.name)
        if key is None or key[0] != exact or key[3:] != ("fp8", "fast", None):
            continue
        _, n, k, *_ = key
        raw = json.loads(path.read_text())["buckets"]
        for own in load_table(path).buckets:
            if own.m <= TRANSFER_FP8_MAX_M:
                continue
            same_n, any_n = (lent(args.device_name, own.m, n, k, rule) for rule in (True, False))
            if same_n is None:
                case = "no same-N lender: the rule (same N) against the nearest (any N)"
            elif same_n[1] == any_n[1]:
                case = "the nearest lender has the same N: one outcome"
            else:
                case = "a same-N lender that is not the nearest"
            baselines = raw[str(own.m)].get("baselines_us", {})
            for rule, got in (("same N", same_n), ("any N", any_n)):
                bucket = got[0] if got is not None else None
                c = counts[case][rule]
                c["buckets"] += 1
                c["same winner"] += winner(bucket, vendor) == winner(own, vendor)
                c["same winner and tile"] += winner(bucket, vendor, True) == winner(own, vendor, True)
                # The pick's speed relative to the tuned winner, where the tuner timed the pick at this
                # shape: the vendor, or ours with the shape's own best Triton config.
                if winner(bucket, vendor) == ("torch",):
                    timed = baselines.get("torch")
                else:
                    timed = baselines.get("triton") if bucket is not None and bucket.config == own.config else None
                if timed is not None and own.time_us is not None:
                    speeds[case][rule].append(own.time_us / timed)
            if args.verbose:
                print(
                    f"N={n:6d} K={k:6d} M={own.m:5d} own {winner(own, vendor, True)}  "
                    + "  ".join(
                        f"{rule}: {got[1] if got else 'rule'} {winner(got[0] if got else None, vendor, True)}"
                        for rule, got in (("same N", same_n), ("any N", any_n))
                    )
                )
    print(
        f"\n{args.device_name}, fp8 (fast), buckets above M = {TRANSFER_FP8_MAX_M}, leave one out: how often "
        "the rule's pick has the shape's own winner (backend; where ours, kernel and block_m x block_n; "
        "'tile': also block_k, warps, split-K)"
    )
    for case, rules in counts.items():
        print(case)
        for rule, c in rules.items():
            total, known = c["buckets"], speeds[case][rule]
            timed = f"{geometric_mean(known):.2f}x (min {min(known):.2f}) on {len(known)}" if known else "-"
            print(
                f"  {rule:6s} {total:4d} buckets: same winner {c['same winner']:4d} ({c['same winner'] / total:4.0%}), "
                f"same tile {c['same winner and tile']:4d} ({c['same winner and tile'] / total:4.0%}); "
                f"x the tuned winner where the tuner timed the pick {timed}"
            )


if __name__ == "__main__":
    main()
