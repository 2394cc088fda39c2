"""A/B of the activation quantization kernel with NaN-propagating maxima and clamp (kernels/quant.py,
issue 15 item 2) against the kernel before, which dropped NaN (Triton's default maxnum and tl.max),
in one run on one card: GPU time per call (CUDA graphs, the benchmark protocol) and the bits of
both on finite inputs, which must be the same.

    PYTHONPATH=src python3 benchmarks/ab/quantize_nan.py
"""

import torch
import triton
import triton.language as tl

from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.quant import ABSMAX_FLOOR, MAX_BLOCK_K, QMAX, _quantize_rows_kernel

_RNE_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def _nan_dropping_kernel(
    x_ptr, q_ptr, scale_ptr, K,
    stride_xm, stride_xk, stride_qm,
    DYNAMIC: tl.constexpr, QMAX: tl.constexpr, IS_INT8: tl.constexpr, FLOOR: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    # _quantize_rows_kernel as it was before NaN propagated (dynamic scales only).
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs = tl.arange(0, BLOCK_K)
    absmax = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_row + (k + offs) * stride_xk, mask=k + offs < K, other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.abs(x))
    scale = tl.maximum(tl.max(absmax, axis=0), FLOOR) / QMAX
    tl.store(scale_ptr + row, scale)
    for k in range(0, K, BLOCK_K):
        mask = k + offs < K
        x = tl.load(x_row + (k + offs) * stride_xk, mask=mask, other=0.0).to(tl.float32)
        q = tl.minimum(tl.maximum(x / scale, -QMAX), QMAX)
        if IS_INT8:
            q = (q + _RNE_MAGIC) - _RNE_MAGIC
        tl.store(q_row + k + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def launcher(kernel, dtype):
    def quantize(x, q, scale):
        M, K = x.shape
        kernel[(M,)](
            x, q, scale, K, x.stride(0), x.stride(1), q.stride(0),
            DYNAMIC=True, QMAX=QMAX[dtype], IS_INT8=dtype == torch.int8, FLOOR=ABSMAX_FLOOR,
            BLOCK_K=min(MAX_BLOCK_K, triton.next_power_of_2(K)), num_warps=4 if K <= 4096 else 8,
        )  # fmt: skip

    return quantize


def main(device):
    print("GPU us per call (CUDA graphs, rotated copies), dynamic per-token, bf16 x: NaN-propagating | before")
    for dtype in (torch.float8_e4m3fn, torch.int8):
        for K in (4096, 14336):
            for M in (1, 16, 256, 2048, 8192):
                inputs = []
                for _ in range(rotation_count(M * K * 3, device)):
                    x = torch.randn(M, K, device=device, dtype=torch.bfloat16)
                    inputs.append((x, torch.empty(M, K, device=device, dtype=dtype), torch.empty(M, device=device)))
                new, old = launcher(_quantize_rows_kernel, dtype), launcher(_nan_dropping_kernel, dtype)
                x, q_new, s_new = inputs[0]
                q_old, s_old = torch.empty_like(q_new), torch.empty_like(s_new)
                new(x, q_new, s_new)
                old(x, q_old, s_old)
                assert torch.equal(s_new, s_old) and torch.equal(q_new.view(torch.uint8), q_old.view(torch.uint8))
                t_new, t_old = (t.median_us for t in time_interleaved([(new, inputs), (old, inputs)], 20))
                gb = M * K * 3 / 1e3  # bytes read and written, per us -> GB/s
                print(
                    f"  {str(dtype)[6:]:14s} M={M:5d} K={K:5d} {t_new:8.2f} | {t_old:8.2f} ({t_new / t_old:4.2f}x)"
                    f"   {gb / t_new:6.0f} GB/s"
                )


if __name__ == "__main__":
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), torch.__version__, triton.__version__)
    main(device)
