"""The torch.library custom ops and their fake implementations.

torch.compile, torch.export, make_fx and other dispatch modes see scaled_mm and the quantizations as
these opaque ops; the fakes give them the outputs' shapes and dtypes. The ops are public
(`torch.ops.scaledmm.scaled_mm` and friends) and check their arguments like the Python functions do,
on the first call of each signature: a signature prepared before was checked then (runtime.py).

`scaled_mm`'s schema takes `bias` before `out_dtype`, as `torch._scaled_mm` does, and the config as
`MatmulConfig.as_list()` (a list of ints); the Python function `scaledmm.scaled_mm` keeps its own
order. Import rule: this module imports checks and runtime, and nothing above them.
"""

from __future__ import annotations

import torch

from scaledmm.checks import (
    DEFAULT_ACCUMULATION,
    check_group_size,
    check_quantize_args,
    check_rms_norm_quantize_args,
    check_scaled_mm_args,
    check_silu_mul_quantize_args,
    check_static_scale,
)
from scaledmm.configs import MatmulConfig
from scaledmm.runtime import (
    empty_group_scales,
    prepared,
    producer_signature,
    quantize_signature,
    run_producer,
    run_quantize,
    run_scaled_mm,
    scaled_mm_signature,
)


def _config_from_list(config: list[int] | None) -> MatmulConfig | None:
    if config is None:
        return None
    try:
        return MatmulConfig.from_list(config)
    except (TypeError, ValueError) as err:
        raise type(err)(f"config: {err}") from None


@torch.library.custom_op("scaledmm::scaled_mm", mutates_args=())
def scaled_mm_op(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: list[int] | None,
    backend: str,
    accumulation: str = DEFAULT_ACCUMULATION,
    block_size: list[int] | None = None,
) -> torch.Tensor:
    matmul_config = _config_from_list(config)
    blocks = None if block_size is None else tuple(block_size)
    key = scaled_mm_signature(a, b, scale_a, scale_b, out_dtype, bias, matmul_config, backend, accumulation, blocks)
    call = prepared.get(key)
    if call is not None:
        return call(a, b, scale_a, scale_b, bias)
    check_scaled_mm_args(a, b, scale_a, scale_b, out_dtype, bias, matmul_config, backend, accumulation, blocks)
    return run_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias, matmul_config, backend, accumulation, blocks)


@scaled_mm_op.register_fake
def _scaled_mm_fake(
    a, b, scale_a, scale_b, bias, out_dtype, config, backend, accumulation=DEFAULT_ACCUMULATION, block_size=None
):
    blocks = None if block_size is None else tuple(block_size)
    check_scaled_mm_args(
        a, b, scale_a, scale_b, out_dtype, bias, _config_from_list(config), backend, accumulation, blocks
    )
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


def _quantize(
    x: torch.Tensor,
    scale: torch.Tensor | None,
    dtype: torch.dtype,
    group_size: int | None = None,
    column_major_scales: bool = False,
):
    call = prepared.get(quantize_signature(x, scale, dtype, group_size, column_major_scales))
    if call is not None:
        return call(x, scale)
    check_quantize_args(x, dtype)
    if scale is not None:
        check_static_scale(scale, x)
    if group_size is not None:
        check_group_size(group_size, dtype)
    return run_quantize(x, scale, dtype, group_size, column_major_scales)


@torch.library.custom_op("scaledmm::quantize_per_token", mutates_args=())
def quantize_per_token_op(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(x, None, dtype)


@quantize_per_token_op.register_fake
def _quantize_per_token_fake(x, dtype):
    check_quantize_args(x, dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("scaledmm::quantize_per_tensor", mutates_args=())
def quantize_per_tensor_op(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _quantize(x, scale, dtype)


@quantize_per_tensor_op.register_fake
def _quantize_per_tensor_fake(x, scale, dtype):
    check_quantize_args(x, dtype)
    check_static_scale(scale, x)
    return x.new_empty(x.shape, dtype=dtype)


@torch.library.custom_op("scaledmm::quantize_per_token_group", mutates_args=())
def quantize_per_token_group_op(
    x: torch.Tensor, group_size: int, dtype: torch.dtype, column_major_scales: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize(x, None, dtype, group_size, column_major_scales)


@quantize_per_token_group_op.register_fake
def _quantize_per_token_group_fake(x, group_size, dtype, column_major_scales=False):
    check_quantize_args(x, dtype)
    check_group_size(group_size, dtype)
    groups = -(-x.shape[-1] // group_size)
    return x.new_empty(x.shape, dtype=dtype), empty_group_scales(x.shape[:-1], groups, x.device, column_major_scales)


# Producers with the per-token quantization fused in (kernels/producers.py): x [M, K] rows in,
# (q [M, K], scale [M, 1]) out, as quantize_per_token.


@torch.library.custom_op("scaledmm::rms_norm_quantize", mutates_args=())
def rms_norm_quantize_op(
    x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    call = prepared.get(producer_signature("rms_norm", x, weight, dtype, eps))
    if call is not None:
        return call(x, weight)
    check_rms_norm_quantize_args(x, weight, eps, dtype)
    return run_producer("rms_norm", x, weight, dtype, eps)


@rms_norm_quantize_op.register_fake
def _rms_norm_quantize_fake(x, weight, eps, dtype):
    check_rms_norm_quantize_args(x, weight, eps, dtype)
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("scaledmm::silu_mul_quantize", mutates_args=())
def silu_mul_quantize_op(gate: torch.Tensor, up: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    call = prepared.get(producer_signature("silu_mul", gate, up, dtype))
    if call is not None:
        return call(gate, up)
    check_silu_mul_quantize_args(gate, up, dtype)
    return run_producer("silu_mul", gate, up, dtype)


@silu_mul_quantize_op.register_fake
def _silu_mul_quantize_fake(gate, up, dtype):
    check_silu_mul_quantize_args(gate, up, dtype)
    return gate.new_empty(gate.shape, dtype=dtype), gate.new_empty((*gate.shape[:-1], 1), dtype=torch.float32)
