"""The public functions: scaled_mm and the activation quantizations.

Each reads: a plain eager call whose signature was prepared before runs its prepared call. Else
check the arguments (checks.py), then either prepare and run (runtime.py), or, where a dispatch
mode, tracing or autograd must see the call, go through the torch.library op (ops.py).

Import rule, from the bottom up: state; configs; kernels; checks; runtime; ops; api; nn; bench,
tune and cli. A module imports only from layers below its own.
"""

from __future__ import annotations

import torch

from scaledmm import ops
from scaledmm.checks import (
    DEFAULT_ACCUMULATION,
    check_block_size,
    check_group_size,
    check_quantize_args,
    check_rms_norm_quantize_args,
    check_scaled_mm_args,
    check_silu_mul_quantize_args,
    check_static_scale,
)
from scaledmm.configs import MatmulConfig
from scaledmm.runtime import (
    eager,
    prepared,
    producer_signature,
    quantize_signature,
    run_producer,
    run_quantize,
    run_scaled_mm,
    scaled_mm_signature,
)


def scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    bias: torch.Tensor | None = None,
    *,
    config: MatmulConfig | None = None,
    backend: str = "auto",
    accumulation: str = DEFAULT_ACCUMULATION,
    block_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """(a @ b) * scale_a * scale_b + bias: int8 summed exactly in int32, fp8 as `accumulation` says, scaled in fp32.

    Args:
        a: [M, K] activation, int8, float8_e4m3fn or float8_e5m2; row- or column-major.
        b: [K, N] weight, the same family as `a` (int8 with int8; e4m3/e5m2 may mix). A linear
            layer's [N, K] weight is passed as `weight.t()`.
        scale_a: per-tensor (shape (), [1], [1, 1]) or per-token ([M], [M, 1]); fp32, fp16 or bf16.
        scale_b: per-tensor or per-channel ([N], [1, N], [N, 1]); fp32, fp16 or bf16.
        out_dtype: torch.bfloat16, torch.float16 or torch.float32.
        bias: optional [N] vector, fp32, fp16 or bf16, added after scaling.
        config: Triton launch parameters; None asks `scaledmm.select_config` (tuned files, else
            the heuristic). Implies the triton backend.
        backend: "auto" (default) runs what the tuned file found fastest at this M, our Triton
            kernel or the vendor kernel ("torch": torch._scaled_mm for fp8, torch._int_mm plus an
            fp32 epilogue for int8), minus SCALEDMM_DISABLED_BACKENDS; "triton" or "torch" force one.
        accumulation: how fp8 products are summed on Hopper. "fast" (default): in the tensor core's
            reduced-precision accumulator (about 14 bits) over the whole K loop, as
            torch._scaled_mm(use_fast_accum=True), vLLM's CUTLASS kernels and Triton's default do;
            "precise": promoted into fp32 every 128 K-elements, as torch._scaled_mm's default. The
            vendor backend runs in the same mode. Other GPUs and int8 (exact in int32) ignore it.
        block_size: (block_n, block_k) for block-scaled fp8 (DeepSeek-style, e.g. (128, 128)):
            scale_a is then [M, ceil(K / block_k)], one fp32 scale per 1 x block_k group of a row, and
            scale_b [ceil(K / block_k), ceil(N / block_n)], one per block of b; for a weight [N, K]
            with `weight_scale_inv` [N / 128, K / 128] pass `weight.t()` and `weight_scale_inv.t()`.
            Each block's product is scaled as it is accumulated (so in fp32 every block_k). Tuned
            files of that block shape choose the tile, and where torch._scaled_mm's block mode (1 x 128
            and 128 x 128 only, M >= 16, bf16 out) won, `auto` runs it. None: the per-tensor,
            per-token and per-channel scales above.

    Returns:
        A new contiguous [M, N] tensor of `out_dtype` on the operands' device.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: a wrong shape, layout or device.
    """
    # Before the lookup: 128.0, True and numpy ints equal ints as keys, so a call that the checks
    # refuse would find the prepared call of a valid one. A list of ints becomes a tuple.
    if block_size is not None and not (
        type(block_size) is tuple and len(block_size) == 2 and type(block_size[0]) is type(block_size[1]) is int
    ):
        block_size = check_block_size(block_size)
    if eager(a, b, scale_a, scale_b, bias):
        # An unhashable config cannot make a key; the checks name it.
        try:
            key = scaled_mm_signature(
                a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size
            )
            call = prepared.get(key)
        except TypeError:
            call = None
        if call is not None:
            return call(a, b, scale_a, scale_b, bias)
        check_scaled_mm_args(a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size)
        return run_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size)
    check_scaled_mm_args(a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size)
    config_list = None if config is None else config.as_list()
    blocks = None if block_size is None else list(block_size)
    return ops.scaled_mm_op(a, b, scale_a, scale_b, bias, out_dtype, config_list, backend, accumulation, blocks)


def _prepared_quantize(
    x: object, scale: object, dtype: object, group_size: object = None, column_major: object = False
):
    """The prepared call of an eager quantization seen before, else None."""
    if not eager(x, scale):
        return None
    try:
        return prepared.get(quantize_signature(x, scale, dtype, group_size, column_major))
    except TypeError:  # an unhashable dtype: the checks name it
        return None


def quantize_per_token(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of an activation [..., K].

    Returns (q, scale): q of `dtype` and x's shape, scale float32 [..., 1] with
    x ~= q * scale; scale = max(|row|) / 127 (int8) or / 448 (fp8), floored so that zero rows stay
    finite; values rounded to nearest even and saturated. `q.reshape(-1, K)` and
    `scale.reshape(-1, 1)` are scaled_mm's `a` and per-token `scale_a`.
    """
    if (call := _prepared_quantize(x, None, dtype)) is not None:
        return call(x)
    x = check_quantize_args(x, dtype)
    if eager(x):
        return run_quantize(x, None, dtype)
    K = x.shape[-1]
    q, scale = ops.quantize_per_token_op(x.reshape(-1, K), dtype)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Static quantization of an activation [..., K] with one given scale (x ~= q * scale)."""
    if (call := _prepared_quantize(x, scale, dtype)) is not None:
        return call(x, scale)
    x = check_quantize_args(x, dtype)
    scale = check_static_scale(scale, x)
    if eager(x, scale):
        return run_quantize(x, scale, dtype)
    K = x.shape[-1]
    return ops.quantize_per_tensor_op(x.reshape(-1, K), scale, dtype).reshape(x.shape)


def quantize_per_token_group(
    x: torch.Tensor,
    group_size: int = 128,
    dtype: torch.dtype = torch.float8_e4m3fn,
    *,
    column_major_scales: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic quantization of an activation [..., K] with one scale per 1 x group_size group of each
    row, the activation side of block-scaled fp8 (DeepSeek-V3's 1 x 128).

    Returns (q, scale): q float8_e4m3fn of x's shape, scale float32 [..., ceil(K / group_size)] with
    x ~= q * scale group by group (the last group may be shorter); scale = max(|group|) / 448, floored
    so that zero groups stay finite, NaN propagating as in quantize_per_token. `q.reshape(-1, K)` and
    `scale.reshape(-1, groups)` are scaled_mm's `a` and `scale_a` with block_size=(block_n, group_size).
    Each row's scales are contiguous; with `column_major_scales` (vLLM's name) each group's scales are
    contiguous over the rows (strides (1, M) as [M, groups]), the layout torch._scaled_mm's block mode
    reads: where scaled_mm runs the vendor it then passes scale_a on without a copy (W8A8Linear asks for
    it where its prepared call runs the vendor). scaled_mm's own kernels take either layout, but its
    tuned tiles were timed on row-major scales, and column-major ones cost the pointer tiles of
    M = 64-256 up to 1.8x on an H200 (docs/performance.md, "Block-scaled FP8, tuned").
    """
    if type(column_major_scales) is not bool:  # before the lookup: 1 and True are one key
        raise TypeError(f"column_major_scales must be a bool, got {column_major_scales!r}")
    if type(group_size) is not int:  # before the lookup too: 128.0 and 128 are one key
        check_group_size(group_size, dtype)  # raises
    if (call := _prepared_quantize(x, None, dtype, group_size, column_major_scales)) is not None:
        return call(x)
    x = check_quantize_args(x, dtype)
    check_group_size(group_size, dtype)
    if eager(x):
        return run_quantize(x, None, dtype, group_size, column_major_scales)
    K = x.shape[-1]
    q, scale = ops.quantize_per_token_group_op(x.reshape(-1, K), group_size, dtype, column_major_scales)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], scale.shape[-1])


def rms_norm_quantize(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm of an activation [..., K] (transformers' LlamaRMSNorm: in fp32 x * rsqrt(mean(x^2) +
    eps), rounded to x's dtype, times `weight` [K] of x's dtype) quantized per token in the same
    kernel: (q, scale) as `quantize_per_token` of the normalized activation returns them, without
    writing it."""
    if eager(x, weight):
        try:
            call = prepared.get(producer_signature("rms_norm", x, weight, dtype, eps))
        except TypeError:  # unhashable arguments: the checks name them
            call = None
        if call is not None:
            return call(x, weight)
    x = check_rms_norm_quantize_args(x, weight, eps, dtype)
    if eager(x, weight):
        return run_producer("rms_norm", x, weight, dtype, eps)
    K = x.shape[-1]
    q, scale = ops.rms_norm_quantize_op(x.reshape(-1, K), weight, float(eps), dtype)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def silu_mul_quantize(
    gate: torch.Tensor, up: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(gate) * up (a SwiGLU MLP's activation, [..., K] each, in transformers' arithmetic: the
    SiLU rounded to the inputs' dtype, the product rounded again) quantized per token in the same
    kernel: (q, scale) as `quantize_per_token` of the product returns them, without writing it."""
    if eager(gate, up):
        try:
            call = prepared.get(producer_signature("silu_mul", gate, up, dtype))
        except TypeError:
            call = None
        if call is not None:
            return call(gate, up)
    gate = check_silu_mul_quantize_args(gate, up, dtype)
    if eager(gate, up):
        return run_producer("silu_mul", gate, up, dtype)
    K = gate.shape[-1]
    q, scale = ops.silu_mul_quantize_op(gate.reshape(-1, K), up.reshape(-1, K), dtype)
    return q.reshape(gate.shape), scale.reshape(*gate.shape[:-1], 1)
