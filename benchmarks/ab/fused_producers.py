"""A/B of the fused producers (issue 19): our RMSNorm + quantize and SiLU * up + quantize kernels
against the same arithmetic written in torch for Inductor to fuse, and against the unfused pair
(the producer, then our quantize_per_token), at llama3-8b's sizes (hidden 4096, intermediate
14336) and decode to prefill rows. GPU time per call by the benchmark protocol (CUDA graphs).

Forms timed, per producer and M:
  unfused eager       transformers' torch code run eagerly, then quantize_per_token (what a
                      quantize_model'd model does without fuse_producers)
  unfused compiled    the producer compiled by Inductor (one kernel), then quantize_per_token
  ours                scaledmm.rms_norm_quantize / silu_mul_quantize (fuse_producers="triton")
  inductor            producer + quantize_per_token_torch, compiled (fuse_producers="inductor")
and, for the norm, with the residual add before it as in a decoder layer (the sum is written too:
the next residual):
  add + ours          the add (compiled), then our kernel: what the compiled model runs
  add+norm+q inductor one compiled function: Inductor may fuse all three

Bits: "ours" against the unfused float producer of the same kernel quantized by quantize_per_token
(must be equal), and the share of quantized values on which "ours" and "inductor" agree (Inductor
sums in its own order, so a few values may round to the neighbouring step).

    PYTHONPATH=src python3 benchmarks/ab/fused_producers.py [--dtype int8] [--m 1,8,32,128,2048]
"""

import argparse

import torch

import scaledmm
from scaledmm.bench.timing import rotation_count, time_interleaved
from scaledmm.kernels.producers import bind_rms_norm_quantize, bind_silu_mul_quantize
from scaledmm.nn.producers import quantize_per_token_torch, rms_norm_torch, silu_mul_torch

HIDDEN, INTERMEDIATE, EPS = 4096, 14336, 1e-5
BF16 = torch.bfloat16


def copies(M, K, device, count):
    return [torch.randn(M, K, device=device, dtype=BF16) * 3 for _ in range(count)]


def rms_norm_point(M, dtype, device):
    R = min(16, rotation_count(M * HIDDEN * 2, device))
    weight = (torch.rand(HIDDEN, device=device) + 0.5).to(BF16)
    xs, residuals = copies(M, HIDDEN, device, R), copies(M, HIDDEN, device, R)

    def unfused_eager(x, r):
        return scaledmm.quantize_per_token(rms_norm_torch(x, weight, EPS), dtype)

    norm_compiled = torch.compile(lambda x: rms_norm_torch(x, weight, EPS), dynamic=False)

    def unfused_compiled(x, r):
        return scaledmm.quantize_per_token(norm_compiled(x), dtype)

    def ours(x, r):
        return scaledmm.rms_norm_quantize(x, weight, EPS, dtype)

    inductor = torch.compile(
        lambda x, r: quantize_per_token_torch(rms_norm_torch(x, weight, EPS), dtype), dynamic=False
    )
    add = torch.compile(lambda x, r: x + r, dynamic=False)

    def add_ours(x, r):
        total = add(x, r)
        return total, scaledmm.rms_norm_quantize(total, weight, EPS, dtype)

    def add_norm_quantize(x, r):
        total = x + r
        return total, quantize_per_token_torch(rms_norm_torch(total, weight, EPS), dtype)

    add_inductor = torch.compile(add_norm_quantize, dynamic=False)
    forms = {
        "unfused eager": unfused_eager,
        "unfused compiled": unfused_compiled,
        "ours": ours,
        "inductor": inductor,
        "add + ours": add_ours,
        "add+norm+q inductor": add_inductor,
    }
    x = xs[0]
    float_norm = torch.empty_like(x)
    bind_rms_norm_quantize(x, weight, float_norm, None, EPS)
    quantized = ours(x, residuals[0]), scaledmm.quantize_per_token(float_norm, dtype), inductor(x, residuals[0])
    return forms, list(zip(xs, residuals)), *quantized


def silu_mul_point(M, dtype, device):
    R = min(16, rotation_count(M * INTERMEDIATE * 4, device))
    products = copies(M, 2 * INTERMEDIATE, device, R)  # the fused gate/up output; gate and up are its halves
    halves = [(p[:, :INTERMEDIATE], p[:, INTERMEDIATE:]) for p in products]

    def unfused_eager(gate, up):
        return scaledmm.quantize_per_token(silu_mul_torch(gate, up), dtype)

    silu_compiled = torch.compile(silu_mul_torch, dynamic=False)

    def unfused_compiled(gate, up):
        return scaledmm.quantize_per_token(silu_compiled(gate, up), dtype)

    def ours(gate, up):
        return scaledmm.silu_mul_quantize(gate, up, dtype)

    inductor = torch.compile(lambda gate, up: quantize_per_token_torch(silu_mul_torch(gate, up), dtype), dynamic=False)
    forms = {"unfused eager": unfused_eager, "unfused compiled": unfused_compiled, "ours": ours, "inductor": inductor}
    gate, up = halves[0]
    float_product = torch.empty_like(gate)
    bind_silu_mul_quantize(gate, up, float_product, None)
    return forms, halves, ours(gate, up), scaledmm.quantize_per_token(float_product, dtype), inductor(gate, up)


def same_bits(a, b):
    return torch.equal(a[0].view(torch.int8), b[0].view(torch.int8)) and torch.equal(a[1], b[1])


def agreement(a, b):
    return (a[0].view(torch.int8) == b[0].view(torch.int8)).float().mean().item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtype", default="fp8", choices=["fp8", "int8"])
    parser.add_argument("--m", default="1,8,32,128,2048")
    parser.add_argument("--device", default="cuda", help="cpu (with TRITON_INTERPRET=1): a check that it runs")
    args = parser.parse_args()
    dtype = torch.float8_e4m3fn if args.dtype == "fp8" else torch.int8
    device = torch.device(args.device)
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 256)  # one compiled function per form and M
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (interpreter: times mean nothing)"
    print(name, "torch", torch.__version__, args.dtype)
    failures = 0
    for producer, point in (("rmsnorm K=4096", rms_norm_point), ("silu*up K=14336", silu_mul_point)):
        print(f"== {producer}: GPU us per call (CUDA graphs); bits")
        for M in map(int, args.m.split(",")):
            forms, inputs, fused, unfused, by_inductor = point(M, dtype, device)
            times = time_interleaved([(fn, inputs) for fn in forms.values()], 20)
            exact = same_bits(fused, unfused)
            failures += not exact
            cells = "  ".join(f"{name} {t.median_us:6.2f}" for name, t in zip(forms, times))
            best = min(zip(forms, times), key=lambda item: item[1].median_us)[0]
            print(
                f"  M={M:5d}  {cells}  | fastest: {best}; ours == producer then quantize: {exact}; "
                f"ours vs inductor values equal: {agreement(fused, by_inductor):.4%}"
            )
    print("ALL BITS EQUAL" if not failures else f"{failures} POINTS WHERE THE FUSED BITS DIFFER")


if __name__ == "__main__":
    main()
