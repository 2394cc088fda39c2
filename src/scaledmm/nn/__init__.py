"""Layers and model quantization: W8A8Linear, quantize_weight, quantize_model and sibling fusion."""

from scaledmm.nn.linear import W8A8Linear, quantize_weight
from scaledmm.nn.model import QuantizationReport, quantize_model
from scaledmm.nn.siblings import SIBLING_NAMES, FusedSiblings

__all__ = ["SIBLING_NAMES", "FusedSiblings", "QuantizationReport", "W8A8Linear", "quantize_model", "quantize_weight"]
