"""scaledmm: Triton kernels for W8A8 (INT8 and FP8) scaled matrix multiplication, tuned ahead of time."""

from scaledmm import reference
from scaledmm.api import (
    quantize_per_tensor,
    quantize_per_token,
    quantize_per_token_group,
    rms_norm_quantize,
    scaled_mm,
    silu_mul_quantize,
)
from scaledmm.configs import MatmulConfig, clear_cache, select_config

__version__ = "0.1.0"

__all__ = [
    "MatmulConfig",
    "__version__",
    "clear_cache",
    "quantize_per_tensor",
    "quantize_per_token",
    "quantize_per_token_group",
    "reference",
    "rms_norm_quantize",
    "scaled_mm",
    "select_config",
    "silu_mul_quantize",
]
