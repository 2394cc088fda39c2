"""Activation quantization against its torch reference (scaledmm.reference.quantize_ref).

int8 must match exactly everywhere. fp8 must match exactly on the GPU; Triton's interpreter converts
a few % of fp32 values to a wrong fp8 value, so on the CPU the scales must match exactly and all
but 10% (and two) of the values."""

import pytest
import torch
from helpers import DEVICE, ON_GPU

import scaledmm
from scaledmm.kernels.quant import QMAX
from scaledmm.nn import W8A8Linear, quantize_weight
from scaledmm.reference import quantize_ref

DTYPES = [torch.int8, torch.float8_e4m3fn]


def assert_matches(q, ref, dtype):
    same = q.view(torch.uint8) == ref.view(torch.uint8)  # bitwise: also tells -0 from 0
    if dtype == torch.int8 or ON_GPU:
        assert same.all(), f"{(~same).sum().item()} of {same.numel()} values differ"
    else:  # the interpreter: ~4% miscast, so allow 10% and a couple (short rows) before failing
        assert (~same).sum() <= 0.1 * same.numel() + 2


def activations(shape, dtype=torch.bfloat16):
    x = torch.randn(shape, device=DEVICE) * 3
    x[..., 0] = 40.0  # an outlier per row, as LLM activations have
    return x.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 7), (5, 300), (3, 4097), (2, 3, 64)])
def test_per_token_matches_reference(dtype, x_dtype, shape):
    x = activations(shape, x_dtype)
    q, scale = scaledmm.quantize_per_token(x, dtype)
    ref_q, ref_scale = quantize_ref(x, dtype)
    assert q.shape == x.shape and q.dtype == dtype
    assert scale.shape == (*x.shape[:-1], 1) and scale.dtype == torch.float32
    assert torch.equal(scale, ref_scale)
    assert_matches(q, ref_q, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
def test_per_token_uses_the_whole_range_and_survives_zero_rows(dtype):
    x = activations((4, 96))
    x[1] = 0
    q, scale = scaledmm.quantize_per_token(x, dtype)
    qmax = 127 if dtype == torch.int8 else 448
    assert (q[[0, 2, 3]].float().abs().amax(dim=1) == qmax).all()  # each row's outlier maps to the max
    assert (q[1].float() == 0).all() and torch.isfinite(scale).all() and scale[1] > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
def test_per_tensor_saturates_and_matches_reference(dtype):
    x = activations((6, 130))
    scale = torch.tensor(0.05, device=DEVICE)  # 40 / 0.05 = 800: beyond either range, must saturate
    q = scaledmm.quantize_per_tensor(x, scale, dtype)
    ref_q, _ = quantize_ref(x, dtype, scale)
    assert_matches(q, ref_q, dtype)
    qmax = 127 if dtype == torch.int8 else 448
    assert q.float().abs().max() == qmax


def test_int8_rounds_half_to_even():
    x = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.0]], device=DEVICE)
    q = scaledmm.quantize_per_tensor(x, torch.tensor(1.0, device=DEVICE), torch.int8)
    assert q.tolist() == [[0, 2, 2, 0, -2, 126, 127]]


def test_strided_input_and_empty_batch():
    x = activations((8, 64))[::2]  # a row stride of two rows
    q, scale = scaledmm.quantize_per_token(x, torch.int8)
    ref_q, ref_scale = quantize_ref(x, torch.int8)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)
    q, scale = scaledmm.quantize_per_token(torch.zeros(0, 64, device=DEVICE), torch.int8)
    assert q.shape == (0, 64) and scale.shape == (0, 1)


@pytest.mark.parametrize(
    "args,error,words",
    [
        ((torch.zeros(2, 8, dtype=torch.int32), torch.int8), TypeError, "x must have dtype"),
        ((torch.zeros(2, 0), torch.int8), ValueError, "K >= 1"),
        ((torch.zeros(2, 8), torch.float8_e5m2), TypeError, "dtype must be torch.int8 or torch.float8_e4m3fn"),
        (("x", torch.int8), TypeError, "x must be a torch.Tensor"),
    ],
)
def test_bad_inputs(args, error, words):
    x, dtype = args
    if isinstance(x, torch.Tensor):
        x = x.to(DEVICE)
    with pytest.raises(error, match=words):
        scaledmm.quantize_per_token(x, dtype)


def test_static_scale_must_be_one_value():
    with pytest.raises(ValueError, match="one value"):
        scaledmm.quantize_per_tensor(activations((2, 8)), torch.ones(2, device=DEVICE), torch.int8)


def test_opcheck_and_compile():
    x = activations((5, 64))
    torch.library.opcheck(torch.ops.scaledmm.quantize_per_token.default, (x, torch.int8))
    torch.library.opcheck(
        torch.ops.scaledmm.quantize_per_tensor.default, (x, torch.tensor(0.1, device=DEVICE), torch.int8)
    )
    compiled = torch.compile(scaledmm.quantize_per_token, fullgraph=True)
    q, scale = compiled(x, torch.int8)
    ref_q, ref_scale = quantize_ref(x, torch.int8)
    assert torch.equal(q, ref_q) and torch.equal(scale, ref_scale)


@pytest.mark.skipif(not ON_GPU, reason="the direct launch is taken on CUDA only")
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_quantize_launch_is_direct_on_known_triton_versions(dynamic):
    import triton

    from scaledmm.kernels.launch import DIRECT_LAUNCH_VERSIONS
    from scaledmm.kernels.quant import bind_quantize_rows

    x = torch.randn(16, 256, device=DEVICE, dtype=torch.bfloat16)
    q = torch.empty(16, 256, device=DEVICE, dtype=torch.int8)
    scale = torch.empty(16, 1, device=DEVICE) if dynamic else torch.tensor(0.05, device=DEVICE)
    bound = bind_quantize_rows(x, q, scale, dynamic)
    assert (bound.compiled is not None) == triton.__version__.startswith(DIRECT_LAUNCH_VERSIONS)
    again = torch.empty_like(q)
    bound(x, again, scale)
    assert torch.equal(again, q)


# ----------------------------------------------------------------------------- NaN and infinities
# NaN in, NaN out, as torch.nn.Linear (issue 15, item 2). Triton's default max and clamp drop NaN:
# in the interpreter only the final row maximum does (a finite scale), on the GPU every max and
# clamp does (a finite scale, and a NaN value saturated to -QMAX). The interpreter also converts
# NaN to fp8 +-384 (no NaN handling in its cast), so fp8 NaN values are checked on the GPU only.

NAN, INF = float("nan"), float("inf")


def nonfinite_activations(rows=5, k=300):
    """Rows 0 and 3 hold a NaN (row 3 an -inf too: NaN wins), row 2 a +inf, the others are finite."""
    x = activations((rows, k))
    x[0, 3] = NAN
    x[2, 7] = INF
    x[3, 5], x[3, 9] = -INF, NAN
    return x


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
def test_per_token_nan_row_gets_nan_scale_and_inf_row_inf(dtype):
    x = nonfinite_activations()
    q, scale = scaledmm.quantize_per_token(x, dtype)
    ref_q, ref_scale = quantize_ref(x, dtype)
    scale, ref_scale = scale.flatten(), ref_scale.flatten()
    assert scale[[0, 3]].isnan().all() and scale[2] == INF  # the reference's: amax and clamp_min keep NaN
    assert torch.equal(scale[[1, 4]], ref_scale[[1, 4]]) and torch.equal(scale.isnan(), ref_scale.isnan())
    assert_matches(q[[1, 4]], ref_q[[1, 4]], dtype)
    finite_of_inf_row = torch.arange(x.shape[1], device=DEVICE) != 7
    assert (q[2, finite_of_inf_row].float() == 0).all()  # x / inf
    if dtype == torch.float8_e4m3fn and ON_GPU:
        # NaN rows are all NaN (x / NaN), and the inf itself is NaN (inf / inf), as in the reference.
        assert q[[0, 3]].float().isnan().all() and q[2, 7].float().isnan()
        assert torch.equal(q.float().isnan(), ref_q.float().isnan())


@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
def test_per_tensor_nan_stays_nan_and_inf_saturates(dtype):
    x = nonfinite_activations()
    q = scaledmm.quantize_per_tensor(x, torch.tensor(0.05, device=DEVICE), dtype)
    ref_q, _ = quantize_ref(x, dtype, torch.tensor(0.05, device=DEVICE))
    qmax = QMAX[dtype]
    assert q[2, 7].float() == qmax and q[3, 5].float() == -qmax  # as torch.clamp saturates +-inf
    finite = x.isfinite()
    assert_matches(q[finite], ref_q[finite], dtype)
    if dtype == torch.float8_e4m3fn and ON_GPU:  # int8 has no NaN: its value there is unspecified
        assert q[0, 3].float().isnan() and q[3, 9].float().isnan()
        assert torch.equal(q.float().isnan(), ref_q.float().isnan())


def backends():
    """scaled_mm's backends that run here: the vendor kernels need CUDA."""
    return [
        "triton",
        pytest.param("torch", marks=pytest.mark.skipif(not ON_GPU, reason="the vendor kernels need CUDA")),
    ]


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("dtype", DTYPES, ids=["int8", "fp8"])
def test_w8a8_forward_row_with_nan_or_inf_is_nonfinite_others_finite(dtype, backend):
    # quantize_per_token then scaled_mm, as W8A8Linear runs it past a few rows. The NaN scale makes
    # the NaN rows NaN whatever int8 stored for them; the inf row is NaN or +-inf (acc * inf).
    x = nonfinite_activations(rows=32, k=256)
    weight_q, weight_scale = quantize_weight(torch.randn(64, 256, device=DEVICE), dtype)
    q, scale = scaledmm.quantize_per_token(x, dtype)
    out = scaledmm.scaled_mm(q, weight_q.t(), scale, weight_scale, torch.bfloat16, backend=backend)
    assert out[[0, 3]].isnan().all()
    assert not out[2].isfinite().any()
    assert out[4:].isfinite().all() and out[1].isfinite().all()


@pytest.mark.parametrize("rows", [32, 4])  # 4: W8A8Linear's fused quantize-and-multiply kernel (kernels/linear.py)
@pytest.mark.parametrize("dtype", ["int8", "fp8"])
def test_w8a8_linear_nan_row_is_nan(dtype, rows):
    linear = torch.nn.Linear(256, 64, device=DEVICE)
    layer = W8A8Linear.from_linear(linear, dtype)
    x = activations((rows, 256))
    x[1, 17] = NAN
    for _ in range(2):  # the first call of a signature runs the two launches, the next ones the fused kernel
        out = layer(x)
        assert out[1].isnan().all() and out[0].isfinite().all() and out[2:].isfinite().all()


# ----------------------------------------------------------------------------- per-token-group (block-scaled fp8)


@pytest.mark.parametrize("shape,group_size", [((5, 256), 128), ((2, 3, 300), 128), ((4, 96), 32), ((1, 64), 256)])
def test_per_token_group_matches_the_reference(shape, group_size):
    from scaledmm.reference import quantize_groups_ref

    x = torch.randn(*shape, device=DEVICE, dtype=torch.bfloat16) * 3
    x[..., 0] = 40.0  # an outlier in the first group of every row
    if shape[-1] > group_size:
        x[..., group_size : 2 * group_size] = 0.0  # an all-zero group: a floored scale, zeros out
    q, scale = scaledmm.quantize_per_token_group(x, group_size)
    ref_q, ref_scale = quantize_groups_ref(x, torch.float8_e4m3fn, group_size)
    groups = -(-shape[-1] // group_size)
    assert q.shape == x.shape and scale.shape == (*shape[:-1], groups) and scale.dtype == torch.float32
    torch.testing.assert_close(scale, ref_scale, atol=0, rtol=0)
    assert_matches(q, ref_q, torch.float8_e4m3fn)


@pytest.mark.parametrize("shape", [(5, 300), (2, 3, 256)])
def test_per_token_group_column_major_scales_are_the_same_values_in_the_vendors_layout(shape):
    x = torch.randn(*shape, device=DEVICE, dtype=torch.bfloat16)
    q, scale = scaledmm.quantize_per_token_group(x, 128)
    for _ in range(2):  # the first call, then its prepared call again
        q_cm, scale_cm = scaledmm.quantize_per_token_group(x, 128, column_major_scales=True)
        assert torch.equal(q_cm.view(torch.uint8), q.view(torch.uint8)) and torch.equal(scale_cm, scale)
        rows = scale_cm.reshape(-1, scale_cm.shape[-1])
        assert rows.stride() == (1, rows.shape[0])  # [M, groups] column-major, as torch._scaled_mm reads
    # The traced path (the custom op and its fake) gives the same layout.
    compiled = torch.compile(lambda t: scaledmm.quantize_per_token_group(t, 128, column_major_scales=True))
    _, scale_compiled = compiled(x)
    assert torch.equal(scale_compiled, scale) and scale_compiled.reshape(-1, scale.shape[-1]).stride()[0] == 1
    with pytest.raises(TypeError, match="column_major_scales must be a bool"):
        scaledmm.quantize_per_token_group(x, 128, column_major_scales=1)


@pytest.mark.parametrize("shape", [(6, 256), (2, 3, 256)])  # the op takes x [..., K], as the API does
def test_per_token_group_opcheck(shape):
    x = activations(shape)
    for column_major in (False, True):
        torch.library.opcheck(
            torch.ops.scaledmm.quantize_per_token_group.default, (x, 128, torch.float8_e4m3fn, column_major)
        )


def test_per_token_group_then_block_scaled_mm_is_the_float_product():
    M, N, K = 6, 96, 300
    x = torch.randn(M, K, device=DEVICE)
    w = torch.randn(N, K, device=DEVICE)
    q, scale_x = scaledmm.quantize_per_token_group(x, 128)
    w_q, w_scale = quantize_weight_blocks(w, 128)
    out = scaledmm.scaled_mm(q, w_q.t(), scale_x, w_scale.t(), torch.float32, block_size=(128, 128))
    expected = x @ w.t()
    assert (out - expected).norm() / expected.norm() < 0.08  # two fp8 roundings (e4m3: 2**-4)


def quantize_weight_blocks(w, block):
    """A weight [N, K] in e4m3 with one scale per block x block block (weight_scale_inv [N/b, K/b])."""
    N, K = w.shape
    nb, kb = -(-N // block), -(-K // block)
    padded = torch.nn.functional.pad(w, (0, kb * block - K, 0, nb * block - N))
    blocks = padded.reshape(nb, block, kb, block)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-10) / 448.0
    q = (blocks / scale[:, None, :, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
    return q.reshape(nb * block, kb * block)[:N, :K], scale


@pytest.mark.parametrize(
    "args,error,words",
    [
        (dict(group_size=100), ValueError, "group_size must be one of"),
        (dict(group_size=128.0), TypeError, "group_size must be an int"),
        (dict(group_size=True), TypeError, "group_size must be an int"),
        (dict(dtype=torch.int8), TypeError, "dtype must be torch.float8_e4m3fn"),
    ],
)
def test_per_token_group_checks_its_arguments(args, error, words):
    x = torch.randn(2, 128, device=DEVICE)
    # A valid call prepared first: 128.0 is 128 as a key, so it must be refused before the lookup.
    scaledmm.quantize_per_token_group(x, 128)
    with pytest.raises(error, match=words):
        scaledmm.quantize_per_token_group(x, **args)
    if type(args.get("group_size", 128)) is int:  # the op's schema takes an int (and reads True as 1)
        with pytest.raises(error, match=words):
            torch.ops.scaledmm.quantize_per_token_group(
                x, args.get("group_size", 128), args.get("dtype", torch.float8_e4m3fn)
            )
