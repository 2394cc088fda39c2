"""BoundLaunch: a launch repeated with new tensors computes what a fresh Triton launch computes, on
the current stream, and steps aside for profiler hooks."""

import pytest
import torch
import triton
from helpers import DEVICE, ON_GPU

from scaledmm import MatmulConfig
from scaledmm.kernels.launch import DIRECT_LAUNCH_VERSIONS
from scaledmm.kernels.matmul import bind_scaled_mm, launch_scaled_mm
from scaledmm.testing import make_operands

M, N, K = 40, 72, 160
CONFIG = MatmulConfig(16, 32, 64, num_warps=4, num_stages=2)


def operands(seed):
    return make_operands(M, N, K, torch.int8, DEVICE, gen=torch.Generator().manual_seed(seed))


def new_out():
    return torch.empty(M, N, dtype=torch.bfloat16, device=DEVICE)


def test_repeat_equals_a_fresh_launch():
    first, second = operands(1), operands(2)
    bound = bind_scaled_mm(*first.args(), first.bias, new_out(), CONFIG)
    repeated, fresh = new_out(), new_out()
    bound(second.a, second.b, repeated, second.scale_a, second.scale_b, second.bias)
    launch_scaled_mm(*second.args(), second.bias, fresh, CONFIG)
    torch.testing.assert_close(repeated, fresh, atol=0, rtol=0)


@pytest.mark.skipif(not ON_GPU, reason="the direct launch is taken on CUDA only")
def test_gpu_launch_is_direct_on_known_triton_versions():
    ops = operands(1)
    bound = bind_scaled_mm(*ops.args(), ops.bias, new_out(), CONFIG)
    assert (bound.compiled is not None) == triton.__version__.startswith(DIRECT_LAUNCH_VERSIONS)


@pytest.mark.skipif(not ON_GPU, reason="streams are CUDA's")
def test_direct_launch_runs_on_the_current_stream():
    ops = operands(1)
    bound = bind_scaled_mm(*ops.args(), ops.bias, new_out(), CONFIG)
    expected = new_out()
    launch_scaled_mm(*ops.args(), ops.bias, expected, CONFIG)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(10_000_000)  # keeps the side stream busy: a launch elsewhere would finish first
        out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        bound(ops.a, ops.b, out, ops.scale_a, ops.scale_b, ops.bias)
        done = torch.cuda.Event()
        done.record()
    done.synchronize()
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.skipif(not ON_GPU, reason="launch hooks are called by the CUDA launcher")
def test_profiler_hooks_see_every_launch():
    ops = operands(1)
    bound = bind_scaled_mm(*ops.args(), ops.bias, new_out(), CONFIG)
    seen = []
    hook = lambda metadata: seen.append(metadata)
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        bound(ops.a, ops.b, new_out(), ops.scale_a, ops.scale_b, ops.bias)
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) == 1
