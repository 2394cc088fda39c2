"""A/B of the untuned heuristic at large M on shapes no shipped file tunes (llama3-70b at tensor
parallelism 4): its pointer-kernel tile before (128x128x128, 8 warps, as deep a pipeline as fits) against
the TMA tile it takes now on Hopper, next to the vendor kernel, in one run on one card.

    PYTHONPATH=src python3 benchmarks/ab/heuristic_tma.py
"""

import torch

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.shapes import preset_shapes
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits, heuristic_config
from scaledmm.kernels.vendor import vendor_scaled_mm
from scaledmm.testing import make_operands

BF16 = torch.bfloat16


def main():
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__)
    before = MatmulConfig(128, 128, 128, group_m=8, num_warps=8, num_stages=4)
    for dtype in (torch.float8_e4m3fn, torch.int8):
        for shape in preset_shapes("llama3-70b", tp=4):
            for M in (2048, 4096, 8192):
                now = heuristic_config(M, shape.n, shape.k, dtype, *device_limits(device))
                ops = [
                    make_operands(M, shape.n, shape.k, dtype, device)
                    for _ in range(rotation_count(shape.n * shape.k, device))
                ]
                inputs = [(*o.args(), o.bias) for o in ops]

                def vendor(a, b, sa, sb, bias):
                    return vendor_scaled_mm(a, b, sa, sb, bias, BF16)

                def ours(config):
                    return lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, config=config)

                t_vendor, t_before, t_now = (
                    t.median_us
                    for t in time_interleaved([(vendor, inputs), (ours(before), inputs), (ours(now), inputs)], 20)
                )
                print(
                    f"{str(dtype)[6:]:14s} {shape.name:22s} M={M:5d}  vendor {t_vendor:8.1f}  before {t_before:8.1f} "
                    f"({t_vendor / t_before:4.2f}x)  now {t_now:8.1f} ({t_vendor / t_now:4.2f}x)  {now}"
                )


if __name__ == "__main__":
    main()
