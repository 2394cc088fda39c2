"""FP8 accumulation modes: the choice is checked and reaches every kernel and the vendor; each mode
meets its derived bound (on the GPU, where Hopper's reduced-precision accumulator makes them
differ: precise within the fp32-promotion bound up to K = 16,384, fast within its own); tuned files
serve only calls of their mode."""

import dataclasses
import json

import pytest
import torch
from helpers import DEVICE, ON_GPU, prepared_call

import scaledmm
from scaledmm import MatmulConfig
from scaledmm.configs import clear_cache, select_config
from scaledmm.configs.files import file_name
from scaledmm.configs.lookup import CONFIG_DIR_ENV, device_name
from scaledmm.nn import W8A8Linear
from scaledmm.reference import scaled_mm_ref
from scaledmm.testing import (
    ErrorCheck,
    accumulation_error,
    assert_close,
    make_operands,
    reduced_precision_accumulator,
)

FP8 = torch.float8_e4m3fn


@pytest.mark.parametrize("bad,error", [("exact", ValueError), (1, TypeError), (None, TypeError)])
def test_the_choice_is_checked_everywhere(bad, error):
    ops = make_operands(8, 32, 64, FP8, DEVICE)
    with pytest.raises(error, match="accumulation must be"):
        scaledmm.scaled_mm(*ops.args(), accumulation=bad)
    if isinstance(bad, str):
        with pytest.raises(error, match="accumulation must be"):
            torch.ops.scaledmm.scaled_mm(*ops.args(), None, torch.bfloat16, None, "auto", bad)
        with pytest.raises(error, match="accumulation must be"):
            select_config(8, 32, 64, FP8, "cpu" if DEVICE == "cpu" else None, accumulation=bad)
    with pytest.raises(error, match="accumulation must be"):
        W8A8Linear(64, 32, dtype="fp8", accumulation=bad)


@pytest.mark.parametrize("accumulation", ["fast", "precise"])
@pytest.mark.parametrize(
    "config",
    [
        None,  # the heuristic: the swapped kernel at this M
        MatmulConfig(64, 64, 128, num_warps=4, num_stages=2),  # a 64-row pointer tile: wgmma on Hopper
        MatmulConfig(64, 64, 64, num_warps=4, num_stages=2, split_k=2),
        MatmulConfig(64, 128, 128, num_warps=4, num_stages=2, kernel="tma"),
    ],
    ids=["heuristic", "pointer", "split-k", "tma"],
)
def test_each_kernel_meets_its_modes_bound(accumulation, config):
    ops = make_operands(16 if config is None else 96, 128, 1024, FP8, DEVICE)
    out = scaledmm.scaled_mm(*ops.args(), bias=ops.bias, config=config, accumulation=accumulation)
    assert_close(out, ops, accumulation)
    call = prepared_call(*ops.args(), bias=ops.bias, config=config, accumulation=accumulation)
    assert call.accumulation == accumulation and accumulation in repr(call)


@pytest.mark.parametrize("accumulation", ["fast", "precise"])
def test_the_one_launch_linear_takes_the_mode(accumulation):
    layer = W8A8Linear.from_linear(
        torch.nn.Linear(256, 64).to(DEVICE, torch.bfloat16), "fp8", accumulation=accumulation
    )
    x = torch.randn(4, 256, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)
        fused = layer(x)  # the quantized linear kernel, bound at the second call
    (forward,) = (entry[1] for entry in layer._forwards._by_signature.values())
    assert forward.precise == (accumulation == "precise") and f"accumulation={accumulation}" in repr(layer)
    q, scale = scaledmm.quantize_per_token(x, FP8)
    expected = scaledmm.scaled_mm(
        q, layer.weight.t(), scale, layer.weight_scale, torch.bfloat16, layer.bias, accumulation=accumulation
    )
    torch.testing.assert_close(fused, expected, atol=0, rtol=0)


def test_the_bounds_off_hopper_are_the_fp32_sums():
    ops = make_operands(8, 16, 4096, FP8, "cpu", bias_dtype=None)
    magnitude = torch.ones(8, 16, dtype=torch.float64)
    for accumulation in ("fast", "precise"):
        assert torch.equal(accumulation_error(ops, magnitude, accumulation, True), 2.0**-10 * magnitude)
    long = make_operands(2, 4, 2**16, FP8, "cpu", bias_dtype=None)
    assert torch.equal(accumulation_error(long, torch.ones(2, 4), "fast", True), torch.full((2, 4), 2.0**-8))
    int8 = make_operands(8, 16, 64, torch.int8, "cpu")
    assert not accumulation_error(int8, magnitude, "fast", True).any()


@pytest.mark.parametrize("accumulation,split", [("fast", False), ("fast", True), ("precise", True)])
@pytest.mark.parametrize("K", [512, 4096, 16384])
def test_the_hopper_bounds_still_catch_skipped_work(monkeypatch, accumulation, split, K):
    """The partial-sum bounds are loose where sums only grow, tight on mixed-sign operands: a product
    that skipped half of K, or all of it, lands outside them."""
    monkeypatch.setattr("scaledmm.testing.reduced_precision_accumulator", lambda device: True)
    ops = make_operands(32, 64, K, FP8, "cpu")
    check = ErrorCheck(ops, torch.bfloat16, accumulation, split)
    half = dataclasses.replace(ops, a=ops.a.clone())
    half.a[:, K // 2 :] = 0
    assert check.ratio(scaled_mm_ref(*half.args(), bias=ops.bias)) > 1
    assert check.ratio(ops.bias.double().expand(32, 64)) > 1
    assert check.ratio(scaled_mm_ref(*ops.args(), bias=ops.bias).to(torch.bfloat16)) <= 1


def test_tuned_files_serve_only_their_mode(tmp_path, monkeypatch):
    name = device_name(torch.device(DEVICE, 0) if ON_GPU else torch.device("cpu"))
    precise_config = MatmulConfig(16, 32, 64, num_stages=2)
    data = {
        "format_version": 2, "device_name": name, "n": 48, "k": 64, "dtype": "fp8", "accumulation": "precise",
        "buckets": {"8": {"backend": "triton", "config": precise_config.to_dict()}},
    }  # fmt: skip
    (tmp_path / file_name(name, 48, 64, "fp8", "precise")).write_text(json.dumps(data))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    try:
        device = DEVICE if ON_GPU else "cpu"
        assert select_config(8, 48, 64, FP8, device, accumulation="precise") == precise_config
        assert select_config(8, 48, 64, FP8, device, accumulation="fast") != precise_config
    finally:
        clear_cache()


@pytest.mark.skipif(not ON_GPU, reason="the interpreter sums exactly: both modes give the same there")
@pytest.mark.parametrize("K", [512, 4096, 16384])
@pytest.mark.parametrize("positive", [False, True], ids=["randn", "abs"])
def test_on_hopper_precise_meets_the_fp32_bound_and_fast_its_own(K, positive):
    if not reduced_precision_accumulator(torch.device(DEVICE)):
        pytest.skip("no reduced-precision fp8 accumulator on this GPU")
    gen = torch.Generator(DEVICE).manual_seed(K)
    ops = make_operands(128, 256, K, FP8, DEVICE, per_token=False, per_channel=False, bias_dtype=None, gen=gen)
    if positive:  # sums that only grow: the hard case for a truncating accumulator
        ops = dataclasses.replace(ops, a=ops.a.float().abs().to(FP8), b=ops.b.float().abs().to(FP8))
    config = MatmulConfig(128, 128, 128, num_warps=8, num_stages=3)  # wgmma
    for accumulation in ("precise", "fast"):
        out = scaledmm.scaled_mm(*ops.args(), torch.float32, config=config, accumulation=accumulation)
        assert_close(out, ops, accumulation)
