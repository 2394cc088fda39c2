"""W8A8Linear: a linear layer with its weight stored in 8 bits and its input quantized on the fly.

A W8A8Linear holds its weight quantized once (int8 or fp8, per output channel; or fp8 per
block_n x block_k block, DeepSeek-style "fine-grained FP8") and, per forward, quantizes the
activation (dynamic per token, static with a calibrated scale, or dynamic per 1 x block_k group for
block-scaled layers) and calls scaled_mm with the bias fused into the epilogue. Eager forwards run prepared calls
(runtime.PreparedLinear) kept per input signature in a PreparedForwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from scaledmm.api import quantize_per_tensor, quantize_per_token, quantize_per_token_group, scaled_mm
from scaledmm.checks import (
    DEFAULT_ACCUMULATION,
    OUT_DTYPES,
    check_accumulation,
    check_backend,
    check_block_size,
    check_layer_block_size,
    check_quantize_args,
    check_tensor,
)
from scaledmm.configs.files import DTYPE_BY_NAME
from scaledmm.kernels.quant import ABSMAX_FLOOR, QMAX
from scaledmm.runtime import eager, prepare_linear, tensor_signature
from scaledmm.state import state

if TYPE_CHECKING:
    from scaledmm.nn.siblings import FusedSiblings

ACTIVATIONS = ("dynamic", "static")


def dtype_of(name: str) -> torch.dtype:
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


def quantize_weight_blocks(
    weight: torch.Tensor, block_size: tuple[int, int] = (128, 128)
) -> tuple[torch.Tensor, torch.Tensor]:
    """A float [N, K] weight -> (q [N, K] float8_e4m3fn, float32 scale [ceil(N / block_n), ceil(K /
    block_k)]), weight ~= q * scale block by block: the "fine-grained FP8" of DeepSeek-V3 and
    transformers (whose checkpoints call the scale `weight_scale_inv`). Scale = max |block| / 448
    (the last blocks of a ragged N or K are partial); values rounded to nearest even. Runs once per
    layer, in torch, on any device."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"weight must be a 2-D float tensor, got {getattr(weight, 'dtype', type(weight))}")
    block_n, block_k = check_block_size(block_size)
    N, K = weight.shape
    blocks_n, blocks_k = -(-N // block_n), -(-K // block_k)
    padding = (0, blocks_k * block_k - K, 0, blocks_n * block_n - N)  # zeros: they change no block's max
    padded = nn.functional.pad(weight.detach().to(torch.float32), padding)
    blocks = padded.view(blocks_n, block_n, blocks_k, block_k)
    qmax = QMAX[torch.float8_e4m3fn]
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(ABSMAX_FLOOR) / qmax
    values = (blocks / scale[:, None, :, None]).clamp(-qmax, qmax).view(padded.shape)[:N, :K]
    return values.to(torch.float8_e4m3fn), scale


def _weight_scale_shape(out_features: int, in_features: int, block_size: tuple[int, int] | None) -> tuple[int, ...]:
    """[N] per channel, or [ceil(N / block_n), ceil(K / block_k)] per block."""
    if block_size is None:
        return (out_features,)
    return (-(-out_features // block_size[0]), -(-in_features // block_size[1]))


class QuantizedActivation:
    """An activation already quantized per token by the kernel that made it (a fused producer:
    nn/producers.py): `q` [..., K] int8 or float8_e4m3fn and `scale` [..., 1] float32, x ~= q * scale.

    W8A8Linear layers of the same dtype take it in place of a float input and skip their own
    quantization. `shape` is the activation's, so code between the producer and the layers that only
    reads the shape (transformers' attention: `hidden_states.shape[:-1]`) passes it on unchanged.
    `product` and `product_of` keep the product of a FusedSiblings group with it, so that its
    members (q, k, v) share one scaled_mm, eagerly and in traced code alike: the object is made
    fresh by each producer call and read by the layers of one forward.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        self.q = q
        self.scale = scale
        self.product: torch.Tensor | None = None
        self.product_of: object = None

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [M, K], scale [M, 1]): scaled_mm's `a` and per-token `scale_a`."""
        K = self.q.shape[-1]
        return self.q.reshape(-1, K), self.scale.reshape(-1, 1)

    def __repr__(self) -> str:
        return f"QuantizedActivation(shape={list(self.q.shape)}, dtype={self.q.dtype})"


class PreparedForwards:
    """Prepared forwards of one layer (or one FusedSiblings group), by input signature, each kept with
    the owner's state it was made from and used only while that state holds. Never pickled or
    copied: a copy of the owner prepares its own."""

    LIMIT = 64  # input signatures kept; the cache starts over beyond it

    def __init__(self) -> None:
        self._by_signature: dict[tuple, tuple[tuple, Callable[[torch.Tensor], torch.Tensor]]] = {}

    def __reduce__(self):
        return (PreparedForwards, ())

    def __len__(self) -> int:
        return len(self._by_signature)

    def summary(self) -> str:
        """What the prepared forwards run, for the owner's repr: ", runs: [M=16: ..., M=512: ...]"."""
        if not self._by_signature:
            return ""
        runs = [f"{forward.describe()}" for _, forward in self._by_signature.values() if hasattr(forward, "describe")]
        return f", runs: [{', '.join(runs)}]" if runs else ""

    def get(self, x: torch.Tensor, owner_state: tuple) -> Callable[[torch.Tensor], torch.Tensor] | None:
        entry = self._by_signature.get(tensor_signature(x))
        return entry[1] if entry is not None and entry[0] == owner_state else None

    def put(self, x: torch.Tensor, owner_state: tuple, forward: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if len(self._by_signature) >= self.LIMIT:
            self._by_signature.clear()
        self._by_signature[tensor_signature(x)] = (owner_state, forward)


class W8A8Linear(nn.Module):
    """y = x @ W.t() + b with W stored in 8 bits and x quantized to 8 bits on the fly.

    Buffers: `weight` [N, K] (int8 or float8_e4m3fn), `weight_scale` [N] float32, `bias` [N] or None
    (kept in the original layer's dtype), and for static activations `input_scale` (0-d float32).

    With `block_size=(block_n, block_k)` (fp8, dynamic activations only) the weight is block-scaled:
    `weight_scale` is [ceil(N / block_n), ceil(K / block_k)], one float32 scale per block (a
    transformers checkpoint's `weight_scale_inv`: weight ~= q * scale), and each forward quantizes x
    per 1 x block_k group (quantize_per_token_group) and runs scaled_mm with `block_size`.
    `fused`: the FusedSiblings group the layer belongs to (quantize_model groups q/k/v and
    gate/up), or None.

    Eager forwards keep, per input signature (dtype, shape, strides, device, alignment), the
    prepared call that computes them (runtime.PreparedLinear): a repeated input shape costs
    two allocations and two launches of host time, or one of each for a few rows. Each is kept with
    the layer's state it was made from (`_state_key`) and used only while that state holds, however
    the state changed (assignment, `.to()`, `.data`, torch.func.functional_call, clear_cache());
    in-place changes of the buffers' values need nothing.
    """

    fused: FusedSiblings | None = None

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
        accumulation: str = DEFAULT_ACCUMULATION,
        block_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        check_backend(backend)
        check_accumulation(accumulation)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'dynamic' or 'static', got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.qdtype = dtype_of(dtype)
        # (block_n, block_k) of a block-scaled weight, or None: per-channel scales
        self.block_size = check_layer_block_size(block_size, self.qdtype, activation, backend)
        self.activation = activation
        self.backend = backend  # scaled_mm's backend: "auto", "triton", or "torch" (the vendor kernel)
        self.accumulation = accumulation  # scaled_mm's fp8 accumulation: "fast" or "precise"
        if out_dtype not in OUT_DTYPES:
            names = ", ".join(map(str, OUT_DTYPES))
            raise TypeError(f"out_dtype must be one of {names} (what scaled_mm writes), got {out_dtype!r}")
        self.out_dtype = out_dtype
        self.register_buffer("weight", torch.zeros(out_features, in_features, device=device).to(self.qdtype))
        scale_shape = _weight_scale_shape(out_features, in_features, self.block_size)
        self.register_buffer("weight_scale", torch.ones(scale_shape, device=device))
        self.register_buffer("bias", torch.zeros(out_features, device=device, dtype=self.out_dtype) if bias else None)
        # A static scale starts as NaN, "not calibrated": a forward before calibrate() or input_scale=
        # is refused where it can be checked (an eager first call) and gives NaN everywhere else,
        # never a silently wrong result with some default scale.
        nan = torch.full((), float("nan"), device=device)
        self.register_buffer("input_scale", nan if activation == "static" else None)
        self._forwards = PreparedForwards()

    def __setstate__(self, pickled: dict) -> None:
        super().__setstate__(pickled)
        self.__dict__.setdefault("accumulation", "fast")  # pickled before the choice existed: what ran then
        self.__dict__.setdefault("block_size", None)  # pickled before block-scaled layers: per channel
        # Pickled by an earlier version: no prepared forwards, or a plain dict of them.
        if not isinstance(self.__dict__.get("_forwards"), PreparedForwards):
            self._forwards = PreparedForwards()

    def _state_key(self) -> tuple:
        """What a prepared forward depends on besides its input: the state tensors (which objects,
        and where their data is: a `.data` swap moves it), the settings, and the generation of
        scaledmm's caches. Read from `_buffers` directly: the per-call cost is about 1 us."""
        buffers = self._buffers
        w, ws = buffers.get("weight"), buffers.get("weight_scale")
        bias, s = buffers.get("bias"), buffers.get("input_scale")
        return (
            state.generation, self.qdtype, self.activation, self.out_dtype, self.backend, self.accumulation,
            self.block_size, id(w), id(ws), id(bias), id(s),
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
        accumulation: str = DEFAULT_ACCUMULATION,
        block_size: tuple[int, int] | None = None,
    ) -> W8A8Linear:
        """Quantize an nn.Linear. Static activations need `input_scale` (x ~= q * input_scale), or a
        `calibrate(x)` call on representative inputs before use. The output dtype is the weight's
        (bfloat16, float16 or float32; a float64 layer is refused: scaled_mm does not write float64).
        `block_size=(block_n, block_k)` (fp8, dynamic only) quantizes the weight per block
        (quantize_weight_blocks) instead of per output channel."""
        weight = linear.weight
        if weight.dtype not in OUT_DTYPES:
            raise TypeError(
                f"linear.weight is {weight.dtype}; W8A8Linear runs layers of {', '.join(map(str, OUT_DTYPES))}: "
                "cast the model (e.g. model.float() or model.bfloat16()) before quantizing"
            )
        out_dtype = weight.dtype
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            dtype,
            activation,
            device=weight.device,
            out_dtype=out_dtype,
            backend=backend,
            accumulation=accumulation,
            block_size=block_size,
        )
        if block_size is not None and input_scale is not None:
            raise ValueError("input_scale is for static activations; block-scaled layers scale each group per call")
        if layer.block_size is None:
            q, scale = quantize_weight(weight, layer.qdtype)
        else:
            q, scale = quantize_weight_blocks(weight, layer.block_size)
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        if activation == "static" and input_scale is not None:
            layer.input_scale.fill_(float(input_scale))
        return layer

    @classmethod
    def from_block_fp8(
        cls,
        weight: torch.Tensor,
        weight_scale_inv: torch.Tensor,
        bias: torch.Tensor | None = None,
        block_size: tuple[int, int] = (128, 128),
        out_dtype: torch.dtype = torch.bfloat16,
        backend: str = "auto",
    ) -> W8A8Linear:
        """A block-scaled layer over an already quantized weight, as a fine-grained FP8 checkpoint
        holds it (DeepSeek-V3, transformers' FP8Linear): `weight` [N, K] float8_e4m3fn and
        `weight_scale_inv` [ceil(N / block_n), ceil(K / block_k)] float32 with weight ~= q * scale per
        block (despite its name, the factor that dequantizes). The layer's buffers share their
        storage: nothing is dequantized or requantized. Power-of-two float8_e8m0fnu scales (DeepSeek-V4's
        "ue8m0") are widened to float32, exactly. `bias` [N] is kept in `out_dtype`."""
        weight = check_tensor("weight", weight)
        weight_scale_inv = check_tensor("weight_scale_inv", weight_scale_inv)
        if bias is not None:
            bias = check_tensor("bias", bias)
        if weight.dtype != torch.float8_e4m3fn or weight.dim() != 2:
            shape = list(weight.shape)
            raise TypeError(f"weight must be a 2-D float8_e4m3fn tensor [N, K], got {weight.dtype} of shape {shape}")
        if weight_scale_inv.dtype == getattr(torch, "float8_e8m0fnu", None):
            weight_scale_inv = weight_scale_inv.to(torch.float32)
        if weight_scale_inv.dtype != torch.float32:
            raise TypeError(f"weight_scale_inv must be float32 (or float8_e8m0fnu), got {weight_scale_inv.dtype}")
        N, K = weight.shape
        blocks = check_block_size(block_size)
        expected = _weight_scale_shape(N, K, blocks)
        if tuple(weight_scale_inv.shape) != expected:
            raise ValueError(
                f"weight_scale_inv must be [ceil(N / block_n), ceil(K / block_k)] = {list(expected)} for a weight "
                f"of {[N, K]} with block_size={blocks}, got {list(weight_scale_inv.shape)}"
            )
        for name, t in (("weight_scale_inv", weight_scale_inv), ("bias", bias)):
            if t is not None and t.device != weight.device:
                raise ValueError(f"{name} is on {t.device} but weight is on {weight.device}")
        if bias is not None and tuple(bias.shape) != (N,):
            raise ValueError(f"bias must be [N] = [{N}], got {list(bias.shape)}")
        has_bias = bias is not None
        layer = cls(K, N, has_bias, "fp8", device="meta", out_dtype=out_dtype, backend=backend, block_size=blocks)
        layer.weight = weight.detach()
        layer.weight_scale = weight_scale_inv.detach()
        if bias is not None:
            layer.bias = bias.detach().to(out_dtype)
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

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # A checkpoint of the other 8-bit format would be copied in value by value (fp8 bits read as
        # int8 numbers): refuse it, the PyTorch way, through load_state_dict's error messages.
        weight = state_dict.get(prefix + "weight")
        if isinstance(weight, torch.Tensor) and weight.dtype != self.qdtype:
            error_msgs = args[-1]
            error_msgs.append(
                f"{prefix}weight holds {weight.dtype} but this W8A8Linear stores {self.qdtype}: build it with "
                f"dtype={'int8' if weight.dtype == torch.int8 else 'fp8'!r} to load this checkpoint"
            )
            return
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Set the static input scale from a batch of representative inputs: max |x| / 127 or / 448."""
        if self.activation != "static":
            raise ValueError("calibrate() is for activation='static'; dynamic layers scale every token")
        absmax = x.detach().abs().amax().to(torch.float32).clamp_min(ABSMAX_FLOOR)
        if not torch.isfinite(absmax):
            raise ValueError("calibrate() was given NaN or inf values; calibrate on finite activations")
        self.input_scale.copy_(absmax / QMAX[self.qdtype])

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            return self._forward_quantized(x)
        if self.fused is None and eager(x):
            owner_state = self._state_key()
            forward = self._forwards.get(x, owner_state)
            if forward is not None:
                return forward(x)
            if eager(self.weight, self.weight_scale, self.bias, self.input_scale):
                return self._prepare_forward(x, owner_state)
        x = self._check_input(x)  # off the prepared path: traced, or the fused group's
        lead, K = x.shape[:-1], x.shape[-1]
        if self.fused is not None and (out := self.fused.output_for(self, x)) is not None:
            return out.reshape(*lead, self.out_features)
        if self.block_size is not None:
            q, scale = quantize_per_token_group(x, self.block_size[1])
            q, scale = q.reshape(-1, K), scale.reshape(-1, scale.shape[-1])
            out = scaled_mm(
                q, self.weight.t(), scale, self.weight_scale.t(), self.out_dtype, self.bias, backend=self.backend,
                block_size=self.block_size,
            )  # fmt: skip
            return out.reshape(*lead, self.out_features)
        if self.activation == "static":
            q, scale = quantize_per_tensor(x, self.input_scale, self.qdtype), self.input_scale
        else:
            q, scale = quantize_per_token(x, self.qdtype)
            scale = scale.reshape(-1, 1)
        q = q.reshape(-1, K)
        weight_t, weight_scale, out_dtype, bias = self.weight.t(), self.weight_scale, self.out_dtype, self.bias
        out = scaled_mm(
            q, weight_t, scale, weight_scale, out_dtype, bias, backend=self.backend, accumulation=self.accumulation
        )
        return out.reshape(*lead, self.out_features)

    def _check_input(self, x: object) -> torch.Tensor:
        """x [..., in_features] of a float dtype: checked here, so that a wrong K is named as x's, not
        as the quantized rows' (scaled_mm's `a`) against the weight (its `b`)."""
        x = check_quantize_args(x, self.qdtype)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x must be [..., in_features] = [..., {self.in_features}], got shape {list(x.shape)}")
        return x

    def _forward_quantized(self, x: QuantizedActivation) -> torch.Tensor:
        """The product of an activation its producer quantized: scaled_mm alone (the members of a
        FusedSiblings group share one, kept on `x`)."""
        # A block-scaled layer's weight scales pair with per-group activation scales only: given per-token
        # ones, scaled_mm would read its block scales as per-channel (or per-tensor) ones.
        if x.q.dtype != self.qdtype or self.activation != "dynamic" or self.block_size is not None:
            quantizes = self.activation if self.block_size is None else f"per 1 x {self.block_size[1]} group"
            raise ValueError(
                f"this W8A8Linear quantizes {quantizes} to {self.qdtype}; it cannot take an activation "
                f"quantized per token to {x.q.dtype}"
            )
        lead = x.q.shape[:-1]
        if self.fused is not None and self.fused.enabled:
            return self.fused.quantized_output_for(self, x).reshape(*lead, self.out_features)
        q, scale = x.rows()
        out = scaled_mm(
            q, self.weight.t(), scale, self.weight_scale, self.out_dtype, self.bias, backend=self.backend,
            accumulation=self.accumulation,
        )  # fmt: skip
        return out.reshape(*lead, self.out_features)

    def _prepare_forward(self, x: torch.Tensor, owner_state: tuple) -> torch.Tensor:
        input_scale = self.input_scale if self.activation == "static" else None
        x = self._check_input(x)
        if input_scale is not None:
            capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
            if not capturing and input_scale.isnan().item():  # once per input signature
                raise ValueError(
                    "this static W8A8Linear has no input scale yet: call layer.calibrate(x) on representative "
                    "inputs, or pass input_scale= to W8A8Linear.from_linear"
                )
        weight_scale = self.weight_scale if self.block_size is None else self.weight_scale.t()  # [K blocks, N blocks]
        out, forward = prepare_linear(
            x, self.weight.t(), weight_scale, self.bias, self.qdtype, input_scale, self.out_dtype, self.backend,
            self.accumulation, self.block_size,
        )  # fmt: skip
        self._forwards.put(x, owner_state, forward)
        return out

    def extra_repr(self) -> str:
        dtype = "int8" if self.qdtype == torch.int8 else "fp8"
        blocks = "" if self.block_size is None else f", block_size={self.block_size}"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"dtype={dtype}{blocks}, activation={self.activation}, out_dtype={self.out_dtype}, backend={self.backend}, "
            f"accumulation={self.accumulation}{self._forwards.summary()}"
        )
