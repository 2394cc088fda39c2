"""Block-scaled fp8 config files (`block_shape=[block_n,block_k]` in the name and the content): their
names, their validation, and the lookup's block mode: a tuned block bucket for (card or family, N,
K, block shape, M), a bucket whose config does not fit the block skipped with a warning, else the
block heuristic; and scaled_mm(block_size=...) running what the lookup planned."""

import json
import warnings

import pytest
import torch
from helpers import DEVICE, prepared_call

import scaledmm
from scaledmm.configs import MatmulConfig, clear_cache, lookup, plan, select_config
from scaledmm.configs.files import FORMAT_VERSION, ConfigFileError, file_name, load_table, parse_file_name
from scaledmm.configs.heuristic import block_heuristic_config, block_vendor_padding_us, padded_block_vendor_loses
from scaledmm.configs.lookup import CONFIG_DIR_ENV, block_unfit_reason, device_limits, device_name, unfit_reason
from scaledmm.testing import assert_close, make_block_operands

E4M3 = torch.float8_e4m3fn
BLOCK = (128, 128)
N, K = 96, 256
DEV = torch.device("cuda", 0) if DEVICE == "cuda" else torch.device("cpu")
TUNED = {
    4: MatmulConfig(16, 32, 128, group_m=1, num_warps=4, num_stages=2),
    64: MatmulConfig(32, 64, 128, group_m=4, num_warps=4, num_stages=3),
}


def block_json(device=None, n=N, k=K, buckets=None, block_shape=BLOCK, backend="triton", **extra):
    return {
        "format_version": FORMAT_VERSION,
        "device_name": device or device_name(DEV),
        "n": n,
        "k": k,
        "dtype": "fp8",
        "block_shape": list(block_shape),
        "buckets": {
            str(m): {"backend": backend, "config": c.to_dict(), "time_us": 10.0, "revision": "abc123"}
            for m, c in (buckets or TUNED).items()
        },
        **extra,
    }


def write(directory, data, name=None):
    name = name or file_name(data["device_name"], data["n"], data["k"], "fp8", block_shape=tuple(data["block_shape"]))
    path = directory / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    yield tmp_path
    clear_cache()


def block_plan(M, n=N, k=K, block_size=BLOCK):
    return plan(M, n, k, E4M3, DEV, block_size=block_size)


def test_block_file_names_round_trip_as_vllm_names_them():
    name = file_name("NVIDIA H200", 7168, 2048, "fp8", block_shape=(128, 128))
    assert name == "N=7168,K=2048,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json"
    assert parse_file_name(name) == ("NVIDIA_H200", 7168, 2048, "fp8", "fast", (128, 128))
    # A block file has no accumulation mode: the block shape takes its place in the name.
    assert file_name("NVIDIA H200", 64, 64, "fp8", "precise", (64, 32)).endswith(",block_shape=[64,32].json")
    for bad in (
        "N=1,K=1,device_name=x,dtype=int8_w8a8,block_shape=[128,128].json",  # int8 has no block scales
        "N=1,K=1,device_name=x,dtype=fp8_w8a8,accumulation=precise,block_shape=[128,128].json",
        "N=1,K=1,device_name=x,dtype=fp8_w8a8,block_shape=[128, 128].json",  # vLLM's MoE spelling, with a space
        "N=1,K=1,device_name=x,dtype=fp8_w8a8,block_shape=[0,128].json",
        "N=1,K=1,device_name=x,dtype=fp8_w8a8,block_shape=[128,99999999999999999999].json",
    ):
        assert parse_file_name(bad) is None, bad


def test_a_block_file_validates_and_says_its_block_shape(tmp_path):
    table = load_table(write(tmp_path, block_json()))
    assert table.block_shape == BLOCK and table.accumulation == "fast"
    assert [b.m for b in table.buckets] == [4, 64]


@pytest.mark.parametrize(
    "edit,words",
    [
        (dict(block_shape=[128]), "block_shape must be"),
        (dict(block_shape=[128, 0]), "block_shape must be an integer"),
        (dict(block_shape=[128, 128], accumulation="precise"), "block_shape is for fp8 files without"),
        (dict(block_shape=[64, 128]), r"the name says .* \(128, 128\)\) but the content .* \(64, 128\)\)"),
    ],
)
def test_bad_block_files_are_refused(tmp_path, edit, words):
    data = {**block_json(), **edit}
    path = write(tmp_path, data, name=file_name(data["device_name"], N, K, "fp8", block_shape=BLOCK))
    with pytest.raises(ConfigFileError, match=words):
        load_table(path)


def test_a_bad_block_file_is_skipped_with_one_warning_and_the_heuristic_serves(config_dir):
    data = {**block_json(), "block_shape": "128x128"}
    write(config_dir, data, name=file_name(data["device_name"], N, K, "fp8", block_shape=BLOCK))
    with pytest.warns(UserWarning, match=r"block_shape must be \[block_n, block_k\].*skipped"):
        chosen = block_plan(4)
    assert chosen.source is None
    assert chosen.config == block_heuristic_config(4, N, K, BLOCK[1], *device_limits(DEV))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        block_plan(8)  # one warning per file, not per lookup


def test_an_untuned_block_call_on_hopper_plans_the_vendor_from_m_65_and_the_swapped_split_tile_below(
    config_dir, monkeypatch
):
    monkeypatch.setattr(lookup, "device_capability", lambda device: (9, 0))  # the vendor rule is Hopper's
    n, k = 2111, 7168  # no file's (DeepSeek-V3's q_a_kv_a is 2112): 33 tiles of 64 weight rows, 56 K blocks
    assert block_plan(68, n, k).backend == "torch" and block_plan(4096, n, k).backend == "torch"
    decode = block_plan(64, n, k)
    assert decode.backend == "triton" and decode.source is None
    assert decode.config == MatmulConfig(64, 64, 128, num_warps=4, num_stages=4, split_k=8, kernel="swapped")
    sms = 132
    assert block_heuristic_config(1, n, k, 128, sms, 227 * 1024).split_k == 8  # 33 x 8 <= 2 x 132
    assert block_heuristic_config(1, 4096, 7168, 128, sms, 227 * 1024).split_k == 4  # 64 x 4
    assert block_heuristic_config(1, 24576, 1536, 128, sms, 227 * 1024).split_k == 1  # 384 tiles
    assert block_heuristic_config(1, 4096, 256, 128, sms, 227 * 1024).split_k == 1  # two K blocks
    assert block_heuristic_config(1, 4096, 2304, 128, sms, 227 * 1024).split_k == 4  # 8 would leave 2 splits empty
    assert block_heuristic_config(1, 64 * sms, 7168, 128, sms, 227 * 1024).split_k == 1  # one tile per SM already
    assert block_heuristic_config(20, n, k, 128, sms, 227 * 1024).block_m == 32
    clear_cache()
    ops = make_block_operands(72, N, K, DEVICE)  # untuned at M = 72: the vendor on Hopper, ours here
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=BLOCK), ops)


def test_an_untuned_block_call_at_an_m_the_vendor_must_pad_for_runs_ours_below_256(config_dir, monkeypatch):
    monkeypatch.setattr(lookup, "device_capability", lambda device: (9, 0))
    n, k = 2111, 7168
    assert [block_plan(M, n, k).backend for M in (96, 97, 255, 256, 257, 1001)] == [
        "torch", "triton", "triton", "torch", "torch", "torch"
    ]  # fmt: skip


def test_a_torch_block_bucket_runs_ours_where_padding_costs_the_vendor_its_lead(config_dir):
    # The bucket's times: the vendor 30 us, ours 40. Padding M = 97 rows of K = 256 costs about 6.5 us
    # (heuristic.block_vendor_padding_us): the vendor keeps its lead. With ours at 35 it does not.
    def bucket(triton_us):
        data = block_json(backend="torch", buckets={128: TUNED[64]})
        data["buckets"]["128"]["baselines_us"] = {"torch": 30.0, "triton": triton_us, "heuristic": 50.0}
        return data

    write(config_dir, bucket(40.0))
    assert [block_plan(M).backend for M in (96, 97, 128)] == ["torch", "torch", "torch"]
    write(config_dir, bucket(35.0))
    clear_cache()
    assert [block_plan(M).backend for M in (96, 97, 128)] == ["torch", "triton", "torch"]
    assert block_plan(97).config == TUNED[64]  # the bucket's tile


def test_block_vendor_padding_rule():
    assert block_vendor_padding_us(96, 7168) == 0.0
    assert 6.5 < block_vendor_padding_us(97, 7168) < block_vendor_padding_us(1001, 7168) < 15.0
    assert not padded_block_vendor_loses(96, 7168, 30.0, 30.5)  # no padding: the tuned choice stands
    assert padded_block_vendor_loses(97, 7168, 30.0, 30.5)
    assert not padded_block_vendor_loses(97, 7168, 30.0, 60.0)
    assert padded_block_vendor_loses(97, 7168, None, 60.0) and not padded_block_vendor_loses(257, 7168, None, None)


def test_the_lookup_finds_the_block_bucket_and_falls_back_to_the_heuristic(config_dir):
    path = write(config_dir, block_json())
    chosen = block_plan(3)
    assert chosen == scaledmm.configs.Plan("triton", TUNED[4], path)
    assert block_plan(40).config == TUNED[64]
    assert block_plan(128).config == TUNED[64]  # up to twice the largest tuned M
    far = block_plan(129)
    assert far.source is None and far.config == block_heuristic_config(129, N, K, BLOCK[1], *device_limits(DEV))
    assert select_config(3, N, K, E4M3, DEV, block_size=BLOCK) == TUNED[4]
    # Neither mode reads the other's files: another block shape, and the per-channel lookup.
    assert block_plan(3, block_size=(64, 128)).source is None
    assert plan(3, N, K, E4M3, DEV).source is None


def test_a_block_file_of_the_family_serves_a_card_without_its_own(config_dir, monkeypatch):
    path = write(config_dir, block_json(device="NVIDIA H200 NVL"))
    monkeypatch.setattr(scaledmm.configs.lookup, "device_name", lambda device: "NVIDIA H200")
    clear_cache()
    assert block_plan(4).source == path


def test_block_unfit_reason():
    assert block_unfit_reason(MatmulConfig(64, 32, 128), BLOCK) is None  # any BLOCK_N
    assert "K step 64" in block_unfit_reason(MatmulConfig(64, 64, 64), BLOCK)
    assert block_unfit_reason(MatmulConfig(16, 64, 128, split_k=2, kernel="swapped"), BLOCK) is None
    assert "pointer or swapped" in block_unfit_reason(MatmulConfig(64, 128, 128, kernel="tma"), BLOCK)
    assert "pointer or swapped" in block_unfit_reason(MatmulConfig(64, 128, 128, kernel="gluon"), BLOCK)
    assert block_unfit_reason(MatmulConfig(16, 64, 128, split_k=2), BLOCK) is None  # split-K, as the pointer kernel
    # ... within the split-K scratch limit: 16 splits of 129 x 64 tiles of 16 x 32 fp32 (M = 2064) are over it.
    assert unfit_reason(MatmulConfig(16, 32, 128, split_k=4), 2064, 2048, 227 * 1024, BLOCK) is None
    assert "split-K scratch" in unfit_reason(MatmulConfig(16, 32, 128, split_k=16), 2064, 2048, 227 * 1024, BLOCK)
    assert "K step" in unfit_reason(MatmulConfig(64, 64, 64), 64, N, 227 * 1024, BLOCK)
    assert unfit_reason(MatmulConfig(64, 64, 64), 64, N, 227 * 1024) is None  # without blocks it runs


def test_a_block_bucket_that_does_not_fit_the_block_is_skipped_with_a_warning(config_dir):
    unfit = {4: MatmulConfig(16, 32, 64), 64: TUNED[64]}  # K steps of 64 with 128-wide scale blocks
    write(config_dir, block_json(buckets=unfit))
    with pytest.warns(UserWarning, match=r"bucket 4 .* K step 64 is not the scale block's block_k = 128"):
        chosen = block_plan(4)
    assert chosen.source is None and chosen.config.block_k == BLOCK[1]
    assert block_plan(40).config == TUNED[64]  # the rest of the file serves


def test_a_split_k_block_bucket_serves_its_m_and_runs(config_dir):
    split = MatmulConfig(16, 32, 128, num_warps=4, num_stages=3, split_k=2)
    write(config_dir, block_json(buckets={**TUNED, 4: split}))
    assert block_plan(4).config == split
    ops = make_block_operands(3, N, K, DEVICE, BLOCK)
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=BLOCK), ops)
    assert prepared_call(*ops.args(), bias=ops.bias, block_size=BLOCK).config == split


def test_scaled_mm_runs_the_tuned_block_config(config_dir):
    write(config_dir, block_json())
    ops = make_block_operands(3, N, K, DEVICE, BLOCK)
    out = scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=BLOCK)
    assert_close(out, ops)
    prepared = prepared_call(*ops.args(), bias=ops.bias, block_size=BLOCK)
    assert prepared.backend == "triton" and prepared.kernel == "block" and prepared.config == TUNED[4]


@pytest.mark.skipif(DEVICE == "cuda", reason="on CUDA the vendor may serve the bucket")
def test_a_torch_bucket_runs_ours_where_the_vendor_cannot_serve(config_dir):
    write(config_dir, block_json(backend="torch"))
    ops = make_block_operands(4, N, K, DEVICE, BLOCK)
    assert block_plan(4).backend == "torch"
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=BLOCK), ops)
    prepared = prepared_call(*ops.args(), bias=ops.bias, block_size=BLOCK)
    assert prepared.backend == "triton" and prepared.config == TUNED[4]


@pytest.mark.skipif(DEVICE != "cuda", reason="the vendor kernels need CUDA")
def test_a_torch_bucket_runs_the_vendors_block_mode(config_dir):
    n, k, M = 256, 512, 32
    write(config_dir, block_json(n=n, k=k, backend="torch", buckets={64: TUNED[64]}))
    ops = make_block_operands(M, n, k, DEVICE, BLOCK)  # scale_a row-major: copied into the vendor's layout
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=BLOCK), ops)
    prepared = prepared_call(*ops.args(), bias=ops.bias, block_size=BLOCK)
    assert prepared.backend == "torch" and "block" in prepared.kernel
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, block_size=BLOCK, backend="torch"), ops)
    # M = 1: the vendor refuses block scales, so `auto` runs ours for the same bucket.
    one = make_block_operands(1, n, k, DEVICE, BLOCK)
    assert_close(scaledmm.scaled_mm(*one.args(), bias=one.bias, block_size=BLOCK), one)
    assert prepared_call(*one.args(), bias=one.bias, block_size=BLOCK).backend == "triton"
