"""`scaledmm eval-model`: the accuracy of W8A8 on a trained model, as held-out perplexity.

Random weights say little about quantization error, and no checkpoint can be downloaded on the
machines this runs on; so the run trains one. A small decoder of transformers' Llama architecture
(byte-level: vocabulary 256) learns the Python standard library's .py sources, which every Python
installation has, for a fixed time on the GPU (AdamW, bf16 autocast). Files are split into
training and held-out text by their sorted position (every `holdout_every`-th file is held out), so
the held-out perplexity measures text the model never saw.

The trained model is then cast to bf16 and, per variant, copied and quantized with quantize_model:
int8, fp8 with fast and with precise accumulation; activations per token (dynamic) or with one
static scale per layer, calibrated as max |input| over training windows; and the per-token variants
again with the quantization fused into the producers (fuse_producers="triton"). Reported for each:
held-out perplexity (exp of the mean cross-entropy per byte), its change against bf16, and the
cosine similarity of its logits to bf16's (the secondary figure `bench-model` reports on random
weights).
"""

from __future__ import annotations

import copy
import datetime
import math
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from scaledmm.bench.micro import environment
from scaledmm.kernels.quant import ABSMAX_FLOOR, QMAX
from scaledmm.nn import W8A8Linear, quantize_model

VOCAB = 256  # bytes


@dataclass
class EvalSettings:
    """The model, its training and the evaluation. The defaults train for about 100 s on an H200."""

    layers: int = 6
    hidden: int = 512
    intermediate: int = 1536
    heads: int = 8
    kv_heads: int = 4
    seq_len: int = 512
    batch: int = 64
    train_seconds: float = 100.0
    max_steps: int | None = None  # stop earlier (tests)
    lr: float = 2e-3
    warmup_steps: int = 100
    eval_windows: int = 256
    eval_batch: int = 32
    calibration_windows: int = 32
    holdout_every: int = 10
    max_corpus_bytes: int = 64 << 20
    seed: int = 0

    def __post_init__(self) -> None:
        # Checked before the corpus is read and the model trained: a bad evaluation setting would
        # otherwise fail only after the training time was spent.
        at_least_one = ("layers", "hidden", "intermediate", "heads", "kv_heads", "seq_len", "batch", "warmup_steps")
        at_least_one += ("eval_windows", "eval_batch", "calibration_windows", "holdout_every", "max_corpus_bytes")
        for name in at_least_one:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int >= 1, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(
                f"hidden must be a multiple of heads and heads of kv_heads, got hidden={self.hidden}, "
                f"heads={self.heads}, kv_heads={self.kv_heads}"
            )
        if not self.train_seconds > 0 or (self.max_steps is not None and self.max_steps < 0):
            raise ValueError(
                f"train_seconds must be > 0 and max_steps >= 0, got {self.train_seconds} and {self.max_steps}"
            )


# (name, quantize_model arguments); bf16 first, the reference of every other row.
EVAL_VARIANTS = (
    ("bf16", None),
    ("int8 per-token", dict(dtype="int8")),
    ("int8 static", dict(dtype="int8", activation="static")),
    ("fp8 fast per-token", dict(dtype="fp8", accumulation="fast")),
    ("fp8 fast static", dict(dtype="fp8", accumulation="fast", activation="static")),
    ("fp8 precise per-token", dict(dtype="fp8", accumulation="precise")),
    ("fp8 precise static", dict(dtype="fp8", accumulation="precise", activation="static")),
    ("int8 per-token, fused producers", dict(dtype="int8", fuse_producers="triton")),
    ("fp8 fast per-token, fused producers", dict(dtype="fp8", accumulation="fast", fuse_producers="triton")),
)


def stdlib_corpus(holdout_every: int, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The standard library's .py sources as bytes (uint8 tensors): (training, held out, what was
    read). Files in site-packages or dist-packages are left out (they differ between machines)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p for p in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
    )
    train, held_out, size = [], [], 0
    for index, path in enumerate(files):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        (held_out if index % holdout_every == 0 else train).append(data)
        size += len(data)
        if size >= max_bytes:
            break
    info = {"root": str(root), "files": len(files), "train_bytes": sum(map(len, train))}
    info["held_out_bytes"] = sum(map(len, held_out))
    return _bytes_tensor(train), _bytes_tensor(held_out), info


def _bytes_tensor(parts: list[bytes]) -> torch.Tensor:
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)


def build_model(settings: EvalSettings, device: torch.device) -> torch.nn.Module:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=settings.hidden,
        intermediate_size=settings.intermediate,
        num_hidden_layers=settings.layers,
        num_attention_heads=settings.heads,
        num_key_value_heads=settings.kv_heads,
        head_dim=settings.hidden // settings.heads,
        max_position_embeddings=settings.seq_len,
        tie_word_embeddings=False,
    )
    with torch.device(device):
        return transformers.LlamaForCausalLM(config)


def random_windows(data: torch.Tensor, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`count` windows of `length` + 1 bytes at random offsets, as int64 token ids."""
    starts = torch.randint(0, data.numel() - length - 1, (count,), generator=generator)
    return data[starts[:, None] + torch.arange(length + 1)].long()


def _loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=windows[:, :-1], use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), windows[:, 1:].reshape(-1))


def train(model: torch.nn.Module, data: torch.Tensor, settings: EvalSettings, device: torch.device) -> dict:
    """AdamW in bf16 autocast on random windows until `train_seconds` (or `max_steps`) are spent;
    the learning rate warms up, then decays along a cosine over the time budget."""
    generator = torch.Generator().manual_seed(settings.seed)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
    model.train()
    start, step, losses = time.perf_counter(), 0, []
    while True:
        elapsed = time.perf_counter() - start
        if elapsed >= settings.train_seconds or (settings.max_steps is not None and step >= settings.max_steps):
            break
        warmup = min(1.0, (step + 1) / settings.warmup_steps)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / settings.train_seconds)))
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * warmup * decay
        windows = random_windows(data, settings.batch, settings.seq_len, generator).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = _loss(model, windows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0 or step == 1:
            losses.append((step, round(time.perf_counter() - start, 1), loss.item()))
    model.eval()
    final = loss.item() if step else float("nan")
    return {"steps": step, "seconds": time.perf_counter() - start, "final_train_loss": final, "loss_curve": losses}


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    """(held-out perplexity over `windows`, the logits of the first batch as fp32)."""
    total, count, first = 0.0, 0, None
    for i in range(0, windows.shape[0], batch):
        chunk = windows[i : i + batch]
        logits = model(input_ids=chunk[:, :-1], use_cache=False).logits.float()
        if first is None:
            first = logits
        targets = chunk[:, 1:].reshape(-1)
        total += torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets, reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count), first


@torch.no_grad()
def input_absmax(model: torch.nn.Module, windows: torch.Tensor, batch: int) -> dict[str, float]:
    """max |input| of every nn.Linear over the calibration windows, by module name."""
    absmax: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):

            def record(module, args, name=name):
                absmax[name] = max(absmax.get(name, 0.0), args[0].detach().abs().amax().float().item())

            handles.append(module.register_forward_pre_hook(record))
    try:
        for i in range(0, windows.shape[0], batch):
            model(input_ids=windows[i : i + batch, :-1], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return absmax


def set_static_scales(model: torch.nn.Module, absmax: dict[str, float]) -> None:
    for name, module in model.named_modules():
        if isinstance(module, W8A8Linear) and module.activation == "static":
            module.input_scale.fill_(max(absmax[name], ABSMAX_FLOOR) / QMAX[module.qdtype])


def run_eval(settings: EvalSettings, device: torch.device, command: str = "", log=print) -> dict:
    torch.manual_seed(settings.seed)
    train_data, held_out, corpus = stdlib_corpus(settings.holdout_every, settings.max_corpus_bytes)
    log(
        f"corpus: {corpus['files']} files under {corpus['root']}, {corpus['train_bytes'] / 1e6:.1f} MB to train on, "
        f"{corpus['held_out_bytes'] / 1e6:.1f} MB held out"
    )
    model = build_model(settings, device)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"training {parameters / 1e6:.1f}M parameters for {settings.train_seconds:.0f} s ...")
    training = train(model, train_data.to(device), settings, device)
    log(
        f"  {training['steps']} steps in {training['seconds']:.0f} s, "
        f"final train loss {training['final_train_loss']:.3f}"
    )
    model = model.to(torch.bfloat16)

    eval_count = min(settings.eval_windows, held_out.numel() // (settings.seq_len + 1))
    windows = held_out[: eval_count * (settings.seq_len + 1)].view(eval_count, settings.seq_len + 1).long().to(device)
    calibration = random_windows(
        train_data, settings.calibration_windows, settings.seq_len, torch.Generator().manual_seed(settings.seed + 1)
    ).to(device)
    absmax = input_absmax(model, calibration, settings.eval_batch)

    rows, reference = [], None
    for name, options in EVAL_VARIANTS:
        variant = model
        if options is not None:
            variant = copy.deepcopy(model)
            quantize_model(variant, **options)
            set_static_scales(variant, absmax)
        ppl, logits = evaluate(variant, windows, settings.eval_batch)
        if reference is None:
            reference = (ppl, logits)
        cosine = torch.nn.functional.cosine_similarity(logits.flatten(), reference[1].flatten(), dim=0).item()
        rows.append({"variant": name, "perplexity": ppl, "vs_bf16": ppl / reference[0] - 1, "logits_cosine": cosine})
        log(f"  {name:<38} perplexity {ppl:.4f} ({rows[-1]['vs_bf16']:+.2%})  cosine {cosine:.5f}")
        del variant
    return {
        "environment": environment(device, command),
        "python": sys.version.split()[0],
        "settings": asdict(settings),
        "parameters": parameters,
        "corpus": corpus,
        "eval_tokens": eval_count * settings.seq_len,
        "training": training,
        "rows": rows,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def eval_table(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"== byte-level Llama, {s['layers']} layers, hidden {s['hidden']}, {result['parameters'] / 1e6:.1f}M "
        f"parameters, trained {result['training']['steps']} steps on the Python {result['python']} standard "
        f"library; held-out perplexity over {result['eval_tokens']} bytes",
        f"{'variant':<38}{'perplexity':>12}{'vs bf16':>10}{'cosine':>10}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['variant']:<38}{r['perplexity']:>12.4f}{r['vs_bf16']:>+10.2%}{r['logits_cosine']:>10.5f}")
    return "\n".join(lines)
