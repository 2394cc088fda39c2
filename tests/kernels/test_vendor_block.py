"""The vendor's block mode as a backend: what torch._scaled_mm is given block scales for (its layout
rules, read on CPU tensors: only the first check of `unsupported_reason` needs CUDA), and scale_a
in its outer-dim-major layout: quantize_per_token_group's as it is, another copied."""

import re

import pytest
import torch
from helpers import DEVICE

import scaledmm
from scaledmm.kernels.vendor import _block_unsupported_reason, block_scale_a, unsupported_reason
from scaledmm.testing import make_block_operands

BF16 = torch.bfloat16


def reason(M=32, N=256, K=512, block=(128, 128), out_dtype=BF16, edit=None):
    ops = make_block_operands(M, N, K, "cpu", block)
    if edit:
        edit(ops)
    return _block_unsupported_reason(ops.a, ops.b, ops.scale_b, ops.bias, out_dtype, block)


def test_what_the_block_mode_takes():
    assert reason() is None  # a checkpoint's layout: weight_scale_inv.t(), bf16 out and bias
    assert reason(M=16) is None


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(M=8), "from M = 16"),
        (dict(block=(64, 128)), "1 x 128 .* and 128 x 128 .* only"),
        (dict(out_dtype=torch.float32), "bfloat16 output only"),
        (dict(edit=lambda ops: setattr(ops, "scale_b", ops.scale_b.contiguous())), "outer-dim-major"),
        (dict(edit=lambda ops: setattr(ops, "bias", ops.bias.float())), "bias of the output dtype"),
        (dict(K=520), "K and N multiples of 16"),
    ],
)
def test_what_the_block_mode_refuses(kwargs, words):
    found = reason(**kwargs)
    assert found is not None and re.search(words, found), found


def test_cpu_tensors_are_refused_first():
    ops = make_block_operands(32, 256, 512, "cpu")
    assert unsupported_reason(*ops.args(), ops.bias, BF16, (128, 128)) == "the vendor kernels need CUDA tensors"


def test_a_row_major_scale_a_is_brought_into_the_outer_dim_major_layout():
    scale_a = torch.rand(32, 4)  # [M, K/128] row-major, as a caller may give scaled_mm
    laid_out = block_scale_a(scale_a)
    assert laid_out.stride() == (1, 32) and torch.equal(laid_out, scale_a)
    assert block_scale_a(laid_out) is laid_out  # already there: no copy
    # torch does not look at the stride of a dimension of size 1 (one row, or one group): neither do we.
    for one in (torch.empty_strided((1, 4), (4, 1)), torch.empty_strided((32, 1), (1, 1))):
        assert block_scale_a(one) is one


@pytest.mark.parametrize("shape", [(32, 512), (2, 16, 512), (32, 128), (1, 512)])
def test_the_quantizers_scales_are_passed_as_they_are(shape):
    # What W8A8Linear hands scaled_mm for x [..., K]: the rows of quantize_per_token_group's scales.
    _, scale = scaledmm.quantize_per_token_group(torch.randn(*shape, device=DEVICE), 128)
    rows = scale.reshape(-1, scale.shape[-1])
    assert block_scale_a(rows) is rows
    if scale.dim() == 2:
        assert block_scale_a(scale) is scale
