"""`scaledmm bench-model`: a whole decoder, bf16 against W8A8 with scaledmm and with the vendor kernel.

The model is built from a preset's dimensions with transformers' own Llama or Qwen3 classes and
random weights (nothing is downloaded), then copied and quantized per variant:

- bf16: the model as built;
- scaledmm-int8 / scaledmm-fp8: every linear but lm_head a W8A8Linear (dynamic per-token
  activations, per-channel weights), scaled_mm with backend "auto", q/k/v and gate/up fused
  (quantize_model's default);
- scaledmm-fp8-unfused: the same without fusing the siblings (seven products per layer);
- torch-fp8: the same layers as scaledmm-fp8 (fused) calling the vendor kernel (torch._scaled_mm)
  through backend "torch".

Measured per variant: a decode step (batch B, one new token, a static KV cache of `context` tokens),
captured in a CUDA graph and timed by the benchmark protocol; the prefill of `prefill` tokens; and
the cosine similarity of its logits to the bf16 model's on the same tokens.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scaledmm.bench.micro import environment
from scaledmm.bench.shapes import PRESETS
from scaledmm.bench.timing import time_calls
from scaledmm.nn import quantize_model

# The parts of each model's published config that the shapes preset does not hold.
ARCHITECTURES = {
    "llama3-8b": dict(family="llama", layers=32, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
    "qwen3-4b": dict(family="qwen3", layers=36, vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True),
}
VARIANTS = ("bf16", "scaledmm-int8", "scaledmm-fp8", "scaledmm-fp8-unfused", "torch-fp8")


def build_decoder(
    name: str, device: torch.device, layers: int | None = None, vocab_size: int | None = None, dims=None
) -> torch.nn.Module:
    """A decoder of a preset's architecture with random bf16 weights on `device` (transformers'
    classes; no download). `layers`, `vocab_size` and `dims` shrink it (tests, quick runs)."""
    import transformers

    arch = ARCHITECTURES[name]
    dims = dims or PRESETS[name]
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[arch["family"]]
    config = config_cls(
        hidden_size=dims.hidden_size,
        intermediate_size=dims.intermediate_size,
        num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_key_value_heads,
        head_dim=dims.head_dim,
        num_hidden_layers=layers or arch["layers"],
        vocab_size=vocab_size or arch["vocab_size"],
        rope_theta=arch["rope_theta"],
        tie_word_embeddings=arch["tie_word_embeddings"],
        max_position_embeddings=8192,
    )
    with torch.device(device):
        model = model_cls(config)
    return model.to(torch.bfloat16).eval()


def make_variant(base: torch.nn.Module, variant: str) -> torch.nn.Module:
    if variant == "bf16":
        return base
    model = copy.deepcopy(base)
    library, dtype, *unfused = variant.split("-")
    quantize_model(model, dtype=dtype, backend="auto" if library == "scaledmm" else "torch", fuse=not unfused)
    return model


@dataclass
class ModelRun:
    """What to measure."""

    batches: Sequence[int] = (1, 8, 32, 128)
    context: int = 512
    prefill: int = 2048
    replays: int = 20


@torch.no_grad()
def decode_step_us(model: torch.nn.Module, batch: int, context: int, replays: int) -> float:
    """One decode step: `batch` sequences each add a token after `context` cached ones."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    cache = StaticCache(config=model.config, max_cache_len=context + 1)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
    position = torch.tensor([context], device=device)

    def step(ids):
        # Every replay writes the same cache slot: the layers' write positions (device tensors that
        # each step advances) go back to `context` first, inside the captured graph.
        for layer in cache.layers:
            layer.cumulative_length.fill_(context)
        return model(input_ids=ids, past_key_values=cache, cache_position=position, use_cache=True).logits

    return time_calls(step, [(ids,)], replays).median_us


@torch.no_grad()
def prefill_us(model: torch.nn.Module, tokens: int, replays: int) -> float:
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)
    return time_calls(lambda ids: model(input_ids=ids, use_cache=False).logits, [(ids,)], replays).median_us


@torch.no_grad()
def logits_cosine(model: torch.nn.Module, reference_logits: torch.Tensor, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids, use_cache=False).logits.float()
    return torch.nn.functional.cosine_similarity(logits.flatten(), reference_logits.flatten(), dim=0).item()


def run_model_bench(
    names: Sequence[str],
    variants: Sequence[str],
    run: ModelRun,
    device: torch.device,
    command: str = "",
    layers: int | None = None,
    vocab_size: int | None = None,
    dims=None,
) -> dict:
    """Every variant of every model; rows of (model, variant, measure, value)."""
    rows = []
    for name in names:
        base = build_decoder(name, device, layers, vocab_size, dims)
        ids = torch.randint(0, base.config.vocab_size, (1, 64), device=device)
        with torch.no_grad():
            reference = base(input_ids=ids, use_cache=False).logits.float()
        for variant in variants:
            model = make_variant(base, variant)
            row = {
                "model": name,
                "variant": variant,
                "layers": base.config.num_hidden_layers,
                "logits_cosine": logits_cosine(model, reference, ids),
                "prefill_tokens": run.prefill,
                "prefill_us": prefill_us(model, run.prefill, run.replays),
            }
            for batch in run.batches:
                row[f"decode_b{batch}_us"] = decode_step_us(model, batch, run.context, run.replays)
            rows.append(row)
            if model is not base:
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return {
        "environment": environment(device, command),
        "context": run.context,
        "rows": rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def model_table(result: dict) -> str:
    """Per model and variant: decode tokens/s per batch, prefill time, logits cosine; and the speedup
    of each variant over bf16 and (fp8) over the torch-fp8 model."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = {r["variant"]: r for r in result["rows"] if r["model"] == name}
        batches = [int(k[len("decode_b") : -len("_us")]) for k in next(iter(rows.values())) if k.startswith("decode_b")]
        lines.append(f"== {name} ({next(iter(rows.values()))['layers']} layers), context {result['context']}")
        lines.append(
            f"{'variant':<22}"
            + "".join(f"{'decode b' + str(b) + ' tok/s':>20}" for b in batches)
            + f"{'prefill ms':>12}{'cosine':>9}"
        )
        for variant, r in rows.items():
            cells = "".join(f"{b * 1e6 / r[f'decode_b{b}_us']:>20.0f}" for b in batches)
            lines.append(f"{variant:<22}{cells}{r['prefill_us'] / 1e3:>12.2f}{r['logits_cosine']:>9.4f}")
        for variant, r in rows.items():
            for base in ("bf16", "torch-fp8"):
                if variant == base or base not in rows or not variant.startswith("scaledmm"):
                    continue
                b = rows[base]
                ratios = " ".join(f"b{n} {b[f'decode_b{n}_us'] / r[f'decode_b{n}_us']:.2f}x" for n in batches)
                lines.append(
                    f"  {variant} over {base}: decode {ratios}; prefill {b['prefill_us'] / r['prefill_us']:.2f}x"
                )
        lines.append("")
    return "\n".join(lines)
