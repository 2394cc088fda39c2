"""A/B of the untuned heuristic at decode on shapes no shipped file tunes (llama3-70b at tensor
parallelism 4 and 8, qwen2.5-7b), in one run on one card, fp8 and int8, M = 1, 4, 16: its config
against the swapped kernel's tile that won the first A/B on the preset shapes (16x64x256, four warps,
five stages; benchmarks/ab/small_m_forms.py), unsplit and split in two.

The log (benchmarks/results/h100-2026-11-27-swap/heuristic_swap_ab.log) was taken at commit 25c0838,
before the heuristic took this tile; since then `heuristic_config` is the swapped tile itself, so run
it there to repeat the comparison.

    PYTHONPATH=src python3 benchmarks/ab/heuristic_swap.py
"""

import math

import torch
import triton

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.bench.shapes import preset_shapes
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.configs import device_limits, heuristic_config
from scaledmm.testing import ErrorCheck, make_operands

BF16 = torch.bfloat16
SWAP = MatmulConfig(16, 64, 256, num_warps=4, num_stages=5, kernel="swapped")


def main():
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__, triton.__version__)
    num_sms, shared_memory = device_limits(device)
    shapes = preset_shapes("llama3-70b", tp=4) + preset_shapes("llama3-70b", tp=8) + preset_shapes("qwen2.5-7b")
    ratios = {}
    for dtype in (torch.float8_e4m3fn, torch.int8):
        for shape in shapes:
            for M in (1, 4, 16):
                now = heuristic_config(M, shape.n, shape.k, dtype, num_sms, shared_memory)
                variants = {"heuristic": now, "swap k1": SWAP}
                if triton.cdiv(shape.n, SWAP.block_n) * 2 <= 2 * num_sms and shape.k // SWAP.block_k >= 4:
                    variants["swap k2"] = MatmulConfig(**{**SWAP.to_dict(), "split_k": 2})
                ops = [
                    make_operands(M, shape.n, shape.k, dtype, device)
                    for _ in range(rotation_count(shape.n * shape.k, device))
                ]
                inputs = [(*o.args(), o.bias) for o in ops]
                check = ErrorCheck(ops[0], BF16)

                def ours(config):
                    return lambda a, b, sa, sb, bias: scaledmm.scaled_mm(a, b, sa, sb, BF16, bias, config=config)

                for label, config in variants.items():
                    assert check.ratio(ours(config)(*inputs[0])) <= 1.0, label
                times = [t.median_us for t in time_interleaved([(ours(c), inputs) for c in variants.values()], 30)]
                line = f"{str(dtype)[6:]:14s} {shape.name:22s} M={M:3d} heuristic {times[0]:7.2f} us {now}"
                for label, us in zip(list(variants)[1:], times[1:]):
                    line += f" | {label} {us:7.2f} us x{times[0] / us:.3f}"
                    ratios.setdefault((str(dtype)[6:], label), []).append(times[0] / us)
                best = min(times[1:])
                ratios.setdefault((str(dtype)[6:], "best swap"), []).append(times[0] / best)
                print(line)
    for (dtype, label), r in sorted(ratios.items()):
        geo = math.exp(sum(map(math.log, r)) / len(r))
        print(f"{dtype:14s} {label:10s} over heuristic: geomean x{geo:.3f} min x{min(r):.3f} max x{max(r):.3f}")


if __name__ == "__main__":
    main()
