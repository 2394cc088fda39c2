"""The run-time: plans become prepared calls, kept per call signature.

Everything a call needs beyond its tensors' data (the plan, the backend, the kernel's launch
arguments) depends only on its signature: dtypes, shapes, strides, devices and pointer alignment of
the tensors, and the other arguments. So it is worked out at the first call of each signature, into
a prepared call, and later calls cost a tuple, a dictionary lookup and a launch.

Prepared calls are small named objects that say what they run (`print()` one, or a layer that keeps
them): `TritonScaledMM`, `VendorScaledMM` and `EmptyScaledMM` for scaled_mm, `PreparedQuantize`
for activation quantization, and `PreparedLinear` for a W8A8Linear forward. Their arguments come in
the public order, `(a, b, scale_a, scale_b, bias)`, with the output dtype fixed at preparation.

The callers (scaledmm.api, scaledmm.ops, scaledmm.nn) check arguments before preparing: a prepared
call trusts its signature (docs/design.md, "Trust boundaries").
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
from triton.runtime.errors import OutOfResources

from scaledmm.checks import check_device_supports, check_quantize_args, check_scaled_mm_args, check_static_scale
from scaledmm.configs import MatmulConfig, device_limits, heuristic_config, plan
from scaledmm.configs.heuristic import block_heuristic_config
from scaledmm.configs.lookup import DISABLED_BACKENDS_ENV, disabled_backends, unfit_reason
from scaledmm.kernels.linear import FUSED_QUANTIZE_MAX_M, QuantizedLinearLaunch, bind_quantized_linear
from scaledmm.kernels.matmul import MatmulLaunch, bind_scaled_mm
from scaledmm.kernels.matmul_block import bind_block_scaled_mm
from scaledmm.kernels.producers import bind_rms_norm_quantize, bind_silu_mul_quantize
from scaledmm.kernels.quant import bind_quantize_groups, bind_quantize_rows
from scaledmm.kernels.vendor import fast_accum_refused, misaligned_pointer, unsupported_reason, vendor_scaled_mm
from scaledmm.state import state

# Tensor types the direct path serves; subclasses (DTensor, FakeTensor, wrappers) may override
# dispatch and go through the op.
_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def eager(*tensors: object) -> bool:
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


def tensor_signature(t: torch.Tensor | None) -> tuple | None:
    # The 16-byte alignment of the data pointer is part of it: Triton compiles aligned pointers
    # differently, and the vendor kernels refuse misaligned ones.
    if t is None:
        return None
    try:
        return (t.dtype, t.shape, t.stride(), t.device, t.data_ptr() & 15)
    except RuntimeError:
        # A tensor without sizes, strides or storage (sparse, nested) has no signature, and torch's
        # RuntimeError would escape before the checks: a key that no prepared call has sends the
        # call on to them, which name it (checks.check_tensor).
        return (t.layout, "no signature")


def scaled_mm_signature(a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size) -> tuple:
    return (
        "scaled_mm",
        tensor_signature(a),
        tensor_signature(b),
        tensor_signature(scale_a),
        tensor_signature(scale_b),
        out_dtype,
        tensor_signature(bias),
        config,
        backend,
        accumulation,
        block_size,
    )


def quantize_signature(x, scale, dtype, group_size=None, column_major_scales=False) -> tuple:
    return ("quantize", tensor_signature(x), tensor_signature(scale), dtype, group_size, column_major_scales)


class PreparedCalls(dict):
    """Prepared calls by signature. It starts over beyond LIMIT signatures (many distinct M in
    prefill), and `scaledmm.clear_cache()` empties it (a plan or a disabled backend may have changed)."""

    LIMIT = 4096

    def remember(self, key: tuple, call: object) -> None:
        if len(self) >= self.LIMIT:
            self.clear()
        self[key] = call


prepared = PreparedCalls()
state.register("scaledmm.runtime.prepared", prepared.clear)


def _device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# ----------------------------------------------------------------------------- scaled_mm


class TritonScaledMM:
    """A prepared scaled_mm through one of our kernels: a new output, and the bound launch."""

    backend = "triton"

    def __init__(self, launch: MatmulLaunch, out_shape: tuple[int, int], out_dtype: torch.dtype, device):
        self.launch = launch
        self.config = launch.config
        self.kernel = launch.kernel
        self.accumulation = "precise" if launch.precise else "fast"
        self.out_shape = out_shape
        self.out_dtype = out_dtype
        self.device = device

    def __call__(self, a, b, scale_a, scale_b, bias=None) -> torch.Tensor:
        out = torch.empty(self.out_shape, dtype=self.out_dtype, device=self.device)
        self.launch(a, b, scale_a, scale_b, bias, out)
        return out

    def __repr__(self) -> str:
        return (
            f"TritonScaledMM(kernel={self.kernel}, config={self.config}, accumulation={self.accumulation}, "
            f"out={list(self.out_shape)} {self.out_dtype})"
        )


class VendorScaledMM:
    """A prepared scaled_mm through the vendor kernels (kernels/vendor.py), in the call's fp8
    accumulation mode; where cuBLAS refuses fast accumulation for the shape, in its precise mode
    (`accumulation` says which ran). With `block_size`, torch._scaled_mm's block mode (promoted
    every block: "precise")."""

    backend = "torch"
    config = None

    def __init__(self, out_dtype: torch.dtype, fp8: bool, accumulation: str, block_size: tuple[int, int] | None = None):
        self.out_dtype = out_dtype
        self.kernel = "torch._scaled_mm" if fp8 else "torch._int_mm"
        if block_size is not None:
            self.kernel += f" (block scales {block_size[0]}x{block_size[1]})"
        self.accumulation = accumulation
        self.block_size = block_size

    def first_call(self, a, b, scale_a, scale_b, bias=None) -> torch.Tensor:
        try:
            return self(a, b, scale_a, scale_b, bias)
        except RuntimeError as err:
            if self.accumulation != "fast" or not fast_accum_refused(err):
                raise
            self.accumulation = "precise (cuBLAS refused fast accumulation here)"
            return self(a, b, scale_a, scale_b, bias)

    def __call__(self, a, b, scale_a, scale_b, bias=None) -> torch.Tensor:
        fast = self.accumulation == "fast"
        return vendor_scaled_mm(a, b, scale_a, scale_b, bias, self.out_dtype, fast, self.block_size)

    def __repr__(self) -> str:
        return f"VendorScaledMM(kernel={self.kernel}, accumulation={self.accumulation}, out_dtype={self.out_dtype})"


class EmptyScaledMM:
    """A prepared scaled_mm of M = 0 rows: an empty output, no launch."""

    backend = "none"
    config = None
    kernel = None

    def __init__(self, n: int, out_dtype: torch.dtype, device):
        self.n, self.out_dtype, self.device = n, out_dtype, device

    def __call__(self, a, b, scale_a, scale_b, bias=None) -> torch.Tensor:
        return torch.empty((0, self.n), dtype=self.out_dtype, device=self.device)

    def __repr__(self) -> str:
        return f"EmptyScaledMM(N={self.n}, out_dtype={self.out_dtype})"


PreparedScaledMM = TritonScaledMM | VendorScaledMM | EmptyScaledMM


def auto_backend(preferred: str, a, b, scale_a, scale_b, out_dtype, bias, block_size=None) -> str:
    """The plan's backend unless SCALEDMM_DISABLED_BACKENDS rules it out or the vendor kernel
    cannot serve this call (with block scales of `block_size`, if given); then the other backend."""
    disabled = disabled_backends()
    for backend in (preferred, "torch" if preferred == "triton" else "triton"):
        if backend in disabled:
            continue
        if backend == "torch" and (
            unsupported_reason(a, b, scale_a, scale_b, bias, out_dtype, block_size)
            or misaligned_pointer(a, b, scale_a, scale_b, bias)
        ):
            continue
        return backend
    why_not_torch = unsupported_reason(a, b, scale_a, scale_b, bias, out_dtype, block_size) or (
        "the vendor kernels need 16-byte aligned data pointers"
        if misaligned_pointer(a, b, scale_a, scale_b, bias)
        else "both are disabled"
    )
    raise ValueError(
        f"{DISABLED_BACKENDS_ENV}={','.join(sorted(disabled))} leaves no backend for this call ({why_not_torch})"
    )


def prepare_scaled_mm(
    a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size=None
) -> tuple[torch.Tensor, PreparedScaledMM]:
    """Plan a checked call, compute it, and return the result with its prepared call (which computes
    the same for new tensors of this signature)."""
    (M, K), N = a.shape, b.shape[1]
    if M == 0:
        empty = EmptyScaledMM(N, out_dtype, a.device)
        return empty(a, b, scale_a, scale_b, bias), empty
    check_device_supports(a.device, a.dtype != torch.int8)
    if block_size is not None:
        return _prepare_block_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias, config, backend, tuple(block_size))
    explicit = config is not None
    if explicit:
        backend = "triton"
        if reason := unfit_reason(config, M, N, device_limits(a.device)[1]):
            raise ValueError(f"config {config} cannot run on {a.device}: {reason}")
    else:
        chosen = plan(M, N, K, a.dtype, a.device, accumulation)
        config = chosen.config
        if backend == "auto":
            backend = auto_backend(chosen.backend, a, b, scale_a, scale_b, out_dtype, bias)
    if backend == "torch":
        if misaligned_pointer(a, b, scale_a, scale_b, bias):
            raise ValueError(
                "backend='torch' cannot compute this call: the vendor kernels need 16-byte aligned "
                "data pointers (a view at an odd offset); use backend='auto' or 'triton'"
            )
        vendor = VendorScaledMM(out_dtype, a.dtype != torch.int8, accumulation)
        return vendor.first_call(a, b, scale_a, scale_b, bias), vendor
    precise = accumulation == "precise"
    with _device_guard(a.device):
        out = torch.empty((M, N), dtype=out_dtype, device=a.device)
        try:
            launch = bind_scaled_mm(a, b, scale_a, scale_b, bias, out, config, precise)
        except OutOfResources as err:
            # A config that passed the estimate (configs.lookup.unfit_reason) and still does not fit.
            if explicit:
                raise ValueError(f"config {config} cannot run on {a.device}: {err}") from None
            warnings.warn(f"config {config} cannot run on {a.device} ({err}); the heuristic's runs", stacklevel=2)
            config = heuristic_config(M, N, K, a.dtype, *device_limits(a.device))
            launch = bind_scaled_mm(a, b, scale_a, scale_b, bias, out, config, precise)
    return out, TritonScaledMM(launch, (M, N), out_dtype, a.device)


def _block_backend(a, b, scale_a, scale_b, out_dtype, bias, config, backend, block_size) -> tuple[str, MatmulConfig]:
    """The backend and config of a checked block-scaled call (M >= 1): an explicit config runs ours;
    else the plan's config (configs.lookup.plan: a tuned block bucket's, or the block heuristic's),
    on the plan's backend under `auto` unless the vendor cannot serve the call (auto_backend)."""
    if config is not None:
        return "triton", config
    (M, K), N = a.shape, b.shape[1]
    chosen = plan(M, N, K, a.dtype, a.device, block_size=block_size)
    if backend == "auto":
        backend = auto_backend(chosen.backend, a, b, scale_a, scale_b, out_dtype, bias, block_size)
    return backend, chosen.config


def block_call_runs_vendor(a, b, scale_a, scale_b, out_dtype, bias, backend, block_size) -> bool:
    """Whether a checked block-scaled call (M >= 1, no explicit config) runs torch._scaled_mm's block
    mode, which reads scale_a column-major ([M, groups] with strides (1, M); other layouts are copied
    into it per call): the prepared layers quantize into that layout for such calls (prepare_linear)."""
    return _block_backend(a, b, scale_a, scale_b, out_dtype, bias, None, backend, tuple(block_size))[0] == "torch"


def _prepare_block_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias, config, backend, block_size):
    """The block-scaled product: our kernels (kernels/matmul_block.py) with the tile of a tuned block
    bucket or the block heuristic's (configs.lookup.plan), or the vendor's block mode where the plan
    gives it (`auto`: a bucket the vendor won, or an untuned call at M >= 65 on Hopper, each unless
    the vendor's padding of M to a multiple of 4 outweighs its lead: configs.lookup.plan) or
    `backend='torch'` asks for it."""
    M, N = a.shape[0], b.shape[1]
    explicit = config is not None
    chosen_by_auto = not explicit and backend == "auto"
    if explicit and (reason := unfit_reason(config, M, N, device_limits(a.device)[1])):
        raise ValueError(f"config {config} cannot run on {a.device}: {reason}")
    backend, config = _block_backend(a, b, scale_a, scale_b, out_dtype, bias, config, backend, block_size)
    if backend == "torch":
        if misaligned_pointer(a, b, scale_a, scale_b, bias):
            raise ValueError(
                "backend='torch' cannot compute this call: the vendor kernels need 16-byte aligned "
                "data pointers (a view at an odd offset); use backend='auto' or 'triton'"
            )
        vendor = VendorScaledMM(out_dtype, True, "precise", block_size)
        try:
            return vendor(a, b, scale_a, scale_b, bias), vendor
        except RuntimeError as err:  # a layout or size this torch refuses that unsupported_reason passed
            if not chosen_by_auto:
                raise
            warnings.warn(f"torch._scaled_mm refused block scales here ({err}); scaledmm's kernel runs", stacklevel=3)
    with _device_guard(a.device):
        out = torch.empty((M, N), dtype=out_dtype, device=a.device)
        try:
            launch = bind_block_scaled_mm(a, b, scale_a, scale_b, bias, out, config, block_size)
        except OutOfResources as err:  # a tuned config that passed the estimate and still does not fit
            if explicit:
                raise ValueError(f"config {config} cannot run on {a.device}: {err}") from None
            warnings.warn(f"config {config} cannot run on {a.device} ({err}); the heuristic's runs", stacklevel=2)
            config = block_heuristic_config(M, N, a.shape[1], block_size[1], *device_limits(a.device))
            launch = bind_block_scaled_mm(a, b, scale_a, scale_b, bias, out, config, block_size)
    return out, TritonScaledMM(launch, (M, N), out_dtype, a.device)


def run_scaled_mm(
    a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size=None
) -> torch.Tensor:
    """A checked call, through its prepared call (prepared now if this is its signature's first)."""
    key = scaled_mm_signature(a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size)
    call = prepared.get(key)
    if call is not None:
        return call(a, b, scale_a, scale_b, bias)
    out, call = prepare_scaled_mm(a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size)
    prepared.remember(key, call)
    return out


# ----------------------------------------------------------------------------- activation quantization


def empty_group_scales(lead_shape: tuple[int, ...], groups: int, device, column_major: bool) -> torch.Tensor:
    """An fp32 scale tensor [*lead_shape, groups] for per-token-group quantization: each row's scales
    contiguous, or with `column_major` each group's scales contiguous over the rows (strides (1, rows)
    as [rows, groups]), the layout torch._scaled_mm's block mode reads."""
    if not column_major:
        return torch.empty((*lead_shape, groups), dtype=torch.float32, device=device)
    rows = math.prod(lead_shape)
    return torch.empty((groups, rows), dtype=torch.float32, device=device).t().view(*lead_shape, groups)


class PreparedQuantize:
    """A prepared quantization of x [..., K]: dynamic per token (returns (q, scale [..., 1])), per
    1 x group_size group (returns (q, scale [..., ceil(K / group_size)]), its rows' scales
    contiguous, or with `column_major_scales` each group's scales over the rows contiguous, the
    layout torch._scaled_mm's block mode reads), or with a given per-tensor scale (returns q)."""

    def __init__(
        self,
        x: torch.Tensor,
        dtype: torch.dtype,
        dynamic: bool,
        group_size: int | None = None,
        column_major_scales: bool = False,
    ):
        self.shape = x.shape
        self.K = x.shape[-1]
        self.M = math.prod(x.shape[:-1])
        self.dtype = dtype
        self.dynamic = dynamic
        self.group_size = group_size
        self.scales = 1 if group_size is None else -(-self.K // group_size)  # per row
        self.column_major_scales = column_major_scales
        self.device = x.device
        self.launch = None  # bound at the first call with rows

    def __call__(self, x: torch.Tensor, scale: torch.Tensor | None = None):
        q = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        if self.dynamic:
            scale = empty_group_scales(self.shape[:-1], self.scales, self.device, self.column_major_scales)
        if self.M:
            rows = (x.reshape(self.M, self.K), q.view(self.M, self.K), scale)
            if self.launch is not None:
                self.launch(*rows)
                return (q, scale) if self.dynamic else q
            check_device_supports(self.device, self.dtype != torch.int8)
            with _device_guard(self.device):
                if self.group_size is None:
                    self.launch = bind_quantize_rows(*rows, self.dynamic)
                else:
                    self.launch = bind_quantize_groups(*rows[:2], scale.view(self.M, self.scales), self.group_size)
        return (q, scale) if self.dynamic else q

    def __repr__(self) -> str:
        mode = "per-tensor" if not self.dynamic else "per-token" if self.group_size is None else "per-token-group"
        layout = ", column-major scales" if self.column_major_scales else ""
        return f"PreparedQuantize({mode}, shape={list(self.shape)}, dtype={self.dtype}{layout})"


def run_quantize(
    x: torch.Tensor,
    scale: torch.Tensor | None,
    dtype: torch.dtype,
    group_size: int | None = None,
    column_major_scales: bool = False,
):
    """A checked quantization, through its prepared call (prepared now if this is its first)."""
    key = quantize_signature(x, scale, dtype, group_size, column_major_scales)
    call = prepared.get(key)
    if call is None:
        call = PreparedQuantize(x, dtype, scale is None, group_size, column_major_scales)
        prepared.remember(key, call)
    return call(x, scale)


# ----------------------------------------------------------------------------- producers with the quantization fused


class PreparedProducer:
    """A prepared producer kernel with per-token quantization fused in (kernels/producers.py), for
    one signature: RMSNorm (inputs x [..., K] and weight [K]) or SwiGLU (inputs gate and up
    [..., K]). Returns (q [..., K], scale [..., 1] float32), as quantize_per_token does."""

    def __init__(self, kind: str, x: torch.Tensor, dtype: torch.dtype, eps: float = 0.0):
        self.kind = kind  # "rms_norm" or "silu_mul"
        self.shape = x.shape
        self.M, self.K = math.prod(x.shape[:-1]), x.shape[-1]
        self.dtype = dtype
        self.eps = eps
        self.device = x.device
        self.launch = None  # bound at the first call with rows

    def __call__(self, first: torch.Tensor, second: torch.Tensor):
        q = torch.empty(self.shape, dtype=self.dtype, device=self.device)
        scale = torch.empty((*self.shape[:-1], 1), dtype=torch.float32, device=self.device)
        if not self.M:
            return q, scale
        rows = first.reshape(self.M, self.K)
        second = second.reshape(self.M, self.K) if self.kind == "silu_mul" else second
        q_rows = q.view(self.M, self.K)
        if self.launch is not None:
            self.launch(rows, second, q_rows, scale)
            return q, scale
        check_device_supports(self.device, self.dtype != torch.int8)
        with _device_guard(self.device):
            if self.kind == "rms_norm":
                self.launch = bind_rms_norm_quantize(rows, second, q_rows, scale, self.eps)
            else:
                self.launch = bind_silu_mul_quantize(rows, second, q_rows, scale)
        return q, scale

    def __repr__(self) -> str:
        return f"PreparedProducer({self.kind} + per-token quantize, shape={list(self.shape)}, dtype={self.dtype})"


def producer_signature(kind: str, first, second, dtype, eps: float = 0.0) -> tuple:
    return (kind, tensor_signature(first), tensor_signature(second), dtype, eps)


def run_producer(kind: str, first: torch.Tensor, second: torch.Tensor, dtype: torch.dtype, eps: float = 0.0):
    """A checked producer call (`kind` "rms_norm": first = x, second = weight; "silu_mul": gate, up),
    through its prepared call (prepared now if this is its first)."""
    key = producer_signature(kind, first, second, dtype, eps)
    call = prepared.get(key)
    if call is None:
        call = PreparedProducer(kind, first, dtype, eps)
        prepared.remember(key, call)
    return call(first, second)


# ----------------------------------------------------------------------------- the quantized linear layer


class PreparedLinear:
    """A W8A8Linear forward for one input signature, with these weights: y = quantize(x) @ weight_t,
    scaled, plus bias, over x's rows. Two prepared launches (quantize, scaled_mm), or, for a few rows
    outside CUDA-graph capture, one launch of the quantized linear kernel (kernels/linear.py), the
    same bits: there it saves more host time than it costs GPU time. A graph being captured, where
    host time is gone, records the two launches."""

    def __init__(self, x, quantize, matmul, weights, fused_config, precise):
        self.quantize = quantize  # a PreparedQuantize of x's rows
        self.matmul = matmul  # a prepared scaled_mm of the quantized rows
        self.weight_t, self.weight_scale, self.bias, self.input_scale = weights
        self.flat = x.dim() != 2  # x [..., K] runs as its rows [M, K]
        self.rows = (math.prod(x.shape[:-1]), x.shape[-1])
        self.out_rows = (self.rows[0], self.weight_t.shape[1])
        self.out_shape = (*x.shape[:-1], self.weight_t.shape[1])
        self.fused_config = fused_config  # the one-launch kernel's config, or None
        self.precise = precise  # the one-launch kernel's accumulation, the matmul's
        self.fused: QuantizedLinearLaunch | None = None  # bound at its first eager call

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(self.rows) if self.flat else x
        if self.fused_config is None or (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            if self.input_scale is None:
                q, scale = self.quantize(rows)
            else:
                q, scale = self.quantize(rows, self.input_scale), self.input_scale
            out = self.matmul(q, self.weight_t, scale, self.weight_scale, self.bias)
        else:
            out = torch.empty(self.out_rows, dtype=self.matmul.out_dtype, device=x.device)
            if self.fused is not None:
                self.fused(rows, out)
            else:
                try:
                    with _device_guard(x.device):
                        self.fused = bind_quantized_linear(
                            rows, self.weight_t, self.input_scale, self.weight_scale, self.bias, out,
                            self.fused_config, self.precise,
                        )  # fmt: skip
                except OutOfResources:  # it stages x in float, more than scaled_mm's tile: two launches
                    self.fused_config = None
                    return self(x)
        return out.view(self.out_shape) if self.flat else out

    def describe(self) -> str:
        """One line for a layer's repr: the rows, and the kernel and config the forward runs."""
        if self.fused_config is not None:
            return f"M={self.rows[0]}: quantize+{self.matmul.kernel} in one launch {self.fused_config}"
        config = f" {self.matmul.config}" if self.matmul.config is not None else ""
        return f"M={self.rows[0]}: {self.matmul.backend} {self.matmul.kernel}{config}"

    def __repr__(self) -> str:
        one = f", one launch for eager calls: config={self.fused_config}" if self.fused_config else ""
        return f"PreparedLinear({self.quantize!r}, {self.matmul!r}{one})"


def prepare_linear(
    x, weight_t, weight_scale, bias, dtype, input_scale, out_dtype, backend, accumulation, block_size=None
):
    """y = quantize(x) @ weight_t, scaled, plus bias, for an eager x [..., K] (dynamic per-token
    activations where `input_scale` is None; with `block_size` (block_n, block_k), dynamic per 1 x
    block_k group and `weight_scale` the block scales [ceil(K / block_k), ceil(N / block_n)]): check
    the call, and return y [..., N] and the PreparedLinear that computes it again for a new x of the
    same signature with these weights (their contents may change in place)."""
    check_quantize_args(x, dtype)
    if input_scale is not None:
        check_static_scale(input_scale, x)
    rows = x.reshape(-1, x.shape[-1]) if x.dim() != 2 else x
    group_size = None if block_size is None else block_size[1]
    # The checks, and the layout of block scales, read shapes, dtypes and alignment only: they are made
    # on empty stand-ins of the quantized rows and their scales, before any launch. Where a
    # block-scaled call runs the vendor, which reads scale_a column-major, the rows are quantized into
    # that layout, so that no call copies it (2-3 us on an H200).
    q = torch.empty(rows.shape, dtype=dtype, device=rows.device)
    scales_per_row = 1 if group_size is None else -(-rows.shape[1] // group_size)
    scale = input_scale
    if scale is None:
        scale = torch.empty((rows.shape[0], scales_per_row), dtype=torch.float32, device=rows.device)
    check_scaled_mm_args(q, weight_t, scale, weight_scale, out_dtype, bias, None, backend, accumulation, block_size)
    column_major = (
        block_size is not None
        and rows.shape[0] > 0
        and block_call_runs_vendor(q, weight_t, scale, weight_scale, out_dtype, bias, backend, block_size)
    )
    quantize = PreparedQuantize(rows, dtype, input_scale is None, group_size, column_major)
    quantized = quantize(rows, input_scale)
    q, scale = quantized if input_scale is None else (quantized, input_scale)
    out, matmul = prepare_scaled_mm(
        q, weight_t, scale, weight_scale, out_dtype, bias, None, backend, accumulation, block_size
    )
    # The one-launch kernel quantizes per token: block-scaled layers run their two launches.
    fused_config = None if block_size is not None else _fused_linear_config(q, weight_t, matmul)
    weights = (weight_t, weight_scale, bias, input_scale)
    linear = PreparedLinear(x, quantize, matmul, weights, fused_config, accumulation == "precise")
    return (out.view(linear.out_shape) if linear.flat else out), linear


def _fused_linear_config(q: torch.Tensor, weight_t: torch.Tensor, matmul: PreparedScaledMM) -> MatmulConfig | None:
    """The config of the one-launch quantized linear: for 1..FUSED_QUANTIZE_MAX_M rows where the
    prepared scaled_mm runs the pointer or swapped kernel unsplit (so both compute the same bits),
    that config; else None."""
    M = q.shape[0]
    if not 1 <= M <= FUSED_QUANTIZE_MAX_M or q.dtype != weight_t.dtype or matmul.backend != "triton":
        return None
    config = matmul.config
    same_kernel = config.kernel == matmul.kernel and config.kernel in ("pointer", "swapped")
    return config if same_kernel and config.split_k == 1 else None
