"""Block-scaled FP8 layers (DeepSeek-style "fine-grained FP8": 1 x block_k activation groups,
block_n x block_k weight blocks): the weight quantization, the layer against the float64 reference,
its errors, state_dict and copies, quantize_model on float models and on transformers' FP8Linear,
and a fine-grained FP8 checkpoint saved with save_pretrained, loaded offline and run by scaledmm."""

import copy
import json
import socket

import pytest
import torch
from helpers import DEVICE, ON_GPU
from torch import nn

import scaledmm
from scaledmm.nn import QuantizedActivation, W8A8Linear, load_fp8_pretrained, quantize_model, quantize_weight_blocks
from scaledmm.testing import Operands, assert_close

transformers = pytest.importorskip("transformers")
from transformers.integrations import finegrained_fp8  # noqa: E402

E4M3 = torch.float8_e4m3fn


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor, block_size=(128, 128)) -> torch.Tensor:
    """q [N, K] times its block's scale, in float64."""
    N, K = q.shape
    scales = scale.double().repeat_interleave(block_size[0], 0)[:N].repeat_interleave(block_size[1], 1)[:, :K]
    return q.double() * scales


def layer_operands(layer: W8A8Linear, x: torch.Tensor) -> Operands:
    """The scaled_mm operands a block-scaled layer's forward computes on: x quantized per group by
    scaledmm (deterministic), the weight and its block scales as views."""
    K = x.shape[-1]
    q, scale = scaledmm.quantize_per_token_group(x, layer.block_size[1])
    return Operands(
        q.reshape(-1, K), layer.weight.t(), scale.reshape(-1, scale.shape[-1]), layer.weight_scale.t(), layer.bias,
        layer.block_size,
    )  # fmt: skip


@pytest.mark.parametrize("shape", [(256, 384), (200, 300)], ids=["even", "ragged"])
def test_quantize_weight_blocks_is_within_half_an_e4m3_step_of_each_block(shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, device=DEVICE)
    w[:128, 128:256] *= 100  # one block with a large range must not squash the others
    q, scale = quantize_weight_blocks(w)
    assert q.dtype == E4M3 and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    assert scale[0, 1] > 50 * scale[0, 0]
    step = dequantize_blocks(torch.ones_like(w), scale)  # each element's block scale
    error = (dequantize_blocks(q, scale) - w.double()).abs()
    # Round to nearest e4m3: 2**-4 relative for normal values, half the subnormal spacing (2**-10 of the block's scale).
    assert (error <= 2**-4 * w.double().abs() + 2**-10 * step + 1e-7).all()
    # Each block's largest element maps to 448 (the scale is exactly max / 448).
    assert q.float().abs().amax() == 448


@pytest.mark.parametrize(
    "K,N,block_size,with_bias",
    [(256, 256, (128, 128), True), (320, 192, (128, 128), False), (96, 80, (32, 64), True)],
    ids=["even", "ragged", "small-blocks"],
)
def test_block_layer_matches_the_reference(K, N, block_size, with_bias):
    torch.manual_seed(0)
    linear = nn.Linear(K, N, bias=with_bias, device=DEVICE).to(torch.bfloat16)
    layer = W8A8Linear.from_linear(linear, "fp8", block_size=block_size)
    assert layer.weight_scale.shape == (-(-N // block_size[0]), -(-K // block_size[1]))
    x = torch.randn(2, 3, K, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)  # prepares the forward
        again = layer(x)  # runs the prepared forward
    assert out.shape == (2, 3, N) and out.dtype == torch.bfloat16
    assert_close(out.reshape(-1, N), layer_operands(layer, x))
    assert torch.equal(again, out)
    assert cosine(out, linear(x)) > 0.998
    assert f"block_size={block_size}" in repr(layer) and "block" in repr(layer)  # mode, then what ran


def test_where_the_vendor_runs_the_block_layer_quantizes_scale_a_column_major(monkeypatch):
    # torch._scaled_mm's block mode reads scale_a column-major; a row-major one is copied per call.
    # On a GPU the untuned rule gives M = 96 to the vendor (Hopper); off it, the decision is forced
    # and our kernel computes on the column-major scales.
    from scaledmm import runtime

    if not ON_GPU:
        monkeypatch.setattr(runtime, "block_call_runs_vendor", lambda *args: True)
    # K = 512: four K blocks, a weight-scale row the vendor reads unpadded (kernels/vendor.py).
    layer = W8A8Linear.from_linear(nn.Linear(512, 256, device=DEVICE).to(torch.bfloat16), block_size=(128, 128))
    x = torch.randn(96, 512, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        out = layer(x)
        again = layer(x)
    ((_, forward),) = layer._forwards._by_signature.values()
    assert forward.quantize.column_major_scales == (not ON_GPU or torch.cuda.get_device_capability() == (9, 0))
    assert_close(out, layer_operands(layer, x))
    assert torch.equal(again, out)


def test_block_layer_compiles_fullgraph_to_the_same_result():
    layer = W8A8Linear.from_linear(nn.Linear(256, 128, device=DEVICE).to(torch.bfloat16), block_size=(128, 128))
    x = torch.randn(4, 256, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(torch.compile(layer, fullgraph=True)(x), layer(x))


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
def test_block_layer_captures_in_a_cuda_graph():
    layer = W8A8Linear.from_linear(nn.Linear(320, 256, device=DEVICE).to(torch.bfloat16), block_size=(128, 128))
    static_x = torch.randn(16, 320, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        layer(static_x)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = layer(static_x)
        fresh = torch.randn(16, 320, device=DEVICE, dtype=torch.bfloat16)
        static_x.copy_(fresh)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, layer(fresh))


def test_from_block_fp8_shares_the_checkpoint_tensors():
    torch.manual_seed(0)
    w = torch.randn(192, 320, device=DEVICE)
    q, scale = quantize_weight_blocks(w)
    bias = torch.randn(192, device=DEVICE)
    layer = W8A8Linear.from_block_fp8(q, scale, bias, block_size=[128, 128], out_dtype=torch.float32)
    assert layer.weight.data_ptr() == q.data_ptr() and layer.weight_scale.data_ptr() == scale.data_ptr()
    assert layer.block_size == (128, 128) and layer.out_dtype == torch.float32 and layer.bias.dtype == torch.float32
    assert (layer.in_features, layer.out_features) == (320, 192)
    x = torch.randn(5, 320, device=DEVICE)
    with torch.no_grad():
        assert_close(layer(x), layer_operands(layer, x))


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(dtype="int8", block_size=(128, 128)), ValueError, "block_size is for dtype='fp8'"),
        (dict(activation="static", block_size=(128, 128)), ValueError, "static activation scales are not defined"),
        (dict(backend="torch", block_size=(128, 128)), ValueError, "block_size runs on backend='auto' or 'triton'"),
        (dict(block_size=(128, 100)), ValueError, "block_k in"),
        (dict(block_size=(0, 128)), ValueError, r"block_n in \[1, 2\*\*31 - 1\]"),
        (dict(block_size=128), TypeError, "block_size must be a pair"),
    ],
)
def test_bad_block_layer_arguments_are_refused_naming_them(kwargs, error, words):
    with pytest.raises(error, match=words):
        W8A8Linear(256, 128, device=DEVICE, **kwargs)
    with pytest.raises(error, match=words):
        W8A8Linear.from_linear(nn.Linear(256, 128, device=DEVICE), **kwargs)
    with pytest.raises(error, match=words):
        quantize_model(nn.Sequential(nn.Linear(256, 128, device=DEVICE)), **kwargs)


def test_input_scale_with_block_size_is_refused():
    with pytest.raises(ValueError, match="input_scale is for static activations"):
        W8A8Linear.from_linear(nn.Linear(256, 128, device=DEVICE), block_size=(128, 128), input_scale=0.1)


def test_from_block_fp8_checks_the_checkpoint_tensors():
    q, scale = quantize_weight_blocks(torch.randn(256, 384, device=DEVICE))
    with pytest.raises(ValueError, match=r"weight_scale_inv must be \[ceil\(N / block_n\), .* = \[2, 3\]"):
        W8A8Linear.from_block_fp8(q, scale.t())
    with pytest.raises(TypeError, match="weight_scale_inv must be float32"):
        W8A8Linear.from_block_fp8(q, scale.half())
    with pytest.raises(TypeError, match="weight must be a 2-D float8_e4m3fn"):
        W8A8Linear.from_block_fp8(q.view(torch.int8), scale)
    with pytest.raises(ValueError, match=r"bias must be \[N\] = \[256\]"):
        W8A8Linear.from_block_fp8(q, scale, torch.zeros(384, device=DEVICE))
    if hasattr(torch, "float8_e8m0fnu"):  # power-of-two scales, as DeepSeek-V4 stores them: widened exactly
        pow2 = torch.exp2(torch.ceil(torch.log2(scale)))
        layer = W8A8Linear.from_block_fp8(q, pow2.to(torch.float8_e8m0fnu))
        assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, pow2)


def test_from_block_fp8_names_a_bias_that_is_not_a_tensor():
    q, scale = quantize_weight_blocks(torch.randn(256, 384, device=DEVICE))
    with pytest.raises(TypeError, match=r"bias must be a torch\.Tensor"):
        W8A8Linear.from_block_fp8(q, scale, [0.0] * 256)


def test_a_block_layer_refuses_a_per_token_quantized_activation():
    # N = 3 rows, K = 384: the block scales [1, 3] look like per-channel scales [1, N] to scaled_mm,
    # which would compute the product with them, silently wrong, were the activation let through.
    layer = W8A8Linear(384, 3, device=DEVICE, block_size=(128, 128))
    activation = QuantizedActivation(torch.zeros(2, 384, dtype=E4M3, device=DEVICE), torch.ones(2, 1, device=DEVICE))
    with pytest.raises(ValueError, match=r"quantizes per 1 x 128 group to torch\.float8_e4m3fn; it cannot take"):
        layer(activation)


def test_block_state_dict_round_trip_copies_and_casts():
    torch.manual_seed(0)
    layer = W8A8Linear.from_linear(nn.Linear(320, 192, device=DEVICE).to(torch.bfloat16), block_size=(128, 128))
    x = torch.randn(3, 320, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = layer(x)
        state = layer.state_dict()
        assert set(state) == {"weight", "weight_scale", "bias"} and state["weight_scale"].shape == (2, 3)
        twin = W8A8Linear(320, 192, device=DEVICE, block_size=(128, 128))
        twin.load_state_dict(state)
        assert torch.equal(twin(x), expected)
        assert torch.equal(copy.deepcopy(layer)(x), expected)
        per_channel = W8A8Linear(320, 192, device=DEVICE)
        with pytest.raises(RuntimeError, match="weight_scale"):  # [N] scales cannot take [N/128, K/128] blocks
            per_channel.load_state_dict(state)
        half = copy.deepcopy(layer).half()
        assert half.weight.dtype == E4M3 and half.weight_scale.dtype == torch.float32
        assert half.out_dtype == torch.float16 and half.block_size == (128, 128)
        assert cosine(half(x.half()), expected) > 0.9999


def test_a_block_layer_pickled_without_block_size_runs_per_channel():
    layer = W8A8Linear.from_linear(nn.Linear(64, 32, device=DEVICE).to(torch.bfloat16), "fp8")
    pickled = {k: v for k, v in layer.__getstate__().items() if k != "block_size"}  # as an earlier version wrote it
    twin = W8A8Linear.__new__(W8A8Linear)
    twin.__setstate__(pickled)
    x = torch.randn(2, 64, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        assert twin.block_size is None and torch.equal(twin(x), layer(x))


class Projections(nn.Module):
    """q/k/v and gate/up named as in transformers' decoders; up's 320 rows end in a partial block."""

    def __init__(self, up=256):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(256, 256), nn.Linear(256, 128), nn.Linear(256, 128)
        self.gate_proj, self.up_proj = nn.Linear(256, up), nn.Linear(256, up)

    def forward(self, x):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x), self.gate_proj(x) * self.up_proj(x)


@pytest.mark.parametrize("up", [256, 320], ids=["whole-blocks", "partial-block"])
def test_quantize_model_with_block_size_fuses_siblings_of_whole_blocks(up):
    torch.manual_seed(0)
    fused = Projections(up).to(DEVICE, torch.bfloat16)
    alone = copy.deepcopy(fused)
    report = quantize_model(fused, block_size=(128, 128))
    quantize_model(alone, block_size=(128, 128), fuse=False)
    assert len(report.swapped) == 5 and all(fused.get_submodule(n).block_size == (128, 128) for n in report.swapped)
    expected_groups = [["q_proj", "k_proj", "v_proj"]] + ([["gate_proj", "up_proj"]] if up % 128 == 0 else [])
    assert report.fused == expected_groups
    assert fused.k_proj.weight_scale.data_ptr() == fused.q_proj.fused.weight_scale[2:].data_ptr()  # rows of blocks
    x = torch.randn(2, 3, 256, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        for got, want in zip(fused(x), alone(x)):
            torch.testing.assert_close(got, want, atol=0, rtol=0)  # block sums are per output column either way


# ----------------------------------------------------------------------------- transformers' fine-grained FP8


def fp8_linear(in_features, out_features, block_size=(128, 128), activation_scheme="dynamic", bias=False, seed=0):
    """A transformers FP8Linear holding a quantized random weight, as from_pretrained leaves it."""
    torch.manual_seed(seed)
    module = finegrained_fp8.FP8Linear(in_features, out_features, block_size, activation_scheme, has_bias=bias)
    if block_size is not None and block_size[1] in (32, 64, 128, 256):
        q, scale = quantize_weight_blocks(torch.randn(out_features, in_features), block_size)
        module.weight.data, module.weight_scale_inv.data = q, scale
    if bias:
        module.bias.data = torch.randn(out_features).to(torch.bfloat16)
    return module.to(DEVICE)


def test_quantize_model_swaps_fp8_linear_sharing_its_tensors_and_reports_the_rest():
    model = nn.ModuleDict(
        {
            "block": fp8_linear(320, 192, bias=True),
            "per_tensor": fp8_linear(256, 128, block_size=None),
            "static": fp8_linear(256, 128, activation_scheme="static"),
            "odd_block": fp8_linear(256, 128, block_size=(128, 100)),
            "lm_head": fp8_linear(256, 128, seed=1),
            "norm": nn.LayerNorm(256).to(DEVICE, torch.bfloat16),
        }
    )
    original = model["block"]
    report = quantize_model(model)
    assert sorted(report.swapped) == ["block", "lm_head"]  # an fp8 lm_head made its choice already
    assert "per-tensor" in report.skipped["per_tensor"]
    assert "static activation scales" in report.skipped["static"]
    assert "weight_block_size [128, 100]" in report.skipped["odd_block"]
    layer = model["block"]
    assert isinstance(layer, W8A8Linear) and layer.block_size == (128, 128) and layer.out_dtype == torch.bfloat16
    assert layer.weight.data_ptr() == original.weight.data_ptr()
    assert layer.weight_scale.data_ptr() == original.weight_scale_inv.data_ptr()
    x = torch.randn(4, 320, device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        assert_close(layer(x), layer_operands(layer, x))
        exact = x.double() @ dequantize_blocks(original.weight, original.weight_scale_inv).t() + original.bias.double()
        assert cosine(layer(x), exact) > 0.998
    int8_report = quantize_model(nn.Sequential(fp8_linear(256, 128)), "int8")
    assert "would dequantize and requantize" in int8_report.skipped["0"]


def test_quantize_model_for_the_vendor_reports_fp8_linear_instead_of_stopping_halfway():
    # backend='torch' has no block-scaled layers: the FP8Linear stays, reported, and the float layer
    # before it is swapped as asked (it raised there, leaving the model half swapped).
    model = nn.Sequential(nn.Linear(256, 256).to(DEVICE, torch.bfloat16), fp8_linear(256, 128))
    report = quantize_model(model, backend="torch")
    assert report.swapped == ["0"] and model[0].backend == "torch"
    assert "not backend='torch'" in report.skipped["1"] and type(model[1]) is finegrained_fp8.FP8Linear


# A tiny Llama: dims multiples of 128 except the MLP's 320 (partial blocks in N for gate/up, in K for down).
LLAMA = dict(
    vocab_size=320, hidden_size=256, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, max_position_embeddings=64, tie_word_embeddings=False,
)  # fmt: skip
FP8_CONFIG = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    """A fine-grained FP8 checkpoint written as transformers writes one: FP8Linear layers (weight
    float8_e4m3fn, weight_scale_inv float32 per 128 x 128 block) and the quantization_config in
    config.json, by save_pretrained; the lm_head and the rest in bf16. Returns (folder, the float64
    reference model: the same weights dequantized)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils.quantization_config import FineGrainedFP8Config

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA)).to(torch.bfloat16)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("_proj.weight"):
            state[name], state[f"{name}_scale_inv"] = quantize_weight_blocks(tensor)
        else:
            state[name] = tensor
    quantization = FineGrainedFP8Config(**{k: v for k, v in FP8_CONFIG.items() if k != "quant_method"})
    model = finegrained_fp8.replace_with_fp8_linear(model, ["lm_head"], quantization, pre_quantized=True)
    model.load_state_dict(state, assign=True)
    model.config.quantization_config = quantization
    folder = tmp_path_factory.mktemp("llama-fp8")
    model.save_pretrained(folder)

    reference = LlamaForCausalLM(LlamaConfig(**LLAMA)).double()
    dequantized = {
        name: dequantize_blocks(tensor, state[f"{name}_scale_inv"]) if f"{name}_scale_inv" in state else tensor
        for name, tensor in state.items()
        if not name.endswith("_scale_inv")
    }
    reference.load_state_dict(dequantized)
    for module in reference.modules():  # the activations quantized per 1 x 128 group, as the layers do
        if type(module) is nn.Linear and module is not reference.lm_head:
            module.register_forward_pre_hook(quantize_input_in_groups)
    return folder, reference


def quantize_input_in_groups(module, args):
    # scaledmm's own quantization of the float32 activation: on a GPU it is quantize_groups_ref's
    # bit for bit; Triton's interpreter miscasts a few % of fp32 -> fp8 values (by an ulp, up to half
    # the value), which the reference must share to keep a tight bound here.
    (x,) = args
    q, scale = scaledmm.quantize_per_token_group(x.float(), 128)
    return (dequantize_blocks(q.reshape(-1, x.shape[-1]), scale.reshape(-1, scale.shape[-1]), (1, 128)).view_as(x),)


@pytest.fixture
def offline(monkeypatch):
    """No network, and no transformers FP8 kernel (hub download, DeepGEMM, its FP8Linear forward)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the offline load reached for the network or transformers' FP8 kernels")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in ("fp8_linear", "load_finegrained_fp8_kernel", "lazy_load_kernel"):
        monkeypatch.setattr(finegrained_fp8, name, refuse)


# float32 in the interpreter: the reference's computation but for fp32 roundings (which may move a
# rare value across an fp8 rounding boundary), a tight bound. float32 on a GPU: Hopper's fp8 wgmma
# (the swapped decode kernel's, as every 64-row tile's) keeps about 12 bits of each block's 128-term
# sum before its promotion (docs/performance.md, "Accumulation"), and in this small random model the
# logits' cancellations magnify that (cosine 0.99965 on an H200, session 11). bfloat16 (how such
# checkpoints run): each layer's input differs from the float64 one by bf16 rounding, which moves some
# values across an fp8 rounding boundary (an fp8 step is 6 to 12 %), so only a loose bound holds.
FP32_BOUNDS = (0.999, 0.1) if ON_GPU else (1 - 1e-6, 1e-3)


@pytest.mark.parametrize("dtype,min_cosine,max_error", [(torch.float32, *FP32_BOUNDS), (torch.bfloat16, 0.99, 0.2)])
def test_a_saved_fine_grained_fp8_checkpoint_loads_offline_and_runs_on_scaledmm(
    fp8_checkpoint, offline, dtype, min_cosine, max_error
):
    folder, reference = fp8_checkpoint
    written = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert written["quant_method"] == "fp8" and written["weight_block_size"] == [128, 128]

    model, report = load_fp8_pretrained(folder, dtype=dtype)
    names = [f"model.layers.{i}.{p}" for i in range(2) for p in ("self_attn.q_proj", "self_attn.k_proj",
             "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]  # fmt: skip
    assert sorted(report.swapped) == sorted(names)
    assert report.skipped == {"lm_head": "kept in float by the checkpoint"}
    # q/k/v (256, 128, 128 rows: whole blocks) run as one product; gate/up (320 rows: a partial block) alone.
    assert report.fused == [[f"model.layers.{i}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")] for i in (0, 1)]
    down = model.model.layers[1].mlp.down_proj
    assert isinstance(down, W8A8Linear) and down.weight.dtype == E4M3 and down.weight_scale.shape == (2, 3)
    assert down.out_dtype == dtype
    assert not any(finegrained_fp8.FP8Linear is type(m) for m in model.modules())
    model.to(DEVICE)

    ids = torch.tensor([[1, 17, 250, 3, 99, 42]], device=DEVICE)
    with torch.no_grad():
        logits = model(ids).logits
        expected = reference.to(DEVICE)(ids).logits
    assert logits.dtype == dtype
    error = (logits.double() - expected).abs().max().item()
    assert cosine(logits, expected) > min_cosine, cosine(logits, expected)
    assert error <= max_error * expected.abs().max().item(), error / expected.abs().max().item()


def test_load_fp8_pretrained_refuses_a_checkpoint_that_is_not_fine_grained_fp8(tmp_path, offline):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(**{**LLAMA, "num_hidden_layers": 1})).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a fine-grained FP8 checkpoint"):
        load_fp8_pretrained(tmp_path)
