"""The quantized linear kernel: quantize-then-multiply in one launch, bit for bit what
quantize_per_token (or quantize_per_tensor) followed by scaled_mm with the same config computes."""

import pytest
import torch
from helpers import DEVICE, ON_GPU

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.kernels.linear import bind_quantized_linear
from scaledmm.testing import random_8bit

DTYPES = [torch.int8, torch.float8_e4m3fn]


def two_launches(x, weight_t, input_scale, weight_scale, bias, out_dtype, config):
    if input_scale is None:
        q, scale = scaledmm.quantize_per_token(x, weight_t.dtype)
    else:
        q, scale = scaledmm.quantize_per_tensor(x, input_scale, weight_t.dtype), input_scale
    return scaledmm.scaled_mm(q, weight_t, scale, weight_scale, out_dtype, bias, config=config)


def one_launch(x, weight_t, input_scale, weight_scale, bias, out_dtype, config):
    """The quantized linear kernel's output, and a function that launches it again for a new x."""
    out = torch.empty(x.shape[0], weight_t.shape[1], dtype=out_dtype, device=x.device)
    launch = bind_quantized_linear(x, weight_t, input_scale, weight_scale, bias, out, config)

    def again(x):
        fresh = torch.empty_like(out)
        launch(x, fresh)
        return fresh

    return out, again


def prepared_forward(layer):
    """The layer's one prepared forward (a runtime.PreparedLinear)."""
    (forward,) = (entry[1] for entry in layer._forwards._by_signature.values())
    return forward


def operands(M, N, K, dtype, static, per_channel, bias, x_dtype=torch.bfloat16, seed=0):
    gen = torch.Generator(DEVICE).manual_seed(seed)
    x = (torch.randn(M, K, device=DEVICE, generator=gen) * 3).to(x_dtype)
    x[:, 0] = 40.0  # an outlier per row
    weight_t = random_8bit((N, K), dtype, DEVICE, gen).t()
    weight_scale = torch.rand(N if per_channel else (), device=DEVICE, generator=gen) + 0.5
    input_scale = torch.tensor(0.3, device=DEVICE) if static else None
    b = torch.randn(N, device=DEVICE, generator=gen).to(torch.bfloat16) if bias else None
    return x, weight_t, input_scale, weight_scale, b


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("static,per_channel,bias", [(False, True, True), (True, False, False), (False, False, True)])
@pytest.mark.parametrize(
    "M,K,config",
    [
        (1, 64, MatmulConfig(16, 32, 64, num_warps=4, num_stages=2)),
        (5, 70, MatmulConfig(16, 16, 32, group_m=2, num_warps=4, num_stages=2)),  # ragged K, masked rows
        (20, 96, MatmulConfig(16, 32, 32, group_m=2, num_warps=2, num_stages=3)),  # two tile rows, wrapped
        (1, 64, MatmulConfig(16, 64, 64, num_warps=4, num_stages=2, kernel="swapped")),  # the swapped MMA
        (5, 70, MatmulConfig(16, 32, 32, num_warps=4, num_stages=2, kernel="swapped")),
        (20, 96, MatmulConfig(16, 32, 32, group_m=2, num_warps=4, num_stages=3, kernel="swapped")),
    ],
)
def test_equals_quantize_then_scaled_mm_bitwise(dtype, static, per_channel, bias, M, K, config):
    N = 48
    args = operands(M, N, K, dtype, static, per_channel, bias)
    out, again = one_launch(*args, torch.bfloat16, config)
    expected = two_launches(*args, torch.bfloat16, config)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    fresh = operands(M, N, K, dtype, static, per_channel, bias, seed=1)
    torch.testing.assert_close(
        again(fresh[0]), two_launches(fresh[0], *args[1:], torch.bfloat16, config), atol=0, rtol=0
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("M", [1, 16])
def test_equals_scaled_mm_bitwise_with_the_shipped_swapped_tile(dtype, M):
    # The tile the heuristic and most decode buckets take, over several K steps (the last ragged),
    # N wider than one weight tile.
    config = MatmulConfig(16, 64, 256, num_warps=4, num_stages=5, kernel="swapped")
    args = operands(M, 130, 600, dtype, False, True, True)
    out, _ = one_launch(*args, torch.bfloat16, config)
    torch.testing.assert_close(out, two_launches(*args, torch.bfloat16, config), atol=0, rtol=0)


@pytest.mark.parametrize("x_dtype,out_dtype", [(torch.float32, torch.float32), (torch.float16, torch.float16)])
def test_other_float_dtypes(x_dtype, out_dtype):
    config = MatmulConfig(16, 32, 32, num_warps=4, num_stages=2)
    args = operands(3, 40, 64, torch.int8, False, True, True, x_dtype=x_dtype)
    out, _ = one_launch(*args, out_dtype, config)
    assert out.dtype == out_dtype
    torch.testing.assert_close(out, two_launches(*args, out_dtype, config), atol=0, rtol=0)


def test_reads_only_its_rows_and_zero_rows_give_zeros():
    # x is a view into a buffer of NaNs (the interpreter does no bounds checking); a read outside
    # the view would poison the result. An all-zero row quantizes to zeros: only the bias is left.
    M, N, K = 4, 32, 64
    config = MatmulConfig(16, 32, 32, num_warps=4, num_stages=2)
    _, weight_t, _, weight_scale, bias = operands(M, N, K, torch.int8, False, True, True)
    buf = torch.full((M + 4, K + 16), float("nan"), device=DEVICE, dtype=torch.bfloat16)
    x = buf[2 : 2 + M, 8 : 8 + K]
    x.copy_(torch.randn(M, K, device=DEVICE))
    x[1] = 0.0
    out, _ = one_launch(x, weight_t, None, weight_scale, bias, torch.bfloat16, config)
    assert not out.isnan().any()
    torch.testing.assert_close(out[1], bias, atol=0, rtol=0)
    torch.testing.assert_close(
        out, two_launches(x, weight_t, None, weight_scale, bias, torch.bfloat16, config), atol=0, rtol=0
    )


@pytest.mark.parametrize("M,fused", [(4, True), (17, False)])
def test_w8a8linear_quantizes_inside_the_matmul_for_few_rows(M, fused):
    from scaledmm.nn import W8A8Linear

    linear = torch.nn.Linear(64, 32).to(DEVICE, torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, "int8", backend="triton")
    x = torch.randn(M, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)  # prepares the forward (through the two launches)
        out = layer(x)  # binds the one launch where it is used, and runs it
    assert (prepared_forward(layer).fused is not None) == fused
    q, scale = scaledmm.quantize_per_token(x, torch.int8)
    expected = scaledmm.scaled_mm(q, layer.weight.t(), scale, layer.weight_scale, torch.bfloat16, layer.bias)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_a_captured_layer_records_the_two_launches_with_the_same_bits(dtype):
    from scaledmm.nn import W8A8Linear

    one_launches = []
    layer = W8A8Linear.from_linear(torch.nn.Linear(256, 512).to(DEVICE, torch.bfloat16), dtype)
    x = torch.randn(4, 256, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)  # prepares
        layer(x)  # binds the one launch (whose first launch is the binding's)
        forward = prepared_forward(layer)
        bound = forward.fused
        forward.fused = lambda x, out: one_launches.append(1) or bound(x, out)
        eager = layer(x)
        assert len(one_launches) == 1
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = layer(x)
        assert len(one_launches) == 2  # the warm-up on the side stream, not the capture
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(captured, layer(x), atol=0, rtol=0)
        assert not torch.equal(captured, eager)
