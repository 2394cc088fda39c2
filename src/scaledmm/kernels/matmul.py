"""The scaled matmul kernel: out = (a @ b) * scale_a * scale_b + bias, for int8 or fp8 operands.

One program computes one [BLOCK_M, BLOCK_N] output tile. Programs are ordered in groups of GROUP_M
tile rows so that consecutive programs share B columns (and A rows) in L2. Rows past M and columns
past N are wrapped (offset % M, % N) instead of masked: the loads stay in bounds without a mask and
the final store masks them out. K is masked only when BLOCK_K does not divide it.

The exception is M < BLOCK_M (decode): there the rows past M are masked instead, so the one tile
row loads M rows of A rather than BLOCK_M copies of them. Measured on an H100 (docs/performance.md):
masking is 1.0-1.45x faster at M = 1 and even at M = 4; wrapping is up to 1.18x faster at M >= 48.

A swapped config runs the operand-swapped form of the same kernel (`_scaled_mm_swap_kernel`),
which the tuner offers at small M: the weight tile as the tall MMA operand, the tokens as the narrow.

What the matmul kernels share is in common.py (the grouped tile order, the epilogue) and split_k.py
(a split's K steps, the split-K ending and its scratch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig, device_limits
from scaledmm.kernels import matmul_gluon, matmul_tma
from scaledmm.kernels.common import epilogue_operands, grouped_tile, scale_and_store, tile_count
from scaledmm.kernels.launch import BoundLaunch, accumulator_kwargs, bind_launch, epilogue_arguments, tile_kwargs
from scaledmm.kernels.revision import revision
from scaledmm.kernels.split_k import split_k_buffers, split_k_finish, split_range


# GROUP_M is a run-time argument, not a constexpr, so that the tuner tries groupings without a
# compile each; it costs one integer division per program.
@triton.jit(do_not_specialize=["GROUP_M"])
def _scaled_mm_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    stride_scale_a, stride_scale_b, stride_bias,
    GROUP_M,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, MAX_IMPRECISE: tl.constexpr,
    EVEN_K: tl.constexpr, MASK_M: tl.constexpr, PRELOAD_EPILOGUE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    tile_m, tile_n = grouped_tile(pid, tiles_m, tiles_n, GROUP_M)
    k_steps = tl.cdiv(K, BLOCK_K)
    k_first, k_last = (0, k_steps) if SPLIT_K == 1 else split_range(k_steps, SPLIT_K)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # int64 before any stride multiply, so operands of more than 2**31 elements address correctly.
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)

    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak + k_first * a_step
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn + k_first * b_step

    # With one tile row (M <= BLOCK_M: decode) the programs all end together and would all wait on
    # the epilogue's loads there; issued now, their latency hides behind the K loop's (1.00-1.07x at
    # M <= 64 on an H100, benchmarks/ab/decode_variants.py). Taller grids load them after the loop,
    # so that the registers they take are not held through it.
    if PRELOAD_EPILOGUE:
        scale_a, scale_b, bias = epilogue_operands(
            rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias,
            A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS,
        )  # fmt: skip

    # All-true where rows wrap; with MASK_M the rows past M load nothing.
    a_rows = (offs_m[:, None] < M) if MASK_M else tl.full((BLOCK_M, 1), 1, tl.int1)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k in range(k_first, k_last):
        if EVEN_K:
            if MASK_M:
                a = tl.load(a_ptrs, mask=a_rows, other=0.0)
            else:
                a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=a_rows & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, out_dtype=ACC_DTYPE, max_num_imprecise_acc=MAX_IMPRECISE)
        a_ptrs += a_step
        b_ptrs += b_step

    if not PRELOAD_EPILOGUE:
        scale_a, scale_b, bias = epilogue_operands(
            rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias,
            A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS,
        )  # fmt: skip
    if SPLIT_K == 1:
        scale_and_store(acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS)
    else:
        split_k_finish(
            acc, pid, tiles_m * tiles_n, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on,
            partials_ptr, arrivals_ptr, HAS_BIAS, ACC_DTYPE, SPLIT_K, BLOCK_M, BLOCK_N,
        )  # fmt: skip


@triton.jit
def _scaled_mm_swap_kernel(
    a_ptr, b_ptr, out_ptr, scale_a_ptr, scale_b_ptr, bias_ptr, partials_ptr, arrivals_ptr,
    M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_om, stride_on,
    stride_scale_a, stride_scale_b, stride_bias,
    A_PER_TOKEN: tl.constexpr, B_PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, MAX_IMPRECISE: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):  # fmt: skip
    # The operand-swapped form for small M: the same [BLOCK_M, BLOCK_N] output tile computed as
    # (B^T A^T)^T, so that the weight tile is the MMA's tall operand (BLOCK_N >= 64 rows, what
    # Hopper's wgmma takes) and the few tokens its narrow side (BLOCK_M >= 16), instead of the
    # tokens padded to a 64-row tile. Its prototype (benchmarks/ab/small_m_forms.py, the same MMA
    # form) ran 1.01-1.12x as fast as the tuned configs of then at M = 1, 4 and 16 in fp8 on an
    # H100; this kernel then won 98 of the 144 decode buckets of the presets' re-tune. Programs of
    # one weight tile (several token tiles, M > BLOCK_M) are neighbours, so the weight tile is read
    # from DRAM once. Rows past M are masked; the epilogue's operands load before the K loop, as the
    # pointer kernel's do at decode.
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tile_m = pid % tiles_m
    tile_n = pid // tiles_m
    k_steps = tl.cdiv(K, BLOCK_K)
    k_first, k_last = (0, k_steps) if SPLIT_K == 1 else split_range(k_steps, SPLIT_K)

    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (offs_m % M).to(tl.int64)
    cols = (offs_n % N).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    a_step = tl.full((), BLOCK_K, tl.int64) * stride_ak
    b_step = tl.full((), BLOCK_K, tl.int64) * stride_bk
    w_ptrs = b_ptr + cols[:, None] * stride_bn + offs_k[None, :] * stride_bk + k_first * b_step  # B^T tile
    x_ptrs = a_ptr + offs_k[:, None] * stride_ak + rows[None, :] * stride_am + k_first * a_step  # A^T tile

    scale_a, scale_b, bias = epilogue_operands(
        rows, cols, scale_a_ptr, scale_b_ptr, bias_ptr, stride_scale_a, stride_scale_b, stride_bias,
        A_PER_TOKEN, B_PER_CHANNEL, HAS_BIAS,
    )  # fmt: skip

    x_cols = (offs_m < M)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=ACC_DTYPE)
    for k in range(k_first, k_last):
        if EVEN_K:
            w = tl.load(w_ptrs)
            x = tl.load(x_ptrs, mask=x_cols, other=0.0)
        else:
            k_left = K - k * BLOCK_K
            w = tl.load(w_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            x = tl.load(x_ptrs, mask=x_cols & (offs_k[:, None] < k_left), other=0.0)
        acc = tl.dot(w, x, acc, out_dtype=ACC_DTYPE, max_num_imprecise_acc=MAX_IMPRECISE)
        w_ptrs += b_step
        x_ptrs += a_step

    acc = tl.trans(acc)
    if SPLIT_K == 1:
        scale_and_store(acc, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS)
    else:
        split_k_finish(
            acc, pid, tiles_m * tl.cdiv(N, BLOCK_N), scale_a, scale_b, bias, offs_m, offs_n, M, N,
            out_ptr, stride_om, stride_on, partials_ptr, arrivals_ptr, HAS_BIAS, ACC_DTYPE, SPLIT_K, BLOCK_M, BLOCK_N,
        )  # fmt: skip


# The kernel each MatmulConfig.kernel names (configs.config.KERNELS), and its revision (kernels/revision.py),
# which a tuned bucket records.
KERNEL_FUNCTIONS = {
    "pointer": _scaled_mm_kernel,
    "swapped": _scaled_mm_swap_kernel,
    "tma": matmul_tma.scaled_mm_tma_kernel,
    "gluon": matmul_gluon.scaled_mm_gluon_kernel,
}
REVISIONS = {name: revision(kernel) for name, kernel in KERNEL_FUNCTIONS.items()}
KERNEL_NAMES = {kernel: name for name, kernel in KERNEL_FUNCTIONS.items()}


def kernel_revision(config: MatmulConfig) -> str:
    """The revision of the kernel that runs `config`."""
    return REVISIONS[config.kernel]


# The kernel loads the epilogue's scales and bias before its K loop (PRELOAD_EPILOGUE) for one tile
# row of at most 64x128 accumulators: the decode tiles of the A/B where it won (1.00-1.07x at 23 of
# 24 points, 0.94x at one split-K point; benchmarks/ab/decode_variants.py). A 128x128 tile (8 warps)
# held them through the loop at a cost: llama3-8b gate_up at M = 128 took 56.2 us with them against
# 51.6 us without, in the benches of sessions 4 and 3 (benchmarks/results/h100-2026-11-27-decode and
# -tma; two runs, one card type). This rule is the launcher's, outside the kernel revision: after
# changing it, re-tune with --retune. Without the early loads, split-K programs all load the
# operands after their loop though only the last to arrive uses them (one shipped bucket: int8
# N=2560, K=9728, M=96); moving those loads into the last program's branch changes the kernel
# source, so it waits for the next kernel change, which re-tunes every bucket anyway.
PRELOAD_MAX_ACCUMULATORS = 64 * 128


def _launch_arguments(
    a, b, scale_a, scale_b, bias, out, partials, arrivals, config: MatmulConfig, precise: bool
) -> tuple[tuple, tuple, dict]:
    """(grid, positional arguments, keyword arguments) of one launch of the pointer kernel, or of the
    swapped one for a swapped config; the first eight positional arguments are the tensors that
    change per call."""
    M, K = a.shape
    N = b.shape[1]
    grid = (tile_count(M, N, config), config.split_k)
    strides, epilogue = epilogue_arguments(a, scale_a, scale_b, bias)
    args = (
        a, b, out, scale_a, scale_b, bias, partials, arrivals,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        *strides,
    )  # fmt: skip
    kwargs = dict(
        **epilogue,
        **accumulator_kwargs(a.dtype, config.block_k, precise),
        EVEN_K=K % config.block_k == 0,
        SPLIT_K=config.split_k,
        **tile_kwargs(config),
    )
    if config.kernel == "swapped":
        return grid, args, kwargs
    kwargs.update(
        MASK_M=M < config.block_m,
        PRELOAD_EPILOGUE=M <= config.block_m and config.block_m * config.block_n <= PRELOAD_MAX_ACCUMULATORS,
    )
    return grid, (*args, config.group_m), kwargs


def _kernel_and_arguments(
    a, b, scale_a, scale_b, bias, out, config: MatmulConfig, precise: bool, device: torch.device
) -> tuple[triton.JITFunction, tuple, tuple, dict, int]:
    """The kernel that computes this call on `device` under `config` (KERNEL_NAMES names it), its grid,
    positional and keyword arguments, and how many leading positional arguments change per call. A
    Gluon config runs the Gluon kernel where it can serve the call (matmul_gluon.gluon_eligible: a
    Hopper GPU, the TMA layouts) and its compiled form fits the device's shared memory, else as a TMA
    config of the same tiles. A TMA config runs the TMA kernel where the operands and the device allow
    it (matmul_tma.tma_eligible) and its compiled form fits, else the pointer kernel with the same tiles."""
    kind = config.kernel
    if kind == "gluon":
        if matmul_gluon.gluon_eligible(a, b, out, device):
            num_sms, shared_memory = device_limits(device)
            gluon_config = matmul_gluon.GluonConfig.from_matmul_config(config)
            grid, args, kwargs = matmul_gluon.launch_arguments(
                a, b, scale_a, scale_b, bias, out, gluon_config, num_sms, precise
            )
            if matmul_gluon.fits_in_shared_memory(grid, args, kwargs, device, shared_memory):
                return matmul_gluon.scaled_mm_gluon_kernel, grid, args, kwargs, 6
        kind = "tma"
    if kind == "tma" and matmul_tma.tma_eligible(a, b, out, device):
        num_sms, shared_memory = device_limits(device)
        grid, args, kwargs = matmul_tma.launch_arguments(a, b, scale_a, scale_b, bias, out, config, num_sms, precise)
        if matmul_tma.fits_in_shared_memory(grid, args, kwargs, device, shared_memory):
            return matmul_tma.scaled_mm_tma_kernel, grid, args, kwargs, 6
    partials, arrivals = split_k_buffers(a.shape[0], b.shape[1], config, a.dtype, a.device)
    grid, args, kwargs = _launch_arguments(a, b, scale_a, scale_b, bias, out, partials, arrivals, config, precise)
    kernel = _scaled_mm_swap_kernel if config.kernel == "swapped" else _scaled_mm_kernel
    return kernel, grid, args, kwargs, 8


def launch_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
    precise: bool = False,
) -> None:
    """Write (a @ b) * scale_a * scale_b + bias into `out` ([M, N], any strides); `precise`: fp8
    accumulation promoted to fp32 (kernels/launch.accumulator_kwargs).

    The inputs must already be checked (scaledmm.checks); M must be >= 1.
    """
    kernel, grid, args, kwargs, _ = _kernel_and_arguments(a, b, scale_a, scale_b, bias, out, config, precise, a.device)
    kernel[grid](*args, **kwargs)


class MatmulLaunch:
    """One call signature's bound launch of a matmul kernel: `launch(a, b, scale_a, scale_b, bias, out)`
    writes the product of new tensors with the dtypes, shapes, strides and pointer alignment of the
    ones it was bound with. `kernel` names the kernel that runs (one of KERNELS: the config's, or the
    one it falls back to), `descriptors` the Gluon kernel's of the first call (else None)."""

    def __init__(
        self, bound: BoundLaunch, config: MatmulConfig, kernel: str, precise: bool, M: int, N: int, dtype: torch.dtype,
        descriptors: tuple | None = None,
    ):  # fmt: skip
        self.bound = bound
        self.config = config
        self.kernel = kernel
        self.precise = precise
        self.M, self.N, self.dtype = M, N, dtype
        self.descriptors = descriptors

    def __call__(self, a, b, scale_a, scale_b, bias, out) -> None:
        if self.kernel == "gluon":
            self.bound(*matmul_gluon.call_descriptors(self.descriptors, a, b, out), scale_a, scale_b, bias)
        elif self.kernel == "tma":
            self.bound(*matmul_tma.descriptors(a, b, out, self.config), scale_a, scale_b, bias)
        elif self.config.split_k == 1:
            self.bound(a, b, out, scale_a, scale_b, bias, None, None)
        else:
            partials, arrivals = split_k_buffers(self.M, self.N, self.config, self.dtype, out.device)
            self.bound(a, b, out, scale_a, scale_b, bias, partials, arrivals)

    def __repr__(self) -> str:
        accumulation = "precise" if self.precise else "fast"
        return f"MatmulLaunch(kernel={self.kernel}, config={self.config}, accumulation={accumulation})"


def bind_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
    precise: bool = False,
) -> MatmulLaunch:
    """Write scaled_mm into `out` now (the inputs checked, M >= 1), and return the MatmulLaunch that
    does it again for new tensors of this signature."""
    device = a.device
    kernel, grid, args, kwargs, leading = _kernel_and_arguments(
        a, b, scale_a, scale_b, bias, out, config, precise, device
    )
    bound = bind_launch(kernel, grid, args, kwargs, leading=leading, device=device)
    name = KERNEL_NAMES[kernel]  # the config's kernel, or the one it falls back to (_kernel_and_arguments)
    descriptors = args[:3] if name == "gluon" else None
    return MatmulLaunch(bound, config, name, precise, a.shape[0], b.shape[1], a.dtype, descriptors)


def compile_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: MatmulConfig,
    precise: bool = False,
) -> None:
    """Compile the kernel for these arguments without launching it (fills Triton's on-disk cache,
    so a later launch in another process only loads the binary). Only dtypes, pointer alignment and
    the integer arguments matter: the tensors' contents are never read, and they may be meta tensors,
    compiled then for the current CUDA device."""
    device = torch.device("cuda", torch.cuda.current_device()) if a.device.type == "meta" else a.device
    kernel, grid, args, kwargs, _ = _kernel_and_arguments(a, b, scale_a, scale_b, bias, out, config, precise, device)
    kernel.warmup(*args, grid=grid, **kwargs)
