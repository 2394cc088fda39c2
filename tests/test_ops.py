"""The torch.library ops check their arguments as the Python functions do (a direct call of
torch.ops.scaledmm.* is an entry point too), and property-based: random bad arguments to the ops,
the public functions and the quantizations raise TypeError or ValueError naming the argument, and
nothing is planned, bound or launched."""

import pytest
import torch
from helpers import DEVICE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import scaledmm
from scaledmm import runtime
from scaledmm.configs import clear_cache
from scaledmm.testing import assert_close, make_operands

M, N, K = 8, 16, 64
ONE = torch.tensor(1.0, device=DEVICE)
op = torch.ops.scaledmm.scaled_mm


def i8(*shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=DEVICE)


@pytest.mark.parametrize(
    "case,error,words",
    [
        ("short bias", ValueError, r"bias must have shape \[16\]"),
        ("K mismatch", ValueError, "b must be \\[K, N\\]"),
        ("int8 out_dtype", TypeError, "out_dtype must be one of"),
        ("unknown backend", ValueError, "backend must be one of"),
        ("float operands", TypeError, "a must have dtype"),
        ("bad config", ValueError, "config: MatmulConfig.block_m"),
    ],
)
def test_the_registered_op_checks_its_arguments(case, error, words):
    """The reproducers of the hardening issue: each ran (or raised KeyError) before."""
    args = [i8(M, K), i8(K, N), ONE, ONE, None, torch.float32, None, "auto"]
    if case == "short bias":
        args[4] = torch.zeros(4, device=DEVICE)
    elif case == "K mismatch":
        args[1] = i8(32, N)
    elif case == "int8 out_dtype":
        args[5] = torch.int8
    elif case == "unknown backend":
        args[7] = "nonsense"
    elif case == "float operands":
        args[0], args[1] = torch.randn(M, K, device=DEVICE), torch.randn(K, N, device=DEVICE)
    else:
        args[6] = [0, *scaledmm.MatmulConfig(16, 16, 32).as_list()[1:]]  # block_m = 0
    clear_cache()
    with pytest.raises(error, match=words):
        op(*args)
    assert not runtime.prepared


def test_the_registered_op_computes_a_valid_call():
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    assert_close(op(*ops.args(), ops.bias, torch.bfloat16, None, "auto"), ops)


def test_the_quantize_ops_check_their_arguments():
    with pytest.raises(TypeError, match="x must have dtype"):
        torch.ops.scaledmm.quantize_per_token(i8(M, K), torch.int8)
    with pytest.raises(TypeError, match=r"dtype must be torch\.int8 or torch\.float8_e4m3fn"):
        torch.ops.scaledmm.quantize_per_token(torch.randn(M, K, device=DEVICE), torch.float16)
    with pytest.raises(ValueError, match="scale must hold one value"):
        torch.ops.scaledmm.quantize_per_tensor(
            torch.randn(M, K, device=DEVICE), torch.ones(2, device=DEVICE), torch.int8
        )


def test_none_for_a_tensor_is_a_type_error_naming_it():
    from scaledmm.nn import W8A8Linear

    with pytest.raises(TypeError, match=r"a must be a torch\.Tensor"):
        scaledmm.scaled_mm(None, i8(K, N), ONE, ONE)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        scaledmm.quantize_per_token(None)
    layer = W8A8Linear.from_linear(torch.nn.Linear(K, N).to(DEVICE), "int8")
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        layer(None)


def test_int8_k_past_the_exact_int32_bound_is_refused():
    with pytest.raises(ValueError, match="exact for K <= 131,071"):
        scaledmm.scaled_mm(
            torch.full((1, 131072), -128, dtype=torch.int8, device=DEVICE),
            torch.full((131072, 16), -128, dtype=torch.int8, device=DEVICE),
            ONE,
            ONE,
        )


def test_int8_at_the_exact_bound_is_exact():
    K_max = 131071
    a = torch.full((1, K_max), -128, dtype=torch.int8, device=DEVICE)
    b = torch.full((K_max, 16), -128, dtype=torch.int8, device=DEVICE)
    out = scaledmm.scaled_mm(a, b, ONE, ONE, torch.float32)
    assert (out == K_max * 128 * 128).all()


# ----------------------------------------------------------------------------- random bad arguments

# Each mutation makes one argument invalid; a case applies one to three of them to a valid call.
SCALED_MM_MUTATIONS = {
    "a float32": ("a", lambda v: v.float(), "op"),
    "a 3-D": ("a", lambda v: v[None], "op"),
    "a int16": ("a", lambda v: v.to(torch.int16), "op"),
    "a None": ("a", lambda v: None, "python"),
    "a list": ("a", lambda v: v.tolist(), "python"),
    "b K mismatch": ("b", lambda v: v[:-1], "op"),
    "b bool": ("b", lambda v: v.bool(), "op"),
    "b meta": ("b", lambda v: v.to("meta"), "op"),
    "scale_a long": ("scale_a", lambda v: torch.ones(M + 1, device=v.device), "op"),
    "scale_a int32": ("scale_a", lambda v: torch.ones((), dtype=torch.int32, device=v.device), "op"),
    "scale_a 3-D": ("scale_a", lambda v: torch.ones(1, 1, 1, device=v.device), "op"),
    "scale_a None": ("scale_a", lambda v: None, "python"),
    "scale_b long": ("scale_b", lambda v: torch.ones(N + 1, device=v.device), "op"),
    "scale_b string": ("scale_b", lambda v: "1.0", "python"),
    "bias short": ("bias", lambda v: torch.zeros(N - 1, device=DEVICE), "op"),
    "bias int8": ("bias", lambda v: torch.zeros(N, dtype=torch.int8, device=DEVICE), "op"),
    "bias 2-D": ("bias", lambda v: torch.zeros(1, N, device=DEVICE), "op"),
    "out_dtype int8": ("out_dtype", lambda v: torch.int8, "op"),
    "out_dtype float64": ("out_dtype", lambda v: torch.float64, "op"),
    "out_dtype str": ("out_dtype", lambda v: "bfloat16", "python"),
    "backend unknown": ("backend", lambda v: "cutlass", "op"),
    "backend int": ("backend", lambda v: 3, "python"),
    "config dict": ("config", lambda v: {"block_m": 16}, "python"),
}


def _scaled_mm_args():
    return dict(
        a=i8(M, K),
        b=i8(K, N),
        scale_a=ONE,
        scale_b=ONE,
        out_dtype=torch.bfloat16,
        bias=None,
        config=None,
        backend="auto",
    )


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(st.sampled_from(sorted(SCALED_MM_MUTATIONS)), min_size=1, max_size=3, unique=True))
def test_random_bad_arguments_raise_type_or_value_errors_only(names):
    args = _scaled_mm_args()
    names = list({SCALED_MM_MUTATIONS[name][0]: name for name in names}.values())  # one per argument
    for name in names:
        arg, mutate, _ = SCALED_MM_MUTATIONS[name]
        args[arg] = mutate(args[arg])
    clear_cache()
    with pytest.raises((TypeError, ValueError)):
        scaledmm.scaled_mm(**args)
    if all(SCALED_MM_MUTATIONS[name][2] == "op" for name in names):  # the op's schema admits these types
        with pytest.raises((TypeError, ValueError)):
            op(args["a"], args["b"], args["scale_a"], args["scale_b"], args["bias"], args["out_dtype"], None,
               args["backend"])  # fmt: skip
    assert not runtime.prepared


QUANTIZE_MUTATIONS = {
    "x None": ("x", lambda v: None),
    "x int8": ("x", lambda v: v.to(torch.int8)),
    "x 0-d": ("x", lambda v: v[0, 0]),
    "x no K": ("x", lambda v: v[:, :0]),
    "x float64": ("x", lambda v: v.double()),
    "dtype float16": ("dtype", lambda v: torch.float16),
    "dtype str": ("dtype", lambda v: "fp8"),
    "scale two values": ("scale", lambda v: torch.ones(2, device=DEVICE)),
    "scale int": ("scale", lambda v: torch.ones((), dtype=torch.int64, device=DEVICE)),
    "scale meta": ("scale", lambda v: torch.ones((), device="meta")),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(st.sampled_from(sorted(QUANTIZE_MUTATIONS)), min_size=1, max_size=2, unique=True),
    per_token=st.booleans(),
)
def test_random_bad_quantize_arguments_raise_type_or_value_errors_only(names, per_token):
    args = dict(x=torch.randn(M, K, device=DEVICE), dtype=torch.int8, scale=torch.ones((), device=DEVICE))
    names = list({QUANTIZE_MUTATIONS[name][0]: name for name in names}.values())  # one per argument
    for name in names:
        arg, mutate = QUANTIZE_MUTATIONS[name]
        args[arg] = mutate(args[arg])
    if per_token and all(QUANTIZE_MUTATIONS[n][0] == "scale" for n in names):
        per_token = False  # a bad scale makes a bad call only where a scale is taken
    clear_cache()
    with pytest.raises((TypeError, ValueError)):
        if per_token:
            scaledmm.quantize_per_token(args["x"], args["dtype"])
        else:
            scaledmm.quantize_per_tensor(args["x"], args["scale"], args["dtype"])
    assert not runtime.prepared
