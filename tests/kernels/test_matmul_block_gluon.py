"""The block-scaled FP8 Gluon kernel (matmul_block_gluon, issue 20). Without a GPU: its argument
plumbing and eligibility, and its code compiled for sm_90 on the host (Gluon has no interpreter). On a
Hopper GPU it runs on ragged shapes and is compared with the float64 block reference."""

import re

import pytest
import torch
from helpers import DEVICE, ON_GPU
from test_matmul_gluon import ON_HOPPER, SHARED_MEMORY_SM90, spilled_bytes

from scaledmm import MatmulConfig
from scaledmm.kernels import matmul_block_gluon
from scaledmm.kernels.matmul_block_gluon import (
    block_config_error,
    block_gluon_eligible,
    block_launch_arguments,
    scaled_mm_block_gluon,
)
from scaledmm.kernels.matmul_gluon import GluonConfig
from scaledmm.testing import assert_close, make_block_operands, sm90_target

E4M3 = torch.float8_e4m3fn
BLOCK = (128, 128)
COOPERATIVE = GluonConfig(128, 128, 128, 5, 2, store_n=64)
PINGPONG = GluonConfig(64, 128, 128, 6, 2, store_n=64, schedule="pingpong")
ONE_GROUP = GluonConfig(64, 128, 128, 6, 1, store_n=64)


def cpu_block_operands(M, N, K, out_dtype=torch.bfloat16, bias=True):
    """Empty CPU tensors of a block-scaled call's dtypes and layouts: scale_a row-major [M, G] and
    scale_b = weight_scale_inv.t() (outer-dim-major), as make_block_operands passes them."""
    blocks_k, blocks_n = -(-K // 128), -(-N // 128)
    a = torch.empty(M, K, dtype=E4M3)
    b = torch.empty(N, K, dtype=E4M3).t()
    scale_a = torch.empty(M, blocks_k)
    scale_b = torch.empty(blocks_n, blocks_k).t()
    bias = torch.empty(N, dtype=torch.bfloat16) if bias else None
    return a, b, scale_a, scale_b, bias, torch.empty(M, N, dtype=out_dtype)


# ----------------------------------------------------------------------------------------- plumbing


@pytest.mark.parametrize(
    "config, words",
    [
        (GluonConfig(128, 256, 128, 4, 2, store_n=64), "block_n and block_k"),
        (GluonConfig(128, 128, 64, 4, 2), "block_n and block_k"),
        (GluonConfig(128, 128, 128, 4, 2, epilogue_split=2), "one accumulator"),
        (GluonConfig(128, 128, 128, 4, 2, instr_n=64), "one accumulator"),
        (GluonConfig(128, 128, 128, 4, 1), "64 rows per warpgroup"),  # 128 rows on one warpgroup
        (GluonConfig(128, 128, 128, 5, 2, schedule="pingpong"), "64 rows per warpgroup"),
        (GluonConfig(256, 128, 128, 3, 2), "64 rows per warpgroup"),
    ],
    ids=str,
)
def test_block_config_error(config, words):
    assert words in block_config_error(config)
    with pytest.raises(ValueError, match=words):
        block_launch_arguments(*cpu_block_operands(256, 256, 256), config, num_sms=132)


@pytest.mark.parametrize("config", [COOPERATIVE, PINGPONG, ONE_GROUP], ids=str)
def test_configs_the_kernel_runs(config):
    assert block_config_error(config) is None


def test_launch_arguments():
    M, N, K = 1000, 600, 320  # ragged: 3 K blocks, the last partial; 5 N blocks
    a, b, scale_a, scale_b, bias, out = cpu_block_operands(M, N, K)
    grid, args, kwargs = block_launch_arguments(a, b, scale_a, scale_b, bias, out, COOPERATIVE, num_sms=132)
    assert grid == (8 * 5,)
    a_desc, b_desc, out_desc = args[:3]
    assert (a_desc.shape, a_desc.strides, a_desc.block_shape) == ([M, K], [K, 1], [128, 128])
    assert (b_desc.shape, b_desc.strides, b_desc.block_shape) == ([N, K], [K, 1], [128, 128])
    assert out_desc.block_shape == [128, 64]  # one box per 64-column store
    # Both scales' strides as given: scale_a row-major (3, 1), scale_b = weight_scale_inv.t() (1, 3).
    assert args[3:] == (scale_a, scale_b, bias, 3, 1, 1, 3, 1, 8, 40)
    assert kwargs == dict(HAS_BIAS=True, NUM_STAGES=5, STORE_BUFFERS=2, PINGPONG=False, num_warps=8)

    grid, args, kwargs = block_launch_arguments(a, b, scale_a, scale_b, None, out, PINGPONG, num_sms=132)
    assert grid == (16 * 5,) and args[5] is None and args[10] == 0
    assert (kwargs["PINGPONG"], kwargs["num_warps"], kwargs["HAS_BIAS"]) == (True, 4, False)


def test_eligibility():
    a, b, scale_a, scale_b, bias, out = cpu_block_operands(64, 256, 256)
    device = torch.device("cuda", 0) if ON_HOPPER else a.device
    if not ON_HOPPER:
        assert not block_gluon_eligible(a, b, scale_a, scale_b, out, BLOCK, device)  # no Hopper GPU
        with pytest.raises(ValueError, match="Hopper"):
            scaled_mm_block_gluon(a, b, scale_a, scale_b, bias, out, COOPERATIVE)
    with pytest.raises(TypeError, match="GluonConfig"):
        scaled_mm_block_gluon(a, b, scale_a, scale_b, bias, out, MatmulConfig(128, 128, 128))
    assert not block_gluon_eligible(a, b, scale_a, scale_b, out, (128, 64), device)
    assert not block_gluon_eligible(a, b, scale_a.bfloat16(), scale_b, out, BLOCK, device)
    int8 = torch.empty(64, 256, dtype=torch.int8)
    assert not block_gluon_eligible(int8, int8.t(), scale_a, scale_b, out, BLOCK, device)
    odd = torch.empty(64, 250, dtype=E4M3)  # a 250-byte row: not 16-byte aligned for TMA
    assert not block_gluon_eligible(odd, b[:250], scale_a, scale_b, out, BLOCK, device)


# ----------------------------------------------------------------------------------------- sm_90 code

FP8_N128 = "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3"


@pytest.mark.sm90_compile
@pytest.mark.skipif(ON_GPU, reason="the GPU tests run the kernel itself")
@pytest.mark.parametrize("config", [COOPERATIVE, PINGPONG, ONE_GROUP], ids=str)
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_block_gluon_kernel_compiles_for_sm90(config, out_dtype):
    args = cpu_block_operands(1000, 2856, 4000, out_dtype)  # ragged M, N and K
    with sm90_target():
        grid, positional, kwargs = block_launch_arguments(*args, config, num_sms=132)
        compiled = matmul_block_gluon.block_scaled_mm_gluon_kernel.warmup(*positional, grid=grid, **kwargs)
    ptx = compiled.asm["ptx"]
    assert FP8_N128 in ptx
    # Each K block's first wgmma instruction starts a fresh partial (use_acc=False: a false scale-d).
    mma_partitions = 2 if config.schedule == "pingpong" else 1
    assert len(re.findall(r"\bwgmma\.mma_async", ptx)) == 4 * mma_partitions  # one K block: 4 of k = 32
    assert re.search(r"mov\.pred\s+%p\d+, 0;", ptx)
    assert len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.shared::cluster\.global", ptx)) == 2  # A and B by TMA
    stores = len(re.findall(r"cp\.async\.bulk\.tensor\.2d\.global\.shared::cta", ptx))
    assert stores == config.block_n // config.chunk_n * mma_partitions
    assert "fma.rn.f32" in ptx  # the promotion: acc + partial * scale
    assert compiled.metadata.num_warps == 4 * config.consumer_groups + 4
    assert compiled.metadata.shared <= SHARED_MEMORY_SM90
    assert spilled_bytes(compiled) == 0


# ----------------------------------------------------------------------------------------- on a Hopper GPU


@pytest.mark.skipif(not ON_HOPPER, reason="the Gluon kernel runs on Hopper GPUs only")
@pytest.mark.parametrize("config", [COOPERATIVE, PINGPONG, ONE_GROUP], ids=str)
# Ragged (partial last K and N blocks), many tiles per program (the ring wraps across tiles, ping-pong
# takes turns), one K block, and one row.
@pytest.mark.parametrize("M,N,K", [(1000, 2856, 4000), (4096, 1024, 512), (300, 520, 128), (1, 256, 4096)])
def test_block_gluon_kernel_matches_the_reference(config, M, N, K):
    ops = make_block_operands(M, N, K, DEVICE, BLOCK)
    out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    launch = scaled_mm_block_gluon(*ops.args(), ops.bias, out, config)
    assert_close(out, ops)
    again = make_block_operands(M, N, K, DEVICE, BLOCK)
    launch(*again.args(), again.bias, out)  # the bound launch, new tensors of the same signature
    assert_close(out, again)


@pytest.mark.skipif(not ON_HOPPER, reason="the Gluon kernel runs on Hopper GPUs only")
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32])
def test_block_gluon_kernel_output_dtypes_and_scale_layouts(out_dtype):
    ops = make_block_operands(300, 520, 1040, DEVICE, BLOCK, bias_dtype=None)
    ops.scale_a = ops.scale_a.t().contiguous().t()  # outer-dim-major, as torch._scaled_mm reads it
    ops.scale_b = ops.scale_b.contiguous()  # row-major [K blocks, N blocks]
    out = torch.empty(300, 520, dtype=out_dtype, device=DEVICE)
    scaled_mm_block_gluon(*ops.args(), None, out, COOPERATIVE)
    assert_close(out, ops)
