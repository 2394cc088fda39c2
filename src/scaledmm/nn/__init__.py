"""Layers and model quantization: W8A8Linear, quantize_weight, quantize_model, sibling fusion, fused
producers, and loading fine-grained FP8 checkpoints (load_fp8_pretrained)."""

from scaledmm.nn.linear import QuantizedActivation, W8A8Linear, quantize_weight, quantize_weight_blocks
from scaledmm.nn.model import QuantizationReport, quantize_model
from scaledmm.nn.pretrained import load_fp8_pretrained
from scaledmm.nn.producers import RMSNormQuantize, SwiGLUQuantizedMLP, fuse_producers
from scaledmm.nn.siblings import SIBLING_NAMES, FusedSiblings

__all__ = [
    "SIBLING_NAMES",
    "FusedSiblings",
    "QuantizationReport",
    "QuantizedActivation",
    "RMSNormQuantize",
    "SwiGLUQuantizedMLP",
    "W8A8Linear",
    "fuse_producers",
    "load_fp8_pretrained",
    "quantize_model",
    "quantize_weight",
    "quantize_weight_blocks",
]
