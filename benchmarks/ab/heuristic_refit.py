"""The refit of the untuned heuristic (issue 18, item 1b), offline (CPU only): where the heuristic
loses in the tuned data, what the winners have in common there, and how often the old rule
(benchmarks/ab/heuristic_old.py) and the new one (scaledmm.configs.heuristic) pick the winner's tile,
on the data the rule was read from (fit) and on rows it was not (held out).

    PYTHONPATH=src python3 benchmarks/ab/heuristic_refit.py [--matrix]

Fit: every tuned file of src/scaledmm/configs/data except the block-scaled ones (H100: llama3-8b and
qwen3-4b; H200: llama3-8b; int8 and fp8, 23 M each), and the exhaustive tuner's table in
benchmarks/results/h200-2026-12-01/tuner_cost_ab_unpruned.log (qwen2.5-7b qkv and down, fp8, H200).
Held out: the exhaustive tuner's table in tuner_cost_ab_pruned.log (qwen3-32b qkv and down, fp8,
H200; the rows of tuner_cost_ab_pruned.json, with the best Triton config also where the vendor won).

Each bucket records the best Triton config and, timed with it in the tuner's final round, the
heuristic's and the vendor's times. "x heur" is heuristic / best Triton: what the heuristic lost. The
H200 files and logs timed today's rule (heuristic_old.py); the H100 files (2026-11-27) timed the rule
of their tuning run, in places an older one (before the swapped tile at M <= 16 and the TMA tile at
M >= 2048), so their "x heur" is an upper bound on today's loss there.

The winner's "family" is its kernel and output tile (block_m x block_n); "tile" adds the K step, the
warps and split-K. Both rules are asked with 132 SMs and 227 KiB of shared memory (H100 and H200).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from heuristic_old import heuristic_config as old_heuristic_config  # benchmarks/ab/, beside this script

from scaledmm.configs import MatmulConfig, heuristic_config
from scaledmm.configs.files import DTYPE_BY_NAME

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src/scaledmm/configs/data"
RESULTS = ROOT / "benchmarks/results/h200-2026-12-01"
FIT_LOGS = ("tuner_cost_ab_unpruned.log",)
HELD_OUT_LOGS = ("tuner_cost_ab_pruned.log",)
NUM_SMS, SHARED_MEMORY = 132, 227 * 1024  # both cards
CARDS = {"NVIDIA H100 80GB HBM3": "H100", "NVIDIA H200": "H200"}
# M ranges of the analysis: finer than the benchmark's decode / mid / prefill, at the rule's borders.
M_RANGES = ((1, 16), (24, 32), (48, 64), (96, 128), (192, 512), (768, 2048), (3072, 8192))
KERNEL_LETTER = {"pointer": "p", "swapped": "s", "tma": "t"}


@dataclass(frozen=True)
class Bucket:
    card: str
    dtype: str
    n: int
    k: int
    m: int
    backend: str  # the winner: "triton" or "torch"
    best: MatmulConfig  # the best Triton config (also where the vendor won)
    triton_us: float | None  # its time (None in a log row where the vendor won)
    heuristic_us: float | None
    vendor_us: float | None
    source: str

    @property
    def x_heuristic(self) -> float | None:
        """What the heuristic lost: its time over the best Triton config's (or the vendor's, where
        only that is known)."""
        base = self.triton_us if self.triton_us is not None else self.vendor_us
        return None if self.heuristic_us is None or base is None else self.heuristic_us / base


def file_buckets() -> list[Bucket]:
    rows = []
    for path in sorted(DATA.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("block_shape") or "block_shape" in path.name:
            continue
        card = CARDS[data["device_name"]]
        for m, entry in data["buckets"].items():
            base = entry["baselines_us"]
            vendor = next((v for key, v in base.items() if key.startswith("torch")), None)
            rows.append(
                Bucket(card, data["dtype"], data["n"], data["k"], int(m), entry["backend"],
                       MatmulConfig.from_dict(entry["config"]), base.get("triton"), base.get("heuristic"),
                       vendor, path.name)
            )  # fmt: skip
    return rows


_CONFIG = re.compile(r"(\d+)x(\d+)x(\d+) g(\d+) w(\d+) s(\d+)(?: k(\d+))?(?: (swap|tma))?$")
_LOG_ROW = re.compile(
    r"^\s*(\d+)\s+(\d+)\s+(fp8|int8)\s+(\d+)\s+(triton|torch)\s+(.+?)\s{2,}([\d.]+)\s+([\d.]+|-)\s+([\d.]+|-)\s*$"
)


def parse_config(text: str) -> MatmulConfig:
    """str(MatmulConfig) read back: '16x64x256 g8 w4 s5 k2 swap'."""
    bm, bn, bk, g, w, s, k, kernel = _CONFIG.match(text.strip()).groups()
    kernel = {"swap": "swapped", "tma": "tma", None: "pointer"}[kernel]
    return MatmulConfig(int(bm), int(bn), int(bk), int(g), int(w), int(s), int(k or 1), kernel)


def log_buckets(name: str) -> list[Bucket]:
    """The first closing table of a tuner A/B log (the exhaustive tuner's; tune/report.py): winner, time,
    x vendor and x heuristic per point. The config column is the best Triton config either way."""
    rows, tables = [], 0
    for line in (RESULTS / name).read_text().splitlines():
        if line.lstrip().startswith("N ") or line.lstrip().startswith("N  "):
            tables += 1
        match = _LOG_ROW.match(line)
        if tables != 1 or not match:
            continue
        n, k, dtype, m, backend, config, us, x_vendor, x_heur = match.groups()
        us = float(us)
        vendor = us * float(x_vendor) if x_vendor != "-" else None
        heuristic = us * float(x_heur) if x_heur != "-" else None
        rows.append(
            Bucket("H200", dtype, int(n), int(k), int(m), backend, parse_config(config),
                   us if backend == "triton" else None, heuristic, vendor, name)
        )  # fmt: skip
    return rows


def fit_buckets() -> list[Bucket]:
    return file_buckets() + [b for name in FIT_LOGS for b in log_buckets(name)]


def held_out_buckets() -> list[Bucket]:
    return [b for name in HELD_OUT_LOGS for b in log_buckets(name)]


def rule(old: bool, b: Bucket) -> MatmulConfig:
    function = old_heuristic_config if old else heuristic_config
    return function(b.m, b.n, b.k, DTYPE_BY_NAME[b.dtype], NUM_SMS, SHARED_MEMORY)


def family(c: MatmulConfig) -> tuple:
    return (c.kernel, c.block_m, c.block_n)


def tile(c: MatmulConfig) -> tuple:
    return (*family(c), c.block_k, c.num_warps, c.split_k)


def short(c: MatmulConfig) -> str:
    text = f"{KERNEL_LETTER[c.kernel]}{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}"
    return text + (f" k{c.split_k}" if c.split_k > 1 else "")


def short_family(key: tuple) -> str:
    kernel, bm, bn = key
    return f"{KERNEL_LETTER[kernel]}{bm}x{bn}"


def m_range(m: int) -> str:
    low, high = next(r for r in M_RANGES if m <= r[1])
    return f"{low}-{high}"


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def print_losses(buckets: list[Bucket]) -> None:
    print("## Where the heuristic loses: x heur = heuristic / best Triton, geomean (max; buckets)\n")
    groups = defaultdict(list)
    for b in buckets:
        if b.x_heuristic is not None:
            groups[(b.card, b.dtype, m_range(b.m))].append(b.x_heuristic)
    cols = [(card, dtype) for card in ("H100", "H200") for dtype in ("int8", "fp8")]
    print("| M | " + " | ".join(f"{card} {dtype}" for card, dtype in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for low, high in M_RANGES:
        cells = []
        for card, dtype in cols:
            xs = groups.get((card, dtype, f"{low}-{high}"), [])
            cells.append(f"{geomean(xs):.2f} ({max(xs):.2f}; {len(xs)})" if xs else "-")
        print(f"| {low}-{high} | " + " | ".join(cells) + " |")
    print("\nWorst 15 buckets (H200 only: the H100 files timed older rules in places):\n")
    print("| card | dtype | N x K | M | x heur | winner | old rule | new rule |")
    print("|---|---|---|---|---|---|---|---|")
    h200 = [b for b in buckets if b.card == "H200" and b.x_heuristic is not None]
    for b in sorted(h200, key=lambda b: -b.x_heuristic)[:15]:
        winner = short(b.best) + (" (vendor won)" if b.backend == "torch" else "")
        print(
            f"| {b.card} | {b.dtype} | {b.n} x {b.k} | {b.m} | {b.x_heuristic:.2f} | {winner} | "
            f"{short(rule(True, b))} | {short(rule(False, b))} |"
        )
    stale = [b for b in buckets if b.card == "H100" and rule(True, b) == b.best and (b.x_heuristic or 1) > 1.02]
    print(f"\nH100 buckets whose winner is today's heuristic config exactly, yet timed > 1.02x: {len(stale)} "
          "(their heuristic was an older rule)")  # fmt: skip


def print_winners(buckets: list[Bucket]) -> None:
    print("\n## What the winners have in common (best Triton config; both cards; count of buckets)\n")
    print("| dtype | M | family (kernel, tile) | K step | warps | stages | split-K |")
    print("|---|---|---|---|---|---|---|")
    for dtype in ("int8", "fp8"):
        for low, high in M_RANGES:
            sel = [b.best for b in buckets if b.dtype == dtype and low <= b.m <= high]
            if not sel:
                continue

            def top(values, n=3):
                return ", ".join(f"{v} ({c})" for v, c in Counter(values).most_common(n))

            print(
                f"| {dtype} | {low}-{high} | {top([short_family(family(c)) for c in sel], 4)} | "
                f"{top([c.block_k for c in sel])} | {top([c.num_warps for c in sel], 2)} | "
                f"{top([c.num_stages for c in sel])} | {top([c.split_k for c in sel], 2)} |"
            )


def print_matrix(buckets: list[Bucket]) -> None:
    """Winner per M (rows) and (card, N x K) (columns), per dtype: the winners as a function of N and K."""
    for dtype in ("int8", "fp8"):
        sel = {(b.card, b.n, b.k, b.m): b for b in buckets if b.dtype == dtype}
        shapes = sorted({key[:3] for key in sel})
        print(f"\n{dtype}: best Triton config per M and (card N x K); * where the vendor won")
        print("    M " + " ".join(f"{c} {n}x{k}".ljust(19) for c, n, k in shapes))
        for m in sorted({key[3] for key in sel}):
            cells = []
            for shape in shapes:
                b = sel.get((*shape, m))
                text = "" if b is None else short(b.best).replace(" ", "") + ("*" if b.backend == "torch" else "")
                cells.append(text.ljust(19))
            print(f"{m:5d} " + " ".join(cells))


def agreement(buckets: list[Bucket]) -> dict:
    """Per (dtype, M range) and overall: buckets, and how many each rule matches in family and in tile."""
    counts = defaultdict(Counter)
    for b in buckets:
        old, new = rule(True, b), rule(False, b)
        for key in ((b.dtype, m_range(b.m)), (f"all {b.card}", "all"), ("all", "all")):
            c = counts[key]
            c["n"] += 1
            c["old family"] += family(old) == family(b.best)
            c["new family"] += family(new) == family(b.best)
            c["old tile"] += tile(old) == tile(b.best)
            c["new tile"] += tile(new) == tile(b.best)
    return counts


def print_agreement(title: str, buckets: list[Bucket]) -> None:
    counts = agreement(buckets)
    if len({b.card for b in buckets}) == 1:  # the per-card total is the total
        counts = {key: c for key, c in counts.items() if not key[0].startswith("all ")}
    print(f"\n## {title}: buckets where the rule picks the winner's family (tile)\n")
    print("| dtype | M | buckets | old rule | new rule |")
    print("|---|---|---|---|---|")
    for (dtype, r), c in sorted(counts.items(), key=lambda kv: (kv[0][0].startswith("all"), kv[0][0], order(kv[0][1]))):
        print(
            f"| {dtype} | {r} | {c['n']} | {c['old family']} ({c['old tile']}) | {c['new family']} ({c['new tile']}) |"
        )


def order(label: str) -> int:
    """The sort key of an M range's label."""
    return 0 if label == "all" else int(label.split("-")[0])


def print_estimate(buckets: list[Bucket]) -> None:
    """Where the new rule lands on the winner's tile, its time is about the winner's: the recorded
    x heur is what it would gain there (H200 only, where the recorded heuristic is today's)."""
    print("\n## H200 buckets where the new rule picks the winner's tile but the old one did not\n")
    print("| dtype | M | buckets | x heur there, geomean (min-max) |")
    print("|---|---|---|---|")
    groups = defaultdict(list)
    for b in buckets:
        if b.card != "H200" or b.x_heuristic is None or b.triton_us is None:
            continue
        if tile(rule(False, b)) == tile(b.best) and tile(rule(True, b)) != tile(b.best):
            groups[(b.dtype, m_range(b.m))].append(b.x_heuristic)
    for (dtype, r), xs in sorted(groups.items(), key=lambda kv: (kv[0][0], order(kv[0][1]))):
        print(f"| {dtype} | {r} | {len(xs)} | {geomean(xs):.2f} ({min(xs):.2f}-{max(xs):.2f}) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", action="store_true", help="also print the winner per M and shape")
    args = parser.parse_args()
    fit, held_out = fit_buckets(), held_out_buckets()
    torch.set_grad_enabled(False)
    print(f"fit: {len(fit)} buckets; held out: {len(held_out)} (qwen3-32b, H200 fp8)\n")
    print_losses(fit)
    print_winners(fit)
    if args.matrix:
        print_matrix(fit + held_out)
    print_agreement("Fit", fit)
    print_agreement("Held out (qwen3-32b qkv 10240 x 5120, down 5120 x 25600; H200 fp8)", held_out)
    print_estimate(fit)


if __name__ == "__main__":
    main()
