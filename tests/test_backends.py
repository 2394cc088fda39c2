"""backend="auto" follows the tuned file, "triton" forces ours, SCALEDMM_DISABLED_BACKENDS and the
vendor kernels' limits are honoured. On the CPU the vendor kernels cannot run, so "auto" must always
land on Triton there; on a GPU the torch backend is checked against the reference."""

import json

import pytest
import torch
from helpers import DEVICE, ON_GPU, prepared_call

import scaledmm
from scaledmm.configs import clear_cache
from scaledmm.configs.files import file_name
from scaledmm.configs.lookup import CONFIG_DIR_ENV, DISABLED_BACKENDS_ENV, device_name
from scaledmm.testing import Operands, assert_close, make_operands

M, N, K = 32, 64, 128


@pytest.fixture
def vendor_tuned(tmp_path, monkeypatch):
    """A tuned file that says the vendor kernel wins at every M of this shape."""
    name = device_name(torch.device(DEVICE, 0) if ON_GPU else torch.device("cpu"))
    config = {"block_m": 32, "block_n": 32, "block_k": 64, "group_m": 8, "num_warps": 4, "num_stages": 2}
    for dtype in ("int8", "fp8"):
        data = {
            "format_version": 1,
            "device_name": name,
            "n": N,
            "k": K,
            "dtype": dtype,
            "buckets": {"64": {"backend": "torch", "config": config}},
        }
        (tmp_path / file_name(name, N, K, dtype)).write_text(json.dumps(data))
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    yield
    clear_cache()


def backend_of(case: Operands, **kwargs) -> str:
    """Compute scaled_mm of `case` (checked against the reference) and say which backend ran it."""
    assert_close(scaledmm.scaled_mm(*case.args(), bias=case.bias, **kwargs), case)
    return prepared_call(*case.args(), bias=case.bias, **kwargs).backend


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
def test_auto_follows_the_file_where_the_vendor_can_serve(vendor_tuned, monkeypatch, dtype):
    ops = make_operands(M, N, K, dtype, DEVICE)
    assert backend_of(ops) == ("torch" if ON_GPU else "triton")  # no vendor kernel on the CPU


def test_triton_is_forced_by_backend_or_config(vendor_tuned, monkeypatch):
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    assert backend_of(ops, backend="triton") == "triton"
    assert backend_of(ops, config=scaledmm.MatmulConfig(16, 16, 32)) == "triton"


def test_disabled_backend_is_not_chosen(vendor_tuned, monkeypatch):
    monkeypatch.setenv(DISABLED_BACKENDS_ENV, "torch")
    clear_cache()
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    assert backend_of(ops) == "triton"


def test_no_backend_left_raises(monkeypatch):
    monkeypatch.setenv(DISABLED_BACKENDS_ENV, "triton,torch")
    clear_cache()
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    with pytest.raises(ValueError, match=DISABLED_BACKENDS_ENV):
        scaledmm.scaled_mm(*ops.args(), bias=ops.bias)
    clear_cache()


def test_unknown_disabled_name_warns(monkeypatch):
    monkeypatch.setenv(DISABLED_BACKENDS_ENV, "cutlass")
    clear_cache()
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    with pytest.warns(UserWarning, match="unknown backends"):
        scaledmm.scaled_mm(*ops.args())
    clear_cache()


def test_vendor_limits_send_auto_to_triton(vendor_tuned, monkeypatch):
    # M <= 16 is beyond torch._int_mm, and a column-major a beyond both vendor kernels.
    for ops in (
        make_operands(8, N, K, torch.int8, DEVICE),
        make_operands(M, N, K, torch.float8_e4m3fn, DEVICE, a_column_major=True),
    ):
        assert backend_of(ops) == "triton"


@pytest.mark.parametrize(
    "bad,words",
    [
        (dict(backend="cutlass"), "backend must be one of"),
        (dict(backend="torch", config=scaledmm.MatmulConfig(16, 16, 32)), "cannot go with backend='torch'"),
    ],
)
def test_bad_backend_arguments(bad, words):
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    with pytest.raises(ValueError, match=words):
        scaledmm.scaled_mm(*ops.args(), **bad)


@pytest.mark.skipif(not ON_GPU, reason="the vendor kernels need CUDA")
def test_vendor_is_skipped_for_views_it_cannot_read(vendor_tuned, monkeypatch):
    ops = make_operands(M, N, K, torch.float8_e4m3fn, DEVICE)
    strided_bias = torch.randn(N, 2, device=DEVICE).to(torch.bfloat16)[:, 0]
    offset_a = torch.empty(M * K + 1, dtype=ops.a.dtype, device=DEVICE)[1:].view(M, K)
    offset_a.copy_(ops.a)
    for a, bias in ((ops.a, strided_bias), (offset_a, ops.bias)):
        assert backend_of(Operands(a, ops.b, ops.scale_a, ops.scale_b, bias)) == "triton"
    with pytest.raises(ValueError, match="16-byte aligned"):
        scaledmm.scaled_mm(offset_a, ops.b, ops.scale_a, ops.scale_b, bias=ops.bias, backend="torch")


def test_forcing_torch_where_it_cannot_serve_says_why():
    ops = make_operands(8, N, K, torch.int8, DEVICE)
    with pytest.raises(ValueError, match="backend='torch' cannot compute this call"):
        scaledmm.scaled_mm(*ops.args(), backend="torch")


@pytest.mark.skipif(not ON_GPU, reason="the vendor kernels need CUDA")
@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "e4m3"])
@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("rows", [17, M, 97, 130])  # the block mode refuses M % 4 != 0; these modes must not
def test_torch_backend_matches_the_reference(dtype, per_token, rows):
    ops = make_operands(rows, N, K, dtype, DEVICE, per_token=per_token, per_channel=per_token)
    assert_close(scaledmm.scaled_mm(*ops.args(), bias=ops.bias, backend="torch"), ops)
