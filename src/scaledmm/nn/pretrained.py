"""load_fp8_pretrained: a transformers checkpoint in fine-grained FP8 (`quantization_config` with
`quant_method: fp8` and `weight_block_size`, DeepSeek-style) loaded as it is stored and run by
scaledmm's block-scaled layers, on any machine, offline.

Why not plain `from_pretrained`: transformers 5.17's FineGrainedFP8HfQuantizer.validate_environment
refuses such a checkpoint without `accelerate`, and where it finds no GPU (or one older than
compute capability 8.9) it switches to `dequantize=True`, loading every weight as bf16; with a
GPU it keeps FP8Linear layers whose forward fetches a kernel from the Hugging Face Hub
(`kernels-community/finegrained-fp8`) or needs DeepGEMM. Everything else it does (building the
model, renaming keys, sharded files, tied weights, buffers) is what we want. So the load runs
transformers' own path with its FP8 quantizer minus that environment check (a subclass, put in
transformers' quantizer table for the duration of the call), and quantize_model then swaps each
FP8Linear for a W8A8Linear sharing its fp8 weight and scales before any forward.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path

from torch import nn

from scaledmm.nn.model import QuantizationReport, is_fp8_linear, quantize_model

# transformers' quantizer table is global: loads through this module take turns with the substitution.
_QUANTIZER_TABLE_LOCK = threading.Lock()


@cache
def _fp8_quantizer_keeping_fp8():
    """FineGrainedFP8HfQuantizer without its environment check: FP8Linear layers are kept whatever
    the machine (scaledmm runs them on CUDA with fp8, and on CPU through Triton's interpreter), and
    accelerate is not asked for (it is needed only for a `device_map`, which imports it itself)."""
    from transformers.quantizers.quantizer_finegrained_fp8 import FineGrainedFP8HfQuantizer

    class ScaledmmFineGrainedFP8Quantizer(FineGrainedFP8HfQuantizer):
        def validate_environment(self, *args, **kwargs) -> None:
            return None

    return ScaledmmFineGrainedFP8Quantizer


def _block_fp8_config(config) -> dict | None:
    quantization = getattr(config, "quantization_config", None)
    if quantization is None:
        return None
    quantization = quantization if isinstance(quantization, dict) else quantization.to_dict()
    method = getattr(quantization.get("quant_method"), "value", quantization.get("quant_method"))
    return quantization if method == "fp8" and quantization.get("weight_block_size") else None


def load_fp8_pretrained(
    path: str | Path,
    *,
    model_class=None,
    filter: Callable[[str, nn.Module], bool] | None = None,
    backend: str = "auto",
    fuse: bool = True,
    **from_pretrained_kwargs,
) -> tuple[nn.Module, QuantizationReport]:
    """Load a fine-grained FP8 checkpoint (a folder or a Hub id already in the cache; set
    HF_HUB_OFFLINE=1 to stay off the network) with `model_class.from_pretrained` (default
    AutoModelForCausalLM) and swap its FP8Linear layers for block-scaled W8A8Linear
    (quantize_model), nothing dequantized. Returns the model and the QuantizationReport: layers the
    kernels cannot run stay FP8Linear and are listed under `skipped`; float layers (the lm_head,
    the checkpoint's `modules_to_not_convert`) stay float. `filter(name, module)` can leave more
    FP8Linear layers out; `from_pretrained_kwargs` go to from_pretrained (`dtype`, `device_map`...).

    The swapped model saves with `torch.save`, not `save_pretrained` (its scales are named
    `weight_scale`, and fused siblings share storage). Raises ValueError if the checkpoint's config
    is not fine-grained FP8.
    """
    import transformers
    from transformers.quantizers import auto

    config = from_pretrained_kwargs.pop("config", None)
    if config is None:
        keys = ("cache_dir", "revision", "token", "local_files_only", "trust_remote_code", "subfolder")
        config = transformers.AutoConfig.from_pretrained(
            path, **{k: v for k, v in from_pretrained_kwargs.items() if k in keys}
        )
    if _block_fp8_config(config) is None:
        found = getattr(config, "quantization_config", None)
        raise ValueError(
            f"path {str(path)!r} is not a fine-grained FP8 checkpoint: its config needs quantization_config "
            f"with quant_method 'fp8' and weight_block_size, got {found!r}"
        )
    model_class = model_class or transformers.AutoModelForCausalLM
    table = auto.AUTO_QUANTIZER_MAPPING
    with _QUANTIZER_TABLE_LOCK:
        original = table["fp8"]
        table["fp8"] = _fp8_quantizer_keeping_fp8()
        try:
            model = model_class.from_pretrained(path, config=config, **from_pretrained_kwargs)
        finally:
            table["fp8"] = original
    user_filter = filter

    def only_fp8(name: str, module: nn.Module) -> bool:
        return is_fp8_linear(module) and (user_filter is None or user_filter(name, module))

    report = quantize_model(model, "fp8", filter=only_fp8, backend=backend, fuse=fuse)
    report.skipped = {
        name: "kept in float by the checkpoint" if not is_fp8_linear(model.get_submodule(name)) else reason
        for name, reason in report.skipped.items()
    }
    return model, report
