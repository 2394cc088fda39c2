"""How a bench run is shown: a table on the terminal, JSON and CSV files, and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from scaledmm.bench.micro import BASELINES, RANGES, SCALEDMM, TORCH_SCALED_MM, speedup

CSV_FIELDS = (
    "shape",
    "n",
    "k",
    "m",
    "dtype",
    "method",
    "time_us",
    "min_us",
    "max_us",
    "tflops",
    "gbps",
    "bound",
    "pct_of_ceiling",
    "max_error_ratio",
    "note",
)


def _fmt(value, spec=".2f", missing="-") -> str:
    return missing if value is None else format(value, spec)


def _geomean_cell(entry: dict | None) -> str:
    return "-" if entry is None else f"{entry['geomean']:.2f} ({entry['points']}; {entry['min']:.2f})"


# How each label's fp8 products were summed, ours and the vendor's alike (like for like).
ACCUMULATION_OF = {
    "fp8": " (fast accumulation)",
    "fp8-precise": " (precise accumulation)",
    "fp8-block": " (block scales, promoted every block)",
}


def table(result: dict) -> str:
    """Per point: scaledmm's time and figures, and its speedup over each baseline; then the geomeans."""
    rows, summary = result["rows"], result["summary"]
    times = {(r["shape"], r["m"], r["dtype"], r["method"]): r["time_us"] for r in rows if r["time_us"] is not None}
    # Vendor points that ran in another accumulation mode than their label's (cuBLAS refused fast).
    # (A skipped method's note says why it was skipped instead.)
    marked = {(r["shape"], r["m"], r["dtype"], r["method"]) for r in rows if r.get("note") and r["time_us"] is not None}
    lines = []
    dtypes = list(summary) or sorted({r["dtype"] for r in rows if r["dtype"] != "bf16"})
    for dtype in dtypes:
        baselines = BASELINES[dtype]
        head = f"{'shape':<22}{'M':>6} {'us':>9} {'TFLOP/s':>8} {'GB/s':>7} {'%ceil':>6}"
        head += "".join(f" {'x ' + b:>24}" for b in baselines)
        mode = ACCUMULATION_OF.get(dtype, "")
        lines += [f"== {dtype}{mode}: scaledmm, and its speedup over each baseline (>1: scaledmm faster)", head]
        for r in rows:
            if r["dtype"] != dtype or r["method"] != SCALEDMM:
                continue
            line = (
                f"{r['shape']:<22}{r['m']:>6} {_fmt(r['time_us'], '.1f'):>9} {_fmt(r.get('tflops'), '.1f'):>8}"
                f" {_fmt(r.get('gbps'), '.0f'):>7} {_fmt(r.get('pct_of_ceiling'), '.0f'):>6}"
            )
            for b in baselines:
                mark = "*" if (r["shape"], r["m"], dtype, b) in marked else ""
                line += f" {_fmt(speedup(times, r['shape'], r['m'], dtype, b)) + mark:>24}"
            lines.append(line)
        lines.append("")
    skipped = sorted({f"{r['method']} ({r['note']})" for r in rows if r["time_us"] is None})
    if skipped:
        lines += ["skipped: " + "; ".join(skipped), ""]
    if marked:
        lines += ["*: the vendor ran in its precise mode there (cuBLAS refused fast accumulation)", ""]
    lines.append("== geomean speedup of scaledmm (points; min)")
    lines.append(summary_table(summary))
    return "\n".join(lines)


def summary_table(summary: dict) -> str:
    """The geomeans of `micro.summarize`, one line per dtype and baseline, one column per range of M."""
    lines = [f"{'dtype':<12}{'over':<26}" + "".join(f"{rng:>22}" for rng in RANGES)]
    for dtype, per_baseline in summary.items():
        for baseline, per_range in per_baseline.items():
            cells = "".join(f"{_geomean_cell(per_range.get(rng)):>22}" for rng in RANGES)
            lines.append(f"{dtype:<12}{baseline:<26}{cells}")
    return "\n".join(lines)


def write_results(result: dict, out_dir: Path) -> list[Path]:
    """results.json (everything), results.csv (one row per shape, M, dtype and method), and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "results.json", out_dir / "results.csv"]
    written[0].write_text(json.dumps(result, indent=1) + "\n")
    env = result["environment"]
    with open(written[1], "w", newline="") as f:
        # The run's identity on top, as comment lines, so the CSV stands alone.
        for key in ("command", "gpu", "driver", "sm_clock", "torch", "triton", "date"):
            f.write(f"# {key}: {env.get(key)}\n")
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])
    written += plot(result, out_dir)
    return written


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (with a note) where it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'scaledmm[plot]')")
        return None
    return plt


def plot(result: dict, out_dir: Path) -> list[Path]:
    """speedup.png (over torch._scaled_mm, against M, one panel per shape) and roofline.png."""
    plt = _pyplot()
    if plt is None:
        return []
    rows = result["rows"]
    env = result["environment"]
    title = f"{env.get('gpu') or 'CPU (interpreter)'}, torch {env['torch']}, triton {env['triton']}"
    times = {(r["shape"], r["m"], r["dtype"], r["method"]): r["time_us"] for r in rows if r["time_us"] is not None}
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    dtypes = [d for d in ("fp8", "fp8-precise", "fp8-block", "int8") if any(r["dtype"] == d for r in rows)]
    written = []

    cols = min(4, len(shapes))
    nrows = -(-len(shapes) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False, sharey=True)
    for ax, shape in zip(axes.flat, shapes):
        ms = sorted({r["m"] for r in rows if r["shape"] == shape})
        for dtype in dtypes:
            pts = [(m, s) for m in ms if (s := speedup(times, shape, m, dtype, TORCH_SCALED_MM)) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"scaledmm {dtype}")
        ax.axhline(1.0, color="gray", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_title(shape, fontsize=9)
        ax.set_xlabel("M (tokens)")
    for ax in axes[:, 0]:
        ax.set_ylabel("speedup over torch._scaled_mm")
    for ax in list(axes.flat)[len(shapes) :]:
        ax.set_visible(False)
    if axes.flat[0].get_legend_handles_labels()[0]:
        axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"scaledmm over torch._scaled_mm (fp8 rowwise + bias) — {title}", fontsize=10)
    fig.tight_layout()
    written.append(out_dir / "speedup.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    ceilings = result["ceilings"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for method, dtype, marker in (
        (SCALEDMM, "fp8", "o"),
        (SCALEDMM, "int8", "s"),
        (TORCH_SCALED_MM, "fp8", "x"),
        ("F.linear-bf16", "bf16", "^"),
    ):
        pts = []
        for r in rows:
            if r["method"] == method and r["dtype"] == dtype and r["time_us"] is not None:
                elem = 2 if dtype == "bf16" else 1
                moved = (r["m"] * r["k"] + r["n"] * r["k"]) * elem + r["m"] * r["n"] * 2
                pts.append((2 * r["m"] * r["n"] * r["k"] / moved, r["tflops"]))
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=18, label=f"{method} ({dtype})")
    if ceilings:
        bw = ceilings["copy_gbps"] / 1e3  # TB/s: TFLOP/s per FLOP/byte
        for key, label in (("fp8_tflops", "fp8"), ("int8_tops", "int8"), ("bf16_tflops", "bf16")):
            peak = ceilings[key]
            ax.plot(
                [0.5, peak / bw, 1e4],  # the memory slope, its knee, the compute roof
                [bw * 0.5, peak, peak],
                linestyle="--",
                linewidth=1,
                label=f"ceiling {label}: {peak:.0f} TFLOP/s, {ceilings['copy_gbps']:.0f} GB/s",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP per byte moved)")
    ax.set_ylabel("TFLOP/s (TOP/s for int8)")
    ax.set_title(f"achieved rate against the measured ceilings\n{title}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out_dir / "roofline.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written


def plot_model(result: dict, out_dir: Path) -> list[Path]:
    """model_throughput.png of a bench-model run: decode tokens per second against the batch, one line
    per variant, and each variant's speedup over bf16; one row of panels per model."""
    plt = _pyplot()
    if plt is None:
        return []
    rows = result["rows"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    env = result["environment"]
    mode = "compiled" if result.get("compiled") else "eager"
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for (ax_rate, ax_gain), model in zip(axes, models):
        model_rows = [r for r in rows if r["model"] == model]
        bf16 = next((r for r in model_rows if r["variant"] == "bf16"), None)
        for index, row in enumerate(model_rows):
            color = f"C{index}"  # one colour per variant in both panels
            batches = sorted(int(key[len("decode_b") : -len("_us")]) for key in row if _is_decode_key(key, row))
            rates = [b / (row[f"decode_b{b}_us"] * 1e-6) for b in batches]
            ax_rate.plot(batches, rates, marker="o", color=color, label=row["variant"])
            if bf16 is not None and row is not bf16:
                gains = [
                    (b, bf16[f"decode_b{b}_us"] / row[f"decode_b{b}_us"])
                    for b in batches
                    if bf16.get(f"decode_b{b}_us")
                ]
                if gains:
                    ax_gain.plot(*zip(*gains), marker="o", color=color, label=row["variant"])
        layers = model_rows[0].get("layers")
        for ax in (ax_rate, ax_gain):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("decode batch (sequences)")
            ax.grid(True, linewidth=0.3)
        ax_rate.set_yscale("log")
        ax_rate.set_ylabel("tokens / s")
        ax_rate.set_title(f"{model} ({layers} layers), {mode}: decode throughput", fontsize=10)
        ax_gain.axhline(1.0, color="gray", linewidth=1)
        ax_gain.set_ylabel("speedup over bf16")
        ax_gain.set_title(f"{model}: over bf16 ({mode} the same way)", fontsize=10)
        ax_rate.legend(fontsize=7)
    fig.suptitle(
        f"{env.get('gpu') or 'CPU'}, torch {env['torch']}, triton {env['triton']}, context {result.get('context')}",
        fontsize=10,
    )
    fig.tight_layout()
    written = [out_dir / "model_throughput.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)
    return written


def _is_decode_key(key: str, row: dict) -> bool:
    """Whether `key` of a bench-model row is a timed decode batch (decode_b<batch>_us with a time)."""
    return key.startswith("decode_b") and key.endswith("_us") and row[key] is not None
