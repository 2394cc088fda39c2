"""torch._scaled_mm's block mode at M that are not a multiple of 4, which it refuses (cuBLASLt wants
scale_a's column stride, M floats, 16-byte aligned; torch takes no stride but M): what running it on
rows padded to a multiple of 4 costs, against the vendor at the aligned M on either side and against
our kernel with the shipped bucket's tile (`backend="triton"`), in one interleaved timing per point.

- `vendor M-r` / `vendor M+p`: torch._scaled_mm at the multiples of 4 below and above M (no copy).
- `pad: zeros+copy`: a and scale_a copied into zeroed buffers (four kernels).
- `pad: F.pad`: one constant-pad kernel for each (two kernels; kernels/vendor.py's).
- `ours`: scaledmm's block kernel with the bucket's tile (or the heuristic's).

    PYTHONPATH=src python3 benchmarks/ab/block_vendor_ragged_m.py [--m 97,131,257,1001]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import scaledmm
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.vendor import block_scale_a
from scaledmm.testing import make_block_operands

OUT = torch.bfloat16
SHAPES = (
    (2112, 7168),
    (24576, 1536),
    (7168, 16384),
    (4096, 7168),
    (7168, 2048),
    (6144, 4096),
    (24576, 4096),
    (4096, 12288),
    (10240, 5120),
    (2560, 4096),
    (51200, 5120),
)  # N, K


def vendor(a, b, sa, sb, bias):
    return torch._scaled_mm(a, b, sa, sb, bias=bias, out_dtype=OUT)


def pad_zeros_copy(a, b, sa, sb, bias):
    M, rows = a.shape[0], -(-a.shape[0] // 4) * 4
    a_padded = a.new_zeros((rows, a.shape[1]))
    a_padded[:M] = a
    scale_padded = sa.new_zeros((sa.shape[1], rows))
    scale_padded[:, :M] = sa.t()
    return vendor(a_padded, b, scale_padded.t(), sb, bias)[:M]


def pad_f_pad(a, b, sa, sb, bias):
    pad = -a.shape[0] % 4
    return vendor(F.pad(a, (0, 0, 0, pad)), b, F.pad(sa.t(), (0, pad)).t(), sb, bias)[: a.shape[0]]


def ours(a, b, sa, sb, bias):
    return scaledmm.scaled_mm(a, b, sa, sb, OUT, bias, backend="triton", block_size=(128, 128))


def inputs(M, N, K, device, copies):
    ops = [make_block_operands(M, N, K, device) for _ in range(copies)]
    return [(o.a, o.b, block_scale_a(o.scale_a), o.scale_b, o.bias) for o in ops]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--m", default="97,131,257,1001")
    args = parser.parse_args()
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: per-call us (CUDA graphs, cold weights)")
    names = ("vendor M-r", "vendor M+p", "pad: zeros+copy", "pad: F.pad", "ours")
    print(f"{'N':>6s} {'K':>6s} {'M':>5s} " + " ".join(f"{n:>16s}" for n in names) + "  F.pad/(M+p)  ours/F.pad")
    for N, K in SHAPES:
        copies = rotation_count(N * K, device)
        for M in map(int, args.m.split(",")):
            below, above = M - M % 4, M + (-M % 4)
            ragged = inputs(M, N, K, device, copies)
            jobs = [
                (vendor, inputs(below, N, K, device, copies)),
                (vendor, inputs(above, N, K, device, copies)),
                (pad_zeros_copy, ragged),
                (pad_f_pad, ragged),
                (ours, ragged),
            ]
            us = [t.median_us for t in time_interleaved(jobs)]
            print(
                f"{N:6d} {K:6d} {M:5d} "
                + " ".join(f"{t:16.1f}" for t in us)
                + f"  {us[3] / us[1]:11.2f}  {us[4] / us[3]:10.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
