"""The untuned heuristic and the select_config lookup."""

import pytest
import torch

from scaledmm import MatmulConfig, select_config
from scaledmm.configs import heuristic_config
from scaledmm.configs.heuristic import untuned_backend

FP8 = torch.float8_e4m3fn
H100 = dict(num_sms=132, shared_memory=227 * 1024)
ADA = dict(num_sms=128, shared_memory=99 * 1024)


@pytest.mark.parametrize("M", [1, 2, 16, 17, 32, 64, 65, 128, 256, 4096, 8192])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 33), (2560, 4096), (28672, 4096), (4096, 14336)])
@pytest.mark.parametrize("device", [H100, ADA], ids=["h100", "ada"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
def test_heuristic_is_valid_and_fits_shared_memory(M, N, K, device, dtype):
    config = heuristic_config(M, N, K, dtype, **device)
    assert isinstance(config, MatmulConfig)
    pipelined = config.num_stages * (config.block_m + config.block_n) * config.block_k
    assert pipelined <= device["shared_memory"]
    # No tile wider than the problem needs.
    assert config.block_n <= max(16, 2 * N) and config.block_k <= max(32, 2 * K)


def test_small_m_takes_the_swapped_tile_then_64_rows_in_fp8_where_n_is_narrow_and_large_m_square_ones():
    for dtype in (torch.int8, FP8):
        for M in (1, 16):
            config = heuristic_config(M, 4096, 4096, dtype, **H100)
            assert config.kernel == "swapped" and (config.block_m, config.block_n, config.block_k) == (16, 64, 256)
    assert heuristic_config(17, 4096, 4096, FP8, **H100).kernel != "swapped"
    assert heuristic_config(32, 8448, 4096, FP8, **H100).block_m == 64
    assert heuristic_config(32, 8449, 4096, FP8, **H100).block_m == 32
    assert heuristic_config(32, 4096, 4096, torch.int8, **H100).block_m == 32
    assert heuristic_config(4096, 4096, 4096, FP8, **H100).block_m == 128


def test_the_swapped_tile_splits_in_two_where_it_leaves_half_the_sms_idle_on_a_long_k():
    # 2560 columns are 40 weight tiles of 64; 8192 are 128 (no split); K below 8192 is not split.
    assert heuristic_config(1, 2560, 8192, torch.int8, **H100).split_k == 2
    assert heuristic_config(16, 2560, 9728, FP8, **H100).split_k == 2
    assert heuristic_config(1, 2560, 4096, FP8, **H100).split_k == 1
    assert heuristic_config(1, 8192, 14336, FP8, **H100).split_k == 1
    # shared memory for fewer stages only
    assert (
        heuristic_config(1, 4096, 4096, FP8, **ADA).num_stages < heuristic_config(1, 4096, 4096, FP8, **H100).num_stages
    )


def test_small_m_fills_the_gpu_when_n_allows():
    # 4096 columns: 64-wide tiles give 64 programs, 32-wide 128: the widest tile reaching 132 SMs is
    # none, so the narrowest is taken; 28672 columns fill the GPU with 128-wide tiles.
    assert heuristic_config(32, 4096, 4096, torch.int8, **H100).block_n == 32
    assert heuristic_config(32, 28672, 4096, torch.int8, **H100).block_n == 128


def test_select_config_is_cached_and_pure():
    first = select_config(7, 4096, 4096, torch.int8, "cpu")
    assert select_config(7, 4096, 4096, torch.int8, "cpu") is first
    assert first == heuristic_config(7, 4096, 4096, torch.int8, num_sms=132, shared_memory=227 * 1024)


def test_large_m_takes_the_tma_tile_where_shared_memory_holds_it():
    assert heuristic_config(4096, 4096, 4096, torch.int8, **H100).kernel == "tma"
    assert heuristic_config(1024, 4096, 4096, torch.int8, **H100).kernel != "tma"
    assert heuristic_config(4096, 4096, 4096, torch.int8, **ADA).kernel != "tma"
    assert heuristic_config(4096, 2560, 8192, torch.int8, **H100).kernel != "tma"  # 320 tiles, under 3 per SM
    assert heuristic_config(8192, 2560, 8192, torch.int8, **H100).kernel == "tma"


@pytest.mark.parametrize(
    "M,dtype,capability,backend",
    [
        (64, torch.float8_e4m3fn, (9, 0), "triton"),  # decode: ours won at every H200 point
        (65, torch.float8_e4m3fn, (9, 0), "torch"),
        (4096, torch.float8_e4m3fn, (9, 0), "torch"),
        (4096, torch.int8, (9, 0), "triton"),  # int8: ours, far ahead of torch._int_mm + epilogue
        (4096, torch.float8_e4m3fn, (8, 9), "triton"),  # unmeasured cards keep ours
        (4096, torch.float8_e4m3fn, (0, 0), "triton"),  # the interpreter
    ],
)
def test_untuned_backend(M, dtype, capability, backend):
    assert untuned_backend(M, dtype, capability) == backend


def test_an_untuned_plan_on_hopper_names_the_vendor_and_a_cpu_call_still_runs(monkeypatch):
    import scaledmm
    from scaledmm.configs import clear_cache, lookup
    from scaledmm.testing import assert_close, make_operands

    clear_cache()
    monkeypatch.setattr(lookup, "device_capability", lambda device: (9, 0))
    try:
        assert lookup.plan(256, 64, 128, torch.float8_e4m3fn, torch.device("cpu")).backend == "torch"
        assert lookup.plan(16, 64, 128, torch.float8_e4m3fn, torch.device("cpu")).backend == "triton"
        if not torch.cuda.is_available():  # the vendor cannot serve CPU tensors: auto runs ours
            ops = make_operands(256, 64, 128, torch.float8_e4m3fn, "cpu")
            assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias), ops)
    finally:
        clear_cache()
