"""The lookup's guards: select_config checks its arguments, and a tuned bucket that cannot run on
this device (shared memory, split-K scratch) is skipped with a warning instead of failing the call."""

import json
import warnings

import pytest
import torch
from helpers import DEVICE

import scaledmm
from scaledmm.configs import MatmulConfig, clear_cache, select_config
from scaledmm.configs.files import file_name
from scaledmm.configs.lookup import CONFIG_DIR_ENV, device_name, unfit_reason
from scaledmm.testing import assert_close, make_operands


@pytest.mark.parametrize(
    "M,N,K,error,words",
    [
        (-5, 64, 64, ValueError, "M must be >= 1"),
        (0, 64, 64, ValueError, "M must be >= 1"),
        (8.5, 64, 64, TypeError, "M must be an int"),
        (True, 64, 64, TypeError, "M must be an int"),
        (8, 0, 64, ValueError, "N must be >= 1"),
        (8, 64, "64", TypeError, "K must be an int"),
    ],
)
def test_select_config_checks_its_dimensions(M, N, K, error, words):
    with pytest.raises(error, match=words):
        select_config(M, N, K, torch.int8, "cpu")


@pytest.mark.parametrize(
    "block_size,error,words",
    [
        ((128, 100), ValueError, "block_k in"),  # the block kernel's K step: scaled_mm refuses it too
        ((128, 16), ValueError, "block_k in"),
        (128, TypeError, "block_size must be a pair"),
        ((128.0, 128), TypeError, "block_size must be a pair"),
    ],
)
def test_select_config_checks_block_size_as_scaled_mm_does(block_size, error, words):
    with pytest.raises(error, match=words):
        select_config(16, 256, 256, torch.float8_e4m3fn, "cpu", block_size=block_size)
    assert select_config(16, 256, 256, torch.float8_e4m3fn, "cpu", block_size=[128, 64]).block_k == 64


def test_select_config_refuses_a_device_it_cannot_have():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        select_config(8, 64, 64, torch.int8, "cuda")
    with pytest.raises(ValueError, match="device must name a torch device"):
        select_config(8, 64, 64, torch.int8, "gpu0")


def test_unfit_reason():
    assert unfit_reason(MatmulConfig(128, 128, 128, num_stages=4), 4096, 4096, 227 * 1024) is None
    assert "shared memory" in unfit_reason(MatmulConfig(256, 256, 512, num_stages=8), 4096, 4096, 227 * 1024)
    assert "split-K scratch" in unfit_reason(MatmulConfig(16, 16, 32, split_k=16), 8192, 4096, 227 * 1024)


@pytest.mark.parametrize(
    "config",
    [
        MatmulConfig(16, 16, 32, num_stages=2, split_k=16),  # 2 GiB of split-K scratch at 8192 x 4096
        MatmulConfig(256, 256, 512, num_stages=8),  # far beyond any GPU's shared memory
    ],
    ids=["split-k scratch", "shared memory"],
)
def test_a_file_bucket_that_cannot_run_is_skipped_with_a_warning(tmp_path, monkeypatch, config):
    M, N, K = 8192, 4096, 64
    name = device_name(torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu"))
    data = {
        "format_version": 2,
        "device_name": name,
        "n": N,
        "k": K,
        "dtype": "int8",
        "buckets": {str(M): {"backend": "triton", "config": config.to_dict()}},
    }
    (tmp_path / file_name(name, N, K, "int8")).write_text(json.dumps(data))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    try:
        with pytest.warns(UserWarning, match="cannot run on this device"):
            chosen = select_config(M, N, K, torch.int8, DEVICE)
        assert chosen != config
        if config.split_k == 1:
            # A call through the same file runs the heuristic's config (the bucket serves M <= 2 x 8192).
            ops = make_operands(40, N, K, torch.int8, DEVICE)
            with pytest.warns(UserWarning, match="cannot run on this device"):
                assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias), ops)
    finally:
        clear_cache()


def test_an_explicit_config_that_cannot_run_is_refused_before_launch():
    ops = make_operands(16, 64, 64, torch.int8, DEVICE)
    with pytest.raises(ValueError, match="shared memory"):
        scaledmm.scaled_mm(*ops.args(), config=MatmulConfig(256, 256, 512, num_stages=8))


def _write_table(folder, N, K, buckets, dtype="int8"):
    name = device_name(torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu"))
    data = {"format_version": 2, "device_name": name, "n": N, "k": K, "dtype": dtype, "buckets": buckets}
    path = folder / file_name(name, N, K, dtype)
    path.write_text(json.dumps(data))
    return path


def _only_files_in(folder, monkeypatch):
    """The lookup sees the files in `folder` only: on a GPU whose card has shipped files, a shipped
    neighbour would otherwise lend its buckets too (an H200's 1280 x 8192 is within reach of 1024 x 16384)."""
    empty = folder / "shipped"
    empty.mkdir()
    monkeypatch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", empty)
    monkeypatch.setenv(CONFIG_DIR_ENV, str(folder))
    clear_cache()


def test_a_shape_without_a_file_borrows_the_nearest_tuned_neighbours_bucket(tmp_path, monkeypatch):
    """Transfer from tuned data: N and K each within a factor of 2 of a tuned shape's, the nearest
    file's bucket for M serves (backend included); farther, or with a bucket that cannot run here,
    the heuristic does; a shape's own file always comes first."""
    from scaledmm.configs.lookup import TRANSFER_MAX_RATIO, plan

    device = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")
    near = MatmulConfig(32, 64, 128, num_stages=3)
    nearer = MatmulConfig(64, 32, 64, num_stages=4)
    unfit = MatmulConfig(256, 256, 512, num_stages=8)
    bucket = lambda config, backend="triton": {"backend": backend, "config": config.to_dict()}
    far_path = _write_table(tmp_path, 1024, 1024, {"64": bucket(near)})
    near_path = _write_table(tmp_path, 1024, 3000, {"64": bucket(nearer, "torch"), "4096": bucket(unfit)})
    _only_files_in(tmp_path, monkeypatch)
    try:
        heuristic = plan(64, 1024, 16384, torch.int8, device)  # K 5.5x the nearest: too far to borrow
        assert heuristic.source is None
        assert plan(64, int(1024 * TRANSFER_MAX_RATIO) + 1, 1024, torch.int8, device).source is None
        borrowed = plan(64, 1100, 2048, torch.int8, device)  # nearer (1024, 3000) than (1024, 1024)
        assert (borrowed.source, borrowed.config, borrowed.backend) == (near_path, nearer, "torch")
        assert plan(64, 1100, 1024, torch.int8, device).source == far_path
        # The nearest neighbour's bucket for M = 4096 cannot run here: the next neighbour has none,
        # so the heuristic serves, without a warning (nothing the user chose failed).
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert plan(4096, 1100, 2048, torch.int8, device).source is None
        own = _write_table(tmp_path, 1100, 2048, {"64": bucket(near)})
        clear_cache()
        assert plan(64, 1100, 2048, torch.int8, device).source == own
        assert plan(64, 1100, 2048, torch.float8_e4m3fn, device).source is None  # another dtype's files only
        fp8 = _write_table(tmp_path, 1024, 1024, {"64": bucket(near), "4096": bucket(near)}, dtype="fp8")
        clear_cache()
        assert plan(64, 1100, 1024, torch.float8_e4m3fn, device).source == fp8
        # Above decode fp8 borrows from a shape of the same N only (test below): 1024 x 1024's is not.
        assert plan(65, 1100, 1024, torch.float8_e4m3fn, device).source is None
    finally:
        clear_cache()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8], ids=["fp8", "int8"])
def test_above_decode_fp8_borrows_from_a_neighbour_of_the_same_n_only(tmp_path, monkeypatch, dtype):
    """For fp8 above TRANSFER_FP8_MAX_M a neighbour of another N would lend a tile grid of other
    waves: only one of the same N lends there, even when another N is nearer; at decode the nearest
    of any N does, and int8 borrows from the nearest at every M."""
    from scaledmm.configs.heuristic import heuristic_config, untuned_backend
    from scaledmm.configs.lookup import TRANSFER_FP8_MAX_M, device_capability, device_limits, plan

    device = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")
    dtype_name = "fp8" if dtype == torch.float8_e4m3fn else "int8"
    other_n_config = MatmulConfig(32, 64, 128, num_stages=3)
    same_n_config = MatmulConfig(64, 32, 64, num_stages=4)
    buckets = lambda config: {str(m): {"backend": "triton", "config": config.to_dict()} for m in (64, 4096)}
    # From the call's 1024 x 1024: N 1100 is nearer (|log2| 0.10) than K 1800 (0.81).
    other_n = _write_table(tmp_path, 1100, 1024, buckets(other_n_config), dtype_name)
    same_n = _write_table(tmp_path, 1024, 1800, buckets(same_n_config), dtype_name)
    _only_files_in(tmp_path, monkeypatch)
    try:
        for m in (1, TRANSFER_FP8_MAX_M, TRANSFER_FP8_MAX_M + 1, 256, 4096):
            chosen = plan(m, 1024, 1024, dtype, device)
            if dtype_name == "fp8" and m > TRANSFER_FP8_MAX_M:
                assert (chosen.source, chosen.config) == (same_n, same_n_config), m
            else:
                assert (chosen.source, chosen.config) == (other_n, other_n_config), m
        # 1050 x 1024 has both within reach but neither of its N: the heuristic and its backend rule
        # above decode for fp8 (the vendor on Hopper), the nearest neighbour's bucket for int8.
        assert plan(TRANSFER_FP8_MAX_M, 1050, 1024, dtype, device).source == other_n
        above = plan(256, 1050, 1024, dtype, device)
        if dtype_name == "fp8":
            assert above.source is None
            assert above.backend == untuned_backend(256, dtype, device_capability(device))
            assert above.config == heuristic_config(256, 1050, 1024, dtype, *device_limits(device))
        else:
            assert above.source == other_n
    finally:
        clear_cache()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.int8], ids=["fp8", "int8"])
def test_at_decode_fp8_does_not_borrow_a_grid_that_leaves_its_first_wave(tmp_path, monkeypatch, dtype):
    """At decode a neighbour of another N lends fp8 its bucket unless the config's grid fits one wave
    of the SMs at the neighbour's N and not at the call's (phi-3-mini's 9216 x 3072 with 8192 x
    3584's 64 x 64 tile: 128 tiles on 132 SMs, 144 at N = 9216): then the heuristic serves. A grid
    already past one wave at the lender's N still lends, and int8 borrows as before."""
    from scaledmm.configs import lookup
    from scaledmm.configs.lookup import TRANSFER_FP8_MAX_M, crosses_first_wave, plan

    device = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")
    monkeypatch.setattr(lookup, "device_limits", lambda device: (132, 227 * 1024))  # an H200's SMs
    dtype_name = "fp8" if dtype == torch.float8_e4m3fn else "int8"
    tile = MatmulConfig(64, 64, 256, num_stages=5)
    buckets = {str(TRANSFER_FP8_MAX_M): {"backend": "triton", "config": tile.to_dict()}}
    one_wave = _write_table(tmp_path, 8192, 3584, buckets, dtype_name)  # 128 tiles at M = 64
    two_waves = _write_table(tmp_path, 16384, 3584, buckets, dtype_name)  # 256 tiles
    _only_files_in(tmp_path, monkeypatch)
    try:
        assert crosses_first_wave(TRANSFER_FP8_MAX_M, 9216, 8192, tile, 132)
        crossed = plan(TRANSFER_FP8_MAX_M, 9216, 3072, dtype, device)
        if dtype_name == "fp8":
            assert (crossed.source, crossed.backend) == (None, "triton")
            assert crossed.config != tile  # the heuristic's, fitted to N = 9216
        else:
            assert (crossed.source, crossed.config) == (one_wave, tile)
        assert plan(TRANSFER_FP8_MAX_M, 8000, 3072, dtype, device).source == one_wave  # 125 tiles
        assert plan(TRANSFER_FP8_MAX_M, 18000, 3072, dtype, device).source == two_waves  # 282: 2 -> 3 waves
    finally:
        clear_cache()


def test_untuned_fp8_above_decode_runs_ours_where_the_nearest_neighbour_timed_the_heuristic_well_ahead(
    tmp_path, monkeypatch
):
    """Without a same-N lender, fp8 above TRANSFER_FP8_MAX_M goes to the vendor on Hopper, unless the
    nearest neighbour of any N timed the heuristic's config faster than the vendor by more than
    UNTUNED_OURS_MIN_GAIN at that M: then the heuristic's config runs on ours. The neighbour's own
    bucket is not lent (another N)."""
    from scaledmm.configs import lookup
    from scaledmm.configs.lookup import UNTUNED_OURS_MIN_GAIN, plan

    device = torch.device(DEVICE, 0) if DEVICE == "cuda" else torch.device("cpu")
    monkeypatch.setattr(lookup, "device_capability", lambda device: (9, 0))  # the vendor rule is Hopper's
    lent = MatmulConfig(32, 64, 128, num_stages=3)

    def bucket(vendor_us, heuristic_us, vendor="torch"):
        times = {vendor: vendor_us, "heuristic": heuristic_us, "triton": heuristic_us}
        return {"backend": "triton", "config": lent.to_dict(), "baselines_us": times}

    ahead = UNTUNED_OURS_MIN_GAIN * 10.0 * 1.01
    # The nearest (N 1100) timed the heuristic well ahead at M = 128, barely ahead at M = 4096; the
    # farther one (K 1800) the other way round: the nearest decides.
    # cuBLAS's precise kernel, timed where it refused fast accumulation, is no evidence against the fast one.
    precise = bucket(ahead, 10.0, vendor="torch (precise: fast accumulation refused)")
    _write_table(tmp_path, 1100, 1024, {"128": bucket(ahead, 10.0), "256": precise, "4096": bucket(10.5, 10.0)}, "fp8")
    _write_table(tmp_path, 1024, 1800, {"128": bucket(10.5, 10.0), "4096": bucket(ahead, 10.0)}, "fp8")
    _only_files_in(tmp_path, monkeypatch)
    try:
        ours = plan(128, 1050, 1024, torch.float8_e4m3fn, device)
        assert (ours.source, ours.backend) == (None, "triton")
        assert ours.config != lent  # the heuristic's, fitted to the call's N
        assert plan(4096, 1050, 1024, torch.float8_e4m3fn, device).backend == "torch"
        assert plan(256, 1050, 1024, torch.float8_e4m3fn, device).backend == "torch"
    finally:
        clear_cache()


GLUON_PINGPONG = MatmulConfig(128, 128, 128, num_warps=4, num_stages=5, kernel="gluon", pingpong=True, store_n=64)


def test_a_gluon_bucket_is_planned_and_its_call_computed(tmp_path, monkeypatch):
    # The file says what the tuner writes for a Gluon winner; the call runs the Gluon kernel on Hopper
    # and the same tiles on the TMA kernel elsewhere (the interpreter too).
    M, N, K = 200, 136, 256
    path = _write_table(tmp_path, N, K, {str(M): {"backend": "triton", "config": GLUON_PINGPONG.to_dict()}}, "fp8")
    assert '"pingpong": true' in path.read_text() and '"store_n": 64' in path.read_text()
    _only_files_in(tmp_path, monkeypatch)
    try:
        assert select_config(M, N, K, torch.float8_e4m3fn, DEVICE) == GLUON_PINGPONG
        ops = make_operands(M, N, K, torch.float8_e4m3fn, DEVICE)
        assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, backend="triton"), ops)
    finally:
        clear_cache()


def test_unfit_reason_counts_the_gluon_kernels_output_staging():
    # 5 stages of 128 x 128 x 128 A and B tiles (160 KiB) and two warpgroups' two 128 x 64 bf16 chunks (64 KiB)
    assert unfit_reason(GLUON_PINGPONG, 4096, 4096, 227 * 1024) is None
    assert "224 KiB" in unfit_reason(GLUON_PINGPONG, 4096, 4096, 223 * 1024)
    cooperative = MatmulConfig(128, 256, 128, num_warps=8, num_stages=4, kernel="gluon")  # one whole-tile buffer
    assert "256 KiB" in unfit_reason(cooperative, 4096, 4096, 227 * 1024)
