"""`scaledmm bench-model`: a whole decoder, bf16 against W8A8 with scaledmm and with the vendor kernel.

The model is built from a preset's dimensions with transformers' own Llama or Qwen3 classes and
random weights (nothing is downloaded), then copied and quantized per variant. A variant is
`bf16` or `<library>-<dtype>[-<option>]`:

- library `scaledmm` (scaled_mm with backend "auto") or `torch` (the same layers calling the vendor
  kernel, torch._scaled_mm, through backend "torch"); dtype `int8` or `fp8`. Every linear but
  lm_head is a W8A8Linear (dynamic per-token activations, per-channel weights), q/k/v and gate/up
  fused (quantize_model's default);
- option `unfused`: the siblings not fused (seven products per layer);
- option `fusedquant`: the activation quantization fused into its producers with our kernels
  (quantize_model(fuse_producers="triton"): RMSNorm + quantize before q/k/v and gate/up, SiLU * up
  + quantize before down);
- option `inductor`: the same producers written in plain torch for Inductor to fuse
  (fuse_producers="inductor"; meant for --compile, many small kernels eager).

Measured per variant: a decode step (batch B, one new token, a static KV cache of `context`
tokens), captured in a CUDA graph and timed by the benchmark protocol; the prefill of `prefill`
tokens; the cosine similarity of its logits to the bf16 model's on the same tokens; and where one
decode step's GPU time goes (torch.profiler, kernels grouped as linears, activation quantization,
attention and the rest).

With `compile` every variant, bf16 included, runs `torch.compile(model, fullgraph=True)`
(Inductor's default mode), and the compiled step is captured in our own CUDA graph by the same
timing code as the eager one. Not "reduce-overhead": its CUDA graph trees would capture a second
time what the timing already captures, and keep memory pools per shape; our capture times every
variant, eager or compiled, the same way. Shapes are dynamic by torch.compile's default: batch 1
(and a prefill of one sequence) specialise, the first batch above 1 recompiles with a symbolic
batch, and the later ones reuse that graph; each row reports the graphs compiled.

With several GPUs (run_model_bench_on_gpus, `--gpus`) the variants are split into contiguous groups,
one worker process per GPU; every worker builds the same decoder (same seed) and sends each row to
the parent as soon as it is measured. Each row records the GPU it ran on. PartialResults writes the
rows so far after every variant, so a run killed at a time limit keeps the finished ones.
"""

from __future__ import annotations

import collections
import copy
import datetime
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from scaledmm.bench.micro import environment
from scaledmm.bench.shapes import PRESETS
from scaledmm.bench.timing import time_calls
from scaledmm.configs.files import write_json_atomic
from scaledmm.nn import quantize_model

# The parts of each model's published config that the shapes preset does not hold.
ARCHITECTURES = {
    "llama3-8b": dict(family="llama", layers=32, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
    "qwen3-4b": dict(family="qwen3", layers=36, vocab_size=151936, rope_theta=1000000.0, tie_word_embeddings=True),
}
VARIANTS = (
    "bf16",
    "scaledmm-int8",
    "scaledmm-fp8",
    "scaledmm-fp8-unfused",
    "torch-fp8",
    "scaledmm-int8-fusedquant",
    "scaledmm-fp8-fusedquant",
    "scaledmm-int8-inductor",
    "scaledmm-fp8-inductor",
    "torch-fp8-inductor",
)
EAGER_VARIANTS = ("bf16", "scaledmm-int8", "scaledmm-fp8", "scaledmm-fp8-unfused", "torch-fp8")
COMPILED_VARIANTS = (
    "bf16",
    "scaledmm-int8-fusedquant",
    "scaledmm-fp8-fusedquant",
    "scaledmm-fp8-inductor",
    "scaledmm-fp8",
    "torch-fp8-inductor",
)
_OPTIONS = {"": {}, "unfused": {"fuse": False}, "fusedquant": {"fuse_producers": "triton"}}
_OPTIONS["inductor"] = {"fuse_producers": "inductor"}


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
    library, dtype, *option = variant.split("-")
    settings = _OPTIONS["-".join(option)]
    model = copy.deepcopy(base)
    quantize_model(model, dtype=dtype, backend="auto" if library == "scaledmm" else "torch", **settings)
    return model


@dataclass
class ModelRun:
    """What to measure, and how to run the model."""

    batches: Sequence[int] = (1, 8, 32, 128)
    context: int = 512
    prefill: int = 2048
    replays: int = 20
    compile: bool = False
    compile_backend: str = "inductor"  # torch.compile's backend ("aot_eager" in the CPU tests)
    profile_batch: int | None = 1  # the decode batch whose step is profiled (None: no profile)
    seed: int = 0  # of the random weights and tokens: every GPU's worker builds the same decoder


class DecodeStep:
    """One decode step: `batch` sequences each add a token after `context` cached ones, through
    `forward` (the model, or its compiled version), into a StaticCache of `context` + 1 tokens."""

    def __init__(self, model: torch.nn.Module, forward: Callable, batch: int, context: int):
        from transformers import StaticCache

        device = next(model.parameters()).device
        self.forward = forward
        self.context = context
        self.cache = StaticCache(config=model.config, max_cache_len=context + 1)
        self.ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=device)
        self.position = torch.tensor([context], device=device)
        # The cache makes its tensors at its first update: an eager step does it here, outside any
        # compiled region (transformers marks them static there, without guarding their addresses).
        model(input_ids=self.ids, past_key_values=self.cache, cache_position=self.position, use_cache=True)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        # Every replay writes the same cache slot: the layers' write positions (device tensors that
        # each step advances) go back to `context` first, inside the captured graph.
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(self.context)
        return self.forward(
            input_ids=ids, past_key_values=self.cache, cache_position=self.position, use_cache=True
        ).logits


class Prefill:
    """The forward of one prompt, without a cache."""

    def __init__(self, model: torch.nn.Module, forward: Callable, tokens: int):
        device = next(model.parameters()).device
        self.forward = forward
        self.ids = torch.randint(0, model.config.vocab_size, (1, tokens), device=device)

    @torch.no_grad()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward(input_ids=ids, use_cache=False).logits


def first_call_s(step: Callable, ids: torch.Tensor) -> float:
    """Wall time of a first call (compiles a compiled model's graph for this shape)."""
    start = time.perf_counter()
    step(ids)
    if ids.is_cuda:
        torch.cuda.synchronize(ids.device)
    return time.perf_counter() - start


# Kernel names by what they compute, first match wins: attention (before the GEMMs: flash
# attention's split-KV kernels say "splitk"), scaled_mm's kernels and the vendors' GEMMs (cuBLAS's
# nvjet/xmma/gemv, CUTLASS), the activation quantizations (ours, fused into a producer or not).
# Inductor's generated kernels (triton_poi_/triton_red_/triton_per_...) count as the rest, also
# where Inductor fused a quantization into them (the "inductor" variants).
KERNEL_CATEGORIES = (
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("linears", ("scaled_mm", "quantized_linear", "gemm", "gemv", "nvjet", "cutlass", "xmma", "cublas", "splitk")),
    ("quantize", ("quantize",)),
)


def kernel_category(name: str) -> str:
    lowered = name.lower()
    for category, words in KERNEL_CATEGORIES:
        if any(word in lowered for word in words):
            return category
    return "rest"


def gpu_time_breakdown(kernel_us: dict[str, float], steps: int) -> dict:
    """Per step: the GPU time of each category of kernels (KERNEL_CATEGORIES), their shares, and
    the ten kernels that took the most, from the total time of each kernel name over `steps` steps."""
    by_category = collections.Counter()
    for name, us in kernel_us.items():
        by_category[kernel_category(name)] += us / steps
    total = sum(by_category.values())
    categories = [c for c, _ in KERNEL_CATEGORIES] + ["rest"]
    top = sorted(kernel_us.items(), key=lambda item: -item[1])[:10]
    return {
        "gpu_us_per_step": total,
        "us": {c: by_category[c] for c in categories},
        "share": {c: by_category[c] / total if total else 0.0 for c in categories},
        "top_kernels": [{"name": n[:120], "category": kernel_category(n), "us_per_step": us / steps} for n, us in top],
    }


def profile_step(step: Callable, ids: torch.Tensor, steps: int = 5) -> dict | None:
    """Where one step's GPU time goes: the step run `steps` times (not in a CUDA graph: the kernels'
    durations are the same, the launch gaps are not counted) under torch.profiler. None without CUDA."""
    if not ids.is_cuda:
        return None
    from torch.profiler import ProfilerActivity, profile

    step(ids)
    torch.cuda.synchronize(ids.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step(ids)
        torch.cuda.synchronize(ids.device)
    kernel_us = collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernel_us[event.name] += event.time_range.elapsed_us()
    return gpu_time_breakdown(kernel_us, steps)


@torch.no_grad()
def logits_cosine(model: torch.nn.Module, reference_logits: torch.Tensor, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids, use_cache=False).logits.float()
    return torch.nn.functional.cosine_similarity(logits.flatten(), reference_logits.flatten(), dim=0).item()


def compiled(model: torch.nn.Module, backend: str):
    """torch.compile(model, fullgraph=True) with a counter of the graphs it compiles, after a reset:
    dynamo keeps compiled code per code object, shared by every model of one class, and would
    count the variants' graphs against one recompile limit."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    return torch.compile(model, fullgraph=True, backend=counter), counter


def measure_variant(model: torch.nn.Module, run: ModelRun) -> dict:
    """Prefill and decode times of one variant (eager or compiled, as `run` says), with the time of
    each first call, the graphs compiled, and the profile of one decode step."""
    forward, counter = compiled(model, run.compile_backend) if run.compile else (model, None)
    row: dict = {"compiled": run.compile, "prefill_tokens": run.prefill, "first_call_s": {}}
    with torch.no_grad():
        prefill = Prefill(model, forward, run.prefill)
        row["first_call_s"]["prefill"] = first_call_s(prefill, prefill.ids)
        row["prefill_us"] = time_calls(prefill, [(prefill.ids,)], run.replays).median_us
        del prefill
        for batch in run.batches:
            step = DecodeStep(model, forward, batch, run.context)
            row["first_call_s"][f"decode_b{batch}"] = first_call_s(step, step.ids)
            row[f"decode_b{batch}_us"] = time_calls(step, [(step.ids,)], run.replays).median_us
            if batch == run.profile_batch:
                row[f"profile_b{batch}"] = profile_step(step, step.ids)
            del step
    if counter is not None:
        row["compiled_graphs"] = counter.frame_count
    return row


def gpu_of(device: torch.device) -> dict | None:
    """Which card a row ran on (index as torch numbers this host's GPUs, and name); None on the CPU."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"index": index, "name": torch.cuda.get_device_name(index)}


def run_model_bench(
    names: Sequence[str],
    variants: Sequence[str],
    run: ModelRun,
    device: torch.device,
    command: str = "",
    layers: int | None = None,
    vocab_size: int | None = None,
    dims=None,
    on_row: Callable[[dict], None] | None = None,
) -> dict:
    """Every variant of every model; rows of (model, variant, measure, value). `on_row` gets each row
    as soon as it is measured (PartialResults.add writes it out; a GPU worker sends it to the parent)."""
    rows = []
    for name in names:
        torch.manual_seed(run.seed)
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
                "gpu": gpu_of(device),
                "logits_cosine": logits_cosine(model, reference, ids),
                **measure_variant(model, run),
            }
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if model is not base:
                del model
            if run.compile:
                torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return model_result(rows, run, environment(device, command))


def model_result(rows: list[dict], run: ModelRun, env: dict, complete: bool = True) -> dict:
    """What model_results.json holds. `complete` is False in the file written while variants are
    still running (or left by a run that was killed)."""
    return {
        "environment": env,
        "context": run.context,
        "compiled": run.compile,
        "complete": complete,
        "rows": rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class PartialResults:
    """The rows measured so far, in the order of `names` and `variants` whatever the order they
    arrive in (workers finish in any order), written to `path` after each one (atomically: a kill
    mid-write leaves the previous file), so a run killed at a time limit keeps its finished variants."""

    def __init__(self, path: Path, run: ModelRun, env: dict, names: Sequence[str], variants: Sequence[str]):
        self.path = path
        self.run = run
        self.env = env
        self.order = {key: i for i, key in enumerate(itertools.product(names, variants))}
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.rows.sort(key=lambda r: self.order[r["model"], r["variant"]])
        write_json_atomic(self.path, self.result(complete=len(self.rows) == len(self.order)))
        gpu = "" if row.get("gpu") is None else f" on GPU {row['gpu']['index']}"
        done = f"{len(self.rows)} of {len(self.order)} rows"
        print(f"{row['model']} {row['variant']}: measured{gpu}; {done} in {self.path}", flush=True)

    def result(self, complete: bool = True) -> dict:
        return model_result(list(self.rows), self.run, self.env, complete)


def split_variants(variants: Sequence[str], gpus: int) -> list[list[str]]:
    """Contiguous groups of the variants in the order given, one per GPU (no more groups than
    variants), the first groups one longer where they do not divide evenly: a,b,c,d on 2 GPUs are
    [a, b] and [c, d]. Contiguous, so the user decides which variants share a card."""
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    count = min(gpus, len(variants))
    size, extra = divmod(len(variants), count) if count else (0, 0)
    groups, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        groups.append(list(variants[start:end]))
        start = end
    return groups


def _bench_worker(
    index: int,
    groups: list[list[str]],
    names: Sequence[str],
    run: ModelRun,
    command: str,
    layers: int | None,
    vocab_size: int | None,
    dims,
    rows: torch.multiprocessing.SimpleQueue,
    device_type: str,
) -> None:
    """Worker `index` of run_model_bench_on_gpus: group `index` of the variants on GPU `index`.
    torch.cuda.set_device before anything touches CUDA, as the tuner's workers do: the timing code,
    CUDA graph capture and Inductor's generated code all use the current device."""
    device = torch.device(device_type, index) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    run_model_bench(names, groups[index], run, device, command, layers, vocab_size, dims, on_row=rows.put)


def run_model_bench_on_gpus(
    names: Sequence[str],
    groups: list[list[str]],
    run: ModelRun,
    on_row: Callable[[dict], None],
    command: str = "",
    layers: int | None = None,
    vocab_size: int | None = None,
    dims=None,
    device_type: str = "cuda",
) -> None:
    """Each group of variants (split_variants) in a process of its own on GPU 0, 1, ... of this host
    (spawned by torch.multiprocessing.spawn, as `scaledmm tune --gpus` does). Every row reaches
    `on_row` in this process as soon as its worker measured it. A worker's error is raised here,
    after the rows already measured went to `on_row`. device_type "cpu": CPU processes (tests)."""
    # A SimpleQueue writes each row into the pipe when it is put, so once the workers have exited
    # every row they measured is there to read.
    rows = torch.multiprocessing.get_context("spawn").SimpleQueue()
    args = (groups, names, run, command, layers, vocab_size, dims, rows, device_type)
    workers = torch.multiprocessing.spawn(_bench_worker, args=args, nprocs=len(groups), join=False)
    try:
        # join() returns True once every worker has exited, and raises if one failed (stopping the rest).
        while not workers.join(timeout=1.0):
            _pass_rows(rows, on_row)
    finally:
        _pass_rows(rows, on_row)


def _pass_rows(rows: torch.multiprocessing.SimpleQueue, on_row: Callable[[dict], None]) -> None:
    while not rows.empty():
        on_row(rows.get())


def model_table(result: dict) -> str:
    """Per model and variant: decode tokens/s per batch, prefill time, logits cosine (and the GPU of
    each row when the rows ran on several); the speedup of each scaledmm variant over bf16 and over
    the torch._scaled_mm models; the graphs compiled; and the profiled decode step's GPU time by
    kind of kernel."""
    lines = []
    if not result.get("complete", True):
        lines.append(f"partial: the run stopped after {len(result['rows'])} rows (the variants it finished)")
    for name in dict.fromkeys(r["model"] for r in result["rows"]):
        rows = {r["variant"]: r for r in result["rows"] if r["model"] == name}
        first = next(iter(rows.values()))
        batches = [int(k[len("decode_b") : -len("_us")]) for k in first if k.startswith("decode_b")]
        mode = "compiled (torch.compile, fullgraph)" if result.get("compiled") else "eager"
        lines.append(f"== {name} ({first['layers']} layers), context {result['context']}, {mode}")
        gpus = {r["gpu"]["index"]: r["gpu"]["name"] for r in rows.values() if r.get("gpu")}
        several = len(gpus) > 1
        if several:
            cards = ", ".join(f"GPU {i} {gpus[i]}" for i in sorted(gpus))
            lines.append(f"rows ran on {cards}; ratios between rows of different GPUs compare two cards of one host")
        lines.append(
            f"{'variant':<26}"
            + (f"{'gpu':>4}" if several else "")
            + "".join(f"{'decode b' + str(b) + ' tok/s':>20}" for b in batches)
            + f"{'prefill ms':>12}{'cosine':>9}"
        )
        for variant, r in rows.items():
            gpu = f"{r['gpu']['index'] if r.get('gpu') else '-':>4}" if several else ""
            cells = "".join(f"{b * 1e6 / r[f'decode_b{b}_us']:>20.0f}" for b in batches)
            lines.append(f"{variant:<26}{gpu}{cells}{r['prefill_us'] / 1e3:>12.2f}{r['logits_cosine']:>9.4f}")
        for variant, r in rows.items():
            for base in ("bf16", "torch-fp8", "torch-fp8-inductor"):
                if variant == base or base not in rows or not variant.startswith("scaledmm"):
                    continue
                b = rows[base]
                ratios = " ".join(f"b{n} {b[f'decode_b{n}_us'] / r[f'decode_b{n}_us']:.2f}x" for n in batches)
                lines.append(
                    f"  {variant} over {base}: decode {ratios}; prefill {b['prefill_us'] / r['prefill_us']:.2f}x"
                )
        for variant, r in rows.items():
            if "compiled_graphs" in r:
                firsts = ", ".join(f"{k} {v:.1f}" for k, v in r["first_call_s"].items())
                lines.append(f"  {variant}: {r['compiled_graphs']} graphs compiled; first calls (s): {firsts}")
        for variant, r in rows.items():
            profile = next((v for k, v in r.items() if k.startswith("profile_b") and v), None)
            if profile is None:
                continue
            shares = ", ".join(f"{c} {profile['share'][c]:.0%}" for c in profile["share"])
            lines.append(
                f"  {variant}: profiled decode step ({next(k for k in r if k.startswith('profile_b'))[8:]}) "
                f"{profile['gpu_us_per_step']:.0f} us of kernels: {shares}"
            )
        lines.append("")
    return "\n".join(lines)
