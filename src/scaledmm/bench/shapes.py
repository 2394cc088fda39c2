"""The linear-layer shapes (N, K) of decoder models: built-in presets, HuggingFace configs, tensor
parallelism, and the default M values (tokens in flight). The block-scaled fp8 checkpoints of the
public shape set ("block_fp8" in shared/shapes.json) are presets too: qwen3-8b-fp8 by its dimensions,
deepseek-v3 (MLA, whose projections no DecoderDims describes) as its list of shapes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The M values of the public shape set (shared/shapes.json): decode, mid and prefill.
M_DECODE = (1, 2, 4, 8, 16, 32, 64)
M_MID = (128, 256, 512)
M_PREFILL = (1024, 2048, 4096, 8192)
DEFAULT_M = M_DECODE + M_MID + M_PREFILL
# The tuner's grid: the benchmark's M values and, from 16 on, the points halfway between them, so that
# the bucket rule (smallest tuned M >= M) rounds M up by at most 1.5x there; below 16 by less than 2x,
# where one 16-row tile serves every M anyway.
TUNE_M = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
          6144, 8192)  # fmt: skip


def m_range(M: int) -> str:
    """The range of M that a geomean is reported for: decode (<= 64), mid (<= 512) or prefill."""
    if M <= 64:
        return "decode"
    return "mid" if M <= 512 else "prefill"


@dataclass(frozen=True)
class DecoderDims:
    """The dimensions of a decoder layer that fix its linear shapes (HuggingFace config names)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int


# Published configs of the models (config.json of each release).
PRESETS: dict[str, DecoderDims] = {
    "llama3-8b": DecoderDims(4096, 14336, 32, 8, 128),
    "llama3-70b": DecoderDims(8192, 28672, 64, 8, 128),
    "mistral-7b": DecoderDims(4096, 14336, 32, 8, 128),
    "qwen2.5-7b": DecoderDims(3584, 18944, 28, 4, 128),
    "qwen3-4b": DecoderDims(2560, 9728, 32, 8, 128),
    "qwen3-8b": DecoderDims(4096, 12288, 32, 8, 128),
    "qwen3-32b": DecoderDims(5120, 25600, 64, 8, 128),
    "qwen2.5-72b": DecoderDims(8192, 29568, 64, 8, 128),
    "qwen3-8b-fp8": DecoderDims(4096, 12288, 32, 8, 128),  # Qwen/Qwen3-8B-FP8: 128 x 128 weight blocks
}
# Models given by their (layer, N, K) as one rank holds them at tp 1, fused as their checkpoints or
# vLLM run them: deepseek-v3's block-scaled fp8 layers (shared/shapes.json "block_fp8"): q_a_proj and
# kv_a_proj_with_mqa fused (1536 + 576 rows), q_b_proj, o_proj, and the dense layers' MLP.
SHAPE_LISTS: dict[str, tuple[tuple[str, int, int], ...]] = {
    "deepseek-v3": (
        ("q_a_kv_a", 2112, 7168),
        ("q_b", 24576, 1536),
        ("o", 7168, 16384),
        ("dense_gate_up", 4096, 7168),
        ("dense_down", 7168, 2048),
    ),
}
BLOCK_FP8_MODELS = ("deepseek-v3", "qwen3-8b-fp8")  # the block-scaled fp8 checkpoints among the presets


@dataclass(frozen=True)
class LinearShape:
    """One linear layer: out = x @ W.t() with W of shape [n, k]."""

    name: str  # e.g. "llama3-8b.qkv" or "4096x14336"
    n: int
    k: int


def dims_from_hf_config(path: str | Path) -> DecoderDims:
    """Read a local HuggingFace config.json (no network)."""
    with open(path) as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)  # multimodal configs nest the decoder's
    try:
        hidden = cfg["hidden_size"]
        heads = cfg["num_attention_heads"]
        return DecoderDims(
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
        )
    except KeyError as missing:
        raise ValueError(f"{path}: a decoder config needs {missing.args[0]!r}") from None


def linear_shapes(model: str, dims: DecoderDims, tp: int = 1, fused: bool = True) -> list[LinearShape]:
    """The linear shapes of one layer on one of `tp` tensor-parallel ranks.

    Fused (as vLLM and SGLang run them): qkv, o, gate_up, down. Unfused (as transformers' modules
    hold them): q, k, v, o, gate, up, down. q/k/v and gate/up are column-parallel (N divided by tp),
    o and down row-parallel (K divided by tp). With fewer KV heads than ranks, each rank keeps one
    replicated KV head.
    """
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    if dims.num_attention_heads % tp or dims.intermediate_size % tp:
        raise ValueError(
            f"{model}: tp={tp} must divide num_attention_heads ({dims.num_attention_heads}) and "
            f"intermediate_size ({dims.intermediate_size})"
        )
    q_heads = dims.num_attention_heads // tp
    kv_heads = max(1, dims.num_key_value_heads // tp)
    hd = dims.head_dim
    if not fused:
        inter = dims.intermediate_size // tp
        return [
            LinearShape(f"{model}.q", q_heads * hd, dims.hidden_size),
            LinearShape(f"{model}.k", kv_heads * hd, dims.hidden_size),
            LinearShape(f"{model}.v", kv_heads * hd, dims.hidden_size),
            LinearShape(f"{model}.o", dims.hidden_size, q_heads * hd),
            LinearShape(f"{model}.gate", inter, dims.hidden_size),
            LinearShape(f"{model}.up", inter, dims.hidden_size),
            LinearShape(f"{model}.down", dims.hidden_size, inter),
        ]
    return [
        LinearShape(f"{model}.qkv", (q_heads + 2 * kv_heads) * hd, dims.hidden_size),
        LinearShape(f"{model}.o", dims.hidden_size, q_heads * hd),
        LinearShape(f"{model}.gate_up", 2 * dims.intermediate_size // tp, dims.hidden_size),
        LinearShape(f"{model}.down", dims.hidden_size, dims.intermediate_size // tp),
    ]


def preset_names() -> list[str]:
    """Every model preset, by its dimensions or as a list of shapes."""
    return sorted([*PRESETS, *SHAPE_LISTS])


def preset_shapes(model: str, tp: int = 1, fused: bool = True) -> list[LinearShape]:
    if model in SHAPE_LISTS:
        if tp != 1 or not fused:
            raise ValueError(f"{model} is a fixed list of shapes (fused, tp 1): no --tp or --unfused form")
        return [LinearShape(f"{model}.{layer}", n, k) for layer, n, k in SHAPE_LISTS[model]]
    if model not in PRESETS:
        raise ValueError(f"unknown model preset {model!r}; known: {', '.join(preset_names())}")
    name = model if tp == 1 else f"{model}-tp{tp}"
    return linear_shapes(name, PRESETS[model], tp, fused)


def parse_shape(text: str) -> LinearShape:
    """'N,K' -> LinearShape."""
    try:
        n, k = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"a shape is N,K (two integers), got {text!r}") from None
    if n < 1 or k < 1:
        raise ValueError(f"N and K must be >= 1, got {text!r}")
    return LinearShape(f"{n}x{k}", n, k)


def collect_shapes(
    models: list[str], hf_configs: list[str], shapes: list[str], tp: int = 1, fused: bool = True
) -> list[LinearShape]:
    """Shapes from presets, HuggingFace configs and explicit N,K, without repeats, in order given."""
    found: list[LinearShape] = []
    for model in models:
        found += preset_shapes(model, tp, fused)
    for path in hf_configs:
        name = Path(path).parent.name or Path(path).stem
        found += linear_shapes(name if tp == 1 else f"{name}-tp{tp}", dims_from_hf_config(path), tp, fused)
    found += [parse_shape(s) for s in shapes]
    seen: set[tuple[int, int]] = set()
    unique = []
    for shape in found:
        if (shape.n, shape.k) not in seen:
            seen.add((shape.n, shape.k))
            unique.append(shape)
    return unique
