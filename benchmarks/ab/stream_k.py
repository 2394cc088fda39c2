"""A/B at decode in one run on one card: the stream-K schedule (config.stream_k programs per SM, the
(tile, K step) units shared out evenly) against the shipped config and the vendor kernel, fp8, on
the eight linear shapes of llama3-8b and qwen3-4b. Weight streaming in GB/s.

    PYTHONPATH=src python3 benchmarks/ab/stream_k.py [SHAPE_INDEX ...]

SHAPE_INDEX (0-7) picks shapes, so that several GPUs can share the run.
"""

import itertools
import sys

import torch

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.vendor import vendor_scaled_mm
from scaledmm.testing import ErrorCheck, make_operands

SHAPES = [
    ("llama3-8b qkv", 6144, 4096),
    ("llama3-8b o", 4096, 4096),
    ("llama3-8b gate_up", 28672, 4096),
    ("llama3-8b down", 4096, 14336),
    ("qwen3-4b qkv", 6144, 2560),
    ("qwen3-4b o", 2560, 4096),
    ("qwen3-4b gate_up", 19456, 2560),
    ("qwen3-4b down", 2560, 9728),
]
M_VALUES = (1, 16, 64)
BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn


def stream_k_configs(M):
    block_m = 16 if M <= 16 else 64
    for bn, bk, programs_per_sm in itertools.product((32, 64, 128), (128, 256, 512), (1, 2, 3, 4)):
        if bk < 512 or bn <= 64:
            yield MatmulConfig(block_m, bn, bk, num_warps=4, num_stages=4, stream_k=programs_per_sm)


def main():
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__, flush=True)
    picked = [SHAPES[int(i)] for i in sys.argv[1:]] or SHAPES
    for (name, N, K), M in itertools.product(picked, M_VALUES):
        ops = [make_operands(M, N, K, FP8, device) for _ in range(rotation_count(N * K, device))]
        inputs = [(*o.args(), o.bias) for o in ops]
        check = ErrorCheck(ops[0], BF16)
        shipped = scaledmm.select_config(M, N, K, FP8, device)
        labels = ["vendor", f"shipped {shipped}"]
        jobs = [
            lambda a, b, sa, sb, bias: vendor_scaled_mm(a, b, sa, sb, bias, BF16),
            lambda a, b, sa, sb, bias, config=shipped: scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, config=config),
        ]
        for config in stream_k_configs(M):

            def run(a, b, sa, sb, bias, config=config):
                return scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, config=config)

            try:
                ratio = check.ratio(run(*inputs[0]))
            except Exception as err:
                print(f"  {name} M={M} {config}: {type(err).__name__}: {str(err)[:120]}")
                continue
            if not ratio <= 1.0:
                print(f"  {name} M={M} {config}: WRONG ({ratio:.3g}x the bound)")
                continue
            jobs.append(run)
            labels.append(str(config))
        times = [t.median_us for t in time_interleaved([(j, inputs) for j in jobs], 20)]
        by_label = dict(zip(labels, times))
        streamed = {label: us for label, us in by_label.items() if " sk" in label}
        best = min(streamed, key=streamed.get)
        print(f"== fp8 {name} (N={N}, K={K}) M={M}: best stream-K / shipped x{times[1] / streamed[best]:.3f}")
        ranked = sorted(by_label.items(), key=lambda p: p[1])
        for rank, (label, us) in enumerate(ranked):
            if rank < 5 or " sk" not in label:
                print(f"  {label:40s} {us:8.2f} us  {N * K / us / 1e3:7.0f} GB/s")
        for programs_per_sm in (1, 2, 3, 4):
            per_sm = {label: us for label, us in streamed.items() if label.endswith(f" sk{programs_per_sm}")}
            if per_sm:
                label = min(per_sm, key=per_sm.get)
                print(f"  best sk{programs_per_sm}: {label:30s} {per_sm[label]:8.2f} us")


if __name__ == "__main__":
    main()
