"""What the tests share: the device they run on and the dtype combinations they cover."""

import os

import torch

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETER or not torch.cuda.is_available() else "cuda"
ON_GPU = DEVICE == "cuda"

PAD = 5  # elements of padding on every side of a padded view (`padded_view`)

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


def padded_view(src: torch.Tensor, fill) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of the 2-D `src` placed inside a larger buffer filled with `fill`, keeping its layout."""
    column_major = src.stride(0) == 1 and src.shape[1] > 1
    rows, cols = src.shape
    if column_major:
        buf = torch.full((cols + 2 * PAD, rows + 2 * PAD), fill, dtype=torch.float32, device=DEVICE).to(src.dtype)
        view = buf[PAD : PAD + cols, PAD : PAD + rows].t()
    else:
        buf = torch.full((rows + 2 * PAD, cols + 2 * PAD), fill, dtype=torch.float32, device=DEVICE).to(src.dtype)
        view = buf[PAD : PAD + rows, PAD : PAD + cols]
    view.copy_(src)
    return buf, view
