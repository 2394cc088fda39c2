"""Prepared calls: the second call of a signature skips the checks and the plan, and still computes
its own tensors; anything that changes what the first call checked or compiled makes a new signature."""

import pytest
import torch
from helpers import DEVICE, ON_GPU, prepared_call

import scaledmm
from scaledmm import runtime
from scaledmm.configs import clear_cache
from scaledmm.reference import quantize_ref
from scaledmm.testing import assert_close, make_operands

M, N, K = 24, 48, 96


@pytest.fixture
def binds():
    """The prepared calls (one per signature: its first call planned and bound it), from empty."""
    clear_cache()
    yield runtime.prepared
    clear_cache()


def call(ops, **kwargs):
    return scaledmm.scaled_mm(*ops.args(), bias=ops.bias, **kwargs)


def test_second_call_reuses_the_binding_with_its_own_tensors(binds):
    first, second = (
        make_operands(M, N, K, torch.int8, DEVICE, gen=torch.Generator(DEVICE).manual_seed(s)) for s in (1, 2)
    )
    assert_close(call(first), first)
    prepared = next(iter(binds.values()))
    assert_close(call(second), second)
    assert list(binds.values()) == [prepared]
    assert prepared.backend == "triton" and prepared.kernel in ("pointer", "swapped", "tma")


@pytest.mark.parametrize(
    "change",
    ["M", "dtype", "a column-major", "per-tensor scale_a", "no bias", "out_dtype", "backend", "config"],
)
def test_a_changed_signature_binds_again(binds, change):
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    assert_close(call(ops), ops)
    kwargs = {}
    if change == "M":
        ops = make_operands(M + 1, N, K, torch.int8, DEVICE)
    elif change == "dtype":
        ops = make_operands(M, N, K, torch.float8_e4m3fn, DEVICE)
    elif change == "a column-major":
        ops = make_operands(M, N, K, torch.int8, DEVICE, a_column_major=True)
    elif change == "per-tensor scale_a":
        ops = make_operands(M, N, K, torch.int8, DEVICE, per_token=False)
    elif change == "no bias":
        ops = make_operands(M, N, K, torch.int8, DEVICE, bias_dtype=None)
    elif change == "out_dtype":
        kwargs["out_dtype"] = torch.float32
    elif change == "backend":
        kwargs["backend"] = "triton"
    else:
        kwargs["config"] = scaledmm.MatmulConfig(16, 16, 32)
    assert_close(call(ops, **kwargs), ops)
    assert len(binds) == 2


def test_alignment_is_part_of_the_signature(binds):
    """A view one element into a padded buffer has the aligned view's shape and strides, but Triton
    compiles unaligned pointers differently: it must not reuse the aligned binding."""
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    assert_close(call(ops), ops)
    padded = torch.zeros(M * K + 1, dtype=torch.int8, device=DEVICE)
    shifted = padded[1:].view(M, K)
    shifted.copy_(ops.a)
    assert shifted.data_ptr() % 16 != ops.a.data_ptr() % 16
    assert_close(scaledmm.scaled_mm(shifted, ops.b, ops.scale_a, ops.scale_b, bias=ops.bias), ops)
    assert len(binds) == 2


def test_invalid_call_after_a_valid_one_still_raises(binds):
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    call(ops)
    with pytest.raises(ValueError, match="scale_b is on meta"):
        scaledmm.scaled_mm(ops.a, ops.b, ops.scale_a, ops.scale_b.to("meta"), bias=ops.bias)
    with pytest.raises(TypeError, match=r"a must be a torch\.Tensor"):
        scaledmm.scaled_mm(ops.a.tolist(), ops.b, ops.scale_a, ops.scale_b)
    assert len(binds) == 1


def test_changed_plan_is_seen_after_clear_cache(binds):
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    call(ops)
    first = next(iter(binds.values()))
    clear_cache()
    call(ops)
    assert len(binds) == 1 and next(iter(binds.values())) is not first


def test_cache_starts_over_beyond_its_limit(binds, monkeypatch):
    monkeypatch.setattr(runtime.PreparedCalls, "LIMIT", 2)
    for m in (1, 2, 3):
        call(make_operands(m, N, K, torch.int8, DEVICE))
    assert len(binds) == 1  # the third signature started it over
    ops = make_operands(1, N, K, torch.int8, DEVICE)
    call(ops)
    assert len(binds) == 2 and prepared_call(*ops.args(), bias=ops.bias) is not None


def test_empty_m_is_prepared_too():
    ops = make_operands(0, N, K, torch.int8, DEVICE)
    for _ in range(2):
        out = call(ops)
        assert out.shape == (0, N) and out.dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=["int8", "fp8"])
def test_static_quantization_reads_each_calls_scale(dtype):
    """The second call of a signature uses its own scale tensor, not the first call's."""
    x = torch.randn(4, 3, 64, device=DEVICE)
    for value in (0.05, 0.2):
        scale = torch.tensor([value], device=DEVICE)
        q = scaledmm.quantize_per_tensor(x, scale, dtype)
        expected, _ = quantize_ref(x, dtype, scale)
        torch.testing.assert_close(q.float(), expected.float(), atol=0 if dtype == torch.int8 or ON_GPU else 32, rtol=0)


def test_dynamic_quantization_of_new_data():
    for seed in (1, 2):
        x = torch.randn(5, 2, 80, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
        q, scale = scaledmm.quantize_per_token(x, torch.int8)
        expected, expected_scale = quantize_ref(x, torch.int8)
        assert q.shape == x.shape and scale.shape == (5, 2, 1)
        torch.testing.assert_close(scale, expected_scale)
        torch.testing.assert_close(q, expected, atol=0, rtol=0)


class Subclass(torch.Tensor):
    pass


def test_tensor_subclasses_go_through_the_op(binds):
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    a = ops.a.as_subclass(Subclass)
    assert not runtime.eager(a, ops.b)
    assert_close(scaledmm.scaled_mm(a, ops.b, ops.scale_a, ops.scale_b, bias=ops.bias).as_subclass(torch.Tensor), ops)


def test_calls_that_record_autograd_go_through_the_op():
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    bias = ops.bias.float().requires_grad_()
    assert not runtime.eager(ops.a, bias)
    with torch.no_grad():
        assert runtime.eager(ops.a, bias)


def test_jit_trace_records_the_op():
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    traced = torch.jit.trace(lambda a, b, sa, sb: scaledmm.scaled_mm(a, b, sa, sb), ops.args(), check_trace=False)
    other = make_operands(M, N, K, torch.int8, DEVICE, bias_dtype=None)
    assert_close(traced(*other.args()), other)


def test_split_k_scratch_beyond_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr("scaledmm.checks.SPLIT_K_SCRATCH_LIMIT", 1024)
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    with pytest.raises(ValueError, match="split_k=4 needs"):
        call(ops, config=scaledmm.MatmulConfig(16, 16, 32, split_k=4))


# ----------------------------------------------------------------------------- W8A8Linear's prepared forward


def quantized_layer(dtype="int8", activation="dynamic", bias=True, seed=0):
    from scaledmm.nn import W8A8Linear

    torch.manual_seed(seed)
    linear = torch.nn.Linear(K, N, bias=bias).to(DEVICE, torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, dtype, activation, input_scale=0.05 if activation == "static" else None)
    return layer


def checked_forward(layer, x):
    """The layer's forward spelt out with the public functions (every call checked)."""
    x2 = x.reshape(-1, K)
    if layer.activation == "static":
        q, scale = scaledmm.quantize_per_tensor(x2, layer.input_scale, layer.qdtype), layer.input_scale
    else:
        q, scale = scaledmm.quantize_per_token(x2, layer.qdtype)
    out = scaledmm.scaled_mm(q, layer.weight.t(), scale, layer.weight_scale, layer.out_dtype, layer.bias)
    return out.reshape(*x.shape[:-1], N)


@pytest.mark.parametrize("dtype", ["int8", "fp8"])
@pytest.mark.parametrize("activation,bias", [("dynamic", True), ("static", False)])
@pytest.mark.parametrize("lead", [(M,), (2, 5)], ids=["2-D", "3-D"])
def test_layer_forward_is_prepared_and_equals_the_checked_path(monkeypatch, dtype, activation, bias, lead):
    layer = quantized_layer(dtype, activation, bias)
    xs = [torch.randn(*lead, K, device=DEVICE, dtype=torch.bfloat16) for _ in range(2)]
    with torch.no_grad():
        first = layer(xs[0])
        assert len(layer._forwards) == 1
        assert f"runs: [M={xs[0].numel() // K}: " in repr(layer)  # print(layer) says what a forward runs

        def no_checks(*args, **kwargs):
            raise AssertionError("a prepared forward ran a check")

        for where in ("scaledmm.checks", "scaledmm.api", "scaledmm.nn.linear"):
            monkeypatch.setattr(f"{where}.check_quantize_args", no_checks)
        for where in ("scaledmm.checks", "scaledmm.api"):
            monkeypatch.setattr(f"{where}.check_scaled_mm_args", no_checks)
        second = layer(xs[1])
        monkeypatch.undo()
        for x, got in zip(xs, (first, second)):
            torch.testing.assert_close(got, checked_forward(layer, x), atol=0, rtol=0)
            assert got.shape == (*lead, N)


def test_layer_forgets_its_prepared_forwards_when_its_state_changes():
    layer = quantized_layer("int8")
    other = quantized_layer("int8", seed=1)
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)
        layer.weight = other.weight.clone()  # new tensors
        layer.weight_scale = other.weight_scale.clone()
        layer.bias = other.bias.clone()
        torch.testing.assert_close(layer(x), other(x), atol=0, rtol=0)
        layer.out_dtype = torch.float32
        assert layer(x).dtype == torch.float32
        layer.to(torch.float16)  # out_dtype follows the cast
        assert layer(x).dtype == torch.float16
        layer.weight.copy_(quantized_layer("int8", seed=2).weight)  # in place: the prepared forward sees it
        torch.testing.assert_close(layer(x), checked_forward(layer, x), atol=0, rtol=0)


def test_layer_forward_with_autograd_inputs_goes_through_the_ops():
    layer = quantized_layer("int8")
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    layer(x)
    assert len(layer._forwards) == 0


def test_a_copied_or_saved_layer_prepares_its_own_forwards(tmp_path):
    import copy

    layer = quantized_layer("int8")
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)
        twin = copy.deepcopy(layer)
        assert len(twin._forwards) == 0
        twin.weight.copy_(quantized_layer("int8", seed=1).weight)
        torch.testing.assert_close(twin(x), checked_forward(twin, x), atol=0, rtol=0)
        torch.save(layer, tmp_path / "layer.pt")
        loaded = torch.load(tmp_path / "layer.pt", weights_only=False)
        torch.testing.assert_close(loaded(x), layer(x), atol=0, rtol=0)


@pytest.mark.parametrize("change", [".data", "functional_call", "register_buffer", "bias .data dtype"])
def test_layer_forward_follows_state_changed_behind_its_back(change):
    layer = quantized_layer("int8")
    other = quantized_layer("int8", seed=1)
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)
        if change == ".data":
            layer.weight.data = other.weight.clone()
            expected = checked_forward(layer, x)
            got = layer(x)
        elif change == "functional_call":
            state = {"weight": other.weight, "weight_scale": other.weight_scale, "bias": other.bias}
            got = torch.func.functional_call(layer, state, (x,))
            expected = other(x)
        elif change == "register_buffer":
            layer.register_buffer("weight", other.weight.clone())
            expected = checked_forward(layer, x)
            got = layer(x)
        else:
            layer.bias.data = layer.bias.data.float()
            expected = checked_forward(layer, x)
            got = layer(x)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_layer_forward_follows_clear_cache(monkeypatch):
    layer = quantized_layer("int8")
    x = torch.randn(M, K, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(x)
        monkeypatch.setenv("SCALEDMM_DISABLED_BACKENDS", "triton,torch")
        clear_cache()
        with pytest.raises(ValueError, match="leaves no backend"):
            layer(x)
    monkeypatch.delenv("SCALEDMM_DISABLED_BACKENDS")
    clear_cache()
