"""scaled_mm against the float64 reference, on fresh random inputs, over dtypes, scales, layouts,
shapes and configs. Tolerances: scaledmm.testing.error_bound (one ulp of the output format plus the
accumulation and epilogue error), explained there."""

import pytest
import torch
from helpers import DEVICE, OPERAND_PAIRS, pair_id

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.testing import assert_close, make_operands

SCALE_MODES = [(True, True), (True, False), (False, True), (False, False)]
LAYOUTS = [(False, True), (False, False), (True, True), (True, False)]  # (a column-major, b column-major)


def run(ops, out_dtype=torch.bfloat16, config=None):
    return scaledmm.scaled_mm(*ops.args(), out_dtype=out_dtype, bias=ops.bias, config=config)


@pytest.mark.parametrize("pair", OPERAND_PAIRS, ids=pair_id)
@pytest.mark.parametrize("per_token,per_channel", SCALE_MODES, ids=["tok-ch", "tok-t", "t-ch", "t-t"])
@pytest.mark.parametrize("a_col,b_col", LAYOUTS, ids=["aR-bC", "aR-bR", "aC-bC", "aC-bR"])
def test_dtypes_scales_layouts(pair, per_token, per_channel, a_col, b_col):
    ops = make_operands(
        33,
        130,
        257,
        pair[0],
        DEVICE,
        b_dtype=pair[1],
        per_token=per_token,
        per_channel=per_channel,
        a_column_major=a_col,
        b_column_major=b_col,
    )
    assert_close(run(ops), ops)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("bias_dtype", [None, torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bias_and_out_dtypes(dtype, bias_dtype, out_dtype):
    ops = make_operands(20, 70, 96, dtype, DEVICE, bias_dtype=bias_dtype)
    if dtype == torch.int8 and out_dtype == torch.float16:
        # Keep int8 results inside fp16's range (65504), as real quantization scales (absmax / 127) do.
        ops.scale_a /= 127
        ops.scale_b /= 127
    out = run(ops, out_dtype)
    assert out.dtype == out_dtype and out.is_contiguous()
    assert_close(out, ops)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("M", [1, 7, 33, 130, 257])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 33), (33, 130), (130, 257), (257, 7)])
def test_ragged_shapes(dtype, M, N, K):
    ops = make_operands(M, N, K, dtype, DEVICE)
    assert_close(run(ops), ops)


@pytest.mark.parametrize(
    "config",
    [
        MatmulConfig(16, 16, 32, group_m=1, num_warps=1, num_stages=1),
        MatmulConfig(16, 32, 64, group_m=3, num_warps=2, num_stages=2),
        MatmulConfig(32, 16, 32, group_m=4, num_warps=4, num_stages=3),
        MatmulConfig(64, 64, 128, group_m=8, num_warps=4, num_stages=4),
        MatmulConfig(32, 32, 64, group_m=2, num_warps=4, num_stages=2, split_k=4),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
def test_many_tiles_and_groups(config, dtype):
    # Enough tiles in both directions that the grouped order, the wrapped edges and a ragged last
    # K step all occur.
    ops = make_operands(70, 90, 100, dtype, DEVICE)
    assert_close(run(ops, config=config), ops)


def test_config_is_honoured_and_default_comes_from_select_config():
    ops = make_operands(5, 40, 64, torch.int8, DEVICE)
    default = run(ops)
    explicit = run(ops, config=scaledmm.select_config(5, 40, 64, torch.int8, DEVICE))
    assert torch.equal(default, explicit)


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
def test_empty_m(dtype):
    ops = make_operands(0, 24, 40, dtype, DEVICE)
    out = run(ops)
    assert out.shape == (0, 24) and out.dtype == torch.bfloat16 and out.device.type == DEVICE


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16])
def test_half_precision_scales_are_upcast(scale_dtype):
    ops = make_operands(9, 50, 64, torch.int8, DEVICE, scale_dtype=scale_dtype)
    assert_close(run(ops), ops)


@pytest.mark.parametrize(
    "scale_a_shape,scale_b_shape",
    [((), ()), ((1,), (1, 1)), ((1, 1), (1,)), ((12,), (40,)), ((12, 1), (1, 40)), ((12, 1), (40, 1))],
)
def test_every_scale_shape(scale_a_shape, scale_b_shape):
    ops = make_operands(12, 40, 64, torch.int8, DEVICE)
    ops.scale_a = torch.rand(scale_a_shape, device=DEVICE) + 0.5
    ops.scale_b = torch.rand(scale_b_shape, device=DEVICE) + 0.5
    assert_close(run(ops), ops)


def test_scales_and_bias_may_be_strided():
    ops = make_operands(12, 40, 64, torch.int8, DEVICE)
    ops.scale_a = (torch.rand(12, 3, device=DEVICE) + 0.5)[:, 1]
    ops.scale_b = (torch.rand(2, 40, device=DEVICE) + 0.5)[1:, :]
    ops.bias = torch.randn(40, 2, device=DEVICE)[:, 0]
    assert_close(run(ops), ops)


def test_fresh_inputs_give_fresh_outputs():
    # Guards against a kernel that ignores its inputs (e.g. a stale cache): two draws must differ.
    first = make_operands(8, 32, 64, torch.int8, DEVICE)
    second = make_operands(8, 32, 64, torch.int8, DEVICE)
    assert not torch.equal(run(first), run(second))
