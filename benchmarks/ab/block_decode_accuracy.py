"""The block-scaled decode kernels' accuracy on a GPU (issue 20): the swapped form (fp8 wgmma, about 12
bits of each block's sum kept before its promotion) against the unswapped 16-row tile (sm_90 runs it
as mma.sync on fp8 converted to f16: exact products, fp32 sums), both against the float64 reference.

Per point: the relative Frobenius error ||out - ref|| / ||ref|| and the largest error over the package's
bound (testing.ErrorCheck, precise: 1.0 = at the bound) of each form, per-token-group activations and
per-block weights as `make_block_operands` gives them, fp32 output.

    PYTHONPATH=src python3 benchmarks/ab/block_decode_accuracy.py
"""

from __future__ import annotations

import torch

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.testing import ErrorCheck, make_block_operands

POINTS = ((6, 256, 256), (6, 384, 256), (16, 2112, 7168), (1, 4096, 7168), (64, 7168, 2048))  # M, N, K
FORMS = {
    "pointer (16 rows; 64 at M > 16)": MatmulConfig(16, 64, 128, num_warps=4, num_stages=4),
    "swapped": MatmulConfig(16, 64, 128, num_warps=4, num_stages=4, kernel="swapped"),
}


def main() -> None:
    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}: fp32 output, 128 x 128 blocks")
    print(f"{'M':>4s} {'N':>6s} {'K':>6s} | " + " | ".join(f"{name:>24s}" for name in FORMS))
    for M, N, K in POINTS:
        ops = make_block_operands(M, N, K, device, (128, 128), gen=torch.Generator(device).manual_seed(M + N + K))
        check = ErrorCheck(ops, torch.float32, "precise")
        reference = check.exact
        cells = []
        for config in FORMS.values():
            if config.kernel == "pointer" and M > config.block_m:
                config = MatmulConfig(64, 64, 128, num_warps=4, num_stages=4)
            out = scaledmm.scaled_mm(*ops.args(), torch.float32, ops.bias, config=config, block_size=(128, 128))
            relative = ((out.double() - reference).norm() / reference.norm()).item()
            over_bound = check.ratio(out)
            cells.append(f"{relative:9.2e} rel, {over_bound:5.3f} bnd")
        print(f"{M:4d} {N:6d} {K:6d} | " + " | ".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
