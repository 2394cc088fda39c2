"""quantize_model: swap a model's nn.Linear layers (and transformers' fine-grained FP8Linear
layers) for W8A8Linear, and report what was done."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from scaledmm.checks import (
    DEFAULT_ACCUMULATION,
    OUT_DTYPES,
    check_accumulation,
    check_backend,
    check_block_size,
    check_layer_block_size,
)
from scaledmm.nn.linear import W8A8Linear, dtype_of
from scaledmm.nn.producers import fuse_producers as swap_producers
from scaledmm.nn.producers import producer_impl
from scaledmm.nn.siblings import fuse_siblings


def is_fp8_linear(module: nn.Module) -> bool:
    """Whether `module` is transformers' FP8Linear (fine-grained FP8, `quant_method: fp8`), exactly:
    its subclasses (FP8GroupedLinear) compute something else. Without transformers' module loaded
    there is none, and transformers is not imported for the question."""
    fp8 = sys.modules.get("transformers.integrations.finegrained_fp8")
    return fp8 is not None and type(module) is getattr(fp8, "FP8Linear", None)


def _default_filter(name: str, linear: nn.Linear) -> bool:
    # The output projection to the vocabulary is commonly kept in high precision: its errors go
    # straight into the logits, and it runs once per token. A checkpoint that holds it in fp8
    # already made that choice.
    return is_fp8_linear(linear) or name.split(".")[-1] != "lm_head"


@dataclass
class QuantizationReport:
    """What quantize_model did: the names of the layers swapped, why others were not, the groups of
    siblings that run as one scaled_mm, and notes on layers shared or tied with others."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    fused: list[list[str]] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"quantized {len(self.swapped)} linear layers, skipped {len(self.skipped)}; "
            f"{len(self.fused)} groups of siblings run fused"
            + (f"; {len(self.producers)} producers quantize their output" if self.producers else "")
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        lines += [f"  note on {name}: {note}" for name, note in self.notes.items()]
        return "\n".join(lines)


def _skip_reason(name: str, module: nn.Linear, accept, filtered: bool, qdtype: torch.dtype) -> str | None:
    weight = module.weight
    if not accept(name, module):
        return (
            "excluded by the filter" if filtered else "lm_head is kept in high precision (pass filter= to include it)"
        )
    if not weight.is_floating_point() or weight.device.type == "meta":
        return f"weight is {weight.dtype} on {weight.device}; needs a float weight with data"
    if weight.dtype not in OUT_DTYPES:
        return f"weight is {weight.dtype}; W8A8Linear runs float32, float16 and bfloat16 layers (cast the model first)"
    if qdtype != torch.int8 and weight.is_cuda and torch.cuda.get_device_capability(weight.device) < (8, 9):
        return "fp8 needs compute capability 8.9 or newer; use dtype='int8'"
    return None


def _fp8_skip_reason(name: str, module: nn.Linear, accept, qdtype: torch.dtype, backend: str) -> str | None:
    """Why a transformers FP8Linear cannot become a block-scaled W8A8Linear sharing its tensors, or None."""
    weight, scale = module.weight, getattr(module, "weight_scale_inv", None)
    if not accept(name, module):
        return "excluded by the filter"
    if qdtype != torch.float8_e4m3fn:
        return "a fine-grained FP8Linear is already fp8: dtype='int8' would dequantize and requantize it"
    if backend == "torch":  # checks.check_layer_block_size says why
        return "block-scaled layers run on backend='auto' or 'triton', not backend='torch'"
    if module.block_size is None:
        return "a per-tensor FP8Linear (block_size None); block-scaled layers need weight_block_size"
    try:
        check_block_size(tuple(module.block_size))
    except (TypeError, ValueError) as err:
        return f"weight_block_size {list(module.block_size)} is not one the block-scaled kernel takes: {err}"
    if getattr(module, "activation_scheme", "dynamic") != "dynamic":
        return "static activation scales are not defined for block-scaled layers (activation_scheme='static')"
    if weight.dtype != torch.float8_e4m3fn or weight.device.type == "meta":
        return f"weight is {weight.dtype} on {weight.device}; needs a float8_e4m3fn weight with data"
    if scale is None or scale.dtype not in (torch.float32, getattr(torch, "float8_e8m0fnu", None)):
        return f"weight_scale_inv is {getattr(scale, 'dtype', None)}; needs float32 or float8_e8m0fnu block scales"
    if weight.is_cuda and torch.cuda.get_device_capability(weight.device) < (8, 9):
        return "fp8 needs compute capability 8.9 or newer"
    return None


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype that most of the model's float parameters outside FP8Linear layers hold (its
    embeddings, norms, lm_head): what the layers replacing FP8Linear write. bfloat16 if none."""
    counts: Counter = Counter()
    for module in model.modules():
        if not is_fp8_linear(module):
            for param in module.parameters(recurse=False):
                if param.dtype in OUT_DTYPES:
                    counts[param.dtype] += param.numel()
    return counts.most_common(1)[0][0] if counts else torch.bfloat16


def quantize_model(
    model: nn.Module,
    dtype: str = "fp8",
    activation: str = "dynamic",
    filter: Callable[[str, nn.Linear], bool] | None = None,
    backend: str = "auto",
    fuse: bool = True,
    accumulation: str = DEFAULT_ACCUMULATION,
    block_size: tuple[int, int] | None = None,
    fuse_producers: bool | str = False,
) -> QuantizationReport:
    """Replace, in place, every nn.Linear of `model` that `filter(name, module)` accepts (default:
    all but `lm_head`) by a W8A8Linear calling scaled_mm with `backend` and `accumulation`. Returns what was swapped and
    what was skipped, with reasons. `block_size=(block_n, block_k)` (fp8, dynamic) quantizes float
    weights per block, DeepSeek-style, instead of per output channel.

    transformers' fine-grained FP8Linear layers (a checkpoint with `quant_method: fp8` and
    `weight_block_size`, loaded by from_pretrained or load_fp8_pretrained) become block-scaled
    W8A8Linear sharing their fp8 weight and `weight_scale_inv`, nothing dequantized or requantized,
    writing the dtype most of the model's other float weights hold; the default filter includes an
    fp8 lm_head. Those the kernels cannot run (per-tensor, static activations, other block sizes)
    stay and are reported. With `fuse`, dynamic siblings named as in SIBLING_NAMES (q/k/v,
    gate/up) under one parent run as one scaled_mm within each forward of the parent (FusedSiblings):
    their outputs are then column views of one tensor (not contiguous), and their weight buffers
    views of one concatenated tensor (safetensors refuses shared storage: save with `torch.save`,
    or quantize with `fuse=False`).

    With `fuse_producers` (True or "triton": our kernels; "inductor": plain torch operations for
    torch.compile to fuse), the RMSNorms and SwiGLU activations of transformers' Llama-style decoder
    layers that feed dynamic layers quantize their output in the same kernel, and the layers skip
    their own quantization (nn/producers.py says how, and its limits).

    A Linear registered at several paths becomes one W8A8Linear at each of them; Linears that share
    one weight (tied) share one quantized weight. A weight tied to a module that stays in float (an
    embedding tied to an lm_head included by the filter) cannot stay tied: the report notes it."""
    qdtype = dtype_of(dtype)
    check_backend(backend)
    check_accumulation(accumulation)
    block_size = check_layer_block_size(block_size, qdtype, activation, backend)
    producers_impl = producer_impl(fuse_producers)
    if producers_impl and block_size is not None:
        raise ValueError(
            "fuse_producers quantizes per token; block_size layers quantize per 1 x block_k group: pass one of them"
        )
    if producers_impl and activation == "static":
        raise ValueError(
            "fuse_producers quantizes per token, for activation='dynamic'; static layers take one calibrated "
            "scale and no producer to fuse: pass one of them"
        )
    accept = filter or _default_filter
    fp8_out_dtype = _float_dtype(model)  # what FP8Linear replacements write, read before any swap
    report = QuantizationReport()
    float_holders: dict[int, list[str]] = {}  # the modules other than Linears holding each parameter, by its id
    for name, module in model.named_modules(remove_duplicate=False):
        for param in module.parameters(recurse=False):
            if type(module) is not nn.Linear:
                float_holders.setdefault(id(param), []).append(name)
    swapped: dict[int, tuple[str, W8A8Linear]] = {}  # by id of the original Linear
    by_weight: dict[int, tuple[str, W8A8Linear]] = {}  # by id of the original weight
    for name, module in list(model.named_modules(remove_duplicate=False)):
        fp8 = is_fp8_linear(module)
        if type(module) is not nn.Linear and not fp8:
            continue
        if fp8:
            reason = _fp8_skip_reason(name, module, accept, qdtype, backend)
        else:
            reason = _skip_reason(name, module, accept, filter is not None, qdtype)
        if reason is not None:
            report.skipped[name] = reason
            continue
        if id(module) in swapped:
            first_name, layer = swapped[id(module)]
            report.notes[name] = f"the same module as {first_name}: one W8A8Linear serves both"
        elif fp8:
            layer = W8A8Linear.from_block_fp8(
                module.weight, module.weight_scale_inv, module.bias, tuple(module.block_size), fp8_out_dtype, backend
            )
            swapped[id(module)] = (name, layer)
        else:
            layer = W8A8Linear.from_linear(
                module, dtype, activation, backend=backend, accumulation=accumulation, block_size=block_size
            )
            tied = by_weight.get(id(module.weight))
            if tied is not None:
                layer.weight, layer.weight_scale = tied[1].weight, tied[1].weight_scale
                report.notes[name] = f"its weight is tied to {tied[0]}'s: they share one quantized weight"
            else:
                by_weight[id(module.weight)] = (name, layer)
                if others := float_holders.get(id(module.weight)):
                    report.notes[name] = (
                        f"its weight is tied to {', '.join(others)}, which keep the float weight: the quantized "
                        "copy is separate (a change to one no longer reaches the other)"
                    )
            swapped[id(module)] = (name, layer)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        report.swapped.append(name)
    if fuse:
        report.fused = fuse_siblings(model)
    if producers_impl:
        report.producers = swap_producers(model, producers_impl)
    return report
