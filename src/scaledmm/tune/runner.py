"""Tuning one point (N, K, dtype, M) on one device, by successive halving: every candidate config
is timed briefly (a screen of a few CUDA-graph replays), the fastest few that compute the right
result (checked against the reference) are timed properly next to the heuristic and the vendor
kernel, interleaved as the benchmark protocol says, and the fastest is kept. The screen makes a
point about 4x cheaper than timing every candidate properly, at the same winners within noise
(benchmarks/ab/tuner_cost.py).

Candidates are compiled ahead in a pool of worker processes (`Precompiler`), so the GPU times one
point while the CPUs compile the next; the launch in this process then only loads the binary from
Triton's cache.

A job with a `block_size` tunes block-scaled fp8 (kernels/matmul_block.py): its operands, the call
timed, the reference check, the vendor baseline (torch._scaled_mm's block mode) and the kernel
revision are the block mode's (`job_operands`, `CandidateCall`, `job_vendor`, `job_revision`); the
timing is the same.
"""

from __future__ import annotations

import math
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import torch
import triton

import scaledmm
from scaledmm.bench.timing import rotation_count, screen_time_us, time_interleaved
from scaledmm.configs import MatmulConfig, device_limits, heuristic_config
from scaledmm.configs.files import DTYPE_BY_NAME
from scaledmm.configs.heuristic import block_heuristic_config
from scaledmm.configs.lookup import device_capability
from scaledmm.kernels.matmul import compile_scaled_mm, kernel_revision
from scaledmm.kernels.matmul_block import block_kernel_revision, compile_block_scaled_mm
from scaledmm.kernels.matmul_tma import device_has_tma
from scaledmm.kernels.vendor import block_scale_a, fast_accum_refused, unsupported_reason, vendor_scaled_mm
from scaledmm.testing import OUT_DTYPE, ErrorCheck, Operands, make_block_operands, make_operands
from scaledmm.tune.space import GLUON_CAPABILITY, block_candidate_configs, candidate_configs, group_variants

SHORTLIST = 8  # the fastest screened candidates timed again, properly, in the final round
REFINED = 3  # how many of the best tiles also try other program groupings
FINAL_WARMUP_MS = 5.0  # the screen has just kept the GPU busy; the final round needs little warm-up


@dataclass(frozen=True)
class Job:
    """One point of the tuning grid."""

    n: int
    k: int
    dtype: str
    m: int
    accumulation: str = "fast"  # fp8's accumulation mode (int8 jobs are exact and always "fast")
    block_size: tuple[int, int] | None = None  # (block_n, block_k): block-scaled fp8 (always "fast")

    @property
    def cost(self) -> float:
        """A job's expected duration in units of about half a second, for sharing jobs evenly: on an
        H200 a job took about 0.5 s up to M = 512 and 0.5 s more per 1024 rows beyond (4 s at
        M = 8192), at every N, K of 1280-19456 x 2048-9728 alike (the per-job times of session 8's
        tuning logs, benchmarks/results/h200-2026-12-01/tune_dense_session8_call*.log). Compiles from
        an empty cache come on top; they are shared out by `distributed.split_jobs`, not counted here."""
        return 1 + self.m / 1024

    def __lt__(self, other: Job) -> bool:
        # Field by field, as dataclass(order=True) compares, except that a per-channel job (block_size
        # None) sorts before a block-scaled one of the same point instead of raising TypeError.
        return self._sort_key() < other._sort_key()

    def _sort_key(self) -> tuple:
        return (self.n, self.k, self.dtype, self.m, self.accumulation, self.block_size or ())


def candidates(job: Job, device: torch.device, max_candidates: int | None) -> list[MatmulConfig]:
    """The configs timed for a job, nearest the heuristic first (so a capped run keeps the likeliest),
    ending with the heuristic itself so that tuning can never lose to it."""
    num_sms, shared_memory = device_limits(device)
    if job.block_size is not None:
        heuristic = block_heuristic_config(job.m, job.n, job.k, job.block_size[1], num_sms, shared_memory)
        space = block_candidate_configs(job.m, job.n, job.k, job.block_size[1], shared_memory, num_sms)
    else:
        heuristic = heuristic_config(job.m, job.n, job.k, DTYPE_BY_NAME[job.dtype], num_sms, shared_memory)
        space = candidate_configs(
            job.m, job.n, job.k, shared_memory, num_sms,
            tma=device_has_tma(device), gluon=device_capability(device) == GLUON_CAPABILITY,
        )  # fmt: skip

    def distance(c: MatmulConfig) -> float:
        pairs = (
            (c.block_m, heuristic.block_m),
            (c.block_n, heuristic.block_n),
            (c.block_k, heuristic.block_k),
            (c.num_warps, heuristic.num_warps),
        )
        return (
            sum(abs(math.log2(x / y)) for x, y in pairs)
            + abs(c.num_stages - heuristic.num_stages) / 2
            + math.log2(c.split_k)
            + (c.kernel != heuristic.kernel)
        )

    space = sorted(space, key=distance)
    if max_candidates is not None:
        space = space[:max_candidates]
    return [c for c in space if c != heuristic] + [heuristic]


# ----------------------------------------------------------------------------- compiling ahead


def _init_compile_worker(device_index: int) -> None:
    torch.cuda.set_device(device_index)


def _compile(job: Job, config: MatmulConfig) -> str | None:
    """Compile one candidate for the job's argument signature (meta tensors: no memory, no data);
    the error, if it does not compile."""
    meta = dict(device="meta")
    dtype = DTYPE_BY_NAME[job.dtype]
    a = torch.empty(job.m, job.k, dtype=dtype, **meta)
    b = torch.empty(job.n, job.k, dtype=dtype, **meta).t()
    bias = torch.empty(job.n, dtype=OUT_DTYPE, **meta)
    out = torch.empty(job.m, job.n, dtype=OUT_DTYPE, **meta)
    try:
        if job.block_size is None:
            scale_a, scale_b = torch.empty(job.m, 1, **meta), torch.empty(1, job.n, **meta)
            compile_scaled_mm(a, b, scale_a, scale_b, bias, out, config, job.accumulation == "precise")
        else:  # the scales laid out as make_block_operands lays them out
            block_n, block_k = job.block_size
            scale_a = torch.empty(job.m, triton.cdiv(job.k, block_k), **meta)
            scale_b = torch.empty(triton.cdiv(job.n, block_n), triton.cdiv(job.k, block_k), **meta).t()
            compile_block_scaled_mm(a, b, scale_a, scale_b, bias, out, config, job.block_size)
    except Exception as err:  # a candidate that does not compile is dropped, with the reason
        return f"{type(err).__name__}: {err}"
    return None


class Precompiler:
    """Worker processes that compile candidates into Triton's on-disk cache ahead of their timing."""

    def __init__(self, workers: int, device: torch.device):
        context = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_compile_worker, initargs=(device.index or 0,)
        )

    def submit(self, job: Job, configs: list[MatmulConfig]) -> list[Future]:
        return [self.pool.submit(_compile, job, c) for c in configs]

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


# ----------------------------------------------------------------------------- timing one job


def _vendor_takes_fast_accum(inputs: tuple) -> bool:
    """Whether cuBLAS runs this fp8 call with fast accumulation (it refuses some shapes)."""
    try:
        vendor_scaled_mm(*inputs, OUT_DTYPE, True)
    except RuntimeError as err:
        if fast_accum_refused(err):
            return False
        raise
    return True


class CandidateCall:
    """One candidate config of a job, called as the tuner times it: `(a, b, scale_a, scale_b, bias)`,
    in the job's accumulation mode, or with its block scales."""

    def __init__(self, config: MatmulConfig, accumulation: str, block_size: tuple[int, int] | None = None):
        self.config = config
        self.accumulation = accumulation
        self.block_size = block_size

    def __call__(self, a, b, scale_a, scale_b, bias):
        return scaledmm.scaled_mm(
            a, b, scale_a, scale_b, OUT_DTYPE, bias,
            config=self.config, accumulation=self.accumulation, block_size=self.block_size,
        )  # fmt: skip


# ----------------------------------------------------------------------------- what a job runs, by its mode


def job_operands(job: Job, device: torch.device) -> Operands:
    """Fresh random operands of the job's point: per-token and per-channel scales, or block scales."""
    if job.block_size is not None:
        return make_block_operands(job.m, job.n, job.k, device, job.block_size)
    return make_operands(job.m, job.n, job.k, DTYPE_BY_NAME[job.dtype], device)


def vendor_inputs(job: Job, inputs: list[tuple]) -> list[tuple]:
    """The vendor's copies of the inputs: with block scales, scale_a column-major, the layout
    torch._scaled_mm's block mode reads and W8A8Linear quantizes into where it runs (so the per-call
    copy of a row-major scale_a, which only direct scaled_mm callers pay, is not timed)."""
    if job.block_size is None:
        return inputs
    return [(a, b, block_scale_a(sa), sb, bias) for a, b, sa, sb, bias in inputs]


def job_vendor(job: Job, ops: Operands, inputs: tuple):
    """(the vendor kernel over one copy of its inputs (`vendor_inputs`), or None where it cannot serve
    the job; its name in the bucket's baselines). fp8 runs in the job's accumulation mode (like for
    like), or, where cuBLAS refuses fast accumulation for the shape, in its precise mode, and the name
    says so. Block scales run torch._scaled_mm's block mode; None where it refuses the job."""
    if unsupported_reason(*ops.args(), ops.bias, OUT_DTYPE, job.block_size) is not None:
        return None, "torch"
    if job.block_size is not None:

        def block_run(a, b, sa, sb, bias):
            return vendor_scaled_mm(a, b, sa, sb, bias, OUT_DTYPE, block_size=job.block_size)

        try:
            block_run(*inputs)
        except RuntimeError:  # refused by this torch or cuBLAS: no baseline, ours serves
            return None, "torch"
        return block_run, "torch"
    fast_accum = job.dtype == "fp8" and job.accumulation == "fast" and _vendor_takes_fast_accum(inputs)

    def vendor_run(a, b, sa, sb, bias):
        return vendor_scaled_mm(a, b, sa, sb, bias, OUT_DTYPE, fast_accum)

    refused = job.dtype == "fp8" and job.accumulation == "fast" and not fast_accum
    return vendor_run, "torch (precise: fast accumulation refused)" if refused else "torch"


def job_revision(job: Job, config: MatmulConfig) -> str:
    """The revision of the kernel that runs `config` in the job's mode (a bucket records it)."""
    return block_kernel_revision(config) if job.block_size is not None else kernel_revision(config)


def tune_job(job: Job, device: torch.device, configs: list[MatmulConfig], replays: int = 20) -> dict:
    """Screen every candidate at one point, then time the fastest correct few, the heuristic and the
    vendor kernel together; return the bucket entry for the config file (with the job's
    coordinates), or raise if no candidate is correct."""
    copies = rotation_count(job.n * job.k, device)
    ops = [job_operands(job, device) for _ in range(copies)]
    inputs = [(*o.args(), o.bias) for o in ops]
    check = ErrorCheck(ops[0], OUT_DTYPE, job.accumulation)

    runner = partial(CandidateCall, accumulation=job.accumulation, block_size=job.block_size)

    # 1. Screen: every candidate timed briefly (a few graph replays), fastest first. Most of a
    # space is far from its best, and ranking it needs no precise times; the shortlist is timed
    # properly in the final round. A candidate that fails to run is dropped with the reason.
    screened: dict[MatmulConfig, float] = {}
    rejected = []

    def screen(config: MatmulConfig, warmup_ms: float = 0.0) -> None:
        try:
            screened[config] = screen_time_us(runner(config), inputs, warmup_ms=warmup_ms)
        except Exception as err:  # out of resources and the like: not a candidate on this GPU
            rejected.append(f"{config}: {type(err).__name__}")

    for i, config in enumerate(configs):
        screen(config, warmup_ms=25.0 if i == 0 else 0.0)  # the first finds the GPU idle

    # 2. The shortlist: the fastest screened candidates that compute the right result, checked
    # against the reference in order of speed (a wrong candidate gives its place to the next);
    # the best few also try other program groupings.
    checked: dict[MatmulConfig, bool] = {}

    def correct(config: MatmulConfig) -> bool:
        if config not in checked:
            ratio = check.ratio(runner(config)(*inputs[0]))
            checked[config] = ratio <= 1.0
            if not checked[config]:
                rejected.append(f"{config}: wrong result ({ratio:.3g}x the error bound)")
        return checked[config]

    def shortlist() -> list[MatmulConfig]:
        fastest = []
        for config in sorted(screened, key=screened.get):
            if len(fastest) == SHORTLIST:
                break
            if correct(config):
                fastest.append(config)
        return fastest

    for config in shortlist()[:REFINED]:
        for variant in group_variants(config, job.m):
            screen(variant)
    finalists = shortlist()
    if not finalists:
        raise RuntimeError(f"{job}: no candidate config ran correctly: {rejected[:3]}")

    # 3. The finalists, the heuristic and the vendor kernel timed together (interleaved), so that
    # the winner and the backend are chosen on times that clock drift has not set apart.
    heuristic = configs[-1]
    if heuristic in screened and heuristic not in finalists and correct(heuristic):
        finalists.append(heuristic)
    contenders = [(runner(c), inputs) for c in finalists]
    vendor_copies = vendor_inputs(job, inputs)
    vendor_run, torch_name = job_vendor(job, ops[0], vendor_copies[0])
    if vendor_run is not None:
        contenders.append((vendor_run, vendor_copies))
    final = [t.median_us for t in time_interleaved(contenders, replays, warmup_ms=FINAL_WARMUP_MS)]
    final_times = dict(zip(finalists, final))
    vendor_us = final[-1] if vendor_run is not None else None

    best = min(final_times, key=final_times.get)
    triton_us = final_times[best]
    backend = "torch" if vendor_us is not None and vendor_us < triton_us else "triton"
    return {
        "n": job.n, "k": job.k, "dtype": job.dtype, "m": job.m, "accumulation": job.accumulation,
        **({"block_shape": list(job.block_size)} if job.block_size is not None else {}),
        "backend": backend,
        "config": best.to_dict(),
        "time_us": round(min(triton_us, vendor_us or math.inf), 3),
        "baselines_us": {
            torch_name: None if vendor_us is None else round(vendor_us, 3),
            "heuristic": round(final_times[heuristic], 3) if heuristic in final_times else None,
            "triton": round(triton_us, 3),
        },
        "candidates": len(screened),  # configs the screen timed (correct or not: only the shortlist is checked)
        "revision": job_revision(job, best),
    }  # fmt: skip
