"""Bound launches: one compiled Triton kernel, its grid and its constant arguments, launched again
with new tensors at a fraction of the host cost of `kernel[grid](...)`.

`kernel[grid](*args)` costs 40-50 µs of host time on the H100 host we measure on: it binds and
specialises every argument, hashes a cache key, builds launch metadata for profiler hooks and only
then calls the C launcher. A call of `scaled_mm` with the same shapes, strides, dtypes and pointer
alignment as an earlier one compiles to the same kernel with the same integer arguments, so
`bind_launch` does that work once: it launches through Triton (which compiles the kernel, or loads
it from the cache) and returns a `BoundLaunch` that passes new tensors straight to the compiled
kernel's launcher.

The direct call uses Triton internals (`CompiledKernel.run`, `.function`, `.packed_metadata`),
which we have checked on the Triton versions in `DIRECT_LAUNCH_VERSIONS`. On any other version, in
the interpreter, and while a profiler has launch hooks installed, a `BoundLaunch` goes through
`kernel[grid](...)` instead: slower on the host, the same kernel and the same result. The direct call
also skips what Triton checks per launch beyond the arguments (globals the kernel reads changing,
`knobs.runtime.debug` switched on later): our kernels read no mutable globals, and a changed debug
setting applies to signatures prepared after it.

Also the launch arguments that the matmul kernels (pointer, TMA, quantized linear) share.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig

# Triton versions whose CompiledKernel.run takes (grid x, y, z, stream, function, packed metadata,
# launch metadata, enter hook, exit hook, *every argument including constexprs).
DIRECT_LAUNCH_VERSIONS = ("3.6.",)
_DIRECT_VERSION = triton.__version__.startswith(DIRECT_LAUNCH_VERSIONS)


def _launch_hooks_active() -> bool:
    """Whether a profiler (proton, for instance) asked Triton to report launches."""
    runtime = triton.knobs.runtime
    return any(
        hook is not None and bool(getattr(hook, "calls", True))
        for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook)
    )


class BoundLaunch:
    """Launches one kernel with fixed grid and trailing arguments; the leading arguments (the tensors
    that change from call to call) are passed to `__call__`. Those tensors must have the dtypes, the
    16-byte alignment and (through the trailing arguments) the shapes and strides of the tensors the
    launch was bound with: the caller keys its cache of BoundLaunch objects by exactly these."""

    def __init__(
        self,
        kernel: triton.JITFunction,
        grid: tuple[int, ...],
        args: Sequence,
        kwargs: dict,
        leading: int,
        device: torch.device,
    ):
        self.kernel = kernel
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.trailing = tuple(args[leading:])
        self.kwargs = kwargs
        self.device = device
        self.device_index = device.index if device.type == "cuda" else -1
        self.compiled = None  # the CompiledKernel, when the direct call is possible
        self.trailing_all: tuple = ()  # the trailing arguments and the constexprs, in declaration order

    def _device_context(self) -> contextlib.AbstractContextManager:
        return torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()

    def first_launch(self, *leading: object) -> None:
        """Launch through Triton (compiling if needed) and keep the compiled kernel for the direct call."""
        with self._device_context():
            compiled = self.kernel[self.grid](*leading, *self.trailing, **self.kwargs)
        if (
            not _DIRECT_VERSION
            or self.device.type != "cuda"
            or not all(hasattr(compiled, name) for name in ("run", "function", "packed_metadata"))
        ):
            return
        values = dict(zip(self.kernel.arg_names, (*leading, *self.trailing)))
        values.update((name, v) for name, v in self.kwargs.items() if name in self.kernel.arg_names)
        self.trailing_all = tuple(values[name] for name in self.kernel.arg_names[len(leading) :])
        self.compiled = compiled

    def __call__(self, *leading: object) -> None:
        compiled = self.compiled
        # The compiled kernel is loaded in the device's context: launch it directly only when that
        # device is the current one.
        if compiled is not None and torch.cuda.current_device() == self.device_index and not _launch_hooks_active():
            x, y, z = self.grid
            compiled.run(
                x, y, z, torch._C._cuda_getCurrentRawStream(self.device_index),
                compiled.function, compiled.packed_metadata, None, None, None,
                *leading, *self.trailing_all,
            )  # fmt: skip
            return
        with self._device_context():
            self.kernel[self.grid](*leading, *self.trailing, **self.kwargs)


def bind_launch(
    kernel: triton.JITFunction, grid: tuple[int, ...], args: Sequence, kwargs: dict, leading: int, device: torch.device
) -> BoundLaunch:
    """Launch `kernel[grid](*args, **kwargs)` on `device` now and return a BoundLaunch that repeats it
    with new values for the first `leading` arguments."""
    bound = BoundLaunch(kernel, grid, args, kwargs, leading, device)
    bound.first_launch(*args[:leading])
    return bound


# ----------------------------------------------------------------------------- arguments the matmul kernels share


def vector_stride(scale: torch.Tensor) -> int:
    """Stride between consecutive elements of a per-token [M]/[M, 1] or per-channel [N]/[1, N]/[N, 1] scale."""
    if scale.dim() == 2 and scale.shape[0] == 1:
        return scale.stride(1)
    return scale.stride(0)


def tile_kwargs(config: MatmulConfig) -> dict:
    """The tile constexprs and launch options of `config`, named as every matmul kernel takes them."""
    return dict(
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        BLOCK_K=config.block_k,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )


def epilogue_arguments(
    a: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, bias: torch.Tensor | None
) -> tuple[tuple[int, int, int], dict]:
    """The matmul kernels' epilogue arguments: (stride_scale_a, stride_scale_b, stride_bias), each 0
    for a single scale or no bias, and the constexprs A_PER_TOKEN, B_PER_CHANNEL and HAS_BIAS."""
    a_per_token = scale_a.numel() > 1
    b_per_channel = scale_b.numel() > 1
    strides = (
        vector_stride(scale_a) if a_per_token else 0,
        vector_stride(scale_b) if b_per_channel else 0,
        bias.stride(0) if bias is not None else 0,
    )
    constexprs = dict(
        A_PER_TOKEN=a_per_token,
        B_PER_CHANNEL=b_per_channel,
        HAS_BIAS=bias is not None,
    )
    return strides, constexprs


# fp8 dots on Hopper accumulate in the tensor core's reduced-precision accumulator (about 14 bits;
# Triton's default on sm_90) unless told to promote. "precise" accumulation promotes the partial sum
# into the fp32 accumulator every PROMOTE_EVERY K-elements and at the end of every K step, as
# DeepSeek-V3 and CUTLASS do (tl.dot's max_num_imprecise_acc; docs/performance.md, "Accumulation").
PROMOTE_EVERY = 128


def accumulator_kwargs(operand_dtype: torch.dtype, block_k: int, precise: bool) -> dict:
    """The constexprs ACC_DTYPE (int32 for int8 operands, else float32) and MAX_IMPRECISE (None keeps
    Triton's default, the "fast" accumulation; int8 sums exactly either way)."""
    int8 = operand_dtype == torch.int8
    return dict(
        ACC_DTYPE=tl.int32 if int8 else tl.float32,
        MAX_IMPRECISE=min(block_k, PROMOTE_EVERY) if precise and not int8 else None,
    )
