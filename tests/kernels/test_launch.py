"""BoundLaunch: a launch repeated with new tensors computes what a fresh Triton launch computes, on
the current stream, and steps aside for profiler hooks."""

import pytest
import torch
import triton
import triton.language as tl
from helpers import DEVICE, ON_GPU

from scaledmm import MatmulConfig
from scaledmm.kernels.launch import DIRECT_LAUNCH_VERSIONS, bind_launch
from scaledmm.kernels.matmul import bind_scaled_mm, launch_scaled_mm
from scaledmm.testing import make_operands


@triton.jit
def _axpy_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr, SQUARE: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    if SQUARE:
        x = x * x
    tl.store(out_ptr + offs, alpha * x + tl.load(y_ptr + offs, mask=mask), mask=mask)


N = 300


def bind_axpy(x, y, out):
    return bind_launch(_axpy_kernel, (triton.cdiv(N, 128),), (x, y, out, N, 2.0), dict(BLOCK=128, SQUARE=True),
                       leading=3, device=x.device)  # fmt: skip


def vectors(seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, generator=gen).to(DEVICE), torch.randn(N, generator=gen).to(DEVICE)


def test_first_launch_computes_and_repeats_take_new_tensors():
    (x1, y1), (x2, y2) = vectors(1), vectors(2)
    out1, out2 = torch.empty(N, device=DEVICE), torch.empty(N, device=DEVICE)
    bound = bind_axpy(x1, y1, out1)
    torch.testing.assert_close(out1, 2 * x1 * x1 + y1)
    bound(x2, y2, out2)
    torch.testing.assert_close(out2, 2 * x2 * x2 + y2)


@pytest.mark.skipif(not ON_GPU, reason="the direct launch is taken on CUDA only")
def test_gpu_launch_is_direct_on_known_triton_versions():
    x, y = vectors(1)
    bound = bind_axpy(x, y, torch.empty_like(x))
    assert (bound.compiled is not None) == triton.__version__.startswith(DIRECT_LAUNCH_VERSIONS)


@pytest.mark.skipif(not ON_GPU, reason="streams are CUDA's")
def test_direct_launch_runs_on_the_current_stream():
    x, y = vectors(1)
    bound = bind_axpy(x, y, torch.empty_like(x))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)  # keeps the side stream busy: a launch elsewhere would finish first
        out = torch.full_like(x, float("nan"))
        bound(x, y, out)
        done = torch.cuda.Event()
        done.record()
    done.synchronize()
    torch.testing.assert_close(out, 2 * x * x + y)


@pytest.mark.skipif(not ON_GPU, reason="launch hooks are called by the CUDA launcher")
def test_profiler_hooks_see_every_launch():
    x, y = vectors(1)
    bound = bind_axpy(x, y, torch.empty_like(x))
    seen = []
    hook = lambda metadata: seen.append(metadata)
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        bound(x, y, torch.empty_like(x))
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) == 1


@pytest.mark.parametrize("split_k", [1, 3])
def test_bound_scaled_mm_equals_a_fresh_launch(split_k):
    M, N_, K = 40, 72, 160
    config = MatmulConfig(16, 32, 32, num_warps=4, num_stages=2, split_k=split_k)
    first, second = (
        make_operands(M, N_, K, torch.int8, DEVICE, gen=torch.Generator(DEVICE).manual_seed(s)) for s in (1, 2)
    )
    launch = bind_scaled_mm(*first.args(), first.bias, torch.empty(M, N_, dtype=torch.bfloat16, device=DEVICE), config)
    fresh = torch.empty(M, N_, dtype=torch.bfloat16, device=DEVICE)
    launch_scaled_mm(*second.args(), second.bias, fresh, config)
    again = torch.empty_like(fresh)
    launch(*second.args(), second.bias, again)
    torch.testing.assert_close(again, fresh, atol=0, rtol=0)
