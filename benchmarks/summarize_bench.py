"""Geomeans over several `scaledmm bench` runs at once (e.g. one run per preset, or per GPU of a host).

Each run's ratios are within that run (ours and the baseline timed together on one card); this only
pools them. A weight shape that several presets share (llama3-70b and qwen2.5-72b at tp 4 share two)
counts once: the first run that holds it is kept.

    python3 benchmarks/summarize_bench.py RUN_DIR [RUN_DIR ...]     # folders holding results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scaledmm.bench.micro import summarize
from scaledmm.bench.report import summary_table


def pooled_rows(run_dirs: list[Path]) -> tuple[list[dict], list[str]]:
    """The rows of every run, each (N, K) once, renamed N x K; and each run's card and command."""
    rows, owner, sources = [], {}, []
    for run in run_dirs:
        result = json.loads((run / "results.json").read_text())
        env = result["environment"]
        sources.append(f"{run}: {env.get('gpu')} ({env.get('device')}), {env.get('date')}: {env.get('command')}")
        for row in result["rows"]:
            weight = (row["n"], row["k"])
            if owner.setdefault(weight, run) is run:
                rows.append({**row, "shape": f"{row['n']}x{row['k']}"})
    return rows, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    rows, sources = pooled_rows(args.runs)
    dtypes = sorted({r["dtype"] for r in rows if r["dtype"] != "bf16"})
    print("\n".join(sources))
    shapes = sorted({(r["n"], r["k"]) for r in rows})
    print(f"{len(shapes)} weight shapes: " + ", ".join(f"{n}x{k}" for n, k in shapes))
    print(summary_table(summarize(rows, dtypes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
