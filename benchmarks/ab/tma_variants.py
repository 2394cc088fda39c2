"""A/B of the persistent TMA kernel at prefill, in one run on one card: the vendor kernel, our pointer
kernel with the config scaled_mm picks now, and TMA tile configs. Also counts the matrix instructions
in each TMA kernel's SASS (wgmma shows as QGMMA for fp8, IGMMA for int8).

    PYTHONPATH=src python3 benchmarks/ab/tma_variants.py [--quick]

The log in benchmarks/results/h100-2026-11-27-tma/tma_variants_ab.log was taken at commit 1579834, when
the kernel still had FLATTEN and WARP_SPECIALIZE switches and this script compared "flat" (the
software pipeline flattened across tiles), "nested" and "ws" (Triton's warp specialisation). Flat
won; the switches are gone.
"""

import argparse
import re
import subprocess
import tempfile

import torch

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits
from scaledmm.kernels import matmul_tma
from scaledmm.kernels.vendor import vendor_scaled_mm
from scaledmm.testing import ErrorCheck, make_operands

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
TMA_CONFIGS = [
    MatmulConfig(128, 128, 128, num_warps=8, num_stages=4, kernel="tma"),
    MatmulConfig(128, 128, 128, num_warps=4, num_stages=4, kernel="tma"),
    MatmulConfig(128, 256, 128, num_warps=8, num_stages=3, kernel="tma"),
    MatmulConfig(256, 128, 128, num_warps=8, num_stages=3, kernel="tma"),
    MatmulConfig(128, 256, 64, num_warps=8, num_stages=4, kernel="tma"),
    MatmulConfig(128, 128, 64, num_warps=4, num_stages=5, kernel="tma"),
]


def tma_runner(config, M, N, device):
    num_sms = device_limits(device)[0]
    state = {}

    def run(a, b, sa, sb, bias):
        out = torch.empty(M, N, dtype=torch.bfloat16, device=device)
        grid, args, kwargs = matmul_tma.launch_arguments(a, b, sa, sb, bias, out, config, num_sms)
        state["compiled"] = matmul_tma.scaled_mm_tma_kernel[grid](*args, **kwargs)
        return out

    return run, state


def sass_counts(compiled) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    counts = {op: len(re.findall(rf"\b{op}\b", sass)) for op in ("QGMMA", "IGMMA", "HGMMA", "HMMA", "IMMA")}
    return " ".join(f"{k}={v}" for k, v in counts.items() if v)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="M=4096 only, fewer configs")
    opts = parser.parse_args()
    device = torch.device("cuda")
    ms = [4096] if opts.quick else [1024, 4096, 8192]
    print(torch.cuda.get_device_name(), torch.__version__, scaledmm.__version__)
    for dtype in (torch.float8_e4m3fn, torch.int8):
        for name, (N, K) in SHAPES.items():
            for M in ms:
                copies = rotation_count(N * K, device)
                ops = [make_operands(M, N, K, dtype, device) for _ in range(copies)]
                inputs = [(*o.args(), o.bias) for o in ops]
                check = ErrorCheck(ops[0], torch.bfloat16)
                jobs, labels = [], []
                jobs.append(lambda a, b, sa, sb, bias: vendor_scaled_mm(a, b, sa, sb, bias, torch.bfloat16))
                labels.append("vendor")
                jobs.append(lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, torch.bfloat16, bias))
                labels.append(f"shipped {scaledmm.select_config(M, N, K, dtype, device)}")
                compiled = {}
                for config in TMA_CONFIGS[: 3 if opts.quick else None]:
                    run, state = tma_runner(config, M, N, device)
                    try:
                        ratio = check.ratio(run(*inputs[0]))
                    except Exception as err:
                        print(f"  {name} M={M} {config}: {type(err).__name__}: {str(err)[:200]}")
                        continue
                    if not ratio <= 1.0:
                        print(f"  {name} M={M} {config}: WRONG ({ratio:.3g}x bound)")
                        continue
                    jobs.append(run)
                    labels.append(str(config))
                    compiled[labels[-1]] = state["compiled"]
                times = time_interleaved([(j, inputs) for j in jobs], 20)
                vendor = times[0].median_us
                flops = 2 * M * N * K
                print(f"== {str(dtype)[6:]} {name} (N={N}, K={K}) M={M}")
                for label, t in sorted(zip(labels, times), key=lambda p: p[1].median_us):
                    sass = sass_counts(compiled[label]) if label in compiled and M == ms[-1] else ""
                    print(
                        f"  {label:45s} {t.median_us:9.1f} us {flops / t.median_us / 1e6:7.0f} TFLOP/s "
                        f"{vendor / t.median_us:5.2f}x {sass}"
                    )


if __name__ == "__main__":
    main()
