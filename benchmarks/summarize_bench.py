"""Geomeans over several `scaledmm bench` runs at once (e.g. one run per preset, or per GPU of a host).

Each run's ratios are within that run (ours and the baseline timed together on one card); this only
pools them. A weight shape that several presets share (llama3-70b and qwen2.5-72b at tp 4 share two)
counts once: the first run that holds it is kept.

    python3 benchmarks/summarize_bench.py RUN [RUN ...]

A RUN is a folder holding results.json, or a bench log (its printed per-point tables: scaledmm's time
and its speedup over each baseline) for a run whose results.json was lost; shapes are named there by
preset (`llama3-70b-tp4.qkv`) or as NxK.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from scaledmm.bench.micro import SCALEDMM, summarize
from scaledmm.bench.report import summary_table
from scaledmm.bench.shapes import PRESETS, preset_shapes

TP_NAME = re.compile(r"(?P<model>.+)-tp(?P<tp>\d+)$")


def _weight_of(shape_name: str) -> tuple[int, int] | None:
    """(N, K) of a shape as the bench names it: `NxK`, or `<preset>[-tp<T>].<linear>` (fused)."""
    if m := re.fullmatch(r"(\d+)x(\d+)", shape_name):
        return int(m[1]), int(m[2])
    model = shape_name.rpartition(".")[0]
    tp = 1
    if (m := TP_NAME.fullmatch(model)) and m["model"] in PRESETS:
        model, tp = m["model"], int(m["tp"])
    if model not in PRESETS:
        return None
    return next(((s.n, s.k) for s in preset_shapes(model, tp) if s.name == shape_name), None)


def rows_from_log(path: Path) -> list[dict]:
    """Rows rebuilt from a bench log's per-point tables: scaledmm's time, and each baseline's as that
    time times the printed speedup (the vendor's mark '*' dropped)."""
    rows, dtype, baselines, seen = [], None, [], set()
    for line in path.read_text(errors="replace").splitlines():
        if m := re.match(r"== (\S+?)(?: \(.*\))?: scaledmm, and its speedup", line):
            dtype = m[1]
        elif line.startswith("== "):
            dtype = None
        elif dtype and line.startswith("shape"):
            baselines = re.findall(r"x (\S+)", line)
        elif dtype and (parts := line.split()) and len(parts) == 6 + len(baselines):
            weight = _weight_of(parts[0])
            if weight is None or parts[2] == "-":
                continue
            point = {"shape": parts[0], "n": weight[0], "k": weight[1], "m": int(parts[1])}
            ours = float(parts[2])
            rows.append({**point, "dtype": dtype, "method": SCALEDMM, "time_us": ours})
            for baseline, cell in zip(baselines, parts[6:]):
                if cell != "-":
                    # speedup() looks the bf16 linear up under "bf16", the vendor for int8 under "fp8"
                    base_dtype = "bf16" if baseline.startswith("F.linear") else dtype
                    if dtype == "int8" and baseline == "torch._scaled_mm":
                        base_dtype = "fp8"
                    key = (parts[0], point["m"], base_dtype, baseline)
                    if key not in seen:  # the fp8 vendor appears in the fp8 table and again in int8's
                        seen.add(key)
                        time_us = ours * float(cell.rstrip("*"))
                        rows.append({**point, "dtype": base_dtype, "method": baseline, "time_us": time_us})
    return rows


def pooled_rows(runs: list[Path]) -> tuple[list[dict], list[str]]:
    """The rows of every run, each (N, K) once, renamed N x K; and where each run came from."""
    rows, owner, sources = [], {}, []
    for run in runs:
        if run.is_dir():
            result = json.loads((run / "results.json").read_text())
            env = result["environment"]
            sources.append(f"{run}: {env.get('gpu')} ({env.get('device')}), {env.get('date')}: {env.get('command')}")
            run_rows = result["rows"]
        else:
            sources.append(f"{run}: the per-point tables of a bench log")
            run_rows = rows_from_log(run)
        for row in run_rows:
            weight = (row["n"], row["k"])
            if owner.setdefault(weight, run) == run:
                rows.append({**row, "shape": f"{row['n']}x{row['k']}"})
    return rows, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    rows, sources = pooled_rows(args.runs)
    dtypes = sorted({r["dtype"] for r in rows if r["method"] == SCALEDMM})
    print("\n".join(sources))
    shapes = sorted({(r["n"], r["k"]) for r in rows})
    print(f"{len(shapes)} weight shapes: " + ", ".join(f"{n}x{k}" for n, k in shapes))
    print(summary_table(summarize(rows, dtypes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
