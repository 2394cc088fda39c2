"""The public functions and their torch.library registration.

`scaled_mm` checks its arguments in plain Python (tensor metadata only, so torch.compile traces it
into guards and nothing of it runs in a compiled graph) and computes the call through the custom op
`torch.ops.scaledmm.scaled_mm`, whose fake implementation gives torch.compile the output's shape
and dtype. Eager calls outside any dispatch mode skip the dispatcher, and a call whose signature was
seen before skips the checks too: both run the same prepared call (see "prepared calls" below).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable

import torch

from scaledmm.configs import MatmulConfig, plan
from scaledmm.configs.lookup import DISABLED_BACKENDS_ENV, clear_cache_hooks, disabled_backends
from scaledmm.kernels.linear import FUSED_QUANTIZE_MAX_M, bind_quantized_linear
from scaledmm.kernels.matmul import bind_scaled_mm
from scaledmm.kernels.quant import QMAX, bind_quantize_rows
from scaledmm.kernels.split_k import split_k_scratch_bytes
from scaledmm.kernels.vendor import misaligned_pointer, unsupported_reason, vendor_scaled_mm

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
OPERAND_DTYPES = (torch.int8, *FP8_DTYPES)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BIAS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
BACKEND_CHOICES = ("auto", "triton", "torch")
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
QUANT_DTYPES = tuple(QMAX)  # int8, float8_e4m3fn
SPLIT_K_SCRATCH_LIMIT = 256 * 2**20  # bytes of split-K partial sums one call may allocate

# Triton's interpreter runs the kernels on CPU tensors; it is chosen when the kernels are defined.
INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def _is_row_or_column_major(t: torch.Tensor) -> bool:
    # A unit stride along one dimension; the other stride is free, so views into padded buffers
    # (a leading dimension larger than the extent) are accepted. A size-1 dimension has any stride.
    rows, cols = t.shape
    row_stride, col_stride = t.stride()
    return col_stride == 1 or row_stride == 1 or rows == 1 or cols == 1


def _check_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_scale(name: str, scale: object, vector_len: int) -> None:
    scale = _check_tensor(name, scale)
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
) -> None:
    """Raise TypeError (wrong type or dtype) or ValueError (wrong shape, layout or device) naming the
    offending argument; return None for arguments `scaled_mm` can compute."""
    a = _check_tensor("a", a)
    b = _check_tensor("b", b)
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
    for name, t in (("a", a), ("b", b)):
        if not _is_row_or_column_major(t):
            raise ValueError(
                f"{name} must be row-major or column-major (unit stride in one dimension), got strides "
                f"{list(t.stride())}; call .contiguous() on it first"
            )
    _check_scale("scale_a", scale_a, M)
    _check_scale("scale_b", scale_b, N)
    if bias is not None:
        bias = _check_tensor("bias", bias)
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
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {', '.join(map(repr, BACKEND_CHOICES))}, got {backend!r}")
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_CHOICES))}, got {backend!r}")
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
    _check_runnable_device(a.device, "scaled_mm")
    if backend == "torch" and (reason := unsupported_reason(a, b, scale_a, scale_b, bias, out_dtype)):
        raise ValueError(f"backend='torch' cannot compute this call: {reason}; use backend='auto' or 'triton'")


def _check_runnable_device(device: torch.device, what: str) -> None:
    if device.type != "cuda" and not (INTERPRETER and device.type == "cpu"):
        raise ValueError(
            f"{what} runs on CUDA tensors, got tensors on {device}. To run the Triton kernels on the "
            "CPU (slowly, for testing), set TRITON_INTERPRET=1 before importing scaledmm."
        )


@functools.cache
def _check_device_supports(device: torch.device, fp8: bool) -> None:
    """Raise before launch where the GPU has no instructions for the operands (cached per device)."""
    if device.type != "cuda" or not fp8:
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(
            f"float8 operands need compute capability 8.9 or newer (Ada, Hopper, Blackwell); "
            f"{torch.cuda.get_device_name(device)} on {device} has {major}.{minor}. Use int8 operands."
        )


def _auto_backend(preferred: str, a, b, scale_a, scale_b, bias, out_dtype) -> str:
    """The tuned file's choice unless SCALEDMM_DISABLED_BACKENDS rules it out or the vendor kernel
    cannot serve this call; then the other backend."""
    disabled = disabled_backends()
    for backend in (preferred, "torch" if preferred == "triton" else "triton"):
        if backend in disabled:
            continue
        if backend == "torch" and (
            unsupported_reason(a, b, scale_a, scale_b, bias, out_dtype)
            or misaligned_pointer(a, b, scale_a, scale_b, bias)
        ):
            continue
        return backend
    why_not_torch = unsupported_reason(a, b, scale_a, scale_b, bias, out_dtype) or (
        "the vendor kernels need 16-byte aligned data pointers"
        if misaligned_pointer(a, b, scale_a, scale_b, bias)
        else "both are disabled"
    )
    raise ValueError(
        f"{DISABLED_BACKENDS_ENV}={','.join(sorted(disabled))} leaves no backend for this call ({why_not_torch})"
    )


# ----------------------------------------------------------------------------- prepared calls
#
# The per-call path. Everything a call needs beyond its tensors' data (validation, the plan, the
# backend, the kernel's launch arguments) depends only on the signature below, so it is worked out
# at the first call of each signature and kept as a function of the tensors: later calls cost a
# tuple, a dictionary lookup and a launch (docs/design.md, "One call, from Python to the GPU").

_prepared: dict[tuple, Callable] = {}
PREPARED_LIMIT = 4096  # signatures kept; the cache starts over beyond it (many distinct M in prefill)


def _tensor_signature(t: torch.Tensor) -> tuple:
    # The 16-byte alignment of the data pointer is part of it: Triton compiles aligned pointers
    # differently, and the vendor kernels refuse misaligned ones.
    return (t.dtype, t.shape, t.stride(), t.device, t.data_ptr() & 15)


def _remember(key: tuple, launch: Callable) -> None:
    if len(_prepared) >= PREPARED_LIMIT:
        _prepared.clear()
    _prepared[key] = launch


clear_cache_hooks.append(_prepared.clear)  # a plan or a disabled backend may change what a signature runs

# Bumped by configs.clear_cache(): prepared forwards that layers keep (nn.py) from before are stale.
prepared_generation = [0]


def _next_generation() -> None:
    prepared_generation[0] += 1


clear_cache_hooks.append(_next_generation)


# Tensor types the direct path serves; subclasses (DTensor, FakeTensor, wrappers) may override
# dispatch and go through the op.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _eager(*tensors: object) -> bool:
    """Whether a call may bypass the torch.library dispatcher: plain tensors (None allowed) with no
    autograd to record, not while torch.compile or torch.jit traces, and not under a Python dispatch
    or function mode (FakeTensorMode, make_fx, a torch.device context), all of which must see the op."""
    if (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._is_torch_function_mode_enabled()
    ):
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN_TENSOR_TYPES or (grad and t.requires_grad)):
            return False
    return True


def _device_guard(device: torch.device):
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _scaled_mm_signature(a, b, scale_a, scale_b, bias, out_dtype, config, backend) -> tuple:
    return (
        "scaled_mm",
        _tensor_signature(a),
        _tensor_signature(b),
        _tensor_signature(scale_a),
        _tensor_signature(scale_b),
        None if bias is None else _tensor_signature(bias),
        out_dtype,
        config,
        backend,
    )


def _prepare_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype, config, backend) -> tuple[torch.Tensor, Callable]:
    """Plan a validated call, compute it, and return the result with a function that computes the
    same for new tensors of the same signature."""
    M, K = a.shape
    N = b.shape[1]
    device = a.device
    if M == 0:

        def empty(a, b, scale_a, scale_b, bias):
            return torch.empty((0, N), dtype=out_dtype, device=device)

        return empty(a, b, scale_a, scale_b, bias), empty
    _check_device_supports(device, a.dtype != torch.int8)
    if config is not None:
        backend = "triton"
    else:
        chosen = plan(M, N, K, a.dtype, device)
        config = chosen.config
        if backend == "auto":
            backend = _auto_backend(chosen.backend, a, b, scale_a, scale_b, bias, out_dtype)
    if backend == "torch":
        if misaligned_pointer(a, b, scale_a, scale_b, bias):
            raise ValueError(
                "backend='torch' cannot compute this call: the vendor kernels need 16-byte aligned "
                "data pointers (a view at an odd offset); use backend='auto' or 'triton'"
            )

        def vendor(a, b, scale_a, scale_b, bias):
            return vendor_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype)

        return vendor(a, b, scale_a, scale_b, bias), vendor

    with _device_guard(device):
        return bind_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype, config)


def _run_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype, config, backend) -> torch.Tensor:
    """A validated call, through its prepared function (prepared now if this is its first call)."""
    key = _scaled_mm_signature(a, b, scale_a, scale_b, bias, out_dtype, config, backend)
    launch = _prepared.get(key)
    if launch is not None:
        return launch(a, b, scale_a, scale_b, bias)
    out, launch = _prepare_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype, config, backend)
    _remember(key, launch)
    return out


@torch.library.custom_op("scaledmm::scaled_mm", mutates_args=())
def _scaled_mm_op(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    config: list[int] | None,
    backend: str,
) -> torch.Tensor:
    config = None if config is None else MatmulConfig.from_list(config)
    return _run_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype, config, backend)


@_scaled_mm_op.register_fake
def _scaled_mm_fake(a, b, scale_a, scale_b, bias, out_dtype, config, backend):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=out_dtype)


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
) -> torch.Tensor:
    """(a @ b) * scale_a * scale_b + bias, accumulated exactly (int32) or in fp32, scaled in fp32.

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

    Returns:
        A new contiguous [M, N] tensor of `out_dtype` on the operands' device.

    Raises:
        TypeError: an argument of the wrong type or dtype.
        ValueError: a wrong shape, layout or device.
    """
    if _eager(a, b, scale_a, scale_b, bias):
        # A signature seen before was validated then: its prepared function runs at once. An
        # unhashable config fails to make a key and gets the checks' message below.
        try:
            launch = _prepared.get(_scaled_mm_signature(a, b, scale_a, scale_b, bias, out_dtype, config, backend))
        except TypeError:
            launch = None
        if launch is not None:
            return launch(a, b, scale_a, scale_b, bias)
        check_scaled_mm_args(a, b, scale_a, scale_b, out_dtype, bias, config, backend)
        return _run_scaled_mm(a, b, scale_a, scale_b, bias, out_dtype, config, backend)
    check_scaled_mm_args(a, b, scale_a, scale_b, out_dtype, bias, config, backend)
    return torch.ops.scaledmm.scaled_mm.default(
        a, b, scale_a, scale_b, bias, out_dtype, None if config is None else config.as_list(), backend
    )


# ----------------------------------------------------------------------------- activation quantization


def _prepare_quantize(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> tuple[object, Callable]:
    """Quantize a validated x [..., K] (dynamic per token when `scale` is None, else with the given
    per-tensor scale) and return the result with a function that does the same for new tensors of the
    same signature."""
    shape = x.shape
    K = shape[-1]
    lead = shape[:-1]
    M = math.prod(lead)
    device = x.device
    dynamic = scale is None

    def allocate(scale):
        q = torch.empty(shape, dtype=dtype, device=device)
        if dynamic:
            scale = torch.empty((*lead, 1), dtype=torch.float32, device=device)
        return q, scale

    def result(q, scale):
        return (q, scale) if dynamic else q

    if M == 0:

        def empty(x, scale):
            return result(*allocate(scale))

        return empty(x, scale), empty
    _check_device_supports(device, dtype != torch.int8)
    with _device_guard(device):
        q, scale = allocate(scale)
    bound = bind_quantize_rows(x.reshape(M, K), q.view(M, K), scale, dynamic)

    def quantize(x, scale):
        q, scale = allocate(scale)
        bound(x.reshape(M, K), q.view(M, K), scale)
        return result(q, scale)

    return result(q, scale), quantize


def _run_quantize(x: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype):
    """A validated quantization, through its prepared function (prepared now if this is its first call)."""
    key = _quantize_signature(x, scale, dtype)
    launch = _prepared.get(key)
    if launch is not None:
        return launch(x, scale)
    out, launch = _prepare_quantize(x, scale, dtype)
    _remember(key, launch)
    return out


def _quantize_signature(x, scale, dtype) -> tuple:
    return ("quantize", _tensor_signature(x), None if scale is None else _tensor_signature(scale), dtype)


def _prepared_quantize(x: object, scale: object, dtype: object) -> Callable | None:
    """The prepared function of an eager call seen before, else None."""
    if not _eager(x, scale):
        return None
    try:
        return _prepared.get(_quantize_signature(x, scale, dtype))
    except TypeError:  # an unhashable dtype argument; the checks name it
        return None


@torch.library.custom_op("scaledmm::quantize_per_token", mutates_args=())
def _quantize_per_token_op(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_quantize(x, None, dtype)


@_quantize_per_token_op.register_fake
def _quantize_per_token_fake(x, dtype):
    return x.new_empty(x.shape, dtype=dtype), x.new_empty((x.shape[0], 1), dtype=torch.float32)


@torch.library.custom_op("scaledmm::quantize_per_tensor", mutates_args=())
def _quantize_per_tensor_op(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return _run_quantize(x, scale, dtype)


@_quantize_per_tensor_op.register_fake
def _quantize_per_tensor_fake(x, scale, dtype):
    return x.new_empty(x.shape, dtype=dtype)


def _check_quantize_args(x: object, dtype: object) -> torch.Tensor:
    x = _check_tensor("x", x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must have dtype {_names(FLOAT_DTYPES)}, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must be [..., K] with K >= 1, got shape {list(x.shape)}")
    if not isinstance(dtype, torch.dtype) or dtype not in QUANT_DTYPES:
        raise TypeError(f"dtype must be torch.int8 or torch.float8_e4m3fn, got {dtype!r}")
    _check_runnable_device(x.device, "quantization")
    return x


def _check_static_scale(scale: object, x: torch.Tensor) -> torch.Tensor:
    scale = _check_tensor("scale", scale)
    if scale.dtype not in SCALE_DTYPES:
        raise TypeError(f"scale must have dtype {_names(SCALE_DTYPES)}, got {scale.dtype}")
    if scale.numel() != 1:
        raise ValueError(f"scale must hold one value (per-tensor), got shape {list(scale.shape)}")
    if scale.device != x.device:
        raise ValueError(f"scale is on {scale.device} but x is on {x.device}")
    return scale


def quantize_per_token(x: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic per-token quantization of an activation [..., K].

    Returns (q, scale): q of `dtype` and x's shape, scale float32 [..., 1] with
    x ~= q * scale; scale = max(|row|) / 127 (int8) or / 448 (fp8), floored so that zero rows stay
    finite; values rounded to nearest even and saturated. `q.reshape(-1, K)` and
    `scale.reshape(-1, 1)` are scaled_mm's `a` and per-token `scale_a`.
    """
    if (launch := _prepared_quantize(x, None, dtype)) is not None:
        return launch(x, None)
    x = _check_quantize_args(x, dtype)
    if _eager(x):
        return _run_quantize(x, None, dtype)
    K = x.shape[-1]
    q, scale = torch.ops.scaledmm.quantize_per_token.default(x.reshape(-1, K), dtype)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def quantize_per_tensor(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Static quantization of an activation [..., K] with one given scale (x ~= q * scale)."""
    if (launch := _prepared_quantize(x, scale, dtype)) is not None:
        return launch(x, scale)
    x = _check_quantize_args(x, dtype)
    scale = _check_static_scale(scale, x)
    if _eager(x, scale):
        return _run_quantize(x, scale, dtype)
    K = x.shape[-1]
    return torch.ops.scaledmm.quantize_per_tensor.default(x.reshape(-1, K), scale, dtype).reshape(x.shape)


# ----------------------------------------------------------------------------- a quantized linear layer


def prepare_quantized_linear(
    x: torch.Tensor,
    weight_t: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    input_scale: torch.Tensor | None,
    out_dtype: torch.dtype,
    backend: str,
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """y = quantize(x) @ weight_t, scaled, plus bias, for an eager x [..., K] (checked as
    quantize_per_token or quantize_per_tensor and scaled_mm check theirs); return y [..., N] and a
    function of x that computes the same for a new x of the same signature (dtype, shape, strides,
    device, alignment) with these weights, without checks or signature lookups (W8A8Linear's
    per-call path): the prepared quantize and scaled_mm launches, or for a few rows outside CUDA-graph
    capture one launch of the quantized linear kernel. Dynamic per-token activations where
    `input_scale` is None. The weights must stay these tensors (their contents may change in place)."""
    x = _check_quantize_args(x, dtype)
    if input_scale is not None:
        input_scale = _check_static_scale(input_scale, x)
    lead, K = x.shape[:-1], x.shape[-1]
    flat = x.dim() != 2
    x2 = x.reshape(-1, K) if flat else x
    M, N = x2.shape[0], weight_t.shape[1]
    out_shape = (*lead, N)
    quantized, quantize = _prepare_quantize(x2, input_scale, dtype)
    q, scale = quantized if input_scale is None else (quantized, input_scale)
    check_scaled_mm_args(q, weight_t, scale, weight_scale, out_dtype, bias, None, backend)
    out, matmul = _prepare_scaled_mm(q, weight_t, scale, weight_scale, bias, out_dtype, None, backend)

    def two_launches(x: torch.Tensor) -> torch.Tensor:
        if input_scale is None:
            q, scale = quantize(x, None)
        else:
            q, scale = quantize(x, input_scale), input_scale
        return matmul(q, weight_t, scale, weight_scale, bias)

    run = two_launches
    config = _fused_linear_config(q, weight_t, scale, weight_scale, bias, out_dtype, backend)
    if config is not None:
        # Few rows, eager: one launch that quantizes inside the matmul (kernels/linear.py), the same
        # bits. It saves more host time than it costs GPU time there; a CUDA graph being captured,
        # where host time is gone, records the two tuned launches instead. Bound at its first eager
        # call (binding launches once, which a capture would record for nothing).
        capturing = torch.cuda.is_current_stream_capturing if x.device.type == "cuda" else lambda: False
        one_launch: list[Callable[[torch.Tensor], torch.Tensor]] = []

        def run(x: torch.Tensor) -> torch.Tensor:
            if capturing():
                return two_launches(x)
            if one_launch:
                return one_launch[0](x)
            with _device_guard(x.device):
                out, launch = bind_quantized_linear(x, weight_t, input_scale, weight_scale, bias, out_dtype, config)
            one_launch.append(launch)
            return out

    def linear(x: torch.Tensor) -> torch.Tensor:
        out = run(x.reshape(M, K) if flat else x)
        return out.view(out_shape) if flat else out

    return (out.view(out_shape) if flat else out), linear


def _fused_linear_config(q, weight_t, scale, weight_scale, bias, out_dtype, backend) -> MatmulConfig | None:
    """The config of the one-launch quantized linear: for at most FUSED_QUANTIZE_MAX_M rows, where
    scaled_mm would run the pointer or swapped kernel unsplit (so both compute the same bits), its config; else
    None."""
    M, K = q.shape
    N = weight_t.shape[1]
    if not 1 <= M <= FUSED_QUANTIZE_MAX_M or backend == "torch" or q.dtype != weight_t.dtype:
        return None
    chosen = plan(M, N, K, q.dtype, q.device)
    if backend == "auto":
        backend = _auto_backend(chosen.backend, q, weight_t, scale, weight_scale, bias, out_dtype)
    config = chosen.config
    return config if backend == "triton" and config.split_k == 1 and config.kernel != "tma" else None
