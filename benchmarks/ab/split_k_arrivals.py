"""A/B of split-K at decode, in one run: unsplit tiles against split ones, the split ones both with
their arrival counts zeroed by a torch.zeros launch per call ("zeros") and with the persistent
count buffer that the kernel leaves zeroed ("persistent", what scaled_mm does since). The
measurement in benchmarks/results/h100-2026-11-27-shipped/split_k_ab.log (taken when scaled_mm
still zeroed per call) can be repeated on any card:

    PYTHONPATH=src python3 benchmarks/ab/split_k_arrivals.py
"""

import dataclasses

import torch

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels import matmul, split_k
from scaledmm.testing import make_operands

FP8 = torch.float8_e4m3fn
SHAPES = [(2560, 9728), (2560, 4096), (4096, 4096), (4096, 14336)]  # qwen3-4b down, o; llama3-8b o, down
BASES = [MatmulConfig(16, bn, 256, num_warps=4, num_stages=4) for bn in (32, 64, 128)]


def through_scaled_mm(config):
    return lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, torch.bfloat16, bias, config=config)


def with_counts_zeroed_per_call(config, M, N, device):
    out = torch.empty(M, N, dtype=torch.bfloat16, device=device)
    partials, arrivals = split_k.split_k_buffers(M, N, config, FP8, device)

    def run(a, b, sa, sb, bias):
        counts = torch.zeros_like(arrivals)
        grid, args, kwargs = matmul._launch_arguments(a, b, sa, sb, bias, out, partials, counts, config)
        matmul._scaled_mm_kernel[grid](*args, **kwargs)
        return out

    return run


def main():
    device = torch.device("cuda", torch.cuda.current_device())
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for N, K in SHAPES:
        for M in (1, 16):
            inputs = [
                (*o.args(), o.bias)
                for o in (make_operands(M, N, K, FP8, device) for _ in range(rotation_count(N * K, device)))
            ]
            names, jobs = [], []
            for base in BASES:
                tiles = -(-N // base.block_n)
                for split in (1, 2, 4, 8):
                    if split > 1 and tiles * split > 2 * sms:
                        continue
                    config = dataclasses.replace(base, split_k=split)
                    names.append(f"{config} persistent" if split > 1 else str(config))
                    jobs.append((through_scaled_mm(config), inputs))
                    if split > 1:
                        names.append(f"{config} zeros")
                        jobs.append((with_counts_zeroed_per_call(config, M, N, device), inputs))
            times = [t.median_us for t in time_interleaved(jobs, 20)]
            print(f"N={N} K={K} M={M}  GB/s at best: {N * K / 1e3 / min(times):.0f}")
            for name, us in zip(names, times):
                print(f"   {name:<36} {us:7.2f} us  x{times[0] / us:.2f}")


if __name__ == "__main__":
    main()
