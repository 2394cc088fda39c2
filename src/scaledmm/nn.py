"""Layers and model quantization: W8A8Linear, and quantize_model that swaps a model's nn.Linear.

A W8A8Linear holds its weight quantized once (int8 or fp8, per output channel) and, per forward,
quantizes the activation (dynamic per token, or static with a calibrated scale) and calls
scaled_mm with the bias fused into the epilogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from scaledmm.api import (
    OUT_DTYPES,
    _eager,
    _tensor_signature,
    prepare_quantized_linear,
    prepared_generation,
    quantize_per_tensor,
    quantize_per_token,
    scaled_mm,
)
from scaledmm.configs.files import DTYPE_BY_NAME
from scaledmm.kernels.quant import ABSMAX_FLOOR, QMAX

ACTIVATIONS = ("dynamic", "static")


def _dtype_of(name: str) -> torch.dtype:
    if name not in DTYPE_BY_NAME:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPE_BY_NAME))}, got {name!r}")
    return DTYPE_BY_NAME[name]


def quantize_weight(
    weight: torch.Tensor, dtype: torch.dtype, per_channel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """A float [N, K] weight -> (q [N, K] of `dtype`, float32 scale [N] or 0-d), weight ~= q * scale.

    Scale = max |row| (or |weight|) / 127 or / 448; values rounded to nearest even and saturated.
    Runs once per layer, in torch, on any device.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor, got {weight.dtype} of shape {list(weight.shape)}")
    qmax = QMAX[dtype]
    w = weight.detach().to(torch.float32)
    absmax = w.abs().amax(dim=1) if per_channel else w.abs().amax()
    scale = absmax.clamp_min(ABSMAX_FLOOR) / qmax
    values = (w / (scale[:, None] if per_channel else scale)).clamp(-qmax, qmax)
    if dtype == torch.int8:
        values = values.round()
    return values.to(dtype), scale


class W8A8Linear(nn.Module):
    """y = x @ W.t() + b with W stored in 8 bits and x quantized to 8 bits on the fly.

    Buffers: `weight` [N, K] (int8 or float8_e4m3fn), `weight_scale` [N] float32, `bias` [N] or None
    (kept in the original layer's dtype), and for static activations `input_scale` (0-d float32).
    `fused`: the FusedSiblings group the layer belongs to (quantize_model groups q/k/v and
    gate/up), or None.

    Eager forwards keep, per input signature (dtype, shape, strides, device, alignment), the
    prepared launches that compute them (api.prepare_quantized_linear): a repeated input shape costs
    two allocations and two launches of host time, or one of each for a few rows. Each is kept with
    the layer's state it was made from (`_state_key`) and used only while that state holds, however
    the state changed (assignment, `.to()`, `.data`, torch.func.functional_call, clear_cache());
    in-place changes of the buffers' values need nothing.
    """

    fused: FusedSiblings | None = None
    PREPARED_FORWARDS_LIMIT = 64  # input signatures kept per layer; the cache starts over beyond it

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: str = "fp8",
        activation: str = "dynamic",
        device=None,
        out_dtype: torch.dtype = torch.bfloat16,
        backend: str = "auto",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'dynamic' or 'static', got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.qdtype = _dtype_of(dtype)
        self.activation = activation
        self.backend = backend  # scaled_mm's backend: "auto", "triton", or "torch" (the vendor kernel)
        self.out_dtype = out_dtype if out_dtype in OUT_DTYPES else torch.bfloat16
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device).to(self.qdtype))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device, dtype=self.out_dtype) if bias else None)
        self.register_buffer("input_scale", torch.ones((), device=device) if activation == "static" else None)
        self._forwards: dict[tuple, tuple[tuple, Callable[[torch.Tensor], torch.Tensor]]] = {}

    def __getstate__(self) -> dict:
        # Prepared forwards are closures over this layer's tensors: never pickled, never shared by a copy.
        return {**self.__dict__, "_forwards": {}}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_forwards", {})  # pickled by a version without prepared forwards

    def _state_key(self) -> tuple:
        """What a prepared forward depends on besides its input: the state tensors (which objects,
        and where their data is: a `.data` swap moves it), the settings, and the generation of
        scaledmm's caches. Read from `_buffers` directly: the per-call cost is about 1 us."""
        buffers = self._buffers
        w, ws = buffers.get("weight"), buffers.get("weight_scale")
        bias, s = buffers.get("bias"), buffers.get("input_scale")
        return (
            prepared_generation[0], self.qdtype, self.activation, self.out_dtype, self.backend,
            id(w), id(ws), id(bias), id(s),
            w.data_ptr() if w is not None else 0,
            ws.data_ptr() if ws is not None else 0,
            bias.data_ptr() if bias is not None else 0,
            s.data_ptr() if s is not None else 0,
        )  # fmt: skip

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        dtype: str = "fp8",
        activation: str = "dynamic",
        input_scale: float | torch.Tensor | None = None,
        backend: str = "auto",
    ) -> W8A8Linear:
        """Quantize an nn.Linear. Static activations need `input_scale` (x ~= q * input_scale), or a
        `calibrate(x)` call on representative inputs before use."""
        weight = linear.weight
        out_dtype = weight.dtype if weight.dtype in OUT_DTYPES else torch.bfloat16
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            dtype,
            activation,
            device=weight.device,
            out_dtype=out_dtype,
            backend=backend,
        )
        q, scale = quantize_weight(weight, layer.qdtype)
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        if activation == "static" and input_scale is not None:
            layer.input_scale.fill_(float(input_scale))
        return layer

    def _apply(self, fn, recurse=True):
        """`.to()`, `.half()`, `.cuda()` and the like move the layer, but a dtype cast must not turn
        the 8-bit weight or the float32 scales into another format: the weight is cast back (exact,
        since every 8-bit value is representable in fp16, bf16 and fp32), the scales keep float32,
        and the output dtype follows the cast."""
        scales = {name: getattr(self, name) for name in ("weight_scale", "input_scale")}
        super()._apply(fn, recurse)
        if self.weight.dtype != self.qdtype:
            self.weight = self.weight.to(self.qdtype)
        for name, before in scales.items():
            after = getattr(self, name)
            if before is not None and after.dtype != before.dtype:
                setattr(self, name, before.to(after.device))  # the float32 original, moved: no rounding
        out_dtype = fn(torch.empty(0, dtype=self.out_dtype)).dtype
        if out_dtype in OUT_DTYPES:
            self.out_dtype = out_dtype
        return self

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set the static input scale from a batch of representative inputs: max |x| / 127 or / 448."""
        if self.activation != "static":
            raise ValueError("calibrate() is for activation='static'; dynamic layers scale every token")
        absmax = x.detach().abs().amax().to(torch.float32).clamp_min(ABSMAX_FLOOR)
        self.input_scale.copy_(absmax / QMAX[self.qdtype])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is None and _eager(x):
            state = self._state_key()
            prepared = self._forwards.get(_tensor_signature(x))
            if prepared is not None and prepared[0] == state:
                return prepared[1](x)
            if _eager(self.weight, self.weight_scale, self.bias, self.input_scale):
                return self._prepare_forward(x, state)
        lead, K = x.shape[:-1], x.shape[-1]
        if self.fused is not None and (out := self.fused.output_for(self, x)) is not None:
            return out.reshape(*lead, self.out_features)
        if self.activation == "static":
            q, scale = quantize_per_tensor(x, self.input_scale, self.qdtype), self.input_scale
        else:
            q, scale = quantize_per_token(x, self.qdtype)
            scale = scale.reshape(-1, 1)
        q = q.reshape(-1, K)
        out = scaled_mm(q, self.weight.t(), scale, self.weight_scale, self.out_dtype, self.bias, backend=self.backend)
        return out.reshape(*lead, self.out_features)

    def _prepare_forward(self, x: torch.Tensor, state: tuple) -> torch.Tensor:
        out, forward = prepare_quantized_linear(
            x,
            self.weight.t(),
            self.weight_scale,
            self.bias,
            self.qdtype,
            self.input_scale if self.activation == "static" else None,
            self.out_dtype,
            self.backend,
        )
        if len(self._forwards) >= self.PREPARED_FORWARDS_LIMIT:
            self._forwards.clear()
        self._forwards[_tensor_signature(x)] = (state, forward)
        return out

    def extra_repr(self) -> str:
        dtype = "int8" if self.qdtype == torch.int8 else "fp8"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"dtype={dtype}, activation={self.activation}, out_dtype={self.out_dtype}, backend={self.backend}"
        )


class FusedSiblings:
    """One scaled_mm for sibling layers that read the same input (q, k, v; gate, up): the first of
    them to see an input computes the product with the concatenated weight (one quantization, one
    launch instead of two or three, and a shape the shipped files tune: llama3-8b's qkv is
    6144 x 4096), and each takes its columns.

    A product is shared only within one forward of the module that holds the siblings (hooks set
    `active` around it), and only for the same input tensor object, unmodified since (its version
    counter). So a CUDA graph captured around that forward records the product, and nothing outlives
    the forward. If a product served just one member (siblings reading different inputs, as in
    cross-attention), the group stops fusing for good. Traced code and inference tensors (which have
    no version counter) run each member alone, as do calls of a member outside its parent's forward.

    The members' weights, scales and biases are views into the concatenated tensors, so no memory
    is added; after a `.to()` moved them apart, the first forward concatenates them again.
    """

    def __init__(self, members: list[W8A8Linear]):
        self.members = members
        self.spans: list[tuple[int, int]] = []  # each member's columns, in the order of `members`
        start = 0
        for member in members:
            self.spans.append((start, start + member.out_features))
            start += member.out_features
        self.enabled = True
        self.active = False
        self._concatenate()
        self._forget()

    def _member_storage(self) -> tuple:
        """What the concatenation was made from: every member tensor's storage and dtype, and the
        settings of every member. Any change (a `.to()`, a new buffer assigned, a changed backend)
        makes the next forward concatenate again."""
        tensors = [t for m in self.members for t in (m.weight, m.weight_scale, m.bias) if t is not None]
        return (
            tuple((t.data_ptr(), t.dtype) for t in tensors),
            tuple((m.qdtype, m.out_dtype, m.backend) for m in self.members),
        )

    def _concatenate(self) -> None:
        """Concatenate the members' tensors and make each member's tensors views into them."""
        members = self.members
        self.weight = torch.cat([m.weight for m in members])
        self.weight_scale = torch.cat([m.weight_scale for m in members])
        self.bias = None if members[0].bias is None else torch.cat([m.bias for m in members])
        for member in members:
            start, end = self._span(member)
            member.weight = self.weight[start:end]
            member.weight_scale = self.weight_scale[start:end]
            if self.bias is not None:
                member.bias = self.bias[start:end]
        self._storage = self._member_storage()
        # Prepared products by (input signature, cache generation); they hold the tensors above.
        self._forwards: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_forwards": {}}  # closures: never pickled, never shared by a copy

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_forwards", {})  # pickled by an earlier version
        if isinstance(self.spans, dict):  # keyed by id() then: in the members' order
            self.spans = list(self.spans.values())

    def _span(self, member: W8A8Linear) -> tuple[int, int]:
        # By identity, not id(): a copied or loaded model has new member objects.
        return next(span for m, span in zip(self.members, self.spans) if m is member)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """The product of a 2-D x with the concatenated weight: eager, through a prepared forward per
        input signature, as W8A8Linear does; else through the functions."""
        first = self.members[0]
        if not _eager(x):
            q, scale = quantize_per_token(x, first.qdtype)
            weight_t, out_dtype, backend = self.weight.t(), first.out_dtype, first.backend
            return scaled_mm(q, weight_t, scale, self.weight_scale, out_dtype, self.bias, backend=backend)
        key = (_tensor_signature(x), prepared_generation[0])
        forward = self._forwards.get(key)
        if forward is not None:
            return forward(x)
        out, forward = prepare_quantized_linear(
            x, self.weight.t(), self.weight_scale, self.bias, first.qdtype, None, first.out_dtype, first.backend
        )
        if len(self._forwards) >= W8A8Linear.PREPARED_FORWARDS_LIMIT:
            self._forwards.clear()
        self._forwards[key] = forward
        return out

    def _forget(self) -> None:
        self._source: torch.Tensor | None = None
        self._version = -1
        self._out: torch.Tensor | None = None
        self._served = 0

    def begin(self, *_) -> None:
        """Forward pre-hook of the siblings' parent: products may be shared until `end`."""
        self._forget()
        self.active = True

    def end(self, *_) -> None:
        """Forward hook of the siblings' parent (also on an exception): drop the product."""
        if self._source is not None and self._served < 2:
            self.enabled = False  # the last product served one member: siblings read different inputs
        self.active = False
        self._forget()

    def output_for(self, member: W8A8Linear, x: torch.Tensor) -> torch.Tensor | None:
        """The member's columns of the fused product for x ([M, out_features], M = x's rows), or
        None where the member must run alone."""
        if not (self.enabled and self.active) or torch.compiler.is_compiling() or x.is_inference():
            return None
        if x is not self._source or x._version != self._version:
            if self._source is not None and self._served < 2:
                self.enabled = False  # the last product served one member: siblings read different inputs
                self._forget()
                return None
            current = self._member_storage()
            if current != self._storage:
                if len(set(current[1])) > 1 or len({m.bias is None for m in self.members}) > 1:
                    self.enabled = False  # the members no longer agree on how to run
                    self._forget()
                    return None
                self._concatenate()
            self._out = self._product(x.reshape(-1, x.shape[-1]))
            self._source, self._version, self._served = x, x._version, 0
        self._served += 1
        start, end = self._span(member)
        return self._out[:, start:end]


# Leaf names of linear layers that read one input in transformers' decoders (Llama, Qwen, Mistral...).
SIBLING_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fuse_siblings(model: nn.Module) -> list[list[str]]:
    """Group swapped dynamic layers named as SIBLING_NAMES under one parent into FusedSiblings."""
    groups = []
    for parent_name, parent in model.named_modules():
        for names in SIBLING_NAMES:
            members = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, W8A8Linear) and m.activation == "dynamic" and m.fused is None for m in members):
                continue
            settings = {
                (m.in_features, m.qdtype, m.out_dtype, m.backend, m.bias is None, m.weight.device) for m in members
            }
            if len(settings) > 1:
                continue
            group = FusedSiblings(members)
            for member in members:
                member.fused = group
            parent.register_forward_pre_hook(group.begin)
            parent.register_forward_hook(group.end, always_call=True)
            groups.append([f"{parent_name}.{n}" if parent_name else n for n in names])
    return groups


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
    qdtype = _dtype_of(dtype)
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
        report.fused = _fuse_siblings(model)
    return report
