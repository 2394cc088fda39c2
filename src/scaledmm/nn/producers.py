"""Fused producers: the kernel that makes a W8A8 linear's input also quantizes it.

In a transformers decoder layer (Llama, Qwen2/3, Mistral: `input_layernorm` -> `self_attn` (q, k, v
read its output), `post_attention_layernorm` -> `mlp` (gate, up read its output; down reads
silu(gate) * up)) every W8A8Linear would quantize its input in a kernel of its own. With
`quantize_model(..., fuse_producers=...)` instead:

- each RMSNorm before q/k/v and before gate/up becomes an RMSNormQuantize, which returns a
  QuantizedActivation (q, per-token scale) rather than a float tensor; transformers' attention only
  reads its `.shape` and hands it to q_proj, k_proj and v_proj;
- each MLP becomes a SwiGLUQuantizedMLP: gate/up as one product, then silu(gate) * up quantized in
  one kernel, into down_proj.

Two implementations, chosen by `impl`:

- "triton": our kernels (kernels/producers.py) as opaque custom ops, eager and compiled; their bits
  equal the float producer followed by quantize_per_token in the same arithmetic;
- "inductor": the same arithmetic written as plain torch operations, for torch.compile's Inductor to
  fuse with what surrounds it (the residual add before a norm, for instance). Eager, it runs as many
  small kernels: use it compiled.

Limits: only dynamic per-token layers (a static scale needs no per-token pass, nor a fused
producer; block-scaled layers quantize per 1 x block_k group); the norm's weight must have the
layer's dtype; the attention's output projection (o_proj) still quantizes its input itself (its
producer is the attention kernel). A module that
reads a swapped norm's output other than through `.shape` and W8A8Linear layers (a forward hook that
expects a tensor, output_hidden_states of a norm) sees the QuantizedActivation.
"""

from __future__ import annotations

import torch
from torch import nn

from scaledmm.api import rms_norm_quantize, silu_mul_quantize
from scaledmm.kernels.quant import ABSMAX_FLOOR, QMAX
from scaledmm.nn.linear import QuantizedActivation, W8A8Linear

IMPLEMENTATIONS = ("triton", "inductor")


# ----------------------------------------------------------------------------- the Inductor route: plain torch


def quantize_per_token_torch(y: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_per_token's arithmetic in torch operations (for Inductor to fuse with y's producer):
    scale = max(max |row|, floor) / QMAX in fp32, values divided, saturated, rounded to nearest even."""
    qmax = QMAX[dtype]
    y = y.float()
    scale = y.abs().amax(dim=-1, keepdim=True).clamp_min(ABSMAX_FLOOR) / qmax
    values = (y / scale).clamp(-qmax, qmax)
    if dtype == torch.int8:
        values = values.round()
    return values.to(dtype), scale


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm.forward."""
    x32 = x.float()
    normalized = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normalized.to(x.dtype)


def silu_mul_torch(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """A SwiGLU MLP's `act_fn(gate_proj(x)) * up_proj(x)`."""
    return nn.functional.silu(gate) * up


# ----------------------------------------------------------------------------- modules


class RMSNormQuantize(nn.Module):
    """An RMSNorm (transformers' LlamaRMSNorm and its copies) whose output is quantized per token for
    the W8A8Linear layers that read it: returns a QuantizedActivation. Keeps the norm's `weight`
    parameter and `variance_epsilon`, so checkpoints load as before."""

    def __init__(self, norm: nn.Module, dtype: torch.dtype, impl: str = "triton"):
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = float(norm.variance_epsilon)
        self.qdtype = dtype
        self.impl = impl

    def forward(self, x: torch.Tensor) -> QuantizedActivation:
        if self.impl == "triton":
            return QuantizedActivation(*rms_norm_quantize(x, self.weight, self.variance_epsilon, self.qdtype))
        normalized = rms_norm_torch(x, self.weight, self.variance_epsilon)
        return QuantizedActivation(*quantize_per_token_torch(normalized, self.qdtype))

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, quantize to {self.qdtype} ({self.impl})"


class SwiGLUQuantizedMLP(nn.Module):
    """A SwiGLU MLP (down(silu(gate(x)) * up(x)), transformers' LlamaMLP and its copies) whose
    activation is quantized per token as it is made, for down_proj. Keeps the three W8A8Linear layers
    under their names. x may be a float activation or a QuantizedActivation from the norm before."""

    def __init__(self, mlp: nn.Module, impl: str = "triton"):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.impl = impl

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        lead, intermediate = x.shape[:-1], self.gate_proj.out_features
        group = self.gate_proj.fused
        both = group.product(x) if group is not None and group.members[0] is self.gate_proj else None
        if both is not None:
            gate, up = both[:, :intermediate], both[:, intermediate:]
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
            gate, up = gate.reshape(-1, intermediate), up.reshape(-1, intermediate)
        dtype = self.down_proj.qdtype
        if self.impl == "triton":
            activation = QuantizedActivation(*silu_mul_quantize(gate, up, dtype))
        else:
            activation = QuantizedActivation(*quantize_per_token_torch(silu_mul_torch(gate, up), dtype))
        return self.down_proj(activation).reshape(*lead, self.down_proj.out_features)

    def extra_repr(self) -> str:
        return f"silu(gate) * up quantized per token to {self.down_proj.qdtype} ({self.impl})"


# ----------------------------------------------------------------------------- the swap


def _dynamic_layers(*layers: object) -> torch.dtype | None:
    """The 8-bit dtype shared by dynamic per-token W8A8Linear layers, or None if they are not all such
    (block-scaled layers, those of a fine-grained FP8 checkpoint included, quantize per group)."""
    if not all(isinstance(m, W8A8Linear) and m.activation == "dynamic" and m.block_size is None for m in layers):
        return None
    dtypes = {m.qdtype for m in layers}
    return dtypes.pop() if len(dtypes) == 1 else None


def _is_rms_norm(norm: object, out_dtype: torch.dtype) -> bool:
    return (
        isinstance(norm, nn.Module)
        and type(norm).__name__.endswith("RMSNorm")
        and isinstance(getattr(norm, "weight", None), torch.Tensor)
        and norm.weight.dim() == 1
        and norm.weight.dtype == out_dtype
        and isinstance(getattr(norm, "variance_epsilon", None), float)
    )


def _is_swiglu(mlp: object) -> bool:
    act = getattr(mlp, "act_fn", None)
    return (
        isinstance(mlp, nn.Module)
        and type(mlp).__name__.endswith("MLP")
        and type(act).__name__ in ("SiLUActivation", "SiLU")
        and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
    )


def producer_impl(fuse_producers: object) -> str | None:
    """quantize_model's `fuse_producers` as the implementation it asks for: None for False (or None),
    "triton" for True or "triton", "inductor"; ValueError for anything else."""
    if fuse_producers is None or fuse_producers is False:
        return None
    impl = "triton" if fuse_producers is True else fuse_producers
    if not isinstance(impl, str) or impl not in IMPLEMENTATIONS:
        raise ValueError(f"fuse_producers must be False, True, 'triton' or 'inductor', got {fuse_producers!r}")
    return impl


def fuse_producers(model: nn.Module, impl: str | bool = "triton") -> list[str]:
    """Swap, in every decoder layer of `model` laid out as transformers' Llama-style layers, the norms
    and MLPs that feed dynamic per-token W8A8Linear layers for their quantizing versions (module
    docstring); `impl` as quantize_model's `fuse_producers`. Returns the names of the modules swapped."""
    impl = producer_impl(impl)
    if impl is None:
        return []
    swapped = []
    for name, layer in list(model.named_modules()):
        prefix = f"{name}." if name else ""
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        norm = getattr(layer, "input_layernorm", None)
        qkv = [getattr(attn, n, None) for n in ("q_proj", "k_proj", "v_proj")]
        dtype = _dynamic_layers(*qkv)
        if dtype is not None and _is_rms_norm(norm, qkv[0].out_dtype):
            layer.input_layernorm = RMSNormQuantize(norm, dtype, impl)
            swapped.append(prefix + "input_layernorm")
        if not _is_swiglu(mlp):
            continue
        dtype = _dynamic_layers(mlp.gate_proj, mlp.up_proj)
        if dtype is None or _dynamic_layers(mlp.down_proj) is None:
            continue
        layer.mlp = SwiGLUQuantizedMLP(mlp, impl)
        swapped.append(prefix + "mlp")
        norm = getattr(layer, "post_attention_layernorm", None)
        if _is_rms_norm(norm, mlp.gate_proj.out_dtype):
            layer.post_attention_layernorm = RMSNormQuantize(norm, dtype, impl)
            swapped.append(prefix + "post_attention_layernorm")
    return swapped
