"""Every bad input raises the documented exception, naming the argument, before any launch."""

import numpy as np
import pytest
import torch
from helpers import DEVICE

import scaledmm
from scaledmm import MatmulConfig, runtime
from scaledmm.configs import clear_cache
from scaledmm.testing import make_block_operands, make_operands

M, N, K = 6, 10, 32


def good_args():
    ops = make_operands(M, N, K, torch.int8, DEVICE)
    return dict(
        a=ops.a, b=ops.b, scale_a=ops.scale_a, scale_b=ops.scale_b, out_dtype=torch.bfloat16, bias=ops.bias, config=None
    )


def fp8(shape):
    return torch.randn(shape, device=DEVICE).to(torch.float8_e4m3fn)


def i8(shape):
    return torch.randint(-127, 128, shape, dtype=torch.int8, device=DEVICE)


BAD = {
    # name: (argument -> bad value, exception, words the message must contain)
    "a not a tensor": ("a", lambda a: a.tolist(), TypeError, "a must be a torch.Tensor"),
    "a float32": ("a", lambda a: a.float(), TypeError, "a must have dtype"),
    "b bfloat16": ("b", lambda b: b.to(torch.bfloat16), TypeError, "b must have dtype"),
    "int8 a with fp8 b": ("b", lambda b: fp8((K, N)), TypeError, "a and b must both be int8 or both float8"),
    "a 1-D": ("a", lambda a: a[0], ValueError, "a must be 2-D"),
    "b 3-D": ("b", lambda b: b[None], ValueError, "b must be 2-D"),
    "K mismatch": ("b", lambda b: i8((K + 1, N)), ValueError, "b must be [K, N]"),
    "a strided": ("a", lambda a: i8((M, 2 * K))[:, ::2], ValueError, "a must be row-major or column-major"),
    "b strided": ("b", lambda b: i8((2 * K, 2 * N))[::2, ::2], ValueError, "b must be row-major or column-major"),
    "integer scale_a": (
        "scale_a",
        lambda s: torch.ones(M, 1, dtype=torch.int32, device=DEVICE),
        TypeError,
        "scale_a must have dtype",
    ),
    "float64 scale_b": ("scale_b", lambda s: s.double(), TypeError, "scale_b must have dtype"),
    "scale_a per-channel shape": (
        "scale_a",
        lambda s: torch.ones(1, M, device=DEVICE),
        ValueError,
        "scale_a must be per-tensor",
    ),
    "scale_a wrong length": (
        "scale_a",
        lambda s: torch.ones(M + 1, device=DEVICE),
        ValueError,
        "scale_a must be per-tensor",
    ),
    "scale_b wrong length": (
        "scale_b",
        lambda s: torch.ones(N - 1, device=DEVICE),
        ValueError,
        "scale_b must be per-tensor",
    ),
    "scale_b 3-D": ("scale_b", lambda s: torch.ones(1, 1, N, device=DEVICE), ValueError, "scale_b must be"),
    "scale_a not a tensor": ("scale_a", lambda s: 1.0, TypeError, "scale_a must be a torch.Tensor"),
    "bias wrong shape": ("bias", lambda b: torch.zeros(1, N, device=DEVICE), ValueError, "bias must have shape"),
    "bias wrong length": ("bias", lambda b: torch.zeros(N + 1, device=DEVICE), ValueError, "bias must have shape"),
    "bias int": ("bias", lambda b: torch.zeros(N, dtype=torch.int32, device=DEVICE), TypeError, "bias must have dtype"),
    "out_dtype int32": ("out_dtype", lambda d: torch.int32, TypeError, "out_dtype must be one of"),
    "out_dtype fp8": ("out_dtype", lambda d: torch.float8_e4m3fn, TypeError, "out_dtype must be one of"),
    "out_dtype string": ("out_dtype", lambda d: "bfloat16", TypeError, "out_dtype must be one of"),
    "config dict": ("config", lambda c: {"block_m": 16}, TypeError, "config must be a scaledmm.MatmulConfig"),
    "scale_b on the meta device": ("scale_b", lambda s: s.to("meta"), ValueError, "scale_b is on meta"),
    "bias on the meta device": ("bias", lambda b: b.to("meta"), ValueError, "bias is on meta"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_raises_before_launch(case):
    name, make_bad, error, words = BAD[case]
    args = good_args()
    args[name] = make_bad(args[name])
    clear_cache()
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        scaledmm.scaled_mm(**args)
    assert not runtime.prepared  # nothing was planned, bound or launched


def test_zero_k_and_zero_n_are_refused():
    with pytest.raises(ValueError, match="K and N must be >= 1"):
        scaledmm.scaled_mm(i8((M, 0)), i8((0, N)), torch.ones(()), torch.ones(()))
    with pytest.raises(ValueError, match="K and N must be >= 1"):
        scaledmm.scaled_mm(i8((M, K)), i8((K, 0)), torch.ones(()), torch.ones(()))


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setattr("scaledmm.checks.INTERPRETER", False)
    ops = make_operands(M, N, K, torch.int8, "cpu")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        scaledmm.scaled_mm(*ops.args())


@pytest.mark.parametrize(
    "fields,error",
    [
        (dict(block_m=24, block_n=32, block_k=32), ValueError),  # not a power of two
        (dict(block_m=8, block_n=32, block_k=32), ValueError),  # below the tensor-core minimum
        (dict(block_m=16, block_n=32, block_k=16), ValueError),  # 8-bit dots need K steps of 32
        (dict(block_m=16, block_n=512, block_k=32), ValueError),
        (dict(block_m=16, block_n=32, block_k=32, num_stages=0), ValueError),
        (dict(block_m=16, block_n=32, block_k=32, num_warps=3), ValueError),
        (dict(block_m=16, block_n=32, block_k=32, split_k=0), ValueError),
        (dict(block_m=16, block_n=32, block_k=32, split_k=17), ValueError),
        (dict(block_m=16, block_n=32, block_k=32, kernel="TMA"), ValueError),  # not one of KERNELS
        (
            dict(block_m=16, block_n=32, block_k=32, kernel="tma", split_k=2),
            ValueError,
        ),  # the TMA kernel does not split
        (dict(block_m=16, block_n=32, block_k=32, kernel=2), TypeError),  # a name, not an index
        (dict(block_m=16.0, block_n=32, block_k=32), TypeError),
        (dict(block_m=True, block_n=32, block_k=32), TypeError),
    ],
)
def test_bad_config_is_refused(fields, error):
    with pytest.raises(error, match="MatmulConfig"):
        MatmulConfig(**fields)


NOT_DENSE = {
    "sparse_coo": lambda t: t.to_sparse(),
    "sparse_csr": lambda t: t.to_sparse_csr(),  # 2-D only
    "nested": lambda t: torch.nested.nested_tensor([t, t]),
}


@pytest.mark.parametrize(
    "name,layout",
    [(n, layout) for n in ("a", "scale_a", "bias") for layout in NOT_DENSE if (n, layout) != ("bias", "sparse_csr")],
)
def test_tensors_without_strides_or_storage_are_refused_naming_them(name, layout):
    # A sparse or nested tensor has no signature (strides, data pointer) to look a prepared call up by;
    # torch's RuntimeError must not escape before the checks.
    args = good_args()
    dense = args[name] if name != "scale_a" else torch.rand(M, 1, device=DEVICE) + 0.5
    args[name] = NOT_DENSE[layout](dense)
    words = f"{name} must be a dense tensor"
    clear_cache()
    with pytest.raises(ValueError, match=words):
        scaledmm.scaled_mm(**args)
    if layout != "nested":  # the dispatcher refuses nested tensors before the op's code runs
        with pytest.raises(ValueError, match=words):
            torch.ops.scaledmm.scaled_mm(
                *(args[k] for k in ("a", "b", "scale_a", "scale_b", "bias", "out_dtype")), None, "auto"
            )
    with pytest.raises(ValueError, match="x must be a dense tensor"):
        scaledmm.quantize_per_token_group(NOT_DENSE[layout](torch.randn(M, K, device=DEVICE)))
    assert not runtime.prepared


def test_a_block_size_equal_to_a_valid_one_is_refused_after_the_valid_one_ran():
    # 128.0, True and numpy ints equal ints as dictionary keys: looked up as they are, they would find
    # the prepared call of the valid block_size, refused at the first call and run at a later one.
    ops = make_block_operands(4, 64, 128, DEVICE, (1, 128))
    scaledmm.scaled_mm(*ops.args(), block_size=(1, 128))
    for block_size in [(1, 128.0), (True, 128), (1, np.int64(128))]:
        with pytest.raises(TypeError, match="block_size must be a pair"):
            scaledmm.scaled_mm(*ops.args(), block_size=block_size)
    assert scaledmm.scaled_mm(*ops.args(), block_size=[1, 128]).shape == (4, 64)  # a list of ints is fine
