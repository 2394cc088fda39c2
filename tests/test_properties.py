"""Property-based: any valid combination of shape, dtypes, layouts, scale modes, bias and config gives
the reference's answer within scaledmm.testing.error_bound."""

import torch
from helpers import DEVICE, OPERAND_PAIRS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.testing import assert_close, make_operands

configs = st.one_of(
    st.none(),
    st.builds(
        MatmulConfig,
        block_m=st.sampled_from([16, 32, 64]),
        block_n=st.sampled_from([16, 32, 64]),
        block_k=st.sampled_from([32, 64]),
        group_m=st.integers(1, 8),
        num_warps=st.sampled_from([1, 2, 4]),
        num_stages=st.integers(1, 4),
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    M=st.integers(0, 80),
    N=st.integers(1, 80),
    K=st.integers(1, 160),
    pair=st.sampled_from(OPERAND_PAIRS),
    per_token=st.booleans(),
    per_channel=st.booleans(),
    a_column_major=st.booleans(),
    b_column_major=st.booleans(),
    bias_dtype=st.sampled_from([None, torch.bfloat16, torch.float16, torch.float32]),
    out_dtype=st.sampled_from([torch.bfloat16, torch.float32]),
    config=configs,
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference(
    M, N, K, pair, per_token, per_channel, a_column_major, b_column_major, bias_dtype, out_dtype, config, seed
):
    gen = torch.Generator(DEVICE).manual_seed(seed)
    ops = make_operands(
        M,
        N,
        K,
        pair[0],
        DEVICE,
        b_dtype=pair[1],
        per_token=per_token,
        per_channel=per_channel,
        bias_dtype=bias_dtype,
        a_column_major=a_column_major,
        b_column_major=b_column_major,
        gen=gen,
    )
    out = scaledmm.scaled_mm(*ops.args(), out_dtype=out_dtype, bias=ops.bias, config=config)
    assert out.dtype == out_dtype
    assert_close(out, ops)
