"""The closing table of a tuning run (per shape and M, the winner and what it gains), and the summary
of what a folder of tuned files gains (`scaledmm configs --summary`)."""

from __future__ import annotations

from collections import defaultdict
from statistics import geometric_mean

from scaledmm.bench.micro import RANGES
from scaledmm.bench.shapes import m_range
from scaledmm.configs import MatmulConfig


def _ratio(base: float | None, ours: float) -> str:
    return "-" if base is None else f"{base / ours:.2f}"


def closing_table(results: list[dict]) -> str:
    """One line per tuned point: winning backend and config, its time, and its speedup over the
    vendor kernel and over the untuned heuristic (>1: the winner is faster)."""
    if not results:
        return "no point was tuned in this run (each is in the config files already, or the time ran out)"
    lines = [
        f"{'N':>6} {'K':>6} {'dtype':<5} {'M':>5}  {'winner':<7} {'config':<29} {'us':>8} "
        f"{'x vendor':>9} {'x heuristic':>12}"
    ]
    for r in sorted(results, key=lambda r: (r["dtype"], r["n"], r["k"], r["m"])):
        base = r["baselines_us"]
        cfg = str(MatmulConfig.from_dict(r["config"]))
        lines.append(
            f"{r['n']:>6} {r['k']:>6} {r['dtype']:<5} {r['m']:>5}  {r['backend']:<7} {cfg:<29} "
            f"{r['time_us']:>8.1f} {_ratio(base.get('torch'), r['time_us']):>9} "
            f"{_ratio(base.get('heuristic'), r['time_us']):>12}"
        )
    return "\n".join(lines)


def files_summary(tables: list[dict]) -> str:
    """What tuned files gain, as the tuner measured it in each bucket's final round (the winner, the
    heuristic and the vendor timed together): per card, dtype, mode and range of M, the geomean of
    the vendor's time over `auto`'s (the bucket's winner), over our best kernel's, and the heuristic's
    over `auto`'s, each with its lowest value and point count. `tables` are the files' JSON objects.
    Buckets where the vendor refuses (int8 at M <= 16) count in the heuristic column only."""
    groups: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for table in tables:
        block = table.get("block_shape")
        mode = f"block {block[0]}x{block[1]}" if block else table.get("accumulation", "fast")
        for m, bucket in table["buckets"].items():
            key = (table["device_name"], table["dtype"], mode, m_range(int(m)))
            auto, base = bucket.get("time_us"), bucket.get("baselines_us", {})
            if auto is None:
                continue
            vendor = next((t for name, t in base.items() if name.startswith("torch") and t), None)
            if vendor is not None:
                groups[key]["vendor / auto"].append(vendor / auto)
                if base.get("triton"):
                    groups[key]["vendor / ours"].append(vendor / base["triton"])
            if base.get("heuristic"):
                groups[key]["heuristic / auto"].append(base["heuristic"] / auto)
    if not groups:
        return "no tuned file records its measured times"
    columns = ("vendor / auto", "vendor / ours", "heuristic / auto")
    lines = [f"{'card':<22} {'dtype':<5} {'mode':<15} {'M':<8}" + "".join(f"{c:>26}" for c in columns)]
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], RANGES.index(k[3]))):
        cells = []
        for column in columns:
            values = groups[key][column]
            cells.append(f"{geometric_mean(values):.2f} (min {min(values):.2f}, {len(values)})" if values else "-")
        lines.append(f"{key[0]:<22} {key[1]:<5} {key[2]:<15} {key[3]:<8}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)
