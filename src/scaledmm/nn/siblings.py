"""Sibling fusion: layers that read one input (q, k and v; gate and up) run as one scaled_mm.

quantize_model groups such siblings (SIBLING_NAMES, as transformers' decoders name them) into a
FusedSiblings, which the members' forwards ask for their columns of the shared product.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from scaledmm.api import quantize_per_token, quantize_per_token_group, scaled_mm
from scaledmm.nn.linear import PreparedForwards, QuantizedActivation, W8A8Linear
from scaledmm.runtime import eager, prepare_linear
from scaledmm.state import state


class _ForwardState(threading.local):
    """What one forward of the siblings' parent shares, per thread: whether it is running, and the
    product it made (its input, the input's version, how many members it served). Per thread, so
    that forwards of one model in several threads neither share products nor stop each other's
    fusion."""

    active = False
    source: torch.Tensor | None = None
    version = -1
    out: torch.Tensor | None = None
    served = 0

    def forget(self) -> None:
        self.source, self.version, self.out, self.served = None, -1, None, 0


class FusedSiblings:
    """One scaled_mm for sibling layers that read the same input (q, k, v; gate, up): the first of
    them to see an input computes the product with the concatenated weight (one quantization, one
    launch instead of two or three, and a shape the shipped files tune: llama3-8b's qkv is
    6144 x 4096), and each takes its columns.

    A product is shared only within one forward of the module that holds the siblings (hooks mark
    it, per thread), and only for the same input tensor object, unmodified since (its version
    counter). So a CUDA graph captured around that forward records the product, and nothing outlives
    the forward. If a product served just one member (siblings reading different inputs, as in
    cross-attention), the group stops fusing for good. Traced code and inference tensors (which have
    no version counter) run each member alone, as do calls of a member outside its parent's forward.

    The members' weights, scales and biases are views into the concatenated tensors, so no memory
    is added; after a `.to()` moved them apart, the first forward concatenates them again.
    Block-scaled members (each out_features a multiple of block_n, which fuse_siblings checks)
    concatenate their block scales by rows of blocks the same way.
    """

    def __init__(self, members: list[W8A8Linear]):
        self.members = members
        self.block_size = members[0].block_size
        self.spans: list[tuple[int, int]] = []  # each member's columns, in the order of `members`
        start = 0
        for member in members:
            self.spans.append((start, start + member.out_features))
            start += member.out_features
        self.enabled = True
        self._forward = _ForwardState()
        self._concatenate()

    def _member_storage(self) -> tuple:
        """What the concatenation was made from: every member tensor's storage and dtype, and the
        settings of every member. Any change (a `.to()`, a new buffer assigned, a changed backend)
        makes the next forward concatenate again."""
        tensors = [t for m in self.members for t in (m.weight, m.weight_scale, m.bias) if t is not None]
        return (
            tuple((t.data_ptr(), t.dtype) for t in tensors),
            tuple((m.qdtype, m.out_dtype, m.backend, m.accumulation, m.block_size) for m in self.members),
        )

    def _concatenate(self) -> None:
        """Concatenate the members' tensors and make each member's tensors views into them."""
        members = self.members
        self.weight = torch.cat([m.weight for m in members])
        self.weight_scale = torch.cat([m.weight_scale for m in members])
        self.bias = None if members[0].bias is None else torch.cat([m.bias for m in members])
        rows_per_scale = 1 if self.block_size is None else self.block_size[0]  # weight rows per scale row
        for member in members:
            start, end = self._span(member)
            member.weight = self.weight[start:end]
            member.weight_scale = self.weight_scale[start // rows_per_scale : end // rows_per_scale]
            if self.bias is not None:
                member.bias = self.bias[start:end]
        self._storage = self._member_storage()
        # Prepared products by input signature, valid for the cache generation; they hold the tensors above.
        self._forwards = PreparedForwards()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_forward"}  # per-thread, per-forward

    def __setstate__(self, pickled: dict) -> None:
        # Earlier versions kept the per-forward state in the object itself.
        old = ("active", "_source", "_version", "_out", "_served")
        self.__dict__.update((k, v) for k, v in pickled.items() if k not in old)
        self._forward = _ForwardState()
        if not isinstance(self.__dict__.get("_forwards"), PreparedForwards):  # pickled by an earlier version
            self._forwards = PreparedForwards()
        if isinstance(self.spans, dict):  # keyed by id() then: in the members' order
            self.spans = list(self.spans.values())
        self.__dict__.setdefault("block_size", None)  # pickled before block-scaled layers

    def _span(self, member: W8A8Linear) -> tuple[int, int]:
        # By identity, not id(): a copied or loaded model has new member objects. A plain loop, which
        # torch.compile traces.
        for m, span in zip(self.members, self.spans):
            if m is member:
                return span
        raise ValueError("not a member of this group")

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """The product of a 2-D x with the concatenated weight: eager, through a prepared forward per
        input signature, as W8A8Linear does; else through the functions."""
        first, blocks = self.members[0], self.block_size
        weight_scale = self.weight_scale if blocks is None else self.weight_scale.t()  # [K blocks, N blocks]
        if not eager(x):
            if blocks is None:
                q, scale = quantize_per_token(x, first.qdtype)
            else:
                q, scale = quantize_per_token_group(x, blocks[1])
            weight_t, out_dtype, backend = self.weight.t(), first.out_dtype, first.backend
            return scaled_mm(
                q, weight_t, scale, weight_scale, out_dtype, self.bias, backend=backend,
                accumulation=first.accumulation, block_size=blocks,
            )  # fmt: skip
        owner_state = (state.generation,)
        forward = self._forwards.get(x, owner_state)
        if forward is not None:
            return forward(x)
        out, forward = prepare_linear(
            x, self.weight.t(), weight_scale, self.bias, first.qdtype, None, first.out_dtype, first.backend,
            first.accumulation, blocks,
        )  # fmt: skip
        self._forwards.put(x, owner_state, forward)
        return out

    def _refresh(self) -> bool:
        """Concatenate again if a member's tensors moved (eager only: traced code cannot read data
        pointers); False, and fusion off for good, where the members no longer agree on how to run."""
        if torch.compiler.is_compiling() or not self.enabled:
            return self.enabled
        current = self._member_storage()
        if current != self._storage:
            if len(set(current[1])) > 1 or len({m.bias is None for m in self.members}) > 1:
                self.enabled = False
                return False
            self._concatenate()
        return True

    def product(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor | None:
        """All members' outputs for one input as one [M, sum of out_features] tensor (each member's
        columns in the order of `members`), or None where the members no longer run fused. For
        modules that take the group's product whole (nn/producers.py's SwiGLU MLP), eager or traced."""
        if not self._refresh():
            return None
        if isinstance(x, QuantizedActivation):
            return self._quantized_product(x)
        return self._product(x.reshape(-1, x.shape[-1]))

    def _quantized_product(self, x: QuantizedActivation) -> torch.Tensor:
        first = self.members[0]
        q, scale = x.rows()
        return scaled_mm(
            q, self.weight.t(), scale, self.weight_scale, first.out_dtype, self.bias, backend=first.backend,
            accumulation=first.accumulation,
        )  # fmt: skip

    def quantized_output_for(self, member: W8A8Linear, x: QuantizedActivation) -> torch.Tensor:
        """The member's columns of the group's product with an activation its producer quantized:
        made by the first member to ask and kept on `x` for the others, eager or traced."""
        if x.product_of is not self:
            if not self._refresh():
                q, scale = x.rows()
                return scaled_mm(
                    q, member.weight.t(), scale, member.weight_scale, member.out_dtype, member.bias,
                    backend=member.backend, accumulation=member.accumulation,
                )  # fmt: skip
            x.product, x.product_of = self._quantized_product(x), self
        start, end = self._span(member)
        return x.product[:, start:end]

    # Traced code runs each member alone on float inputs; the hooks and the per-thread state stay out of the trace.

    def begin(self, *_) -> None:
        """Forward pre-hook of the siblings' parent: products may be shared until `end`."""
        if torch.compiler.is_compiling():
            return
        self._forward.forget()
        self._forward.active = True

    def end(self, *_) -> None:
        """Forward hook of the siblings' parent (also on an exception): drop the product."""
        if torch.compiler.is_compiling():
            return
        forward = self._forward
        if forward.source is not None and forward.served < 2:
            self.enabled = False  # the last product served one member: siblings read different inputs
        forward.active = False
        forward.forget()

    def output_for(self, member: W8A8Linear, x: torch.Tensor) -> torch.Tensor | None:
        """The member's columns of the fused product for x ([M, out_features], M = x's rows), or
        None where the member must run alone."""
        if torch.compiler.is_compiling() or x.is_inference():
            return None
        forward = self._forward
        if not (self.enabled and forward.active):
            return None
        if x is not forward.source or x._version != forward.version:
            if forward.source is not None and forward.served < 2:
                self.enabled = False  # the last product served one member: siblings read different inputs
                forward.forget()
                return None
            if not self._refresh():  # the members no longer agree on how to run
                forward.forget()
                return None
            forward.out = self._product(x.reshape(-1, x.shape[-1]))
            forward.source, forward.version, forward.served = x, x._version, 0
        forward.served += 1
        start, end = self._span(member)
        return forward.out[:, start:end]


# Leaf names of linear layers that read one input in transformers' decoders (Llama, Qwen, Mistral...).
SIBLING_NAMES = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _fusion_settings(m: W8A8Linear) -> tuple:
    """What members must share to run as one product."""
    settings = (m.in_features, m.qdtype, m.out_dtype, m.backend, m.accumulation, m.block_size)
    return (*settings, m.bias is None, m.weight.device)


def fuse_siblings(model: nn.Module) -> list[list[str]]:
    """Group swapped dynamic layers named as SIBLING_NAMES under one parent into FusedSiblings."""
    groups = []
    for parent_name, parent in model.named_modules():
        for names in SIBLING_NAMES:
            members = [getattr(parent, n, None) for n in names]
            if not all(isinstance(m, W8A8Linear) and m.activation == "dynamic" and m.fused is None for m in members):
                continue
            if len({_fusion_settings(m) for m in members}) > 1:
                continue
            blocks = members[0].block_size
            if blocks is not None and any(m.out_features % blocks[0] for m in members):
                continue  # a member's last block of rows would straddle the next member's: its scales cannot join
            group = FusedSiblings(members)
            for member in members:
                member.fused = group
            parent.register_forward_pre_hook(group.begin)
            parent.register_forward_hook(group.end, always_call=True)
            groups.append([f"{parent_name}.{n}" if parent_name else n for n in names])
    return groups
