"""GPU A/B for issue 17's INT8 gap at mid M: does Triton's synchronous int8 wgmma explain it?

benchmarks/ab/int8_fp8_gap.py found offline that Triton 3.6 waits for every int8 K step's wgmma before
issuing anything else (its WGMMA pipeliner makes only fp32-accumulator dots asynchronous), where fp8
keeps one K step in flight; same tiles, same instructions otherwise. This A/B measures what that costs
on the shapes and M where the shipped H200 files show the gap, timing together, interleaved, per point:

  fp8            our fp8 winner (the shipped fp8 file's config at this M)
  int8           our int8 winner (the shipped int8 file's config)
  int8@fp8       int8 with fp8's winning config (the TMA kernel where fp8 won with it)
  int8a          the int8 winner's tiles in the pointer kernel, its wgmma made asynchronous in the PTX
                 (int8_fp8_gap.async_int8_ptx through Triton's ir_override option): the probe
  int8a@fp8      the probe with fp8's winning tiles (in the pointer kernel)

Every output is checked against the exact float64 reference (scaledmm.testing.ErrorCheck) before it is
timed; a wrong one is reported and left out of the summary. Printed per point: the times, fp8 time over
each int8 variant's (< 1: int8 slower), the probe's wait depth in the SASS K loop (1: asynchronous), and
per M range the geomean and minimum of fp8/int8 for the shipped int8 winners and for the best probe.
Issue 17's target is fp8/int8 >= 0.95 at every M >= 128.

    PYTHONPATH=src python3 benchmarks/ab/int8_fp8_ab.py [--out FILE.json] [--m 128,256,512,768] \
        [--time-limit 170]

About 2-3 minutes on an H200 (most of it compiling); no new point starts after --time-limit seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codegen_compare import machine_code  # benchmarks/ab/, beside this script
from int8_fp8_gap import async_int8_override, loop_waits, short

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import MatmulConfig
from scaledmm.configs.files import load_table
from scaledmm.kernels import matmul
from scaledmm.kernels.launch import bind_launch
from scaledmm.testing import OUT_DTYPE, ErrorCheck, make_operands

DATA = Path(__file__).resolve().parents[2] / "src" / "scaledmm" / "configs" / "data"
CARD = "NVIDIA_H200"
# Shapes of the shipped H200 files with the widest mid-M gaps (int8_fp8_gap.py's table).
SHAPES = (
    ("llama3-70b-tp4.qkv", 2560, 8192),
    ("qwen2.5-72b-tp8.qkv", 1280, 8192),
    ("llama3-8b.down", 4096, 14336),
    ("qwen2.5-7b.down", 3584, 18944),
    ("llama3-8b.gate_up", 28672, 4096),
    ("qwen2.5-7b.gate_up", 37888, 3584),
)
REPLAYS = 30
DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


def shipped_config(n: int, k: int, dtype: str, m: int) -> MatmulConfig | None:
    """The best Triton config of the shipped H200 file's bucket at exactly M (None without one)."""
    path = DATA / f"N={n},K={k},device_name={CARD},dtype={dtype}_w8a8.json"
    if not path.exists():
        return None
    return next((b.config for b in load_table(path).buckets if b.m == m), None)


class KernelCall:
    """`config` launched as `scaled_mm` launches it (matmul._kernel_and_arguments and a bound launch),
    optionally with the probe's PTX; called as `(a, b, scale_a, scale_b, bias)`, returns the output."""

    def __init__(self, config: MatmulConfig, probe: bool, workdir: Path):
        self.config, self.probe, self.workdir = config, probe, workdir
        self.launch = None
        self.waits = "-"

    def __call__(self, a, b, scale_a, scale_b, bias):
        out = torch.empty(a.shape[0], b.shape[1], dtype=OUT_DTYPE, device=a.device)
        if self.launch is None:
            self._bind(a, b, scale_a, scale_b, bias, out)
        else:
            self.launch(a, b, scale_a, scale_b, bias, out)
        return out

    def _bind(self, a, b, scale_a, scale_b, bias, out):
        kernel, grid, args, kwargs, leading = matmul._kernel_and_arguments(
            a, b, scale_a, scale_b, bias, out, self.config, False, a.device
        )
        if self.probe:
            kwargs = async_int8_override(kernel, grid, args, kwargs, self.workdir)
            try:  # the probe's K-loop wait in the SASS (nvdisasm, bundled with Triton): 1 = asynchronous
                self.waits = loop_waits(machine_code(kernel.warmup(*args, grid=grid, **kwargs), self.workdir))
            except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
                self.waits = f"? ({type(err).__name__})"
        bound = bind_launch(kernel, grid, args, kwargs, leading=leading, device=a.device)
        name = "tma" if kernel is matmul.matmul_tma.scaled_mm_tma_kernel else self.config.kernel
        if name != "tma" and self.config.kernel == "tma":
            name = "pointer"
        self.launch = matmul.MatmulLaunch(bound, self.config, name, False, a.shape[0], b.shape[1], a.dtype)


def as_pointer(config: MatmulConfig) -> MatmulConfig:
    """The same tiles in the pointer kernel (the probe's: ptxas re-serializes the TMA kernel's)."""
    return MatmulConfig(**{**config.__dict__, "kernel": "pointer"})


def measure(name: str, n: int, k: int, m: int, device: torch.device, workdir: Path) -> dict | None:
    fp8_config, int8_config = shipped_config(n, k, "fp8", m), shipped_config(n, k, "int8", m)
    if fp8_config is None or int8_config is None:
        return None
    variants = {
        "fp8": ("fp8", KernelCall(fp8_config, False, workdir)),
        "int8": ("int8", KernelCall(int8_config, False, workdir)),
        "int8@fp8": ("int8", KernelCall(fp8_config, False, workdir)),
        "int8a": ("int8", KernelCall(as_pointer(int8_config), True, workdir)),
        "int8a@fp8": ("int8", KernelCall(as_pointer(fp8_config), True, workdir)),
    }
    copies = rotation_count(n * k, device)
    inputs, checks = {}, {}
    for dtype in DTYPES:
        ops = [make_operands(m, n, k, DTYPES[dtype], device) for _ in range(copies)]
        inputs[dtype] = [(*o.args(), o.bias) for o in ops]
        checks[dtype] = ErrorCheck(ops[0], OUT_DTYPE, "fast")
    errors = {}
    for label, (dtype, call) in variants.items():
        try:
            errors[label] = checks[dtype].ratio(call(*inputs[dtype][0]))
        except Exception as err:  # a variant that fails to compile or launch is reported, the others run
            errors[label] = float("inf")
            print(f"    {label}: {type(err).__name__}: {str(err).strip()[:160]}", flush=True)
    timed = [label for label in variants if errors[label] <= 1.0]
    timings = time_interleaved([(variants[label][1], inputs[variants[label][0]]) for label in timed], REPLAYS)
    us = {label: t.median_us for label, t in zip(timed, timings)}
    return {
        "shape": name, "n": n, "k": k, "m": m,
        "configs": {label: short(call.config) for label, (_, call) in variants.items()},
        "us": {label: round(t, 3) for label, t in us.items()},
        "error_ratio": {label: round(e, 4) for label, e in errors.items()},
        "probe_waits": {label: call.waits for label, (_, call) in variants.items() if call.probe},
        "fp8_over": {label: us["fp8"] / t for label, t in us.items() if label != "fp8"} if "fp8" in us else {},
    }  # fmt: skip


def print_row(row: dict) -> None:
    cells = []
    for label in ("fp8", "int8", "int8@fp8", "int8a", "int8a@fp8"):
        if label in row["us"]:
            ratio = f" x{row['fp8_over'][label]:.3f}" if label in row["fp8_over"] else ""
            cells.append(f"{label} {row['us'][label]:7.2f}{ratio}")
        else:
            cells.append(f"{label} WRONG/FAILED ({row['error_ratio'][label]})")
    waits = " ".join(f"{label}:{w}" for label, w in row["probe_waits"].items())
    print(f"{row['shape']:24s} M={row['m']:5d}  " + "  ".join(cells) + f"  [probe waits {waits}]", flush=True)
    print(f"{'':32s}fp8 [{row['configs']['fp8']}]  int8 [{row['configs']['int8']}]", flush=True)


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summarize(rows: list[dict]) -> dict:
    """Per M range: fp8/int8 of the shipped int8 winner, of the best non-probe int8 variant, and of the
    best of everything including the probe (what asynchronous int8 wgmma would give)."""
    groups = defaultdict(lambda: defaultdict(list))
    for row in rows:
        ratios = row["fp8_over"]
        key = "128-512" if row["m"] <= 512 else ">512"
        for label, candidates in (
            ("shipped int8", ["int8"]),
            ("best int8 (no probe)", ["int8", "int8@fp8"]),
            ("best with the probe", list(ratios)),
        ):
            present = [ratios[c] for c in candidates if c in ratios]
            if present:
                groups[key][label].append(max(present))
    summary = {}
    print("\nfp8 time / int8 time (>= 0.95: issue 17's target), geomean (min) per M range")
    for key, by_label in groups.items():
        for label, values in by_label.items():
            summary[f"{key} {label}"] = {"geomean": geomean(values), "min": min(values), "points": len(values)}
            print(f"  M {key:8s} {label:22s} {geomean(values):.3f} ({min(values):.3f}), {len(values)} points")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the rows and the summary here (JSON)")
    parser.add_argument("--m", default="128,256,512,768", help="M values (comma-separated; tuned buckets)")
    parser.add_argument("--time-limit", type=float, default=170, help="start no new point after this many s")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    start, rows = time.monotonic(), []
    with tempfile.TemporaryDirectory() as tmp:
        for m in (int(v) for v in args.m.split(",")):  # M by M: a cut run still covers every shape
            for name, n, k in SHAPES:
                if time.monotonic() - start > args.time_limit:
                    print(f"time limit: stopped before {name} M={m}", flush=True)
                    break
                row = measure(name, n, k, m, device, Path(tmp))
                if row is not None:
                    print_row(row)
                    rows.append(row)
    summary = summarize(rows)
    print(f"{time.monotonic() - start:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
