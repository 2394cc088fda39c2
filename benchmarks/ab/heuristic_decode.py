"""A/B of the untuned heuristic at decode on shapes no shipped file tunes (llama3-70b at tensor
parallelism 4 and 8, qwen2.5-7b): its 16- or 32-row tile before against the 64-row tile it takes now
where N is narrow (N <= 8448 on an H100), in one run on one card, fp8 and int8, M = 1, 16, 32.
Only the points where the two rules differ are timed. The log was taken when the rule held for int8
too; int8 lost there at M = 1 and 16, so the rule is now fp8's only and this script times fp8.

    PYTHONPATH=src python3 benchmarks/ab/heuristic_decode.py
"""

import dataclasses
import math

import torch

import scaledmm
from scaledmm.bench.shapes import preset_shapes
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits, heuristic_config
from scaledmm.testing import make_operands

BF16 = torch.bfloat16


def main():
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__)
    limits = device_limits(device)
    shapes = preset_shapes("llama3-70b", tp=4) + preset_shapes("llama3-70b", tp=8) + preset_shapes("qwen2.5-7b")
    ratios = []
    for dtype in (torch.float8_e4m3fn,):
        for shape in shapes:
            for M in (1, 16, 32):
                now = heuristic_config(M, shape.n, shape.k, dtype, *limits)
                if now.block_m != 64:
                    continue
                # The rule before: 16 rows up to M = 16, 32 up to 32, N tile and pipeline as now.
                before = dataclasses.replace(now, block_m=16 if M <= 16 else 32)
                ops = [
                    make_operands(M, shape.n, shape.k, dtype, device)
                    for _ in range(rotation_count(shape.n * shape.k, device))
                ]
                inputs = [(*o.args(), o.bias) for o in ops]

                def ours(config):
                    return lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, config=config)

                t_before, t_now = (
                    t.median_us for t in time_interleaved([(ours(before), inputs), (ours(now), inputs)], 20)
                )
                ratios.append(t_before / t_now)
                print(
                    f"{str(dtype)[6:]:14s} {shape.name:22s} M={M:3d}  before {t_before:7.2f} us {before}  "
                    f"now {t_now:7.2f} us {now}  x{t_before / t_now:.3f}"
                )
    print(
        f"geomean now over before: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {len(ratios)} points)"
    )


if __name__ == "__main__":
    main()
