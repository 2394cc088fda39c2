"""quantize_model: swap a model's nn.Linear layers for W8A8Linear, and report what was done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from scaledmm.nn.linear import W8A8Linear, dtype_of
from scaledmm.nn.siblings import fuse_siblings


def _default_filter(name: str, linear: nn.Linear) -> bool:
    # The output projection to the vocabulary is commonly kept in high precision: its errors go
    # straight into the logits, and it runs once per token.
    return name.split(".")[-1] != "lm_head"


@dataclass
class QuantizationReport:
    """What quantize_model did: the names of the layers swapped, why others were not, and the
    groups of siblings that run as one scaled_mm."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    fused: list[list[str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"quantized {len(self.swapped)} linear layers, skipped {len(self.skipped)}; "
            f"{len(self.fused)} groups of siblings run fused"
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)


def quantize_model(
    model: nn.Module,
    dtype: str = "fp8",
    activation: str = "dynamic",
    filter: Callable[[str, nn.Linear], bool] | None = None,
    backend: str = "auto",
    fuse: bool = True,
) -> QuantizationReport:
    """Replace, in place, every nn.Linear of `model` that `filter(name, module)` accepts (default:
    all but `lm_head`) by a W8A8Linear calling scaled_mm with `backend`. Returns what was swapped and
    what was skipped, with reasons. With `fuse`, dynamic siblings named as in SIBLING_NAMES (q/k/v,
    gate/up) under one parent run as one scaled_mm within each forward of the parent (FusedSiblings):
    their outputs are then column views of one tensor (not contiguous), and their weight buffers
    views of one concatenated tensor (safetensors refuses shared storage: save with `torch.save`,
    or quantize with `fuse=False`)."""
    qdtype = dtype_of(dtype)
    accept = filter or _default_filter
    report = QuantizationReport()
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        reason = None
        if not accept(name, module):
            reason = (
                "excluded by the filter" if filter else "lm_head is kept in high precision (pass filter= to include it)"
            )
        elif not module.weight.is_floating_point() or module.weight.device.type == "meta":
            reason = f"weight is {module.weight.dtype} on {module.weight.device}; needs a float weight with data"
        elif (
            qdtype != torch.int8
            and module.weight.is_cuda
            and torch.cuda.get_device_capability(module.weight.device) < (8, 9)
        ):
            reason = "fp8 needs compute capability 8.9 or newer; use dtype='int8'"
        if reason:
            report.skipped[name] = reason
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, W8A8Linear.from_linear(module, dtype, activation, backend=backend))
        report.swapped.append(name)
    if fuse:
        report.fused = fuse_siblings(model)
    return report
