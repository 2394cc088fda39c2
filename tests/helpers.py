"""What the tests share: the device they run on and the dtype combinations they cover."""

import os

import torch

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETER or not torch.cuda.is_available() else "cuda"
ON_GPU = DEVICE == "cuda"

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2
# (a dtype, b dtype): both int8, both fp8 of one format, and the mixed fp8 pairs.
OPERAND_PAIRS = [(torch.int8, torch.int8), (E4M3, E4M3), (E5M2, E5M2), (E4M3, E5M2), (E5M2, E4M3)]


def prepared_call(
    a,
    b,
    scale_a,
    scale_b,
    out_dtype=torch.bfloat16,
    bias=None,
    config=None,
    backend="auto",
    accumulation="fast",
    block_size=None,
):
    """The prepared call scaled_mm keeps for this signature (it says which backend and kernel ran), or None."""
    from scaledmm import runtime

    key = runtime.scaled_mm_signature(
        a, b, scale_a, scale_b, out_dtype, bias, config, backend, accumulation, block_size
    )
    return runtime.prepared.get(key)


def pair_id(pair):
    a, b = pair
    name = {torch.int8: "int8", E4M3: "e4m3", E5M2: "e5m2"}
    return name[a] if a == b else f"{name[a]}x{name[b]}"
