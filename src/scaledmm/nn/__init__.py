"""Layers and model quantization: W8A8Linear, quantize_weight, quantize_model, sibling fusion, and
loading fine-grained FP8 checkpoints (load_fp8_pretrained)."""

from scaledmm.nn.linear import W8A8Linear, quantize_weight, quantize_weight_blocks
from scaledmm.nn.model import QuantizationReport, quantize_model
from scaledmm.nn.pretrained import load_fp8_pretrained
from scaledmm.nn.siblings import SIBLING_NAMES, FusedSiblings

__all__ = [
    "SIBLING_NAMES",
    "FusedSiblings",
    "QuantizationReport",
    "W8A8Linear",
    "load_fp8_pretrained",
    "quantize_model",
    "quantize_weight",
    "quantize_weight_blocks",
]
