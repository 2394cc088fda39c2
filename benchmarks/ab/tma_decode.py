"""A/B at decode (M = 1 and 16, fp8) in one run on one card: the persistent TMA kernel with 16-row
tiles against the pointer kernel with the shipped config and against the vendor kernel, on the
shapes whose weight streaming is short of issue 6's targets. Weight streaming in GB/s.

    PYTHONPATH=src python3 benchmarks/ab/tma_decode.py
"""

import itertools

import torch

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.vendor import vendor_scaled_mm
from scaledmm.testing import ErrorCheck, make_operands

SHAPES = {
    "llama3-8b gate_up": (28672, 4096),
    "llama3-8b down": (4096, 14336),
    "qwen3-4b gate_up": (19456, 2560),
    "qwen3-4b o": (2560, 4096),
}
BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn


def tma_configs():
    for bn, bk, stages in itertools.product((32, 64, 128), (128, 256), (4, 6, 8)):
        if stages * (16 + bn) * bk + 16 * bn * 2 <= 200 * 1024:
            yield MatmulConfig(16, bn, bk, group_m=8, num_warps=4, num_stages=stages, kernel="tma")


def main():
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__)
    for name, (N, K) in SHAPES.items():
        for M in (1, 16):
            ops = [make_operands(M, N, K, FP8, device) for _ in range(rotation_count(N * K, device))]
            inputs = [(*o.args(), o.bias) for o in ops]
            check = ErrorCheck(ops[0], BF16)
            labels = ["vendor", f"shipped {scaledmm.select_config(M, N, K, FP8, device)}"]
            jobs = [
                lambda a, b, sa, sb, bias: vendor_scaled_mm(a, b, sa, sb, bias, BF16),
                lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, BF16, bias),
            ]
            for config in tma_configs():

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
            times = time_interleaved([(j, inputs) for j in jobs], 20)
            weight_bytes = N * K
            print(f"== fp8 {name} (N={N}, K={K}) M={M}")
            ranked = sorted(zip(labels, times), key=lambda p: p[1].median_us)
            for rank, (label, t) in enumerate(ranked):
                if rank < 6 or not label.endswith("tma"):  # the best six, and always the baselines
                    print(f"  {label:36s} {t.median_us:8.2f} us  {weight_bytes / t.median_us / 1e3:7.0f} GB/s")


if __name__ == "__main__":
    main()
