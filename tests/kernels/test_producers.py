"""The fused producers (RMSNorm + quantize, SiLU * up + quantize): their bits are the float
producer's (the same kernel with QUANTIZE off) quantized by quantize_per_token, and the float
producer agrees with transformers' arithmetic to rounding."""

import pytest
import torch
from helpers import DEVICE, ON_GPU

import scaledmm
from scaledmm.kernels.producers import bind_rms_norm_quantize, bind_silu_mul_quantize
from scaledmm.nn.producers import quantize_per_token_torch, rms_norm_torch, silu_mul_torch

DTYPES = [torch.int8, torch.float8_e4m3fn]


def _rows(M, K, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, K, generator=g) * scale).to(torch.bfloat16).to(DEVICE)


def _float_rms_norm(x, weight, eps):
    out = torch.empty_like(x)
    bind_rms_norm_quantize(x, weight, out, None, eps)
    return out


def _float_silu_mul(gate, up):
    out = torch.empty_like(gate)
    bind_silu_mul_quantize(gate, up, out, None)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "e4m3"])
@pytest.mark.parametrize("M,K", [(1, 64), (5, 96), (3, 4096 + 64)])
def test_rms_norm_quantize_is_the_norm_then_quantize_per_token(dtype, M, K):
    x = _rows(M, K)
    weight = (torch.rand(K) + 0.5).to(torch.bfloat16).to(DEVICE)
    q, scale = scaledmm.rms_norm_quantize(x, weight, 1e-5, dtype)
    q_ref, scale_ref = scaledmm.quantize_per_token(_float_rms_norm(x, weight, 1e-5), dtype)
    assert q.dtype == dtype and scale.shape == (M, 1)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.int8), q_ref.view(torch.int8))


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "e4m3"])
@pytest.mark.parametrize("M,K", [(1, 64), (4, 200), (2, 4096 + 128)])
def test_silu_mul_quantize_is_the_product_then_quantize_per_token(dtype, M, K):
    both = _rows(M, 2 * K, seed=1)
    gate, up = both[:, :K], both[:, K:]  # column views of one product, as the fused gate/up gives them
    q, scale = scaledmm.silu_mul_quantize(gate, up, dtype)
    q_ref, scale_ref = scaledmm.quantize_per_token(_float_silu_mul(gate, up), dtype)
    assert torch.equal(scale, scale_ref)
    assert torch.equal(q.view(torch.int8), q_ref.view(torch.int8))


def _close_to_rounding(got, expected):
    """Within two bf16 roundings (2**-7 relative each): the interpreter rounds bf16 conversions
    toward zero, twice per value here, and the sums run in another order."""
    got, expected = got.float(), expected.float()
    return bool(((got - expected).abs() <= expected.abs() * 2**-6).all())


def test_float_producers_match_transformers_arithmetic():
    x = _rows(4, 256, seed=2)
    weight = (torch.rand(256) + 0.5).to(torch.bfloat16).to(DEVICE)
    assert _close_to_rounding(_float_rms_norm(x, weight, 1e-6), rms_norm_torch(x, weight, 1e-6))
    gate, up = _rows(4, 256, seed=3), _rows(4, 256, seed=4)
    assert _close_to_rounding(_float_silu_mul(gate, up), silu_mul_torch(gate, up))


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "e4m3"])
def test_torch_quantize_matches_the_kernel(dtype):
    # The Inductor route's quantization: the same scales and values (in the interpreter, whose
    # fp32 -> fp8 conversion is wrong for a few % of values, the same values but for those).
    x = _rows(6, 192, seed=5)
    q, scale = scaledmm.quantize_per_token(x, dtype)
    q_torch, scale_torch = quantize_per_token_torch(x, dtype)
    assert torch.equal(scale, scale_torch)
    if ON_GPU or dtype == torch.int8:
        assert torch.equal(q.view(torch.int8), q_torch.view(torch.int8))
    else:
        assert (q.float() != q_torch.float()).float().mean() < 0.05


def test_producers_trace_as_ops_with_dynamic_rows():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def both(x, weight, gate, up):
        return scaledmm.rms_norm_quantize(x, weight, 1e-6, torch.int8), scaledmm.silu_mul_quantize(gate, up, torch.int8)

    compiled = torch.compile(both, fullgraph=True, dynamic=True, backend=counter)
    weight = torch.ones(64, dtype=torch.bfloat16, device=DEVICE)
    for M in (2, 5, 9):
        x, gate, up = _rows(M, 64, seed=M), _rows(M, 64, seed=M + 1), _rows(M, 64, seed=M + 2)
        for got, expected in zip(compiled(x, weight, gate, up), both(x, weight, gate, up)):
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert counter.frame_count == 1


def test_argument_checks():
    x = _rows(2, 64)
    with pytest.raises(ValueError, match="weight must be"):
        scaledmm.rms_norm_quantize(x, torch.ones(32, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(ValueError, match="eps"):
        scaledmm.rms_norm_quantize(x, torch.ones(64, dtype=torch.bfloat16, device=DEVICE), eps=-1.0)
    # A wrong type or dtype is a TypeError, a wrong shape or value a ValueError (checks.py).
    with pytest.raises(TypeError, match="weight must have x's dtype"):
        scaledmm.rms_norm_quantize(x, torch.ones(64, dtype=torch.float32, device=DEVICE))
    with pytest.raises(TypeError, match="eps"):
        scaledmm.rms_norm_quantize(x, torch.ones(64, dtype=torch.bfloat16, device=DEVICE), eps="1e-6")
    with pytest.raises(TypeError, match="up must have gate's dtype"):
        scaledmm.silu_mul_quantize(x, x.float())
    with pytest.raises(ValueError, match="up must match"):
        scaledmm.silu_mul_quantize(x, x[:1])
    with pytest.raises(TypeError, match="dtype"):
        scaledmm.silu_mul_quantize(x, x, torch.float16)


def test_opcheck():
    x, gate, up = _rows(3, 64), _rows(3, 64, seed=1), _rows(3, 64, seed=2)
    weight = (torch.rand(64) + 0.5).to(torch.bfloat16).to(DEVICE)
    # int8 outputs: opcheck's schema check multiplies the outputs, which torch cannot do for fp8.
    torch.library.opcheck(torch.ops.scaledmm.rms_norm_quantize.default, (x, weight, 1e-6, torch.int8))
    torch.library.opcheck(torch.ops.scaledmm.silu_mul_quantize.default, (gate, up, torch.int8))
