"""W8A8Linear and quantize_model: weight quantization, the layer against the float layer, and the
swap of a model's linears with its report."""

import pytest
import torch
from helpers import DEVICE
from torch import nn

import scaledmm
from scaledmm.nn import FusedSiblings, QuantizationReport, W8A8Linear, quantize_model, quantize_weight
from scaledmm.testing import assert_close, make_operands

DTYPES = ["int8", "fp8"]


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0).item()


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn], ids=DTYPES)
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_weight(dtype, per_channel):
    w = torch.randn(48, 64, device=DEVICE)
    w[3] *= 50  # a channel with a large range must not squash the others when per-channel
    q, scale = quantize_weight(w, dtype, per_channel)
    assert q.dtype == dtype and scale.shape == ((48,) if per_channel else ())
    step = scale[:, None] if per_channel else scale
    error = (q.float() * step - w).abs()
    # Round to nearest: half an int8 step; for e4m3 half an ulp, 2**-4 relative for normal values and
    # half the subnormal spacing (2**-9 in quantized units) below them.
    if dtype == torch.int8:
        # plus fp32 rounding of w / scale and of q * scale: a few ulps of |w|
        assert (error <= 0.5 * step + 2**-21 * w.abs()).all()
    else:
        assert (error <= 2**-4 * w.abs() + 2**-10 * step + 1e-7).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["dynamic", "static"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_matches_the_float_layer(dtype, activation, with_bias):
    torch.manual_seed(0)
    linear = nn.Linear(96, 40, bias=with_bias, device=DEVICE).to(torch.bfloat16)
    x = torch.randn(2, 5, 96, device=DEVICE, dtype=torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, dtype, activation)
    if activation == "static":
        layer.calibrate(x)
    out = layer(x)
    expected = linear(x)
    assert out.shape == (2, 5, 40) and out.dtype == torch.bfloat16
    assert cosine(out, expected) >= 0.99


def test_forward_is_scaled_mm_of_the_quantized_operands():
    linear = nn.Linear(64, 32, device=DEVICE).to(torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, "int8")
    x = torch.randn(7, 64, device=DEVICE, dtype=torch.bfloat16)
    q, scale = scaledmm.quantize_per_token(x, torch.int8)
    ops = make_operands(7, 32, 64, torch.int8, DEVICE)
    ops.a, ops.b, ops.scale_a, ops.scale_b, ops.bias = q, layer.weight.t(), scale, layer.weight_scale, layer.bias
    assert_close(layer(x), ops)


def test_static_layer_takes_a_given_scale():
    linear = nn.Linear(32, 16, device=DEVICE)
    layer = W8A8Linear.from_linear(linear, "int8", "static", input_scale=0.02)
    assert layer.input_scale.item() == pytest.approx(0.02)
    with pytest.raises(ValueError, match="calibrate"):
        W8A8Linear.from_linear(linear, "int8").calibrate(torch.randn(2, 32, device=DEVICE))


def test_bad_layer_arguments():
    linear = nn.Linear(32, 16, device=DEVICE)
    with pytest.raises(ValueError, match="dtype must be one of"):
        W8A8Linear.from_linear(linear, "int4")
    with pytest.raises(ValueError, match="activation must be"):
        W8A8Linear.from_linear(linear, "int8", "per-block")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.ModuleDict({"qkv": nn.Linear(64, 96), "o": nn.Linear(32, 64, bias=False)})
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))

    def forward(self, x):
        q, k, v = self.attn["qkv"](x).chunk(3, dim=-1)
        return x + self.attn["o"](q * k.sigmoid() + v) + self.mlp(x)


class TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Block(), Block()])
        self.lm_head = nn.Linear(64, 100, bias=False)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantize_model_swaps_linears_and_reports(dtype):
    torch.manual_seed(0)
    model = TinyModel().to(DEVICE, torch.bfloat16)
    x = torch.randn(3, 64, device=DEVICE, dtype=torch.bfloat16)
    expected = model(x)
    report = quantize_model(model, dtype=dtype)
    assert isinstance(report, QuantizationReport)
    assert len(report.swapped) == 8 and "layers.0.attn.qkv" in report.swapped
    assert list(report.skipped) == ["lm_head"] and "high precision" in report.skipped["lm_head"]
    assert isinstance(model.layers[1].mlp[2], W8A8Linear) and type(model.lm_head) is nn.Linear
    assert cosine(model(x), expected) >= 0.99
    assert "quantized 8 linear layers, skipped 1; 0 groups of siblings run fused" in str(report)


class Projections(nn.Module):
    """q/k/v and gate/up named as in transformers' decoders; `memory` feeds k and v from another
    tensor, as cross-attention does."""

    def __init__(self, bias=False):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (
            nn.Linear(64, 64, bias),
            nn.Linear(64, 32, bias),
            nn.Linear(64, 32, bias),
        )
        self.gate_proj, self.up_proj = nn.Linear(64, 96, bias), nn.Linear(64, 96, bias)

    def forward(self, x, memory=None, modify_between=False):
        q = self.q_proj(x)
        if modify_between:
            x.mul_(2)
        kv = x if memory is None else memory
        return q, self.k_proj(kv), self.v_proj(kv), self.gate_proj(x) * self.up_proj(x)


@pytest.fixture
def matmul_calls(monkeypatch):
    from scaledmm.api import scaled_mm as real
    from scaledmm.runtime import prepare_linear

    # The weight of every product: through scaled_mm, or through a layer's prepared forward.
    calls = []

    def prepare(x, weight_t, *args):
        out, forward = prepare_linear(x, weight_t, *args)
        calls.append(weight_t.shape)
        return out, lambda x: calls.append(weight_t.shape) or forward(x)

    for module in ("scaledmm.nn.linear", "scaledmm.nn.siblings"):
        monkeypatch.setattr(f"{module}.scaled_mm", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
        monkeypatch.setattr(f"{module}.prepare_linear", prepare)
    return calls


def fused_and_alone(dtype, bias=False):
    torch.manual_seed(0)
    fused = Projections(bias).to(DEVICE, torch.bfloat16)
    alone = Projections(bias).to(DEVICE, torch.bfloat16)
    alone.load_state_dict(fused.state_dict())
    report = quantize_model(fused, dtype)
    quantize_model(alone, dtype, fuse=False)
    return fused, alone, report


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_fused_siblings_run_one_matmul_and_match_the_layers_alone(matmul_calls, bias):
    fused, alone, report = fused_and_alone("int8", bias)
    assert report.fused == [["q_proj", "k_proj", "v_proj"], ["gate_proj", "up_proj"]]
    assert fused.k_proj.weight.untyped_storage().data_ptr() == fused.q_proj.weight.untyped_storage().data_ptr()
    x = torch.randn(2, 3, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        outs = fused(x)
        assert [tuple(w) for w in matmul_calls] == [(64, 128), (64, 192)]  # [K, N] of qkv, gate_up
        for got, expected in zip(outs, alone(x)):
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected, atol=0, rtol=0)  # int8 sums are exact either way


def test_siblings_on_different_inputs_stop_fusing(matmul_calls):
    fused, alone, _ = fused_and_alone("int8")
    x, memory = (torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        for _ in range(2):
            for got, expected in zip(fused(x, memory), alone(x, memory)):
                torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert not fused.q_proj.fused.enabled and fused.gate_proj.fused.enabled


def test_input_modified_in_place_between_siblings_is_not_served_stale(matmul_calls):
    fused, alone, _ = fused_and_alone("int8")
    x = torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        got = fused(x.clone(), modify_between=True)
        expected = alone(x.clone(), modify_between=True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=0, rtol=0)


def test_members_called_outside_their_parent_run_alone(matmul_calls):
    fused, alone, _ = fused_and_alone("int8")
    x = torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        for name in ("q_proj", "k_proj"):
            got, expected = getattr(fused, name)(x), getattr(alone, name)(x)
            torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert [tuple(w) for w in matmul_calls] == [(64, 64), (64, 64), (64, 32), (64, 32)]  # each its own weight
    assert fused.q_proj.fused.enabled


def test_inference_tensors_run_alone(matmul_calls):
    fused, _, _ = fused_and_alone("int8")
    with torch.inference_mode():
        fused(torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16))
    assert len(matmul_calls) == 5


def test_fused_weights_are_joined_again_after_they_moved():
    fused, alone, _ = fused_and_alone("fp8")
    for name in ("q_proj", "k_proj", "v_proj"):  # what .to(another device) does to each buffer
        layer = getattr(fused, name)
        layer.weight = layer.weight.clone()
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        got, expected = fused(x)[1], alone(x)[1]
    assert fused.k_proj.weight.untyped_storage().data_ptr() == fused.q_proj.fused.weight.untyped_storage().data_ptr()
    assert cosine(got, expected) > 0.999


def test_fused_model_compiles_fullgraph():
    fused, alone, _ = fused_and_alone("int8")
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        for got, expected in zip(torch.compile(fused, fullgraph=True)(x), alone(x)):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_quantize_model_filter():
    model = TinyModel().to(DEVICE, torch.bfloat16)
    report = quantize_model(model, "int8", filter=lambda name, m: "mlp" in name)
    assert sorted(report.swapped) == ["layers.0.mlp.0", "layers.0.mlp.2", "layers.1.mlp.0", "layers.1.mlp.2"]
    assert report.skipped["layers.0.attn.qkv"] == "excluded by the filter"


def test_quantize_model_skips_weights_without_data():
    model = nn.Sequential(nn.Linear(16, 16, device="meta"))
    report = quantize_model(model, "int8")
    assert report.swapped == [] and "needs a float weight with data" in report.skipped["0"]


def test_layer_compiles_fullgraph():
    linear = nn.Linear(64, 32, device=DEVICE).to(torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, "fp8")
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.equal(compiled(x), layer(x))


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["dynamic", "static"])
def test_forward_captures_in_a_cuda_graph(dtype, activation):
    # No host synchronisation and no data-dependent Python on the per-call path: capture works and
    # a replay on new inputs gives what an eager call gives.
    linear = nn.Linear(256, 128, device=DEVICE).to(torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, dtype, activation, input_scale=0.05)
    static_x = torch.randn(16, 256, device=DEVICE, dtype=torch.bfloat16)
    layer(static_x)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layer(static_x)
    fresh = torch.randn(16, 256, device=DEVICE, dtype=torch.bfloat16)
    static_x.copy_(fresh)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, layer(fresh))


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_fused_siblings_capture_in_a_cuda_graph():
    fused, _, _ = fused_and_alone("fp8")
    static_x = torch.randn(8, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        fused(static_x)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_outs = fused(static_x)
        for _ in range(2):
            fresh = torch.randn(8, 64, device=DEVICE, dtype=torch.bfloat16)
            static_x.copy_(fresh)
            graph.replay()
            torch.cuda.synchronize()
            for got, expected in zip(static_outs, fused(fresh)):
                assert torch.equal(got, expected)


def test_fused_group_follows_a_changed_scale():
    fused, alone, _ = fused_and_alone("int8")
    for model in (fused, alone):
        model.q_proj.weight_scale = model.q_proj.weight_scale * 2  # a new tensor, as load_state_dict(assign=True) makes
    x = torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        for got, expected in zip(fused(x), alone(x)):
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_quantize_model_twice_fuses_once():
    fused, _, report = fused_and_alone("int8")
    assert quantize_model(fused, "int8").fused == [] and len(report.fused) == 2
    assert len(fused._forward_pre_hooks) == 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cast", ["half", "float", "to-bf16"])
def test_dtype_casts_keep_the_8_bit_weight_and_float32_scales(dtype, cast):
    layer = W8A8Linear.from_linear(nn.Linear(64, 32, device=DEVICE).to(torch.bfloat16), dtype)
    weight, scale = layer.weight.clone(), layer.weight_scale.clone()
    x = torch.randn(4, 64, device=DEVICE)
    expected = layer(x.to(torch.bfloat16)).float()
    target = {"half": torch.float16, "float": torch.float32, "to-bf16": torch.bfloat16}[cast]
    layer = layer.half() if cast == "half" else layer.float() if cast == "float" else layer.to(torch.bfloat16)
    assert torch.equal(layer.weight, weight) and layer.weight.dtype == weight.dtype
    assert torch.equal(layer.weight_scale, scale) and layer.weight_scale.dtype == torch.float32
    assert layer.out_dtype == target and layer.bias.dtype == target
    out = layer(x.to(target))
    assert out.dtype == target
    assert cosine(out, expected) > 0.999


def test_fused_model_cast_to_half_still_matches():
    fused, alone, _ = fused_and_alone("int8")
    fused, alone = fused.half(), alone.half()
    x = torch.randn(5, 64, device=DEVICE, dtype=torch.float16)
    with torch.no_grad():
        for got, expected in zip(fused(x), alone(x)):
            assert got.dtype == torch.float16
            torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_a_fused_model_saves_and_copies_after_forwards(tmp_path, matmul_calls):
    import copy

    fused, _, _ = fused_and_alone("int8")
    x = torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = fused(x)
        expected = fused(x)  # the second forward runs the prepared products
        torch.save(fused, tmp_path / "model.pt")
        twin = copy.deepcopy(fused)
        for model in (torch.load(tmp_path / "model.pt", weights_only=False), twin):
            for got, want in zip(model(x), expected):
                torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert [tuple(w) for w in matmul_calls[:4]] == [(64, 128), (64, 192)] * 2  # two products per forward


def test_layers_pickled_by_an_earlier_version_still_run(matmul_calls):
    # Before prepared forwards a W8A8Linear had no `_forwards`, and FusedSiblings keyed spans by id().
    fused, alone, _ = fused_and_alone("int8")
    x = torch.randn(5, 64, device=DEVICE, dtype=torch.bfloat16)
    group = fused.q_proj.fused
    old_group = {k: v for k, v in vars(group).items() if k != "_forwards"}
    old_group["spans"] = {id(m): span for m, span in zip(group.members, group.spans)}
    restored = FusedSiblings.__new__(FusedSiblings)
    restored.__setstate__(old_group)
    assert restored.spans == group.spans
    layer = alone.q_proj
    old_layer = {k: v for k, v in layer.__getstate__().items() if k != "_forwards"}
    twin = W8A8Linear.__new__(W8A8Linear)
    twin.__setstate__(old_layer)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), layer(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------- hardening (issue 15, items 3, 10, 12)


def test_a_state_dict_of_the_other_8_bit_format_is_refused():
    fp8 = W8A8Linear.from_linear(nn.Linear(32, 16, device=DEVICE), "fp8")
    int8 = W8A8Linear(32, 16, dtype="int8", device=DEVICE)
    with pytest.raises(RuntimeError, match="dtype='fp8'"):
        int8.load_state_dict(fp8.state_dict())
    same = W8A8Linear(32, 16, dtype="fp8", device=DEVICE)
    same.load_state_dict(fp8.state_dict())
    assert torch.equal(same.weight.view(torch.int8), fp8.weight.view(torch.int8))


def test_a_module_at_two_paths_is_swapped_at_both():
    shared = nn.Linear(32, 32, device=DEVICE)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared)})
    report = quantize_model(model, "int8", fuse=False)
    assert sorted(report.swapped) == ["a", "b.0"] and not report.skipped
    assert isinstance(model["a"], W8A8Linear) and model["b"][0] is model["a"]
    assert "the same module as a" in report.notes["b.0"]


def test_tied_weights_share_one_quantized_weight_or_are_reported():
    first, second = nn.Linear(32, 32, device=DEVICE), nn.Linear(32, 32, device=DEVICE)
    second.weight = first.weight
    embedding = nn.Embedding(32, 32, device=DEVICE)
    head = nn.Linear(32, 32, bias=False, device=DEVICE)
    head.weight = embedding.weight
    model = nn.ModuleDict({"first": first, "second": second, "embed": embedding, "head": head})
    report = quantize_model(model, "int8", filter=lambda name, m: True, fuse=False)
    assert model["second"].weight is model["first"].weight
    assert "share one quantized weight" in report.notes["second"]
    assert "embed" in report.notes["head"] and "keep the float weight" in report.notes["head"]


def test_float64_layers_are_skipped_with_a_reason_and_refused_by_from_linear():
    model = nn.Sequential(nn.Linear(32, 32, device=DEVICE).double())
    report = quantize_model(model, "int8")
    assert "float64" in report.skipped["0"] and type(model[0]) is nn.Linear
    with pytest.raises(TypeError, match="cast the model"):
        W8A8Linear.from_linear(model[0], "int8")


def test_an_uncalibrated_static_layer_is_refused_not_run_with_a_default_scale():
    layer = W8A8Linear.from_linear(nn.Linear(32, 16, device=DEVICE).bfloat16(), "int8", "static")
    x = torch.randn(4, 32, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad(), pytest.raises(ValueError, match="calibrate"):
        layer(x)
    layer.calibrate(x)
    with torch.no_grad():
        assert layer(x).isfinite().all()
    with pytest.raises(ValueError, match="NaN or inf"):
        layer.calibrate(torch.full((2, 32), float("nan"), device=DEVICE))


def test_an_out_dtype_scaled_mm_cannot_write_is_refused():
    with pytest.raises(TypeError, match="out_dtype must be one of"):
        W8A8Linear(32, 16, out_dtype=torch.int8)


def test_fusion_from_several_threads_stays_on():
    import threading

    fused, alone, _ = fused_and_alone("int8")
    xs = [torch.randn(3, 64, device=DEVICE, dtype=torch.bfloat16) for _ in range(4)]
    with torch.no_grad():
        expected = [alone(x) for x in xs]
    barrier = threading.Barrier(len(xs))
    results, errors = [None] * len(xs), []

    def run(i):
        try:
            barrier.wait()
            with torch.no_grad():
                for _ in range(3):
                    results[i] = fused(xs[i])
        except Exception as err:  # reported below; a thread's exception is otherwise lost
            errors.append(err)

    # The interpreter is not thread-safe: the threads interleave their hooks and bookkeeping, and
    # take turns with the kernels (lock).
    lock = threading.Lock()
    groups = [fused.q_proj.fused, fused.gate_proj.fused]
    for group in groups:
        product = group._product

        def locked(x, product=product):
            with lock:
                return product(x)

        group._product = locked
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(group.enabled for group in groups)
    for got, want in zip(results, expected):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=0, rtol=0)


def test_fused_siblings_check_their_input_as_a_layer_does():
    fused, _, _ = fused_and_alone("int8")
    with torch.no_grad(), pytest.raises(TypeError, match="x must have dtype"):
        fused(torch.randn(3, 64, device=DEVICE, dtype=torch.float64))
    with torch.no_grad(), pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        fused.q_proj(None)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., K\]"):
        fused.q_proj(torch.tensor(1.0, device=DEVICE, requires_grad=True))


@pytest.mark.parametrize("block_size", [None, (128, 128)], ids=["per-channel", "block"])
def test_an_input_of_another_width_is_refused_naming_x(block_size):
    # Checked by the layer: scaled_mm would name its own arguments (a, b) and suggest weight.t().
    layer = W8A8Linear.from_linear(nn.Linear(256, 64, device=DEVICE), "fp8", block_size=block_size)
    x = torch.randn(3, 255, device=DEVICE)
    with torch.no_grad(), pytest.raises(ValueError, match=r"x must be \[\.\.\., in_features\] = \[\.\.\., 256\]"):
        layer(x)  # the prepared path's first call
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., in_features\]"):
        layer(x.requires_grad_())  # off the prepared path (autograd records it)


def test_layer_arguments_are_checked_when_the_layer_is_made():
    with pytest.raises(ValueError, match="backend must be one of"):
        W8A8Linear(32, 16, backend="tritn")
    with pytest.raises(ValueError, match="backend must be one of"):
        quantize_model(nn.Sequential(nn.Linear(32, 16, device=DEVICE)), "int8", backend="tritn")
