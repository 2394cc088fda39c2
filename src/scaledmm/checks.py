"""Argument checks of the public functions and the torch.library ops.

Each check reads tensor metadata only (types, dtypes, shapes, strides, devices), so torch.compile
traces it into guards and nothing of it runs in a compiled graph. Every failure is a TypeError (a
wrong type or dtype) or a ValueError (a wrong shape, layout, size or device) that names the argument
and says what would be accepted, raised before any launch.
"""

from __future__ import annotations

import os

import torch

from scaledmm.configs import MatmulConfig
from scaledmm.configs.files import ACCUMULATIONS
from scaledmm.configs.lookup import (
    BLOCK_K_CHOICES,
    SPLIT_K_SCRATCH_LIMIT,
    block_unfit_reason,
    check_block_size,
    split_k_scratch_bytes,
)
from scaledmm.kernels.quant import QMAX
from scaledmm.kernels.vendor import unsupported_reason
from scaledmm.state import state

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
OPERAND_DTYPES = (torch.int8, *FP8_DTYPES)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BIAS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
BACKEND_CHOICES = ("auto", "triton", "torch")
# How fp8 products are summed (int8 sums exactly in int32 either way). "fast": Hopper's tensor-core
# accumulator over the whole K loop, as Triton's default and torch._scaled_mm(use_fast_accum=True);
# "precise": promoted into fp32 at least every 128 K-elements, as torch._scaled_mm's default.
DEFAULT_ACCUMULATION = "fast"
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANT_DTYPES = tuple(QMAX)  # int8, float8_e4m3fn
# int8 products are at most 128 * 128 = 2**14 in size, so an int32 sum of K of them is exact while
# K * 2**14 <= 2**31 - 1: K <= 131,071. One more term can wrap (-128 * -128 summed 2**17 times).
INT8_MAX_K = (2**31 - 1) // 2**14

# Triton's interpreter runs the kernels on CPU tensors; it is chosen when the kernels are defined.
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    # The kernels read dense storage through strides: sparse and nested tensors have neither.
    if value.layout != torch.strided or value.is_nested:
        kind = "a nested tensor" if value.is_nested else f"a {value.layout} tensor (pass .to_dense())"
        raise ValueError(f"{name} must be a dense tensor (layout torch.strided), got {kind}")
    return value


def _check_scale(name: str, scale: object, vector_len: int) -> None:
    scale = check_tensor(name, scale)
    if scale.dtype not in SCALE_DTYPES:
        raise TypeError(f"{name} must have dtype {_names(SCALE_DTYPES)}, got {scale.dtype}")
    # Element-wise comparisons (not tuple membership) so that symbolic sizes under torch.compile
    # with dynamic shapes compare by value.
    shape = scale.shape
    per_tensor = scale.dim() <= 2 and scale.numel() == 1
    if scale.dim() == 1:
        vector = shape[0] == vector_len
    elif scale.dim() == 2:
        vector = (shape[0] == vector_len and shape[1] == 1) or (
            name == "scale_b" and shape[0] == 1 and shape[1] == vector_len
        )
    else:
        vector = False
    if not (per_tensor or vector):
        # Sizes are formatted only here, when raising: formatting a symbolic size under torch.compile
        # would specialise the graph to it (a recompile per M).
        n = vector_len
        vector_shapes = (
            f"per-token (shape [{n}] or [{n}, 1])"
            if name == "scale_a"
            else (f"per-channel (shape [{n}], [1, {n}] or [{n}, 1])")
        )
        raise ValueError(
            f"{name} must be per-tensor (shape (), [1] or [1, 1]) or {vector_shapes}, got shape {list(shape)}"
        )


def check_scaled_mm_args(
    a: object,
    b: object,
    scale_a: object,
    scale_b: object,
    out_dtype: object,
    bias: object,
    config: object,
    backend: object = "auto",
    accumulation: object = DEFAULT_ACCUMULATION,
    block_size: object = None,
) -> None:
    """Raise TypeError (wrong type or dtype) or ValueError (wrong shape, layout or device) naming the
    offending argument; return None for arguments `scaled_mm` can compute."""
    a = check_tensor("a", a)
    b = check_tensor("b", b)
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in OPERAND_DTYPES:
            raise TypeError(f"{name} must have dtype {_names(OPERAND_DTYPES)}, got {t.dtype}")
    if (a.dtype == torch.int8) != (b.dtype == torch.int8):
        raise TypeError(f"a and b must both be int8 or both float8, got a {a.dtype} and b {b.dtype}")
    for name, t in (("a", a), ("b", b)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got {t.dim()}-D with shape {list(t.shape)}")
    M, K = a.shape
    if b.shape[0] != K:
        raise ValueError(
            f"b must be [K, N] with K = a.shape[1] = {K}, got b of shape {list(b.shape)} "
            "(for a linear layer's [N, K] weight pass weight.t())"
        )
    N = b.shape[1]
    if K == 0 or N == 0:
        raise ValueError(f"K and N must be >= 1, got a of shape {list(a.shape)} and b of shape {list(b.shape)}")
    if a.dtype == torch.int8 and K > INT8_MAX_K:
        raise ValueError(
            f"int8 operands accumulate in int32, exact for K <= {INT8_MAX_K:,}; got K = {K}. Split K into "
            "chunks, call scaled_mm per chunk with out_dtype=torch.float32 and add the results, or use fp8"
        )
    for name, t in (("a", a), ("b", b)):
        # A unit stride along one dimension; the other stride is free, so views into padded buffers
        # (a leading dimension larger than the extent) are accepted. A size-1 dimension has any stride.
        if not (1 in t.stride() or 1 in t.shape):
            raise ValueError(
                f"{name} must be row-major or column-major (unit stride in one dimension), got strides "
                f"{list(t.stride())}; call .contiguous() on it first"
            )
    if block_size is None:
        _check_scale("scale_a", scale_a, M)
        _check_scale("scale_b", scale_b, N)
    else:
        _check_block_scales(a, N, scale_a, scale_b, block_size, config)
    if bias is not None:
        bias = check_tensor("bias", bias)
        if bias.dtype not in BIAS_DTYPES:
            raise TypeError(f"bias must have dtype {_names(BIAS_DTYPES)}, got {bias.dtype}")
        if bias.dim() != 1 or bias.shape[0] != N:
            raise ValueError(f"bias must have shape [{N}] (N), got {list(bias.shape)}")
    if not isinstance(out_dtype, torch.dtype) or out_dtype not in OUT_DTYPES:
        raise TypeError(
            f"out_dtype must be one of torch.{', torch.'.join(_names(OUT_DTYPES).split(', '))}, got {out_dtype!r}"
        )
    if config is not None and not isinstance(config, MatmulConfig):
        raise TypeError(f"config must be a scaledmm.MatmulConfig or None, got {type(config).__name__}")
    check_backend(backend)
    check_accumulation(accumulation)
    if backend == "torch" and config is not None:
        raise ValueError("config is a Triton launch config; it cannot go with backend='torch'")
    if config is not None and config.split_k > 1:
        scratch = split_k_scratch_bytes(M, N, config)
        if scratch > SPLIT_K_SCRATCH_LIMIT:
            raise ValueError(
                f"config.split_k={config.split_k} needs {scratch / 2**20:.0f} MiB of partial sums for this "
                f"{M}x{N} output (limit {SPLIT_K_SCRATCH_LIMIT // 2**20} MiB); split-K is for grids with fewer "
                "tiles than the GPU has SMs: use split_k=1 or larger tiles"
            )

    named = [("b", b), ("scale_a", scale_a), ("scale_b", scale_b)]
    if bias is not None:
        named.append(("bias", bias))
    for name, t in named:
        if t.device != a.device:
            raise ValueError(f"{name} is on {t.device} but a is on {a.device}; all tensors must share a device")
    check_runnable_device(a.device, "scaled_mm")
    if backend == "torch" and (reason := unsupported_reason(a, b, scale_a, scale_b, bias, out_dtype, block_size)):
        raise ValueError(f"backend='torch' cannot compute this call: {reason}; use backend='auto' or 'triton'")


def check_layer_block_size(
    block_size: object, dtype: torch.dtype, activation: str, backend: str
) -> tuple[int, int] | None:
    """A W8A8Linear's (or quantize_model's) block_size: None, or a pair the block-scaled kernel takes
    for an e4m3 layer with dynamic activations on the Triton backend. Returns it as a tuple."""
    if block_size is None:
        return None
    blocks = check_block_size(block_size)
    if dtype != torch.float8_e4m3fn:
        raise ValueError(
            "block_size is for dtype='fp8' (block-scaled float8_e4m3fn, DeepSeek-style); int8 layers take "
            "per-channel scales: pass block_size=None"
        )
    if activation != "dynamic":
        raise ValueError(
            f"block_size needs activation='dynamic' (one scale per 1 x block_k group of each row, computed per "
            f"call); static activation scales are not defined for block-scaled layers, got activation={activation!r}"
        )
    if backend == "torch":
        # torch._scaled_mm's block mode refuses M < 16 (decode) and other block shapes; `auto` runs it
        # where a tuned bucket says it won.
        raise ValueError(
            "block_size runs on backend='auto' or 'triton'; backend='torch' (torch._scaled_mm's block mode: "
            "128 x 128 blocks, M >= 16 only) cannot serve a layer's every call"
        )
    return blocks


def check_group_size(group_size: object, dtype: torch.dtype) -> int:
    """Activation groups for block-scaled fp8: 1 x group_size, the weight's block_k."""
    if dtype != torch.float8_e4m3fn:
        raise TypeError(
            f"dtype must be torch.float8_e4m3fn: per-token-group quantization is for block-scaled fp8, got {dtype!r}"
        )
    if type(group_size) is not int:  # not bool, a subclass
        raise TypeError(f"group_size must be an int, got {group_size!r}")
    if group_size not in BLOCK_K_CHOICES:
        raise ValueError(f"group_size must be one of {BLOCK_K_CHOICES} (the block_k scaled_mm takes), got {group_size}")
    return group_size


def _check_block_scales(a, N, scale_a, scale_b, block_size, config) -> None:
    """Block scales: fp8 operands, fp32 scales of [M, ceil(K / block_k)] and [ceil(K / block_k),
    ceil(N / block_n)], any strides; configs of the block kernel, K steps of the block. backend='torch'
    is checked with the other backends (vendor.unsupported_reason)."""
    block_n, block_k = check_block_size(block_size)
    if a.dtype == torch.int8:
        raise TypeError("block_size is for fp8 operands (DeepSeek-style block scales); int8 takes per-channel scales")
    M, K = a.shape
    blocks_k, blocks_n = -(-K // block_k), -(-N // block_n)
    for name, scale, rows, cols, meaning in (
        ("scale_a", scale_a, M, blocks_k, "[M, ceil(K / block_k)]"),
        ("scale_b", scale_b, blocks_k, blocks_n, "[ceil(K / block_k), ceil(N / block_n)]"),
    ):
        scale = check_tensor(name, scale)
        if scale.dtype != torch.float32:
            raise TypeError(f"{name} must be float32 with block_size, got {scale.dtype}")
        if not (scale.dim() == 2 and scale.shape[0] == rows and scale.shape[1] == cols):
            raise ValueError(
                f"{name} must be {meaning} = [{rows}, {cols}] with block_size={tuple(block_size)}, "
                f"got shape {list(scale.shape)}"
            )
    if isinstance(config, MatmulConfig) and block_unfit_reason(config, (block_n, block_k)):
        raise ValueError(
            f"with block_size, config must be a pointer or swapped config with block_k = {block_k} (the "
            f"scale block), got {config}"
        )


def check_backend(backend: object) -> None:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {', '.join(map(repr, BACKEND_CHOICES))}, got {backend!r}")
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_CHOICES))}, got {backend!r}")


def check_accumulation(accumulation: object) -> None:
    if not isinstance(accumulation, str):
        raise TypeError(f"accumulation must be a str, one of {ACCUMULATIONS}, got {accumulation!r}")
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}")


def check_runnable_device(device: torch.device, what: str) -> None:
    if device.type != "cuda" and not (INTERPRETER and device.type == "cpu"):
        raise ValueError(
            f"{what} runs on CUDA tensors, got tensors on {device}. To run the Triton kernels on the "
            "CPU (slowly, for testing), set TRITON_INTERPRET=1 before importing scaledmm."
        )


@state.cached
def check_device_supports(device: torch.device, fp8: bool) -> None:
    """Raise before launch where the GPU has no instructions for the operands (cached per device)."""
    if device.type != "cuda" or not fp8:
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(
            f"float8 operands need compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
            f"{torch.cuda.get_device_name(device)} on {device} has {major}.{minor}. Use int8 operands."
        )


def check_quantize_args(x: object, dtype: object) -> torch.Tensor:
    x = check_tensor("x", x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must have dtype {_names(FLOAT_DTYPES)}, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be [..., K] with K >= 1, got shape {list(x.shape)}")
    if not isinstance(dtype, torch.dtype) or dtype not in QUANT_DTYPES:
        raise TypeError(f"dtype must be torch.int8 or torch.float8_e4m3fn, got {dtype!r}")
    check_runnable_device(x.device, "quantization")
    return x


def check_rms_norm_quantize_args(x: object, weight: object, eps: object, dtype: object) -> torch.Tensor:
    """x [..., K] float, weight [K] of x's dtype on x's device, eps a float >= 0."""
    x = check_quantize_args(x, dtype)
    weight = check_tensor("weight", weight)
    if weight.dtype != x.dtype:
        raise TypeError(f"weight must have x's dtype {x.dtype}, got {weight.dtype}")
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight must be [{x.shape[-1]}] (x's K), got shape {list(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight is on {weight.device} but x is on {x.device}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a number >= 0, got {eps!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    return x


def check_silu_mul_quantize_args(gate: object, up: object, dtype: object) -> torch.Tensor:
    """gate and up [..., K], one float dtype, shape and device."""
    gate = check_quantize_args(gate, dtype)
    up = check_tensor("up", up)
    if up.dtype != gate.dtype:
        raise TypeError(f"up must have gate's dtype {gate.dtype}, got {up.dtype}")
    if up.shape != gate.shape or up.device != gate.device:
        raise ValueError(
            f"up must match gate ({gate.dtype} {list(gate.shape)} on {gate.device}), "
            f"got {up.dtype} {list(up.shape)} on {up.device}"
        )
    return gate


def check_static_scale(scale: object, x: torch.Tensor) -> torch.Tensor:
    scale = check_tensor("scale", scale)
    if scale.dtype not in SCALE_DTYPES:
        raise TypeError(f"scale must have dtype {_names(SCALE_DTYPES)}, got {scale.dtype}")
    if scale.numel() != 1:
        raise ValueError(f"scale must hold one value (per-tensor), got shape {list(scale.shape)}")
    if scale.device != x.device:
        raise ValueError(f"scale is on {scale.device} but x is on {x.device}")
    return scale
