"""Block-scaled FP8 (1 x block_k activation groups, block_k x block_n weight blocks): the kernel
against the float64 reference within its bound, ragged K and N, every output dtype, any scale
strides, explicit configs; and every mismatch refused before launch, naming the argument."""

import pytest
import torch
from helpers import DEVICE, prepared_call

import scaledmm
from scaledmm import MatmulConfig, runtime
from scaledmm.configs import clear_cache
from scaledmm.testing import assert_close, make_block_operands


def call(ops, **kwargs):
    return scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=ops.block_size, **kwargs)


@pytest.mark.parametrize(
    "M,N,K,block_size",
    [
        (1, 256, 256, (128, 128)),  # decode, even blocks
        (20, 200, 300, (128, 128)),  # ragged K and N: partial last blocks
        (70, 96, 160, (64, 32)),  # small blocks, two tile rows
        (5, 48, 128, (48, 64)),  # block_n not a power of two
    ],
)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_matches_the_reference(M, N, K, block_size, out_dtype):
    ops = make_block_operands(M, N, K, DEVICE, block_size)
    assert_close(call(ops, out_dtype=out_dtype), ops)


def test_contiguous_scales_and_no_bias_and_an_explicit_config():
    ops = make_block_operands(40, 160, 256, DEVICE, (128, 128), bias_dtype=None)
    ops.scale_b = ops.scale_b.contiguous()  # [K blocks, N blocks] row-major instead of a transposed view
    config = MatmulConfig(16, 32, 128, group_m=2, num_warps=4, num_stages=2)
    assert_close(call(ops, config=config), ops)
    prepared = prepared_call(*ops.args(), bias=None, config=config, block_size=(128, 128))
    assert prepared.kernel == "block" and "block" in repr(prepared)


def test_a_repeated_call_reuses_its_prepared_launch_with_new_data():
    clear_cache()
    first, second = (
        make_block_operands(8, 128, 256, DEVICE, gen=torch.Generator(DEVICE).manual_seed(s)) for s in (1, 2)
    )
    assert_close(call(first), first)
    assert_close(call(second), second)
    assert len(runtime.prepared) == 1


@pytest.mark.parametrize(
    "change,error,words",
    [
        ("int8", TypeError, "block_size is for fp8"),
        ("scale_a per token", ValueError, r"scale_a must be \[M, ceil\(K / block_k\)\]"),
        ("scale_b short", ValueError, r"scale_b must be \[ceil\(K / block_k\), ceil\(N / block_n\)\]"),
        ("scale bf16", TypeError, "scale_a must be float32 with block_size"),
        ("block_k 100", ValueError, "block_k in"),
        ("block_size 3 values", TypeError, "block_size must be a pair"),
        ("torch backend", ValueError, "backend='torch' cannot compute this call"),
        ("config of another block_k", ValueError, "config must be a pointer-kernel config with block_k = 128"),
    ],
)
def test_mismatches_are_refused_before_launch(change, error, words):
    ops = make_block_operands(8, 128, 256, DEVICE)
    kwargs = dict(bias=ops.bias, block_size=ops.block_size)
    a, b, scale_a, scale_b = ops.args()
    if change == "int8":
        a, b = torch.zeros_like(a, dtype=torch.int8), torch.zeros_like(b, dtype=torch.int8)
    elif change == "scale_a per token":
        scale_a = scale_a[:, :1]
    elif change == "scale_b short":
        scale_b = scale_b[:, :0]
    elif change == "scale bf16":
        scale_a = scale_a.bfloat16()
    elif change == "block_k 100":
        kwargs["block_size"] = (128, 100)
    elif change == "block_size 3 values":
        kwargs["block_size"] = (128, 128, 1)
    elif change == "torch backend":
        kwargs["backend"] = "torch"
    else:
        kwargs["config"] = MatmulConfig(16, 32, 64)
    clear_cache()
    with pytest.raises(error, match=words):
        scaledmm.scaled_mm(a, b, scale_a, scale_b, **kwargs)
    with pytest.raises(error, match=words):  # the registered op checks the same
        blocks = kwargs["block_size"]
        config = kwargs.get("config")
        torch.ops.scaledmm.scaled_mm(
            a, b, scale_a, scale_b, kwargs["bias"], torch.bfloat16, None if config is None else config.as_list(),
            kwargs.get("backend", "auto"), "fast", list(blocks),
        )  # fmt: skip
    assert not runtime.prepared
