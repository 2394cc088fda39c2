"""The vendor's block mode as a backend: what torch._scaled_mm is given block scales for (its layout
rules, read on CPU tensors: only the first check of `unsupported_reason` needs CUDA), and scale_a
brought into its outer-dim-major layout."""

import re

import pytest
import torch

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
        (dict(K=384), "ceil\\(K / 128\\) to be a multiple of 4"),  # cuBLASLt's padded scale rows
    ],
)
def test_what_the_block_mode_refuses(kwargs, words):
    found = reason(**kwargs)
    assert found is not None and re.search(words, found), found


def test_cpu_tensors_are_refused_first():
    ops = make_block_operands(32, 256, 512, "cpu")
    assert unsupported_reason(*ops.args(), ops.bias, BF16, (128, 128)) == "the vendor kernels need CUDA tensors"


def test_scale_a_is_brought_into_the_outer_dim_major_layout():
    scale_a = torch.rand(32, 4)  # quantize_per_token_group's row-major [M, K/128]
    laid_out = block_scale_a(scale_a)
    assert laid_out.stride() == (1, 32) and torch.equal(laid_out, scale_a)
    assert block_scale_a(laid_out) is laid_out  # already there: no copy


def _block_product(a, b, scale_a, scale_b, bias, out_dtype):
    expanded_a = scale_a.repeat_interleave(128, dim=1)[:, : a.shape[1]]
    expanded_b = scale_b.repeat_interleave(128, dim=0).repeat_interleave(128, dim=1)[: b.shape[0], : b.shape[1]]
    out = (a.float() * expanded_a) @ (b.float() * expanded_b)
    return (out if bias is None else out + bias.float()).to(out_dtype)


def _strict_block_mode(a, b, scale_a, scale_b, bias=None, out_dtype=None):
    # torch._scaled_mm's block mode as torch 2.11 takes it on an H200: scale_a with strides exactly
    # (1, M), and M a multiple of 4 (cuBLASLt's 16-byte column stride).
    M = a.shape[0]
    assert scale_a.stride() == (1, M) and M % 4 == 0, (M, scale_a.stride())
    return _block_product(a, b, scale_a, scale_b, bias, out_dtype)


@pytest.mark.parametrize("M", [16, 17, 18, 19, 97])
def test_an_m_the_block_mode_refuses_runs_on_padded_rows(monkeypatch, M):
    from scaledmm.kernels.vendor import vendor_scaled_mm

    monkeypatch.setattr(torch, "_scaled_mm", _strict_block_mode)
    ops = make_block_operands(M, 208, 512, "cpu", (128, 128))
    expected = _block_product(*ops.args(), ops.bias, BF16)
    for scale_a in (ops.scale_a, block_scale_a(ops.scale_a)):
        out = vendor_scaled_mm(ops.a, ops.b, scale_a, ops.scale_b, ops.bias, BF16, block_size=(128, 128))
        assert out.shape == (M, 208) and out.is_contiguous()
        torch.testing.assert_close(out, expected)  # bf16's tolerance: the float32 sums may round apart


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the vendor kernels need CUDA")
@pytest.mark.parametrize("M", [16, 97, 130])
@pytest.mark.parametrize("N,K", [(256, 512), (384, 1536), (208, 1024)])  # 208: a partial weight block
def test_the_vendors_block_mode_matches_the_reference_where_it_is_used(M, N, K):
    # Every call `unsupported_reason` lets through must be right: rows of scale_a in any number (the
    # 1 x 128 scales take M as their stride), and column-major scale_a as the layers give it.
    from scaledmm.kernels.vendor import vendor_scaled_mm
    from scaledmm.testing import assert_close

    ops = make_block_operands(M, N, K, "cuda", (128, 128))
    assert unsupported_reason(*ops.args(), ops.bias, BF16, (128, 128)) is None
    for scale_a in (ops.scale_a, block_scale_a(ops.scale_a)):
        out = vendor_scaled_mm(ops.a, ops.b, scale_a, ops.scale_b, ops.bias, BF16, block_size=(128, 128))
        assert_close(out, ops, "precise")
