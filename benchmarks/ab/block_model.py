"""A fine-grained FP8 model end to end on one GPU (issue 20, Models): saved, reloaded offline, run by scaledmm.

1. A Llama decoder with llama3-8b's layer dimensions (fewer layers, a smaller vocabulary) and random
   bf16 weights is quantized the DeepSeek way (every *_proj weight per 128 x 128 block, float32
   `weight_scale_inv`; lm_head and embeddings stay bf16) and written with save_pretrained, with
   `quantization_config = {"quant_method": "fp8", "weight_block_size": [128, 128]}`, to a temporary
   folder: what a fine-grained FP8 checkpoint on the Hub holds.
2. scaledmm: `scaledmm.nn.load_fp8_pretrained(folder)` (HF_HUB_OFFLINE=1), its report, moved to the GPU.
3. The dequantized bf16 model (each weight q * scale, in bf16; what transformers runs with
   `dequantize=True`), the reference of the check: cosine and max |diff| / max |ref| of the logits,
   on a batch of prompts; the original bf16 model's as context (the quantization's own error).
4. transformers' own FP8 path (`from_pretrained(folder)`, a forward): it needs accelerate and fetches
   its kernel from the Hub (or DeepGEMM), so offline it is usually unavailable; the script says why.
5. Time of a whole forward (no KV cache) at a few (batch, tokens) points, dequantized bf16 vs
   scaledmm (vs transformers' FP8 where it runs), by ../shared/BENCHMARKING.md: CUDA graphs replayed in
   turn (bench.timing.time_interleaved).

    PYTHONPATH=src python3 benchmarks/ab/block_model.py [--layers 4] [--points 1x1,16x1,128x1,1x512,4x2048]
    TRITON_INTERPRET=1 PYTHONPATH=src python3 benchmarks/ab/block_model.py --smoke   # CPU logic check

On an H200 it takes about a minute. What it should show: every projection swapped (lm_head kept in
bf16), q/k/v and gate/up fused; logits cosine about 0.99 or better to the dequantized model (the
activations' per-group quantization is the only difference: compare the original model's line, the
weights' own); scaledmm faster than bf16 at the decode points (fp8 weights halve the bytes read);
at the prefill points the untuned block kernel may trail cuBLAS's bf16.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: nothing is downloaded

import argparse
import copy
import functools
import tempfile
import time

import torch

from scaledmm.bench.timing import time_interleaved
from scaledmm.nn import load_fp8_pretrained, quantize_weight_blocks

BLOCK = (128, 128)
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def build_float_model(args, device: torch.device):
    """Random bf16 Llama with llama3-8b's layer dimensions (or tiny ones for --smoke)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.smoke:
        dims = dict(hidden_size=256, intermediate_size=320, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    else:
        dims = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8)
    config = LlamaConfig(
        **dims, num_hidden_layers=args.layers, vocab_size=args.vocab, max_position_embeddings=4096,
        tie_word_embeddings=False, rope_theta=500000.0,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def save_fine_grained_fp8(model, folder: str) -> dict[str, torch.Tensor]:
    """Write `model` as a fine-grained FP8 checkpoint (as transformers' FP8Linear layers hold it) and
    return its state (on the CPU)."""
    from transformers.integrations.finegrained_fp8 import replace_with_fp8_linear
    from transformers.utils.quantization_config import FineGrainedFP8Config

    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("_proj.weight"):  # quantized where the model is (the GPU: fast), kept on the CPU
            q, scale = quantize_weight_blocks(tensor, BLOCK)
            state[name], state[f"{name}_scale_inv"] = q.cpu(), scale.cpu()
        else:
            state[name] = tensor.cpu()
    quantization = FineGrainedFP8Config(weight_block_size=list(BLOCK), activation_scheme="dynamic")
    shell = copy.deepcopy(model).cpu()
    shell = replace_with_fp8_linear(shell, ["lm_head"], quantization, pre_quantized=True)
    shell.load_state_dict(state, assign=True)
    shell.config.quantization_config = quantization
    shell.save_pretrained(folder)
    return state


def dequantized_model(model, state: dict[str, torch.Tensor]):
    """The bf16 model of the checkpoint's values: each fp8 weight times its block scale."""
    reference = copy.deepcopy(model)
    device = next(model.parameters()).device
    weights = {}
    for name, tensor in state.items():
        if f"{name}_scale_inv" in state:
            tensor, scale = tensor.to(device), state[f"{name}_scale_inv"].to(device)
            N, K = tensor.shape
            expanded = scale.repeat_interleave(BLOCK[0], 0)[:N].repeat_interleave(BLOCK[1], 1)[:, :K]
            weights[name] = (tensor.float() * expanded).to(torch.bfloat16)
    reference.load_state_dict(weights, strict=False)
    return reference


def transformers_fp8(folder: str, device: torch.device, ids: torch.Tensor):
    """transformers' own FP8 model and one forward, or the reason it cannot run here."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(device)
        layer = model.model.layers[0].mlp.down_proj
        if layer.weight.dtype != torch.float8_e4m3fn:
            return None, f"transformers loaded it dequantized ({type(layer).__name__} of {layer.weight.dtype})"
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
        return model, "ran"
    except Exception as err:  # the reason is the result: printed, the rest of the run goes on
        return None, f"unavailable offline: {type(err).__name__}: {str(err).splitlines()[0][:160]}"


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, use_cache=False).logits


def agreement(got: torch.Tensor, reference: torch.Tensor) -> str:
    got, reference = got.double().flatten(), reference.double().flatten()
    cosine = torch.nn.functional.cosine_similarity(got, reference, dim=0).item()
    relative = ((got - reference).abs().max() / reference.abs().max()).item()
    return f"cosine {cosine:.6f}, max |diff| / max |ref| {relative:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--points", default="1x1,16x1,128x1,1x512,4x2048", help="batch x tokens of each forward")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="tiny dims, one point: the logic on a CPU")
    args = parser.parse_args()
    if args.smoke:
        args.layers, args.vocab, args.points, args.replays = 2, 320, "2x3", 1
    device = torch.device("cpu" if INTERPRET else "cuda")
    name = "Triton interpreter (CPU)" if INTERPRET else torch.cuda.get_device_name()
    dims = "tiny dims" if args.smoke else "llama3-8b layer dims"
    print(f"{name}, torch {torch.__version__}; {args.layers}-layer Llama, {dims}, vocab {args.vocab}")

    start = time.perf_counter()
    model = build_float_model(args, device)
    with tempfile.TemporaryDirectory() as folder:
        state = save_fine_grained_fp8(model, folder)
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2**20
        print(f"checkpoint: {size:.0f} MiB written with save_pretrained in {time.perf_counter() - start:.1f} s")

        start = time.perf_counter()
        ours, report = load_fp8_pretrained(folder, dtype=torch.bfloat16)
        ours.to(device)
        print(f"scaledmm: loaded offline in {time.perf_counter() - start:.1f} s; {report}")
        print(f"  e.g. {ours.model.layers[0].mlp.down_proj}")

        gen = torch.Generator(device).manual_seed(1)
        prompts = torch.randint(0, args.vocab, (4, 64 if not args.smoke else 5), device=device, generator=gen)
        vendor, vendor_status = transformers_fp8(folder, device, prompts[:1, :8])
        print(f"transformers' FP8 path: {vendor_status}")

    reference = dequantized_model(model, state)
    expected = logits(reference, prompts)
    print(f"scaledmm vs dequantized bf16: {agreement(logits(ours, prompts), expected)}")
    print(f"original bf16 vs dequantized bf16: {agreement(logits(model, prompts), expected)} (the quantization's own)")
    if vendor is not None:
        print(f"transformers FP8 vs dequantized bf16: {agreement(logits(vendor, prompts), expected)}")
    del model

    methods = {"bf16 (dequantized)": reference, "scaledmm fp8": ours}
    if vendor is not None:
        methods["transformers fp8"] = vendor
    header = f"{'batch x tokens':>15}" + "".join(f"{m:>22}" for m in methods) + f"{'bf16 / scaledmm':>17}"
    print(f"\nforward time, us (median of graph replays; no KV cache){' (host clock)' if INTERPRET else ''}")
    print(header)
    for point in args.points.split(","):
        batch, tokens = (int(v) for v in point.split("x"))
        ids = torch.randint(0, args.vocab, (batch, tokens), device=device, generator=gen)
        jobs = [(functools.partial(logits, m), [(ids,)]) for m in methods.values()]
        try:
            times = [t.median_us for t in time_interleaved(jobs, args.replays)]
        except Exception as err:  # transformers' FP8 kernel in a CUDA graph: reported, timed without it
            if "transformers fp8" not in methods:
                raise
            print(f"transformers fp8 dropped from the timing: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            del methods["transformers fp8"]
            times = [t.median_us for t in time_interleaved(jobs[:2], args.replays)] + [float("nan")]
        row = f"{point:>15}" + "".join(f"{t:>22.1f}" for t in times) + f"{times[0] / times[1]:>16.2f}x"
        print(row)


if __name__ == "__main__":
    main()
