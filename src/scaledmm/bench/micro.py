"""The micro benchmark behind `scaledmm bench`: scaledmm against the vendor kernels, point by point,
in one run on one card (../shared/BENCHMARKING.md). With a block size (`scaledmm bench --block-size
128,128`), block-scaled fp8 against torch._scaled_mm's block mode, in rows labelled "fp8-block"."""

from __future__ import annotations

import datetime
import math
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
from tqdm import tqdm

import scaledmm
from scaledmm.bench.shapes import LinearShape, m_range
from scaledmm.bench.timing import host_time_per_call, rotation_count, time_calls, time_interleaved
from scaledmm.configs import device_limits, heuristic_config
from scaledmm.configs.files import DTYPE_BY_NAME
from scaledmm.configs.heuristic import block_heuristic_config
from scaledmm.kernels.matmul import launch_scaled_mm
from scaledmm.kernels.vendor import block_scale_a, fast_accum_refused, unsupported_reason, vendor_scaled_mm
from scaledmm.runtime import block_call_runs_vendor
from scaledmm.testing import OUT_DTYPE, ErrorCheck, Operands, make_block_operands, make_operands

SCALEDMM = "scaledmm"
TRITON = "scaledmm-triton"
HEURISTIC = "scaledmm-heuristic"
TORCH_SCALED_MM = "torch._scaled_mm"
TORCH_INT_MM = "torch._int_mm+epilogue"
BF16 = "F.linear-bf16"
# What scaledmm is compared with, per dtype; int8 is also set against the fp8 vendor kernel, the
# fastest W8A8 path torch offers.
BASELINES = {
    "fp8": (TORCH_SCALED_MM, HEURISTIC, BF16),
    "fp8-precise": (TORCH_SCALED_MM, HEURISTIC, BF16),
    "int8": (TORCH_INT_MM, TORCH_SCALED_MM, HEURISTIC, BF16),
    "fp8-block": (TORCH_SCALED_MM, HEURISTIC, BF16),
}
BLOCK_LABEL = "fp8-block"  # the rows of block-scaled fp8, all its methods promoted every block
# The rows' dtype labels: the operands and the fp8 accumulation mode every method of the label runs
# in, the vendor's included (like for like). "fp8" is fast accumulation, as Triton's and
# torch._scaled_mm(use_fast_accum=True)'s default on Hopper; "fp8-precise" promotes to fp32.
VARIANTS = {"int8": ("int8", "fast"), "fp8": ("fp8", "fast"), "fp8-precise": ("fp8", "precise")}


def variant_labels(dtypes: Sequence[str], accumulations: Sequence[str]) -> list[str]:
    """The row labels of the dtypes asked for (int8, fp8) in the fp8 accumulation modes asked for."""
    labels = []
    for dtype in dtypes:
        if dtype == "fp8":
            labels += ["fp8" if mode == "fast" else "fp8-precise" for mode in accumulations]
        else:
            labels.append(dtype)
    return labels


RANGES = ("decode", "mid", "prefill", "all")


# ----------------------------------------------------------------------------- environment


def _nvidia_smi(field: str, index: int) -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device, command: str) -> dict:
    """What a reader needs to compare these numbers with others: card, driver, clocks, versions, date."""
    env = {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "scaledmm": scaledmm.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
            l2_bytes=props.L2_cache_size,
            driver=_nvidia_smi("driver_version", device.index or 0),
            sm_clock=_nvidia_smi("clocks.sm", device.index or 0),
            max_sm_clock=_nvidia_smi("clocks.max.sm", device.index or 0),
        )
    else:
        env.update(gpu=None, note="no GPU: kernels ran in Triton's interpreter; times are not meaningful")
    return env


# ----------------------------------------------------------------------------- ceilings


def measure_ceilings(device: torch.device) -> dict[str, float]:
    """Copy bandwidth (GB/s, read + write of a 1 GiB buffer) and matmul rates (TFLOP/s, 8192^3).

    The copy ceiling is the faster of a memcpy (Tensor.copy_) and a streaming kernel (torch.neg over
    float32), since which of the two the driver runs faster is a property of the card and driver."""
    size = 8192
    flops = 2 * size**3
    src = torch.randn(2**28, device=device)  # 1 GiB of float32
    dst = torch.empty_like(src)
    memcpy = time_calls(lambda d, s: d.copy_(s), [(dst, src)])
    kernel = time_calls(lambda d, s: torch.neg(s, out=d), [(dst, src)])
    del src, dst
    memcpy_gbps, kernel_gbps = (2 * 2**30 / t.median_us / 1e3 for t in (memcpy, kernel))

    def rate(make, fn) -> float:
        copies = [make() for _ in range(rotation_count(size * size, device))]
        return flops / time_calls(fn, copies).median_us / 1e6

    def fp8_pair():
        ops = make_operands(
            size, size, size, torch.float8_e4m3fn, device, per_token=False, per_channel=False, bias_dtype=None
        )
        return ops.a, ops.b, ops.scale_a, ops.scale_b

    def int8_pair():
        ops = make_operands(size, size, size, torch.int8, device, bias_dtype=None)
        return ops.a, ops.b

    def bf16_pair():
        return (
            torch.randn(size, size, device=device, dtype=torch.bfloat16),
            torch.randn(size, size, device=device, dtype=torch.bfloat16),
        )

    return {
        "copy_gbps": max(memcpy_gbps, kernel_gbps),
        "memcpy_gbps": memcpy_gbps,
        "kernel_copy_gbps": kernel_gbps,
        "fp8_tflops": rate(fp8_pair, lambda a, b, sa, sb: torch._scaled_mm(a, b, sa, sb, out_dtype=OUT_DTYPE)),
        "int8_tops": rate(int8_pair, torch._int_mm),
        "bf16_tflops": rate(bf16_pair, F.linear),
    }


# ----------------------------------------------------------------------------- one point


@dataclass
class Method:
    """A way to compute one point: a callable over one copy of the inputs, or why it was skipped."""

    name: str
    fn: Callable | None
    inputs: Sequence[Sequence[object]] = ()
    skipped: str = ""
    checked: bool = False  # compare its output with the reference before timing
    accumulation: str = "fast"  # the fp8 accumulation mode its output is checked against
    note: str = ""  # shown with its row (a vendor kernel that ran in another accumulation mode)
    block_size: tuple[int, int] | None = None  # its inputs' block scales (checked as such)


def _row(shape: LinearShape, M: int, dtype: str, method: str, **fields) -> dict:
    return {"shape": shape.name, "n": shape.n, "k": shape.k, "m": M, "dtype": dtype, "method": method, **fields}


def _figures(M: int, N: int, K: int, elem_bytes: int, time_us: float, ceilings: dict, compute_key: str) -> dict:
    flops = 2 * M * N * K
    moved = (M * K + N * K) * elem_bytes + M * N * OUT_DTYPE.itemsize
    figures = {"tflops": flops / time_us / 1e6, "gbps": moved / time_us / 1e3}
    if ceilings:
        peak = max(ceilings[k] for k in compute_key.split("|"))
        compute_us = flops / peak / 1e6
        memory_us = moved / ceilings["copy_gbps"] / 1e3
        figures["bound"] = "compute" if compute_us >= memory_us else "memory"
        figures["pct_of_ceiling"] = 100.0 * max(compute_us, memory_us) / time_us
    return figures


def _eight_bit_methods(shape: LinearShape, M: int, label: str, device: torch.device) -> list[Method]:
    """scaledmm as users call it (backend auto), forced to Triton, with the untuned heuristic config,
    and the vendor kernel, in the label's operand dtype and accumulation mode; all on the same R
    copies of the inputs. Where cuBLAS refuses fast accumulation for the shape, the vendor runs in
    its precise mode and its row says so."""
    dtype_name, accumulation = VARIANTS[label]
    dtype = DTYPE_BY_NAME[dtype_name]
    copies = rotation_count(shape.n * shape.k, device)
    ops = [make_operands(M, shape.n, shape.k, dtype, device) for _ in range(copies)]
    inputs = [(*o.args(), o.bias) for o in ops]
    heuristic = heuristic_config(M, shape.n, shape.k, dtype, *device_limits(device))
    mode = dict(accumulation=accumulation)

    def ours(a, b, sa, sb, bias):
        return scaledmm.scaled_mm(a, b, sa, sb, OUT_DTYPE, bias, **mode)

    def ours_triton(a, b, sa, sb, bias):
        return scaledmm.scaled_mm(a, b, sa, sb, OUT_DTYPE, bias, backend="triton", **mode)

    def ours_heuristic(a, b, sa, sb, bias):
        return scaledmm.scaled_mm(a, b, sa, sb, OUT_DTYPE, bias, config=heuristic, **mode)

    vendor_name = TORCH_INT_MM if dtype == torch.int8 else TORCH_SCALED_MM
    reason = unsupported_reason(*ops[0].args(), ops[0].bias, OUT_DTYPE)
    note = ""
    fast_accum = dtype != torch.int8 and accumulation == "fast"
    if fast_accum and reason is None:
        try:
            vendor_scaled_mm(*inputs[0], OUT_DTYPE, True)
        except RuntimeError as err:
            if not fast_accum_refused(err):
                raise
            fast_accum, note = False, "precise: cuBLAS refused fast accumulation"

    def vendor(a, b, sa, sb, bias):
        return vendor_scaled_mm(a, b, sa, sb, bias, OUT_DTYPE, fast_accum)

    checked = dict(checked=True, accumulation=accumulation)
    return [
        Method(SCALEDMM, ours, inputs, **checked),
        Method(TRITON, ours_triton, inputs, **checked),
        Method(HEURISTIC, ours_heuristic, inputs, **checked),
        Method(vendor_name, None, skipped=reason) if reason else Method(vendor_name, vendor, inputs, note=note),
    ]


def _block_methods(shape: LinearShape, M: int, block_size: tuple[int, int], device: torch.device) -> list[Method]:
    """Block-scaled fp8: scaledmm as users call it (backend auto: a tuned bucket's backend, else the
    untuned rule's) with scale_a in the layout W8A8Linear quantizes it into for this call (column-major
    where auto runs the vendor, runtime.block_call_runs_vendor; row-major where ours runs), forced to
    Triton and with the heuristic's tile (row-major scale_a), and torch._scaled_mm's block mode given
    scale_a column-major, the layout it reads (at an M it refuses, on rows padded to one: what a user
    of it would have to do); on the same R copies of the inputs."""
    copies = rotation_count(shape.n * shape.k, device)
    ops = [make_block_operands(M, shape.n, shape.k, device, block_size) for _ in range(copies)]
    inputs = [(*o.args(), o.bias) for o in ops]
    vendor_inputs = [(a, b, block_scale_a(sa), sb, bias) for a, b, sa, sb, bias in inputs]
    auto_runs_vendor = block_call_runs_vendor(*inputs[0][:4], OUT_DTYPE, inputs[0][4], "auto", block_size)
    heuristic = block_heuristic_config(M, shape.n, shape.k, block_size[1], *device_limits(device))

    def ours(a, b, sa, sb, bias):
        return scaledmm.scaled_mm(a, b, sa, sb, OUT_DTYPE, bias, block_size=block_size)

    def ours_triton(a, b, sa, sb, bias):
        return scaledmm.scaled_mm(a, b, sa, sb, OUT_DTYPE, bias, backend="triton", block_size=block_size)

    def ours_heuristic(a, b, sa, sb, bias):
        return scaledmm.scaled_mm(a, b, sa, sb, OUT_DTYPE, bias, config=heuristic, block_size=block_size)

    def vendor(a, b, sa, sb, bias):  # at an M the block mode refuses, on padded rows (kernels/vendor.py)
        return vendor_scaled_mm(a, b, sa, sb, bias, OUT_DTYPE, block_size=block_size)

    reason = unsupported_reason(*ops[0].args(), ops[0].bias, OUT_DTYPE, block_size)
    if reason is None:
        try:
            vendor(*vendor_inputs[0])
        except RuntimeError as err:
            reason = f"refused: {str(err).splitlines()[0][:120]}"
    checked = dict(checked=True, accumulation="precise", block_size=block_size)
    return [
        Method(SCALEDMM, ours, vendor_inputs if auto_runs_vendor else inputs, **checked),
        Method(TRITON, ours_triton, inputs, **checked),
        Method(HEURISTIC, ours_heuristic, inputs, **checked),
        Method(TORCH_SCALED_MM, None, skipped=reason) if reason else Method(TORCH_SCALED_MM, vendor, vendor_inputs),
    ]


def _bf16_method(shape: LinearShape, M: int, device: torch.device) -> Method:
    copies = rotation_count(2 * shape.n * shape.k, device)
    inputs = [
        (
            torch.randn(M, shape.k, device=device, dtype=torch.bfloat16),
            torch.randn(shape.n, shape.k, device=device, dtype=torch.bfloat16),
        )
        for _ in range(copies)
    ]
    return Method(BF16, F.linear, inputs)


def _check(method: Method, shape: LinearShape, M: int, dtype: str, references: dict) -> dict:
    """The method's output against the reference, once, before it is timed. The reference and its
    bound are computed once per set of inputs and accumulation mode (in `references`), shared by the
    methods that run on them."""
    key = (id(method.inputs), method.accumulation)
    if key not in references:
        a, b, sa, sb, bias = method.inputs[0]
        ops = Operands(a, b, sa, sb, bias, method.block_size)
        references[key] = ErrorCheck(ops, OUT_DTYPE, method.accumulation)
    ratio = references[key].ratio(method.fn(*method.inputs[0]))
    if not ratio <= 1.0:
        tqdm.write(f"WRONG RESULT: {method.name} {shape.name} M={M} {dtype}: error {ratio:.3g}x the bound")
    return {"max_error_ratio": ratio}


def _measure_point(
    methods: list[tuple[str, Method]], shape: LinearShape, M: int, replays: int, ceilings: dict
) -> list[dict]:
    """Check, then time every method of one point together (interleaved), and make their rows."""
    references: dict = {}
    checks = {id(m): _check(m, shape, M, dtype, references) for dtype, m in methods if m.fn is not None and m.checked}
    runnable = [(dtype, m) for dtype, m in methods if m.fn is not None]
    timings = dict(
        zip((id(m) for _, m in runnable), time_interleaved([(m.fn, m.inputs) for _, m in runnable], replays))
    )
    rows = []
    for dtype, m in methods:
        if m.fn is None:
            rows.append(_row(shape, M, dtype, m.name, time_us=None, note=m.skipped))
            continue
        timing = timings[id(m)]
        elem_bytes, compute_key = (2, "bf16_tflops") if dtype == "bf16" else (1, "fp8_tflops|int8_tops")
        rows.append(_row(
            shape, M, dtype, m.name,
            time_us=timing.median_us, min_us=timing.min_us, max_us=timing.max_us,
            **_figures(M, shape.n, shape.k, elem_bytes, timing.median_us, ceilings, compute_key),
            **checks.get(id(m), {}),
            **({"note": m.note} if m.note else {}),
        ))  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- the run


def run_bench(
    shapes: Sequence[LinearShape],
    ms: Sequence[int],
    dtypes: Sequence[str],
    device: torch.device,
    command: str = "",
    replays: int = 20,
    progress: bool = True,
    accumulations: Sequence[str] = ("fast",),
    block_size: tuple[int, int] | None = None,
) -> dict:
    """Time every method at every (shape, M, dtype) in each fp8 accumulation mode asked for, or with
    `block_size` block-scaled fp8 (dtypes fp8 only; rows labelled BLOCK_LABEL); return
    {"environment", "ceilings", "rows", "summary"}."""
    unknown = set(dtypes) - set(DTYPE_BY_NAME)
    if unknown:
        raise ValueError(f"unknown dtypes {sorted(unknown)}; choose from {sorted(DTYPE_BY_NAME)}")
    if not accumulations or set(accumulations) - {"fast", "precise"}:
        raise ValueError(f"accumulation must be fast, precise or both, got {list(accumulations)}")
    if block_size is not None and set(dtypes) != {"fp8"}:
        raise ValueError(f"block_size is for fp8 (block-scaled fp8), got dtypes {list(dtypes)}")
    labels = [BLOCK_LABEL] if block_size is not None else variant_labels(dtypes, accumulations)
    env = environment(device, command)
    ceilings = measure_ceilings(device) if device.type == "cuda" else {}
    rows = []
    points = [(shape, M) for shape in shapes for M in ms]
    for shape, M in tqdm(points, desc="scaledmm bench", unit="point", disable=not progress):
        methods = [("bf16", _bf16_method(shape, M, device))]
        if block_size is not None:
            methods += [(BLOCK_LABEL, m) for m in _block_methods(shape, M, block_size, device)]
        else:
            methods += [(label, m) for label in labels for m in _eight_bit_methods(shape, M, label, device)]
        rows += _measure_point(methods, shape, M, replays, ceilings)
    return {"environment": env, "ceilings": ceilings, "rows": rows, "summary": summarize(rows, labels)}


def _times(rows: list[dict]) -> dict[tuple, float]:
    return {(r["shape"], r["m"], r["dtype"], r["method"]): r["time_us"] for r in rows if r["time_us"] is not None}


def speedup(times: dict, shape: str, M: int, dtype: str, baseline: str) -> float | None:
    """How many times faster scaledmm is than `baseline` at one point (None where either is missing).

    The bf16 linear is looked up under its own dtype, and for int8 the fp8 vendor kernel under fp8
    (fast accumulation), so int8 can be set against them too; fp8 labels compare with the vendor in
    their own accumulation mode."""
    ours = times.get((shape, M, dtype, SCALEDMM))
    if baseline == BF16:
        base_dtype = "bf16"
    elif dtype == "int8" and baseline == TORCH_SCALED_MM:
        base_dtype = "fp8"
    else:
        base_dtype = dtype
    base = times.get((shape, M, base_dtype, baseline))
    return None if ours is None or base is None else base / ours


def summarize(rows: list[dict], dtypes: Sequence[str]) -> dict:
    """Geomean speedups of scaledmm over each baseline, per dtype and range of M."""
    times = _times(rows)
    points = sorted({(r["shape"], r["m"]) for r in rows})
    summary: dict = {}
    for dtype in dtypes:
        for baseline in BASELINES[dtype]:
            per_range = {}
            for rng in RANGES:
                ratios = [
                    s for shape, M in points
                    if rng in ("all", m_range(M)) and (s := speedup(times, shape, M, dtype, baseline)) is not None
                ]  # fmt: skip
                if ratios:
                    geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
                    per_range[rng] = {"geomean": geomean, "points": len(ratios), "min": min(ratios)}
            if per_range:
                summary.setdefault(dtype, {})[baseline] = per_range
    return summary


# ----------------------------------------------------------------------------- host overhead


HOST_OVERHEAD_ROUNDS = 5  # rounds over all the methods in turn; each reports its median round


def host_overhead(device: torch.device, calls: int = 3000) -> dict:
    """CPU time per call on a tiny shape, no synchronisation in the loop: scaled_mm against the op it
    replaces, a W8A8Linear forward (quantize + matmul) against the bf16 nn.Linear forward, and a bare
    Triton launch of the same kernel (what a call costs without scaledmm's prepared launches).

    The methods are timed in turn, round after round, and each reports its median round (min and
    max in `rounds_us`): single measurements on the H100 host moved by up to 1.7x with the order."""
    from scaledmm.nn import W8A8Linear

    M, N, K = 16, 256, 256
    fp8 = make_operands(M, N, K, DTYPE_BY_NAME["fp8"], device)
    int8 = make_operands(M, N, K, DTYPE_BY_NAME["int8"], device)
    out = torch.empty(M, N, dtype=OUT_DTYPE, device=device)
    config = scaledmm.select_config(M, N, K, fp8.a.dtype, device)
    x = torch.randn(M, K, device=device, dtype=OUT_DTYPE)
    linear = torch.nn.Linear(K, N, device=device, dtype=OUT_DTYPE)
    layers = {dtype: W8A8Linear.from_linear(linear, dtype) for dtype in ("fp8", "int8")}
    methods = {
        "scaledmm.scaled_mm (fp8)": lambda: scaledmm.scaled_mm(*fp8.args(), OUT_DTYPE, fp8.bias),
        "scaledmm.scaled_mm (int8)": lambda: scaledmm.scaled_mm(*int8.args(), OUT_DTYPE, int8.bias),
        "torch._scaled_mm (fp8)": lambda: torch._scaled_mm(*fp8.args(), bias=fp8.bias, out_dtype=OUT_DTYPE),
        "bare Triton launch (fp8)": lambda: launch_scaled_mm(*fp8.args(), fp8.bias, out, config),
        "W8A8Linear forward (fp8)": lambda: layers["fp8"](x),
        "W8A8Linear forward (int8)": lambda: layers["int8"](x),
        "nn.Linear forward (bf16)": lambda: linear(x),
    }
    if device.type != "cuda":
        del methods["torch._scaled_mm (fp8)"]
    rounds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(HOST_OVERHEAD_ROUNDS):
        for name, fn in methods.items():
            rounds[name].append(host_time_per_call(fn, calls))
    results: dict[str, float | str] = {name: statistics.median(times) for name, times in rounds.items()}
    results.setdefault("torch._scaled_mm (fp8)", "skipped: needs CUDA")
    vendor = results["torch._scaled_mm (fp8)"]
    ratios = {
        "scaled_mm (fp8) / torch._scaled_mm": (
            results["scaledmm.scaled_mm (fp8)"] / vendor if isinstance(vendor, float) else None
        ),
        "W8A8Linear (fp8) / nn.Linear": results["W8A8Linear forward (fp8)"] / results["nn.Linear forward (bf16)"],
        "W8A8Linear (int8) / nn.Linear": results["W8A8Linear forward (int8)"] / results["nn.Linear forward (bf16)"],
    }
    return {
        "shape": {"m": M, "n": N, "k": K},
        "calls": calls,
        "us_per_call": results,
        "rounds_us": {name: {"min": min(t), "max": max(t)} for name, t in rounds.items()},
        "ratios": ratios,
    }
