"""The op as PyTorch sees it: torch.library's checks, torch.compile, and CUDA graph capture."""

import pytest
import torch
from helpers import DEVICE, ON_GPU

import scaledmm
from scaledmm.testing import assert_close, make_operands


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_opcheck(dtype, with_bias):
    ops = make_operands(9, 24, 64, dtype, DEVICE, bias_dtype=torch.bfloat16 if with_bias else None)
    checks = ["test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"]
    if dtype != torch.int8:
        # opcheck's schema check multiplies the inputs, which torch cannot do for fp8 tensors on any
        # device ("mul_cuda"/"mul_cpu_reduced_float" not implemented for Float8_e4m3fn, torch 2.11
        # and 2.13); the schema does not depend on the dtype, and the int8 cases check it.
        checks.remove("test_schema")
    torch.library.opcheck(
        torch.ops.scaledmm.scaled_mm.default,
        (*ops.args(), ops.bias, torch.bfloat16, None, "auto"),
        test_utils=checks,
    )


def test_opcheck_with_explicit_config():
    ops = make_operands(9, 24, 64, torch.int8, DEVICE)
    config = scaledmm.MatmulConfig(16, 16, 32, group_m=2, num_warps=2, num_stages=2)
    torch.library.opcheck(
        torch.ops.scaledmm.scaled_mm.default,
        (*ops.args(), ops.bias, torch.float32, config.as_list(), "triton"),
    )


def test_compile_fullgraph():
    def linear(x, w, sx, sw, bias):
        # Python around the op, to show the whole function traces as one graph.
        return scaledmm.scaled_mm(x, w.t(), sx, sw, torch.bfloat16, bias).float().relu()

    compiled = torch.compile(linear, fullgraph=True, dynamic=False)
    ops = make_operands(12, 40, 64, torch.int8, DEVICE)
    weight = ops.b.t()
    got = compiled(ops.a, weight, ops.scale_a, ops.scale_b, ops.bias)
    eager = linear(ops.a, weight, ops.scale_a, ops.scale_b, ops.bias)
    assert torch.equal(got, eager)


def test_compile_with_dynamic_m_traces_once():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(scaledmm.scaled_mm, fullgraph=True, dynamic=True, backend=counter)
    for M in (3, 17, 40, 41, 100):
        ops = make_operands(M, 40, 64, torch.float8_e4m3fn, DEVICE)
        assert_close(compiled(*ops.args(), torch.bfloat16, ops.bias), ops)
    # One graph for every M: nothing on the traced path specialises on the number of tokens.
    assert counter.frame_count == 1


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_cuda_graph_capture_and_replay():
    ops = make_operands(16, 256, 512, torch.float8_e4m3fn, DEVICE)
    scaledmm.scaled_mm(*ops.args(), bias=ops.bias)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = scaledmm.scaled_mm(*ops.args(), bias=ops.bias)
    fresh = make_operands(16, 256, 512, torch.float8_e4m3fn, DEVICE)
    for static, new in zip((*ops.args(), ops.bias), (*fresh.args(), fresh.bias)):
        static.copy_(new)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(out, fresh)
