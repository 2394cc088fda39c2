"""The vendor kernels as a scaledmm backend ("torch"): torch._scaled_mm for fp8 (cuBLASLt) and
torch._int_mm (cuBLASLt) plus an fp32 scale and bias epilogue for int8.

`scaled_mm(backend="auto")` runs them where a tuned file says they are faster; the benchmark and the
tuner time them as the baselines. They accept fewer layouts and scale forms than our kernel:
`unsupported_reason` says when they cannot serve a call.

Block-scaled fp8 (scaled_mm's `block_size`) runs torch._scaled_mm's block mode: 1 x 128 activation
groups and 128 x 128 weight blocks only, scale_a [M, K/128] outer-dim-major (strides (1, M)) and
scale_b [K/128, N/128] outer-dim-major (a checkpoint's contiguous weight_scale_inv, transposed), with
ceil(K/128) a multiple of 4 (`BLOCK_SCALE_ROW_ALIGN`). A
scale_a in another layout (quantize_per_token_group's default, row-major) is copied into that layout
per call (W8A8Linear quantizes with column_major_scales where the vendor runs, so its calls do not
copy); a scale_b in another is refused (it is the weight's: transpose it once, not per call). It
refuses M = 1 (H200, torch 2.11; benchmarks/results/h200-2026-12-01/block_fp8_ab.log) and every M
that is not a multiple of 4 (session 12), so those M >= 16 run on rows padded to a multiple of 4
(`_padded_block_scaled_mm`): it is used from M = 16 on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scaledmm.configs.heuristic import VENDOR_BLOCK_M_ALIGN


def _row_major(t: torch.Tensor) -> bool:
    # cuBLASLt wants distinct rows (no stride-0 or overlapping views) at 16-byte-aligned offsets.
    return t.stride(1) == 1 and t.stride(0) >= t.shape[1] and t.stride(0) % 16 == 0


def _column_major(t: torch.Tensor) -> bool:
    return t.stride(0) == 1 and t.stride(1) >= t.shape[0] and t.stride(1) % 16 == 0


def misaligned_pointer(*tensors: torch.Tensor | None) -> bool:
    """Whether any data pointer is off the 16-byte alignment cuBLASLt needs (views at odd offsets).
    Checked where the call runs, not in the traced argument checks: a pointer is not metadata."""
    return any(t is not None and t.data_ptr() % 16 for t in tensors)


BLOCK_SHAPE = (128, 128)  # the only block scales torch._scaled_mm takes: 1 x 128 and 128 x 128
# torch._scaled_mm refuses block scales at M = 1, and from M = 16 on it took every multiple of 4
# measured (other M run on padded rows, `_padded_block_scaled_mm`).
BLOCK_MIN_M = 16
# cuBLASLt reads the 128 x 128 weight scales with a row stride of ceil(K / 128) rounded up to 4; torch
# before pytorch#166752 (2.11 among them) does not check it and returns wrong results where ceil(K /
# 128) is not a multiple of 4 (H200, session 11: M = 96, N = 256, K = 384, 1,140x the error bound),
# later versions refuse unpadded scales. Weights with such K run our kernels.
BLOCK_SCALE_ROW_ALIGN = 4


def unsupported_reason(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    block_size: tuple[int, int] | None = None,
) -> str | None:
    """Why the vendor kernel cannot compute this (valid) call, with block scales of `block_size` if
    given, or None if it can."""
    if not a.is_cuda:
        return "the vendor kernels need CUDA tensors"
    M, K = a.shape
    N = b.shape[1]
    if not (_row_major(a) and _column_major(b)):
        return "the vendor kernels need a row-major and b column-major, with 16-aligned leading dimensions"
    if block_size is not None:
        return _block_unsupported_reason(a, b, scale_b, bias, out_dtype, tuple(block_size))
    if a.dtype == torch.int8:
        if M <= 16 or K % 8 or N % 8:
            return "torch._int_mm needs M > 16 and K, N multiples of 8"
        return None
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        return "torch._scaled_mm is used for float8_e4m3fn operands only"
    if K % 16 or N % 16:
        return "torch._scaled_mm needs K and N multiples of 16"
    if scale_a.dtype != torch.float32 or scale_b.dtype != torch.float32:
        return "torch._scaled_mm needs float32 scales"
    if not (scale_a.is_contiguous() and scale_b.is_contiguous()):
        return "torch._scaled_mm needs contiguous scales"
    per_tensor = scale_a.numel() == 1 and scale_b.numel() == 1
    rowwise = scale_a.numel() == M and scale_b.numel() == N
    if not (per_tensor or rowwise):
        return "torch._scaled_mm needs both scales per-tensor or per-token x per-channel"
    if rowwise and out_dtype != torch.bfloat16:
        return "torch._scaled_mm is used with row-wise scales for bfloat16 output only"
    if bias is not None and (bias.dtype != out_dtype or out_dtype == torch.float32):
        return "torch._scaled_mm takes a bias of the output dtype, bfloat16 or float16"
    if bias is not None and bias.stride(0) != 1:
        return "torch._scaled_mm reads the bias as contiguous"
    return None


def _block_unsupported_reason(a, b, scale_b, bias, out_dtype, block_size) -> str | None:
    M, K = a.shape
    N = b.shape[1]
    if a.dtype != torch.float8_e4m3fn or b.dtype != torch.float8_e4m3fn:
        return "torch._scaled_mm is used for float8_e4m3fn operands only"
    if block_size != BLOCK_SHAPE:
        return "torch._scaled_mm takes block scales of 1 x 128 (activations) and 128 x 128 (weights) only"
    if M < BLOCK_MIN_M:
        return f"torch._scaled_mm's block mode is used from M = {BLOCK_MIN_M} on (it refuses M = 1)"
    if K % 16 or N % 16:
        return "torch._scaled_mm needs K and N multiples of 16"
    blocks_k, blocks_n = -(-K // BLOCK_SHAPE[1]), -(-N // BLOCK_SHAPE[0])
    if blocks_k % BLOCK_SCALE_ROW_ALIGN:
        return (
            f"torch._scaled_mm's block mode needs ceil(K / 128) to be a multiple of {BLOCK_SCALE_ROW_ALIGN}: cuBLASLt "
            "reads the weight scales' rows padded to it, and torch 2.11 passes unpadded ones on (wrong results)"
        )
    if scale_b.stride(0) != 1 or (blocks_n > 1 and scale_b.stride(1) != blocks_k):
        return (
            "torch._scaled_mm needs scale_b [K/128, N/128] outer-dim-major, as weight_scale_inv.t() of a "
            "contiguous weight_scale_inv [N/128, K/128] is"
        )
    if out_dtype != torch.bfloat16:
        return "torch._scaled_mm is used with block scales for bfloat16 output only"
    if bias is not None and (bias.dtype != out_dtype or bias.stride(0) != 1):
        return "torch._scaled_mm takes a contiguous bias of the output dtype"
    return None


def block_scale_a(scale_a: torch.Tensor) -> torch.Tensor:
    """scale_a [M, K/128] in the layout torch._scaled_mm's block mode reads, outer-dim-major (strides
    (1, M)): itself if it is, else a copy."""
    if scale_a.stride(0) == 1 and scale_a.stride(1) == scale_a.shape[0]:
        return scale_a
    return scale_a.t().contiguous().t()


def vendor_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    fast_accum: bool = False,
    block_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(a @ b) * scale_a * scale_b + bias through the vendor kernels (call only where supported).

    fast_accum: fp8's `use_fast_accum` (Hopper's reduced-precision accumulator, never promoted; our
    "fast" accumulation); False promotes to fp32 as our "precise" mode does. cuBLAS refuses it for
    some shapes (a RuntimeError, CUBLAS_STATUS_NOT_SUPPORTED): `fast_accum_refused` tells.
    block_size: block scales (see the module docstring), promoted every block; fast_accum unused."""
    if block_size is not None:
        if a.shape[0] % VENDOR_BLOCK_M_ALIGN:
            return _padded_block_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype)
        return torch._scaled_mm(a, b, block_scale_a(scale_a), scale_b, bias=bias, out_dtype=out_dtype)
    if a.dtype == torch.int8:
        out = torch._int_mm(a, b).float() * scale_a.reshape(-1, 1) * scale_b.reshape(1, -1)
        if bias is not None:
            out = out + bias
        return out.to(out_dtype)
    rowwise = scale_a.numel() > 1 or scale_b.numel() > 1
    if rowwise:
        scale_a, scale_b = scale_a.reshape(-1, 1), scale_b.reshape(1, -1)
    else:
        scale_a, scale_b = scale_a.reshape(()), scale_b.reshape(())
    return torch._scaled_mm(a, b, scale_a, scale_b, bias=bias, out_dtype=out_dtype, use_fast_accum=fast_accum)


def _padded_block_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype) -> torch.Tensor:
    """The block mode at an M it refuses (not a multiple of VENDOR_BLOCK_M_ALIGN): a and scale_a
    copied into rows zero-padded to the next multiple, whose outputs are dropped (what that costs:
    configs.heuristic.block_vendor_padding_us; `auto` weighs it, configs.lookup.plan)."""
    pad = -a.shape[0] % VENDOR_BLOCK_M_ALIGN
    a_padded = F.pad(a, (0, 0, 0, pad))
    scale_padded = F.pad(scale_a.t(), (0, pad)).t()  # [rows, groups] with strides (1, rows)
    return torch._scaled_mm(a_padded, b, scale_padded, scale_b, bias=bias, out_dtype=out_dtype)[: a.shape[0]]


def fast_accum_refused(err: RuntimeError) -> bool:
    """Whether a vendor call failed because cuBLAS has no fast-accumulation kernel for its shape."""
    return "NOT_SUPPORTED" in str(err)
