"""Two timings of one kernel should agree: the bench's block rows read `auto` 0.94-1.02x the vendor
where both run the same cuBLAS kernel on the same inputs (session 12, H200). This times the block
bench's four methods (auto on the vendor's scale layout, forced Triton, the heuristic, the vendor) at
points where auto runs the vendor, three times each way:
- `straight after another`: session 12's `time_interleaved`, each timed replay right after another
  job's (reproduced here);
- `lead-in`: bench/timing.py's, each timed replay right after an untimed one of its own graph.
It prints vendor time / auto time (1.00 where both run one kernel) and the CUDA kernels one call of
auto and of the vendor launch (torch.profiler).

    PYTHONPATH=src python3 benchmarks/ab/timing_lead_in.py     # H200, session 13: lead_in.log
"""

from __future__ import annotations

import statistics

import torch

import scaledmm
from scaledmm.bench.timing import _capture, _warm_up, rotation_count, time_interleaved
from scaledmm.configs import MatmulConfig, device_limits
from scaledmm.configs.heuristic import block_heuristic_config
from scaledmm.kernels.vendor import block_scale_a, vendor_scaled_mm
from scaledmm.testing import make_block_operands

BLOCK = (128, 128)
OUT = torch.bfloat16
POINTS = ((7168, 16384, 256), (7168, 16384, 512), (24576, 4096, 256), (24576, 1536, 256), (4096, 12288, 512))


def straight_after_another(jobs, replays: int = 20, warmup_ms: float = 25.0) -> list[float]:
    """Median per-call us of each job, timed as session 12's time_interleaved did."""
    graphs = [_capture(fn, inputs) for fn, inputs in jobs]
    _warm_up(graphs, warmup_ms)
    n = len(graphs)
    events = [[[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(replays)] for _ in range(n)]
    for r in range(replays):
        for i in range(n):
            j = (r + i) % n
            events[j][r][0].record()
            graphs[j].replay()
            events[j][r][1].record()
    torch.cuda.synchronize()
    return [statistics.median(s.elapsed_time(e) * 1000 / len(jobs[j][1]) for s, e in events[j]) for j in range(n)]


def lead_in(jobs) -> list[float]:
    return [t.median_us for t in time_interleaved(jobs)]


class Method:
    """One of the block bench's methods: scaled_mm with these keyword arguments, or the vendor."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, a, b, sa, sb, bias):
        if self.kwargs.get("backend") == "vendor":
            return vendor_scaled_mm(a, b, sa, sb, bias, OUT, block_size=BLOCK)
        return scaledmm.scaled_mm(a, b, sa, sb, OUT, bias, block_size=BLOCK, **self.kwargs)


def cuda_kernels(fn, args) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn(*args)
        torch.cuda.synchronize()
    return [e.name[:60] for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def main() -> None:
    device = torch.device("cuda", 0)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: vendor us / auto us, three repeats")
    for N, K, M in POINTS:
        ops = [make_block_operands(M, N, K, device, BLOCK) for _ in range(rotation_count(N * K, device))]
        row_major = [(*o.args(), o.bias) for o in ops]
        column_major = [(o.a, o.b, block_scale_a(o.scale_a), o.scale_b, o.bias) for o in ops]
        heuristic: MatmulConfig = block_heuristic_config(M, N, K, BLOCK[1], *device_limits(device))
        auto, vendor = Method(), Method(backend="vendor")
        jobs = [
            (auto, column_major),
            (Method(backend="triton"), row_major),
            (Method(config=heuristic), row_major),
            (vendor, column_major),
        ]
        print(f"{N}x{K} M={M}: auto launches {cuda_kernels(auto, column_major[0])}, "
              f"the vendor {cuda_kernels(vendor, column_major[0])}")  # fmt: skip
        for name, timer in (("straight after another", straight_after_another), ("lead-in", lead_in)):
            cells = []
            for _ in range(3):
                times = timer(jobs)
                cells.append(f"{times[3] / times[0]:.3f} ({times[0]:.1f}/{times[3]:.1f})")
            print(f"{N}x{K} M={M} {name:>22}: " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
