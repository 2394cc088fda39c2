"""A/B of quantizing inside the matmul (kernels/linear.py) against quantize_per_token + scaled_mm, in
one run on one card: GPU time per layer call (CUDA graphs, the benchmark protocol) at decode sizes,
and host time of a W8A8Linear forward either way next to the bf16 nn.Linear.

    PYTHONPATH=src python3 benchmarks/ab/fused_quantize.py
"""

import dataclasses

import torch

import scaledmm
import scaledmm.api as api
from scaledmm.bench.timing import host_time_per_call, rotation_count, time_interleaved
from scaledmm.kernels.linear import bind_quantized_linear
from scaledmm.nn import W8A8Linear
from scaledmm.testing import random_8bit

SHAPES = {
    "llama3-8b qkv": (6144, 4096),
    "llama3-8b o": (4096, 4096),
    "llama3-8b gate_up": (28672, 4096),
    "llama3-8b down": (4096, 14336),
    "qwen3-4b down": (2560, 9728),
}
BF16 = torch.bfloat16


def point(dtype, N, K, M, device) -> tuple[list[float], object]:
    """GPU times of (two launches, one launch, scaled_mm alone) at one point, and the tuned config."""
    inputs = []
    for _ in range(rotation_count(N * K, device)):
        x = torch.randn(M, K, device=device, dtype=BF16)
        weight_t = random_8bit((N, K), dtype, device).t()
        inputs.append((x, weight_t, torch.rand(N, device=device) + 0.5, torch.randn(N, device=device)))
    config = scaledmm.select_config(M, N, K, dtype, device)
    unsplit = dataclasses.replace(config, split_k=1, kernel="pointer" if config.kernel == "tma" else config.kernel)
    q, s = scaledmm.quantize_per_token(inputs[0][0], dtype)

    def two(x, w, ws, b):
        q, s = scaledmm.quantize_per_token(x, dtype)
        return scaledmm.scaled_mm(q, w, s, ws, BF16, b, backend="triton")

    bound = {}

    def one(x, w, ws, b):
        key = (x.data_ptr(), w.data_ptr())
        if key not in bound:
            bound[key] = bind_quantized_linear(x, w, None, ws, b, BF16, unsplit)
            return bound[key][0]
        return bound[key][1](x)

    def alone(x, w, ws, b):
        return scaledmm.scaled_mm(q, w, s, ws, BF16, b, backend="triton")

    if config.split_k == 1:  # the same tiles and summation order: the same bits
        torch.testing.assert_close(one(*inputs[0]), two(*inputs[0]), atol=0, rtol=0)
    return [t.median_us for t in time_interleaved([(f, inputs) for f in (two, one, alone)], 20)], config


def gpu_times(device):
    print("GPU us per call (CUDA graphs, rotated copies): two launches | one launch | scaled_mm alone")
    for dtype in (torch.float8_e4m3fn, torch.int8):
        for name, (N, K) in SHAPES.items():
            for M in (1, 4, 8, 16, 32):
                (t2, t1, t0), config = point(dtype, N, K, M, device)
                print(
                    f"  {str(dtype)[6:]:14s} {name:18s} M={M:3d} {t2:7.2f} | {t1:7.2f} ({t2 / t1:4.2f}x) | {t0:7.2f}"
                    f"   {config}"
                )


def host_times(device):
    M, N, K = 16, 256, 256
    x = torch.randn(M, K, device=device, dtype=BF16)
    linear = torch.nn.Linear(K, N, device=device, dtype=BF16)
    fused = W8A8Linear.from_linear(linear, "fp8")
    rows = {"nn.Linear (bf16)": host_time_per_call(lambda: linear(x))}
    rows["W8A8Linear fp8, one launch"] = host_time_per_call(lambda: fused(x))
    limit = api.FUSED_QUANTIZE_MAX_M
    api.FUSED_QUANTIZE_MAX_M = 0
    two = W8A8Linear.from_linear(linear, "fp8")
    rows["W8A8Linear fp8, two launches"] = host_time_per_call(lambda: two(x))
    api.FUSED_QUANTIZE_MAX_M = limit
    print(f"host us per call, M={M} N={N} K={K}:")
    for name, us in rows.items():
        print(f"  {name:32s} {us:6.1f}")


if __name__ == "__main__":
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__)
    host_times(device)
    gpu_times(device)
