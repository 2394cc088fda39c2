"""The untuned heuristic and the select_config lookup."""

import pytest
import torch

from scaledmm import MatmulConfig, select_config
from scaledmm.configs import heuristic_config
from scaledmm.configs.heuristic import SHARED_MEMORY_RESERVE, untuned_backend
from scaledmm.configs.lookup import unfit_reason

FP8 = torch.float8_e4m3fn
H100 = dict(num_sms=132, shared_memory=227 * 1024)
ADA = dict(num_sms=128, shared_memory=99 * 1024)


DTYPES = [torch.int8, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.mark.parametrize("M", [1, 2, 16, 17, 32, 33, 64, 65, 128, 255, 256, 4096, 8192])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 33), (130, 100), (2560, 4096), (28672, 4096), (4096, 14336)])
@pytest.mark.parametrize("device", [H100, ADA], ids=["h100", "ada"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "e4m3", "e5m2"])
def test_heuristic_is_valid_and_fits_shared_memory(M, N, K, device, dtype):
    config = heuristic_config(M, N, K, dtype, **device)
    assert isinstance(config, MatmulConfig)
    # What the lookup checks before running a config (the TMA kernel's staged output tile included).
    assert unfit_reason(config, M, N, device["shared_memory"]) is None
    pipelined = config.num_stages * (config.block_m + config.block_n) * config.block_k
    assert pipelined <= device["shared_memory"] - SHARED_MEMORY_RESERVE
    # No tile wider than the problem needs, nor taller than the rule's M range allows.
    assert config.block_n <= max(16, 2 * N) and config.block_k <= max(32, 2 * K)
    assert config.block_m <= (max(16, 2 * M) if M <= 32 else 64 if M <= 64 else 128)
    assert config.num_stages >= 2 and config.num_warps in (4, 8)


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "e4m3", "e5m2"])
def test_tiny_shapes_take_small_tiles(dtype):
    for M, N, K in [(1, 1, 1), (3, 7, 33), (17, 9, 16), (40, 20, 64), (100, 30, 50)]:
        config = heuristic_config(M, N, K, dtype, **H100)
        assert (config.block_n, config.split_k) == (16 if M <= 32 else 32 if M <= 64 else config.block_n, 1)
        assert config.block_k == (32 if K <= 32 else 64)
        assert config.kernel != "tma"  # the TMA tiles need N and K of a whole tile


def test_up_to_m_32_the_swapped_tile_of_16_or_32_tokens_then_64_row_pointer_tiles():
    for dtype in DTYPES:
        for M, block_m in ((1, 16), (16, 16), (17, 32), (32, 32)):
            config = heuristic_config(M, 4096, 4096, dtype, **H100)
            assert config.kernel == "swapped" and (config.block_m, config.block_n, config.block_k) == (block_m, 64, 256)
        for M in (33, 64):
            config = heuristic_config(M, 4096, 4096, dtype, **H100)
            assert (config.kernel, config.block_m, config.num_warps) == ("pointer", 64, 4)


def test_the_swapped_tile_splits_in_two_where_it_leaves_half_the_sms_idle_on_a_long_k():
    # 2560 columns are 40 weight tiles of 64; 8192 are 128 (no split); K below 8192 is not split.
    assert heuristic_config(1, 2560, 8192, torch.int8, **H100).split_k == 2
    assert heuristic_config(16, 2560, 9728, FP8, **H100).split_k == 2
    assert heuristic_config(32, 4096, 14336, FP8, **H100).split_k == 2
    assert heuristic_config(1, 2560, 4096, FP8, **H100).split_k == 1
    assert heuristic_config(1, 8192, 14336, FP8, **H100).split_k == 1
    # shared memory for fewer stages only
    assert (
        heuristic_config(1, 4096, 4096, FP8, **ADA).num_stages < heuristic_config(1, 4096, 4096, FP8, **H100).num_stages
    )


def test_at_decode_the_narrowest_tile_that_still_gives_about_every_sm_a_program():
    # M = 64, one tile row: 32 columns on N <= 4096 (80 and 128 tiles), 64 on 6144 (96 tiles; 32 would
    # make two waves), 128 on 28672 (224 tiles, two waves of the cheapest programs per output).
    for dtype in (torch.int8, FP8):
        widths = [heuristic_config(64, n, 4096, dtype, **H100).block_n for n in (2560, 4096, 6144, 28672)]
        assert widths == [32, 32, 64, 128]
    # K steps of 512 on a long K where the grid is under one program per SM and four stages fit.
    assert heuristic_config(64, 4096, 14336, FP8, **H100).block_k == 512
    assert heuristic_config(64, 4096, 14336, FP8, **H100).num_stages == 4
    assert heuristic_config(64, 4096, 4096, FP8, **H100).block_k == 256
    assert heuristic_config(64, 6144, 14336, FP8, **H100).block_k == 256  # 64-wide tiles: 3 stages of 512 only


def test_mid_m_takes_64_row_tiles_of_long_k_steps_where_the_grid_is_small():
    # M = 128 on 4096 columns: 64 x 64 tiles make 128 programs, one wave.
    config = heuristic_config(128, 4096, 14336, FP8, **H100)
    assert (config.kernel, config.block_m, config.block_n, config.block_k, config.num_warps) == (
        "pointer",
        64,
        64,
        256,
        4,
    )
    # K steps of 128 above M = 128 in int8 and 256 in fp8.
    assert heuristic_config(256, 4096, 4096, torch.int8, **H100).block_k == 128
    assert heuristic_config(256, 4096, 4096, FP8, **H100).block_k == 256
    assert heuristic_config(512, 4096, 4096, FP8, **H100).block_k == 128


def test_large_m_int8_takes_the_four_warp_128_tile_and_fp8_the_tma_tiles_where_shared_memory_holds_them():
    big = MatmulConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=3)
    assert heuristic_config(4096, 4096, 4096, torch.int8, **H100) == big
    assert heuristic_config(4096, 28672, 4096, torch.int8, **H100) == big
    assert heuristic_config(4096, 4096, 4096, FP8, **H100).kernel == "tma"
    assert heuristic_config(256, 28672, 4096, FP8, **H100).kernel == "tma"
    assert heuristic_config(128, 28672, 4096, FP8, **H100) == big  # below M = 256: the pointer kernel
    ada = heuristic_config(4096, 4096, 4096, FP8, **ADA)
    assert ada.kernel == "pointer" and (ada.block_m, ada.block_n) == (128, 128)


def test_the_tma_tile_is_the_larger_one_unless_it_leaves_a_ragged_last_wave():
    def tile(M, N, K=4096):
        config = heuristic_config(M, N, K, FP8, **H100)
        return config.kernel, config.block_m, config.block_n

    # 4096 columns: at M = 1024 128 x 256 tiles make 128 programs (one wave), at 2048 256 (two, as full
    # as 128 x 128's four); at 1536 they make 192 (two waves, the second half empty): 128 x 128 (384, three).
    assert tile(1024, 4096) == tile(2048, 4096) == ("tma", 128, 256)
    assert tile(1536, 4096) == ("tma", 128, 128)
    # llama3-70b's qkv at tp 4 (2560 x 8192), where the 128 x 256 tile lost at M = 2048 and 4096
    # (benchmarks/results/h100-2026-11-27-tma/heuristic_tma_ab.log).
    assert tile(2048, 2560, 8192) == tile(4096, 2560, 8192) == ("tma", 128, 128)


def test_select_config_is_cached_and_pure():
    first = select_config(7, 4096, 4096, torch.int8, "cpu")
    assert select_config(7, 4096, 4096, torch.int8, "cpu") is first
    assert first == heuristic_config(7, 4096, 4096, torch.int8, num_sms=132, shared_memory=227 * 1024)


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


def test_untuned_block_backend_keeps_ours_where_the_vendor_must_pad_rows():
    fp8 = torch.float8_e4m3fn
    assert untuned_backend(97, fp8, (9, 0)) == "torch"  # per-channel scales: any M
    assert [untuned_backend(M, fp8, (9, 0), block=True) for M in (64, 96, 97, 255, 256, 257)] == [
        "triton", "torch", "triton", "triton", "torch", "torch"
    ]  # fmt: skip


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
