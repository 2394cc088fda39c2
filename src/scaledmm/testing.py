"""Random operands drawn as ../BENCHMARKING.md prescribes, and the error bound a correct kernel meets.

Shared by the tests, the benchmark and the tuner, so all three draw the same kind of data and judge
outputs by the same rule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from scaledmm.reference import block_scaled_mm_ref, scaled_mm_ref

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
OUT_DTYPE = torch.bfloat16  # the output of every benchmark and tuning measurement


@dataclass
class Operands:
    """The arguments of one scaled_mm call."""

    a: torch.Tensor
    b: torch.Tensor
    scale_a: torch.Tensor
    scale_b: torch.Tensor
    bias: torch.Tensor | None
    block_size: tuple[int, int] | None = None  # (block_n, block_k): block scales (make_block_operands)

    def args(self) -> tuple:
        return self.a, self.b, self.scale_a, self.scale_b


def random_8bit(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, gen=None) -> torch.Tensor:
    """int8 uniform in [-127, 127]; fp8 from randn, clamped to the format's range."""
    if dtype == torch.int8:
        return torch.randint(-127, 128, shape, dtype=torch.int8, device=device, generator=gen)
    values = torch.randn(shape, device=device, generator=gen)
    limit = FP8_MAX[dtype]
    return values.clamp(-limit, limit).to(dtype)


def make_operands(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    device: torch.device | str,
    *,
    b_dtype: torch.dtype | None = None,
    per_token: bool = True,
    per_channel: bool = True,
    bias_dtype: torch.dtype | None = torch.bfloat16,
    scale_dtype: torch.dtype = torch.float32,
    a_column_major: bool = False,
    b_column_major: bool = True,
    gen: torch.Generator | None = None,
) -> Operands:
    """Fresh random operands for an [M, K] x [K, N] product.

    b is column-major by default, as `weight.t()` of a linear layer is. Scales are uniform in
    [0.5, 1.5): [M, 1] per token, [1, N] per channel, 0-d per tensor. Bias is randn, or None.
    """
    a = random_8bit((K, M) if a_column_major else (M, K), dtype, device, gen)
    a = a.t() if a_column_major else a
    b = random_8bit((N, K) if b_column_major else (K, N), b_dtype or dtype, device, gen)
    b = b.t() if b_column_major else b

    def uniform(shape):
        return (torch.rand(shape, device=device, generator=gen) + 0.5).to(scale_dtype)

    scale_a = uniform((M, 1) if per_token else ())
    scale_b = uniform((1, N) if per_channel else ())
    bias = None
    if bias_dtype is not None:
        bias = torch.randn(N, device=device, generator=gen).to(bias_dtype)
    return Operands(a, b, scale_a, scale_b, bias)


# The accumulation error allowed for fp8 operands. fp8 products are exact in fp32; what errs is the
# sum. Where it is an fp32 sum (Triton's interpreter, GPUs without a reduced-precision accumulator),
# at most K * 2**-24 of S = sum_k |a_ik b_kj| |scales|, or the package's long-standing 2**-10 of S,
# whichever is larger. On Hopper and Ada the tensor core keeps a truncated partial sum inside its
# accumulator (docs/accumulation-notes.md): every 32-element instruction aligns its addends (the
# partial sum it takes, its 32 products) and truncates, erring by at most u_t of their magnitudes,
# |S_j-1| + sum of its |products|. So the sum errs by at most u_t * (sum_j |S_j| + S), taken twice
# here for room, and computed from the operands in float64 (`partial_sum_error`): tight on mixed-sign
# data, where the partial sums stay small, so a skipped K step or a wrong tile still lands outside
# the bound (the S term alone is the package's old 2**-10 bound). The literature
# says 14 bits (u_t = 2**-13); an H200 erred by up to 3.6 times that model (all-positive operands,
# K = 16384, benchmarks/ab/accumulation.py, docs/performance.md "Accumulation"), so u_t = 2**-11
# here (12 bits). "precise" restarts the partial sum every PROMOTE_EVERY K-elements (and adds it to
# fp32: K / 128 roundings of 2**-24); "fast" keeps it over a program's whole K range, which split-K
# cuts into pieces starting anywhere: with `split=True` the bound allows for restarts at any chunk.
U_TENSOR_CORE = 2.0**-11
MMA_K = 32  # K-elements of one fp8 wgmma instruction
PROMOTE_EVERY = 128  # kernels.launch.PROMOTE_EVERY: precise mode's promotion interval
FP32_SUM_EPS_PER_K = 2.0**-24
FP8_EXACT_SUM_EPS = 2.0**-10
# int8 products sum exactly in int32; what is left is the fp32 epilogue: the int32 -> fp32 cast, two
# scale products and the bias add, each at most half an fp32 ulp: 4 * 2**-24 with room.
EPILOGUE_EPS = 2.0**-22


def reduced_precision_accumulator(device: torch.device) -> bool:
    """Whether fp8 dots on this device sum in a reduced-precision accumulator unless told to
    promote: Hopper (wgmma) and Ada (mma.sync with fp8). The interpreter sums exactly."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) in ((8, 9), (9, 0))


def partial_sum_error(ops: Operands, restart_every: int | None, split: bool) -> torch.Tensor:
    """2 * u_t * sum_j |S_j| in the output's units (float64 [M, N]): S_j the partial sum of a's row and
    b's column after the j-th chunk of MMA_K products, restarting every `restart_every` K-elements
    (precise mode, block scales) or never (fast mode; with `split`, as if it could restart anywhere).
    Block-scaled operands weigh each block's partial sums by that block's scales."""
    a, b = ops.a.to(torch.float64), ops.b.to(torch.float64)
    M, K = a.shape
    N = b.shape[1]
    running = torch.zeros(M, N, dtype=torch.float64, device=a.device)
    total, largest = torch.zeros_like(running), torch.zeros_like(running)
    if ops.block_size is not None:
        block_n, block_k = ops.block_size
        column_block = torch.arange(N, device=a.device) // block_n
    for start in range(0, K, MMA_K):
        if restart_every is not None and start % restart_every == 0:
            running.zero_()
        running += a[:, start : start + MMA_K] @ b[start : start + MMA_K]
        term = running.abs()
        if ops.block_size is not None:
            block = start // block_k
            term = (
                term * ops.scale_a[:, block].double().abs()[:, None] * ops.scale_b[block, column_block].double().abs()
            )
        total += term
        if split:
            torch.maximum(largest, term, out=largest)
    if split:  # a split's partial sums are S_j - S_start, |S_start| at most the largest |S_j|
        total += -(-K // MMA_K) * largest
    if ops.block_size is None:
        total *= ops.scale_a.double().abs().reshape(-1, 1) * ops.scale_b.double().abs().reshape(1, -1)
    return 2 * U_TENSOR_CORE * total


def accumulation_error(ops: Operands, magnitude: torch.Tensor, accumulation: str, split: bool) -> torch.Tensor:
    """The accumulation term of the bound (float64 [M, N]; see the constants above)."""
    K = ops.a.shape[1]
    if ops.a.dtype == torch.int8:
        return torch.zeros_like(magnitude)
    if not reduced_precision_accumulator(ops.a.device):
        return max(K * FP32_SUM_EPS_PER_K, FP8_EXACT_SUM_EPS) * magnitude
    if ops.block_size is not None:  # promoted every block, whatever the mode
        interval: int | None = ops.block_size[1]
    else:
        interval = PROMOTE_EVERY if accumulation == "precise" else None
    promotions = 0 if interval is None else -(-K // interval) * FP32_SUM_EPS_PER_K * magnitude
    addends = 2 * U_TENSOR_CORE * magnitude  # each instruction's own products
    return partial_sum_error(ops, interval, split and interval is None) + addends + promotions


def make_block_operands(
    M: int,
    N: int,
    K: int,
    device: torch.device | str,
    block_size: tuple[int, int] = (128, 128),
    bias_dtype: torch.dtype | None = torch.bfloat16,
    gen: torch.Generator | None = None,
) -> Operands:
    """Block-scaled fp8 operands as a DeepSeek-style checkpoint holds them: a [M, K] e4m3 with fp32
    scales per 1 x block_k group of a row, the weight [N, K] with `weight_scale_inv` [N / block_n,
    K / block_k] (rounded up), passed as b = weight.t() and scale_b = weight_scale_inv.t() (views)."""
    block_n, block_k = block_size
    a = random_8bit((M, K), torch.float8_e4m3fn, device, gen)
    weight = random_8bit((N, K), torch.float8_e4m3fn, device, gen)
    blocks_k, blocks_n = -(-K // block_k), -(-N // block_n)
    scale_a = torch.rand(M, blocks_k, device=device, generator=gen) + 0.5
    weight_scale_inv = torch.rand(blocks_n, blocks_k, device=device, generator=gen) + 0.5
    bias = None if bias_dtype is None else torch.randn(N, device=device, generator=gen).to(bias_dtype)
    return Operands(a, weight.t(), scale_a, weight_scale_inv.t(), bias, block_size)


def _reference(ops: Operands, bias: torch.Tensor | None) -> torch.Tensor:
    if ops.block_size is None:
        return scaled_mm_ref(*ops.args(), bias=bias)
    return block_scaled_mm_ref(*ops.args(), ops.block_size, bias=bias)


def error_bound(ops: Operands, out_dtype: torch.dtype, accumulation: str = "fast", split: bool = True) -> torch.Tensor:
    """Per-element bound on |out - exact| for a correct kernel in this fp8 accumulation mode, in float64
    (`split=False`: for a launch known not to split K, which tightens the fast mode's bound).

    One ulp of the output format (round-to-nearest needs half; Triton's interpreter truncates and
    needs a whole one) plus the accumulation and epilogue error, which scale with
    sum_k |a_ik b_kj| * |scale_a_i| * |scale_b_j| (+ |bias_j|).
    """
    abs_ops = Operands(
        ops.a.to(torch.float64).abs(),
        ops.b.to(torch.float64).abs(),
        ops.scale_a.abs(),
        ops.scale_b.abs(),
        None,
        ops.block_size,
    )
    magnitude = _reference(abs_ops, None)
    exact = _reference(ops, ops.bias)
    accumulated = accumulation_error(ops, magnitude, accumulation, split)
    epilogue = magnitude if ops.bias is None else magnitude + ops.bias.to(torch.float64).abs()
    ulp = torch.finfo(out_dtype).eps  # the spacing at 1.0: one ulp of x is at most eps * |x|
    return ulp * exact.abs() + accumulated + EPILOGUE_EPS * epilogue + torch.finfo(out_dtype).tiny


class ErrorCheck:
    """The exact result and the error bound of one set of operands, computed once, so that many
    outputs (the tuner's candidates) are each checked with one elementwise pass."""

    def __init__(self, ops: Operands, out_dtype: torch.dtype, accumulation: str = "fast", split: bool = True):
        self.exact = _reference(ops, ops.bias)
        self.bound = error_bound(ops, out_dtype, accumulation, split)

    def ratio(self, out: torch.Tensor) -> float:
        """max |out - exact| / bound over all elements: <= 1 for a correct kernel; inf for NaN."""
        if out.numel() == 0:
            return 0.0
        ratio = ((out.to(torch.float64) - self.exact).abs() / self.bound).max().item()
        return float("inf") if ratio != ratio else ratio


def max_error_ratio(out: torch.Tensor, ops: Operands, accumulation: str = "fast") -> float:
    """max |out - exact| / error_bound over all elements: <= 1 for a correct kernel; inf for NaN."""
    return ErrorCheck(ops, out.dtype, accumulation).ratio(out)


def assert_close(out: torch.Tensor, ops: Operands, accumulation: str = "fast") -> None:
    """Assert that `out` is a correct scaled_mm of `ops` in this accumulation mode, within `error_bound`."""
    M, N = ops.a.shape[0], ops.b.shape[1]
    assert tuple(out.shape) == (M, N), f"shape {list(out.shape)} != {[M, N]}"
    ratio = max_error_ratio(out, ops, accumulation)
    assert ratio <= 1.0, (
        f"error {ratio:.3g}x the allowed bound (dtype {ops.a.dtype}, out {out.dtype}, {accumulation} accumulation)"
    )


class _Sm90Driver:
    """Triton's active driver stand-in on a machine without a GPU: it names the sm_90 target."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


@contextlib.contextmanager
def sm90_target() -> Iterator[None]:
    """Compile for sm_90 without a GPU (Triton bundles ptxas): Triton's active driver replaced, for the
    block, by one that names the target. For code inspection only: nothing can launch meanwhile."""
    from triton.runtime import driver

    previous = driver._active  # no CUDA driver to reset to on a host without a GPU
    driver.set_active(_Sm90Driver())
    try:
        yield
    finally:
        driver._active = previous
