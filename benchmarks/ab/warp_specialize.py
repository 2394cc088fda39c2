"""A/B of warp-specialised kernels at M >= 128 on Hopper (issue 17), in one run on one card.

Variants, each at a few tile configs, all timed together per point (bench.timing.time_interleaved):
- vendor: torch._scaled_mm(use_fast_accum=True) for fp8 (its precise form where cuBLAS refuses fast
  accumulation, marked '*'), torch._int_mm + an fp32 scaling epilogue for int8;
- tma:    our persistent TMA kernel as scaled_mm runs it (software-pipelined by Triton, 8 warps);
- ws:     matmul_tma.scaled_mm_tma_ws_kernel, Triton's own warp specialisation (4 warps asked, 12 run:
          a load warpgroup and two MMA warpgroups; Triton 3.6 does it on sm_90 only with 4 warps);
- gluon:  matmul_gluon, the hand-written warp-specialised persistent kernel (a load warp, one or two
          MMA warpgroups, an mbarrier ring; c = MMA warpgroups, s = stages, e2 = two accumulators,
          st64 = the epilogue in 64-column stores, pp = ping-pong: the two warpgroups take whole tiles
          in turn, one's epilogue overlapping the other's wgmma).

For fp8 and int8 and llama3-8b gate_up, qkv, down and qwen3-4b o at M = 128 .. 4096: every output is
checked first against the float64 reference on 256 rows spread over all tile rows (error over the
package's bound, testing.ErrorCheck; a variant beyond it is reported WRONG and not timed), then timed.
Before the timing, a ragged call (M=1000, N=28600, K=4000) checks every variant on the whole output in
fast and, for fp8, precise accumulation. Prints per point: time, TFLOP/s and speed over the vendor;
per variant its matrix instructions in the SASS (QGMMA fp8, IGMMA int8), registers, spills and shared
memory; at the end geomeans against the issue's targets. A variant that fails to compile or run is
reported and left out; the run goes on.

    PYTHONPATH=src python3 benchmarks/ab/warp_specialize.py --out $OUT/warp_specialize_ab.log
    PYTHONPATH=src python3 benchmarks/ab/warp_specialize.py --quick        # gate_up at M = 4096 only
    PYTHONPATH=src python3 benchmarks/ab/warp_specialize.py --accumulation precise   # against use_fast_accum=False

Most of the time is compiling. Session 8's `--quick --dtypes fp8 --families tma gluon` (2 TMA and 4 Gluon
configs) finished within 100 s on an H200; with the 8 Gluon configs expect up to twice that. Run the
full A/B one dtype at a time (--dtypes fp8, then --dtypes int8).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

import torch
import triton

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits
from scaledmm.kernels import matmul_tma
from scaledmm.kernels.matmul_gluon import GluonConfig, bind_scaled_mm_gluon
from scaledmm.kernels.vendor import fast_accum_refused, vendor_scaled_mm
from scaledmm.testing import ErrorCheck, Operands, make_operands

BF16 = torch.bfloat16
SHAPES = {  # name: (N, K)
    "gate_up": (28672, 4096),
    "qkv": (6144, 4096),
    "down": (4096, 14336),
    "qwen3-4b o": (2560, 4096),
}
M_VALUES = (128, 256, 512, 1024, 4096)
RAGGED = (1000, 28600, 4000)
CHECK_ROWS = 256
TMA_CONFIGS = [
    MatmulConfig(128, 256, 128, num_warps=8, num_stages=3, kernel="tma"),
    MatmulConfig(128, 128, 128, num_warps=8, num_stages=4, kernel="tma"),
]
WS_CONFIGS = [
    MatmulConfig(128, 256, 128, num_warps=4, num_stages=3, kernel="tma"),
    MatmulConfig(128, 128, 128, num_warps=4, num_stages=4, kernel="tma"),
]
GLUON_CONFIGS = [
    # Session 8's four (the first spills 160 bytes in its epilogue; benchmarks/ab/gluon_codegen.py).
    GluonConfig(128, 256, 128, num_stages=3, consumer_groups=2),
    GluonConfig(128, 256, 128, num_stages=4, consumer_groups=2, epilogue_split=2),
    GluonConfig(128, 128, 128, num_stages=4, consumer_groups=1),
    GluonConfig(128, 128, 128, num_stages=6, consumer_groups=2),
    # The epilogue in 64-column chunks: no spill, and one stage more in the shared memory it frees.
    GluonConfig(128, 256, 128, num_stages=4, consumer_groups=2, store_n=64),
    # Ping-pong: each MMA warpgroup computes whole tiles, one's epilogue beside the other's wgmma.
    GluonConfig(128, 128, 128, num_stages=5, consumer_groups=2, schedule="pingpong"),
    GluonConfig(128, 128, 128, num_stages=5, consumer_groups=2, store_n=64, schedule="pingpong"),
    GluonConfig(64, 256, 128, num_stages=4, consumer_groups=2, store_n=64, schedule="pingpong"),
]
MATRIX_OPS = ("QGMMA", "IGMMA", "HGMMA", "HMMA", "IMMA")


SINKS = [sys.stdout]  # where `log` writes: stdout, and the --out file


def log(line: str = "") -> None:
    for sink in SINKS:
        sink.write(line + "\n")
        sink.flush()


# ----------------------------------------------------------------------------------------- variants


class Variant:
    """One kernel at one config: `run(a, b, scale_a, scale_b, bias)` returns a fresh bf16 output;
    `compiled` is the kernel it launched last (for the SASS report), None for the vendor."""

    family = ""

    def __init__(self, config, precise: bool):
        self.config = config
        self.precise = precise
        self.compiled = None

    @property
    def label(self) -> str:
        return f"{self.family} {self.config}"


class Vendor(Variant):
    family = "vendor"

    def __init__(self, precise: bool):
        super().__init__(None, precise)
        self.refused = False

    @property
    def label(self) -> str:
        if self.precise:
            return "vendor precise"
        return "vendor fast*" if self.refused else "vendor fast"

    def run(self, a, b, scale_a, scale_b, bias):
        fast = not self.precise and not self.refused
        try:
            return vendor_scaled_mm(a, b, scale_a, scale_b, bias, BF16, fast_accum=fast)
        except RuntimeError as err:
            if not (fast and fast_accum_refused(err)):
                raise
            self.refused = True  # cuBLAS has no fast-accumulation kernel here: its precise one stands in
            return vendor_scaled_mm(a, b, scale_a, scale_b, bias, BF16, fast_accum=False)


class Tma(Variant):
    family = "tma"

    def run(self, a, b, scale_a, scale_b, bias):
        accumulation = "precise" if self.precise else "fast"
        return scaledmm.scaled_mm(a, b, scale_a, scale_b, BF16, bias, config=self.config, accumulation=accumulation)

    def compile(self, a, b, scale_a, scale_b, bias, out, num_sms):
        grid, args, kwargs = matmul_tma.launch_arguments(
            a, b, scale_a, scale_b, bias, out, self.config, num_sms, self.precise
        )
        self.compiled = matmul_tma.scaled_mm_tma_kernel.warmup(*args, grid=grid, **kwargs)
        self.compiled._init_handles()  # loads it: registers and spills are known from then on


class TritonWs(Variant):
    family = "ws"

    def __init__(self, config, precise: bool, num_sms: int):
        super().__init__(config, precise)
        self.num_sms = num_sms

    def run(self, a, b, scale_a, scale_b, bias):
        out = torch.empty(a.shape[0], b.shape[1], dtype=BF16, device=a.device)
        grid, args, kwargs = matmul_tma.ws_launch_arguments(
            a, b, scale_a, scale_b, bias, out, self.config, self.num_sms, self.precise
        )
        self.compiled = matmul_tma.scaled_mm_tma_ws_kernel[grid](*args, **kwargs)
        return out


class Gluon(Variant):
    family = "gluon"

    def __init__(self, config, precise: bool):
        super().__init__(config, precise)
        self.launches = {}  # one bound launch per call signature (shape)

    @property
    def label(self) -> str:
        return str(self.config)

    def run(self, a, b, scale_a, scale_b, bias):
        out = torch.empty(a.shape[0], b.shape[1], dtype=BF16, device=a.device)
        key = (tuple(a.shape), tuple(b.shape), a.dtype)
        if key not in self.launches:
            self.launches[key] = bind_scaled_mm_gluon(a, b, scale_a, scale_b, bias, out, self.config, self.precise)
            self.compiled = self.launches[key].bound.compiled
        else:
            self.launches[key](a, b, scale_a, scale_b, bias, out)
        return out


FAMILIES_RUN = ["tma", "ws", "gluon"]  # --families: which of ours run (the vendor always does); FAMILIES below


def variants(precise: bool, num_sms: int) -> list[Variant]:
    ours = {
        "tma": [Tma(c, precise) for c in TMA_CONFIGS],
        "ws": [TritonWs(c, precise, num_sms) for c in WS_CONFIGS],
        "gluon": [Gluon(c, precise) for c in GLUON_CONFIGS],
    }
    return [Vendor(precise)] + [v for family in FAMILIES_RUN for v in ours[family]]


# ----------------------------------------------------------------------------------------- reports


def cuobjdump() -> str | None:
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return bundled if os.path.exists(bundled) else shutil.which("cuobjdump")


def code_report(compiled) -> str:
    """Matrix instructions in the SASS (with their shapes), registers, spills, shared memory."""
    if compiled is None:
        return ""
    sass = compiled.asm.get("sass")
    tool = cuobjdump()
    if sass is None and tool is not None:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
    ops = []
    for op in MATRIX_OPS:
        shapes = re.findall(rf"\b{op}\.(\d+x\d+x\d+)", sass or "")
        if shapes:
            ops.append(f"{op}.{'/'.join(sorted(set(shapes)))} x{len(shapes)}")
    if sass is None:
        ops.append("no SASS (no cuobjdump)")
    regs = getattr(compiled, "n_regs", None)
    spills = getattr(compiled, "n_spills", None)
    shared, warps = compiled.metadata.shared, compiled.metadata.num_warps
    # With warp specialisation `regs` is the launch's maxnreg; setmaxnreg gives the MMA warps more:
    # Rmax, the highest register the SASS names plus one, is what the widest partition uses.
    rmax = max((int(r) for r in re.findall(r"\bR(\d+)\b", sass or "")), default=-1) + 1
    return f"{' '.join(ops)} regs={regs} Rmax={rmax} spills={spills} smem={shared} warps={warps}"


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def row_subset(M: int, device) -> torch.Tensor:
    """CHECK_ROWS rows spread evenly over all of M (every tile row is sampled)."""
    return torch.linspace(0, M - 1, min(M, CHECK_ROWS), device=device).round().long().unique()


# ----------------------------------------------------------------------------------------- runs


def ragged_check(dtype, device, num_sms: int, accumulations: list[str]) -> set[str]:
    """Every variant on a ragged call, whole output against the reference; returns the labels that failed."""
    M, N, K = RAGGED
    ops = make_operands(M, N, K, dtype, device)
    failed = set()
    for accumulation in accumulations:
        check = ErrorCheck(ops, BF16, accumulation, split=False)
        # One line per variant as soon as it returns (synchronised), so a variant that hangs (a barrier
        # phase wrong in a hand-written pipeline) is named by the last line printed.
        log(f"-- ragged M={M} N={N} K={K} {str(dtype)[6:]} {accumulation}: error / bound (<= 1 is correct)")
        for variant in variants(accumulation == "precise", num_sms)[1:]:
            log(f"   {variant.label}: running ...")
            try:
                out = variant.run(*ops.args(), ops.bias)
                torch.cuda.synchronize()
                ratio = check.ratio(out)
                log(f"   {variant.label}: {ratio:.3f}{'' if ratio <= 1 else ' WRONG'}")
                if not ratio <= 1:
                    failed.add(variant.label)
            except Exception as err:
                log(f"   {variant.label}: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}")
                failed.add(variant.label)
    return failed


def run_point(dtype, name, N, K, M, device, jobs: list[Variant], results: dict, precise: bool) -> None:
    for variant in jobs:
        if isinstance(variant, Vendor):
            variant.refused = False  # cuBLAS decides per shape
    copies = rotation_count(N * K, device)
    ops = [make_operands(M, N, K, dtype, device) for _ in range(copies)]
    inputs = [(*o.args(), o.bias) for o in ops]
    rows = row_subset(M, device)
    first = ops[0]
    check = ErrorCheck(
        Operands(first.a[rows], first.b, first.scale_a[rows], first.scale_b, first.bias), BF16,
        "precise" if precise else "fast", split=False,
    )  # fmt: skip
    timed = []
    for variant in jobs:
        try:
            ratio = check.ratio(variant.run(*inputs[0])[rows])
        except Exception as err:
            log(f"   {name} M={M} {variant.label}: {type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}")
            continue
        if not ratio <= 1.0 and variant.family != "vendor":
            log(f"   {name} M={M} {variant.label}: WRONG ({ratio:.3g}x the bound), not timed")
            continue
        timed.append(variant)
    times = time_interleaved([(v.run, inputs) for v in timed], 20)
    us = {v.label: t.median_us for v, t in zip(timed, times)}
    vendor = next((us[v.label] for v in timed if v.family == "vendor"), None)
    flops = 2 * M * N * K
    log(f"== {str(dtype)[6:]} {name} (N={N}, K={K}) M={M}")
    for label, t in sorted(us.items(), key=lambda p: p[1]):
        speed = f"{vendor / t:5.2f}x" if vendor else "    -"
        log(f"   {label:38s} {t:9.1f} us {flops / t / 1e6:7.0f} TFLOP/s {speed}")
    results[(dtype, name, M)] = {v.family: min(us[w.label] for w in timed if w.family == v.family) for v in timed}


FAMILIES = ("tma", "ws", "gluon")


def best_ours(point: dict) -> float | None:
    """The fastest of our kernels' times at one point, None if none ran."""
    return min((point[f] for f in FAMILIES if f in point), default=None)


def summary(results: dict, dtypes) -> None:
    families = FAMILIES
    log("== summary: geomean speed over the vendor of each family's best config per point")
    for dtype in dtypes:
        for low, high, label in ((128, 512, "M 128-512"), (1024, 1 << 30, "M >= 1024")):
            points = [r for (d, _, M), r in results.items() if d == dtype and low <= M <= high and "vendor" in r]
            cells = []
            for family in families:
                ratios = [r["vendor"] / r[family] for r in points if family in r]
                if ratios:
                    cells.append(f"{family} {geomean(ratios):.3f} (worst {min(ratios):.2f}, {len(ratios)} pts)")
            best = [r["vendor"] / best_ours(r) for r in points if best_ours(r)]
            cells.append(f"best of all {geomean(best):.3f}")
            log(f"   {str(dtype)[6:]:12s} {label:10s} " + ", ".join(cells))
    log("   targets: fp8 >= 1.15 at M 128-512, >= 1.10 at M >= 1024 (over use_fast_accum=True)")
    for dtype in dtypes:
        point = results.get((dtype, "gate_up", 4096))
        if point:
            N, K = SHAPES["gate_up"]
            cells = [f"{f} {2 * 4096 * N * K / t / 1e6:.0f}" for f, t in sorted(point.items(), key=lambda p: p[1])]
            target = " (target >= 1,550)" if dtype == torch.float8_e4m3fn else ""
            log(f"   {str(dtype)[6:]} gate_up M=4096 TFLOP/s: " + ", ".join(cells) + target)
    ratios = []
    for (dtype, name, M), point in results.items():
        fp8_point = results.get((torch.float8_e4m3fn, name, M))
        if dtype == torch.int8 and fp8_point and best_ours(point) and best_ours(fp8_point):
            ratios.append(best_ours(point) / best_ours(fp8_point))
    if ratios:
        log(f"   int8 / fp8 time, best of ours per point: geomean {geomean(ratios):.3f}, worst {max(ratios):.3f} "
            "(target <= 1.05)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the log here")
    parser.add_argument("--quick", action="store_true", help="gate_up at M = 4096 only")
    parser.add_argument("--accumulation", choices=("fast", "precise"), default="fast")
    parser.add_argument("--dtypes", nargs="+", choices=("fp8", "int8"), default=["fp8", "int8"])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--m", nargs="+", type=int, default=list(M_VALUES))
    parser.add_argument("--skip-ragged", action="store_true")
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=list(FAMILIES),
        help="which of our kernels run (on an H200 the ws kernel at 128x256 w4 s3 hung: leave it out to time the rest)",
    )
    opts = parser.parse_args()
    FAMILIES_RUN[:] = opts.families
    if not opts.out:
        run(opts)
        return
    os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
    with open(opts.out, "w") as f:
        SINKS.append(f)
        run(opts)


def run(opts: argparse.Namespace) -> None:
    device = torch.device("cuda")
    num_sms, _ = device_limits(device)
    precise = opts.accumulation == "precise"
    shapes = ["gate_up"] if opts.quick else opts.shapes
    ms = [4096] if opts.quick else opts.m
    dtypes = [{"fp8": torch.float8_e4m3fn, "int8": torch.int8}[d] for d in opts.dtypes]
    log(f"{torch.cuda.get_device_name()}, {num_sms} SMs: torch {torch.__version__}, triton {triton.__version__}")
    log(f"scaledmm {scaledmm.__version__}, {opts.accumulation} accumulation; argv {sys.argv[1:]}")
    results = {}
    for dtype in dtypes:
        if not opts.skip_ragged:
            modes = ["fast", "precise"] if dtype != torch.int8 else ["fast"]
            ragged_check(dtype, device, num_sms, modes)
        jobs = variants(precise, num_sms)
        for name in shapes:
            N, K = SHAPES[name]
            for M in ms:
                try:
                    run_point(dtype, name, N, K, M, device, jobs, results, precise)
                except Exception:
                    log(f"   {name} M={M}: the point failed:\n{traceback.format_exc()}")
        log(f"-- {str(dtype)[6:]} code per variant (last compiled: ragged M, N, K specialise the Triton kernels)")
        sample = make_operands(128, 256, 256, dtype, device)
        out = torch.empty(128, 256, dtype=BF16, device=device)
        for variant in jobs[1:]:
            if isinstance(variant, Tma):
                variant.compile(*sample.args(), sample.bias, out, num_sms)
            log(f"   {variant.label:38s} {code_report(variant.compiled)}")
    summary(results, dtypes)


if __name__ == "__main__":
    main()
