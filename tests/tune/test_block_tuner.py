"""`scaledmm tune --block-size` end to end on a tiny shape (Triton's interpreter on CPU): a block-scaled
file written under its vLLM-style name, used by the lookup, resumed without tuning again; its
candidates fit the block; its journal lines are checked like the others; and a bad --block-size is
refused naming it."""

import dataclasses
import json

import pytest
import torch
import triton
from helpers import ON_GPU

import scaledmm.tune.distributed as distributed
from scaledmm.cli import main
from scaledmm.configs import MatmulConfig, clear_cache, plan
from scaledmm.configs.files import ConfigFileError, file_name, load_table
from scaledmm.configs.heuristic import block_heuristic_config
from scaledmm.configs.lookup import CONFIG_DIR_ENV, block_unfit_reason, device_limits, device_name
from scaledmm.kernels.matmul_block import block_kernel_revision
from scaledmm.tune.runner import Job, _compile, candidates, job_operands, vendor_inputs
from scaledmm.tune.space import BLOCK_SWAP_MAX_M, SWAP_MAX_M, SWAP_MAX_TOKENS, block_candidate_configs
from scaledmm.tune.store import job_of, validate_result

N, K = 48, 256
BLOCK = (128, 128)
DEVICE = torch.device("cuda", 0) if ON_GPU else torch.device("cpu")
BLOCK_FILE = file_name(device_name(DEVICE), N, K, "fp8", block_shape=BLOCK)


def tune(out, ms="1,20", extra=()):
    grid = ["--shape", f"{N},{K}", "--block-size", "128,128", "--m", ms, "--max-candidates", "2"]
    return main(["tune", *grid, "--compile-workers", "2", "--out", str(out), *extra])


def test_tune_writes_a_block_file_that_the_lookup_uses_and_a_rerun_keeps(tmp_path, monkeypatch, capsys):
    assert tune(tmp_path) == 0
    assert "block scales 128x128" in capsys.readouterr().out
    assert [p.name for p in tmp_path.glob("*.json")] == [BLOCK_FILE]
    table = load_table(tmp_path / BLOCK_FILE)
    assert table.block_shape == BLOCK and [b.m for b in table.buckets] == [1, 20]
    data = json.loads((tmp_path / BLOCK_FILE).read_text())
    assert data["block_shape"] == [128, 128] and "accumulation" not in data
    assert data["scales"].startswith("block scales: 1 x 128 groups of a, 128 x 128 blocks of b")
    for bucket in data["buckets"].values():
        config = MatmulConfig.from_dict(bucket["config"])
        assert bucket["revision"] == block_kernel_revision(config) and bucket["baselines_us"]["heuristic"] > 0
        assert block_unfit_reason(config, BLOCK) is None
        if not ON_GPU:
            assert bucket["backend"] == "triton" and bucket["baselines_us"]["torch"] is None

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    try:
        chosen = plan(16, N, K, torch.float8_e4m3fn, DEVICE, block_size=BLOCK)
        assert chosen.source == tmp_path / BLOCK_FILE
        assert chosen.config == MatmulConfig.from_dict(data["buckets"]["20"]["config"])
        assert plan(16, N, K, torch.float8_e4m3fn, DEVICE).source is None  # not a per-channel file
    finally:
        clear_cache()

    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job) or real(job, *a, **k))
    assert tune(tmp_path, ms="1,20,40") == 0
    assert tuned == [Job(N, K, "fp8", 40, "fast", BLOCK)]  # only the new point
    assert [b.m for b in load_table(tmp_path / BLOCK_FILE).buckets] == [1, 20, 40]


def test_block_candidates_fit_the_block_and_end_with_the_heuristic():
    for M in (1, 16, 64, 256, 4096):
        space = block_candidate_configs(M, 7168, 2048, 128, 227 * 1024, 132)
        assert space and len(set(space)) == len(space)
        for c in space:
            assert block_unfit_reason(c, BLOCK) is None
            assert c.num_stages * (c.block_m + c.block_n) * 128 <= 227 * 1024 - 16 * 1024
            assert 2 * c.block_m * c.block_n // (c.num_warps * 32) <= 128  # two fp32 tiles per program
    job = Job(N, K, "fp8", 20, "fast", BLOCK)
    configs = candidates(job, DEVICE, max_candidates=5)
    assert configs[-1] == block_heuristic_config(20, N, K, 128, *device_limits(DEVICE))
    assert all(block_unfit_reason(c, BLOCK) is None for c in configs)


@pytest.mark.parametrize("N,K", [(2112, 7168), (4096, 7168), (7168, 2048), (24576, 1536)])
def test_block_split_k_and_swapped_forms_where_the_weight_streams(N, K):
    sms = 132
    for M in (1, 16, 64, 128, 256, 4096):
        space = block_candidate_configs(M, N, K, 128, 227 * 1024, sms)
        unsplit = [c for c in space if c.split_k == 1]
        swapped = [c for c in space if c.kernel == "swapped"]
        if M <= BLOCK_SWAP_MAX_M:  # one tile row of tokens up to SWAP_MAX_TOKENS, K steps of one block
            tokens = min(SWAP_MAX_TOKENS, max(16, M))
            assert swapped and {(c.block_m, c.block_k) for c in swapped} == {(tokens, 128)}
            assert all(2 * c.block_m * c.block_n // 128 <= 128 for c in swapped)  # two fp32 tiles, no spill
        else:
            assert not swapped
        for c in space:
            if c.split_k > 1 and c.kernel == "pointer":  # a variant of an unsplit candidate
                tiles = triton.cdiv(M, c.block_m) * triton.cdiv(N, c.block_n)
                assert tiles < sms and tiles * c.split_k <= 2 * sms
                assert triton.cdiv(K, 128) >= 2 * c.split_k
                assert c.num_stages >= 3 and dataclasses.replace(c, split_k=1) in unsplit
                if M <= SWAP_MAX_M:  # at decode, the pointer kernel's rule: its smallest tile, four warps
                    assert c.num_warps == 4 and c.block_m == min(u.block_m for u in unsplit)
        splits = len(space) - len(unsplit)
        if M <= SWAP_MAX_M:
            assert splits <= len(unsplit)  # a modest addition
        if M == 1:
            assert splits > 0
        if M == 4096:  # every tile grid fills the SMs
            assert splits == 0, f"M={M}: {splits} split-K candidates"
    # Without SMs to fill (a grid of one tile per SM already) there is no split.
    assert all(c.split_k == 1 for c in block_candidate_configs(1, N, K, 128, 227 * 1024, 1))


def block_result(**changes):
    entry = {
        "n": N, "k": K, "dtype": "fp8", "m": 4, "accumulation": "fast", "block_shape": [128, 128],
        "backend": "torch", "config": MatmulConfig(16, 64, 128).to_dict(), "time_us": 5.0,
        "baselines_us": {"torch": 5.0, "heuristic": 6.0, "triton": 7.0}, "candidates": 3,
        "revision": block_kernel_revision(MatmulConfig(16, 64, 128)),
    }  # fmt: skip
    return {**entry, **changes}


def test_the_vendor_is_timed_on_column_major_block_scales_as_the_layers_give_it():
    block_job, channel_job = Job(N, K, "fp8", 32, "fast", BLOCK), Job(N, K, "fp8", 32)
    ops = job_operands(block_job, DEVICE)
    inputs = [(*ops.args(), ops.bias)]
    ((a, b, scale_a, scale_b, bias),) = vendor_inputs(block_job, inputs)
    assert scale_a.stride() == (1, 32) and torch.equal(scale_a, ops.scale_a)  # the same values, no copy per call
    assert a is ops.a and b is ops.b and scale_b is ops.scale_b and bias is ops.bias
    assert vendor_inputs(channel_job, inputs) is inputs


def test_block_results_are_validated_like_the_files():
    clean = validate_result(block_result())
    assert clean["block_shape"] == [128, 128] and job_of(clean) == Job(N, K, "fp8", 4, "fast", BLOCK)
    for changes, words in (
        (dict(block_shape=[128, 128, 1]), "block_shape must be"),
        (dict(accumulation="precise"), "block_shape is for fp8 files without an accumulation mode"),
        (dict(dtype="int8"), "block_shape is for fp8"),
    ):
        with pytest.raises(ConfigFileError, match=words):
            validate_result(block_result(**changes))


@pytest.mark.parametrize(
    "value,words",
    [("128", "expected BLOCK_N,BLOCK_K"), ("128,100", "block_k in"), ("a,b", "expected BLOCK_N,BLOCK_K")],
)
@pytest.mark.parametrize("command", ["tune", "bench"])
def test_a_bad_block_size_is_refused_naming_it(command, value, words, capsys):
    with pytest.raises(SystemExit) as stop:
        main([command, "--shape", "48,256", "--block-size", value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--block-size" in err and words in err


def test_block_size_takes_fp8_only(tmp_path):
    with pytest.raises(SystemExit, match="--block-size is for fp8"):
        main(["tune", "--shape", "48,256", "--block-size", "128,128", "--dtype", "int8", "--out", str(tmp_path)])


@pytest.mark.skipif(not ON_GPU, reason="compiles for a CUDA device")
def test_a_block_candidate_compiles_ahead_from_meta_tensors():
    # The tuner's compile workers hold no data: the block kernel must compile from meta tensors.
    assert _compile(Job(7168, 2048, "fp8", 64, "fast", BLOCK), MatmulConfig(64, 128, 128, num_stages=3)) is None
