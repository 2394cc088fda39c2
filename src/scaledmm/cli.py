"""The `scaledmm` command: `demo` (a quick look), `bench` (the GEMM benchmark), `bench-model` (a whole
decoder), `eval-model` (perplexity of a trained model, quantized), `tune` (ahead-of-time tuning) and
`configs` (the tuned files found)."""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from scaledmm.bench.shapes import BLOCK_FP8_MODELS, DEFAULT_M, TUNE_M, collect_shapes, preset_names
from scaledmm.checks import ACCUMULATIONS, DEFAULT_ACCUMULATION, check_block_size

DEFAULT_MODELS = ["llama3-8b", "qwen3-4b"]
DEFAULT_DTYPES = ["int8", "fp8"]


def _comma_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in _comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _add_shape_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        type=_comma_list,
        default=[],
        help=f"model preset(s), repeatable or comma-separated: {', '.join(preset_names())} "
        f"(default: {','.join(DEFAULT_MODELS)} when no shape is given; with --block-size "
        f"{','.join(BLOCK_FP8_MODELS)})",
    )
    parser.add_argument(
        "--hf-config",
        action="append",
        default=[],
        metavar="PATH",
        help="a local HuggingFace config.json (no download); repeatable",
    )
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="N,K",
        help="a weight shape, out features N and in features K; repeatable",
    )
    parser.add_argument(
        "--tp", type=int, default=1, help="tensor parallelism: divide the shapes as one rank holds them"
    )
    parser.add_argument(
        "--unfused",
        action="store_true",
        help="q, k, v and gate, up as separate shapes, as transformers' models hold them (default: fused)",
    )


def _add_grid_args(parser: argparse.ArgumentParser, default_m: tuple[int, ...]) -> None:
    parser.add_argument(
        "--m",
        type=_int_list,
        default=list(default_m),
        help=f"comma-separated M values (default: {','.join(map(str, default_m))})",
    )
    parser.add_argument("--dtype", type=_comma_list, help="int8, fp8 or both (default: both; fp8 with --block-size)")
    parser.add_argument("--replays", type=int, default=20, help="CUDA graph replays per timing (>= 20)")
    parser.add_argument(
        "--accumulation",
        type=_accumulations,
        default=[DEFAULT_ACCUMULATION],
        help="fp8 accumulation: fast (the tensor core's, as torch._scaled_mm(use_fast_accum=True)), precise "
        f"(promoted to fp32 every 128 K-elements), or fast,precise; the vendor runs in the same mode "
        f"(default: {DEFAULT_ACCUMULATION}); block scales are promoted every block in either",
    )
    parser.add_argument(
        "--block-size",
        type=_block_size,
        metavar="BLOCK_N,BLOCK_K",
        help="block-scaled fp8 (scaled_mm's block_size): 1 x BLOCK_K activation groups and BLOCK_N x BLOCK_K "
        "weight blocks, e.g. 128,128 (DeepSeek-V3's); timed against torch._scaled_mm's block mode",
    )


def _block_size(text: str) -> tuple[int, int]:
    try:
        block = tuple(int(t) for t in text.split(","))
        return check_block_size(block)
    except (TypeError, ValueError) as err:
        raise argparse.ArgumentTypeError(f"expected BLOCK_N,BLOCK_K (e.g. 128,128): {err}") from None


def _dtypes(args: argparse.Namespace, command: str) -> list[str]:
    """The dtypes asked for: --dtype, else int8 and fp8; block scales take fp8 only."""
    if args.block_size is None:
        return args.dtype or DEFAULT_DTYPES
    if args.dtype not in (None, ["fp8"]):
        sys.exit(f"scaledmm {command}: --block-size is for fp8 (block-scaled fp8), got --dtype {','.join(args.dtype)}")
    return ["fp8"]


def _accumulations(text: str) -> list[str]:
    modes = _comma_list(text)
    if not modes or set(modes) - set(ACCUMULATIONS):
        raise argparse.ArgumentTypeError(f"expected fast, precise or fast,precise, got {text!r}")
    return list(dict.fromkeys(modes))


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gpu_count(text: str, command: str) -> int:
    """--gpus: 'all' (every CUDA GPU of this host) or a count from 1 to the GPUs present; without
    CUDA only 1 (this process on the CPU). Exits naming --gpus otherwise, before any work starts."""
    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    found = f"{present} CUDA GPUs" if present else "no CUDA GPU"
    if text == "all":
        if not present:
            sys.exit(f"scaledmm {command}: --gpus all, but this host has {found}")
        return present
    try:
        count = int(text)
    except ValueError:
        sys.exit(f"scaledmm {command}: --gpus takes 'all' or a number of GPUs, got {text!r}")
    if count < 1:
        sys.exit(f"scaledmm {command}: --gpus must be 'all' or at least 1, got {text!r}")
    if count > max(present, 1):
        sys.exit(f"scaledmm {command}: --gpus {count}, but this host has {found}")
    return count


def _require_kernels_runnable(device: torch.device) -> None:
    from scaledmm.checks import INTERPRETER

    if device.type == "cpu" and not INTERPRETER:
        sys.exit(
            "scaledmm: no CUDA GPU found. Set TRITON_INTERPRET=1 to run the kernels on the CPU through "
            "Triton's interpreter (slow; for checking, not timing)."
        )


def cmd_bench(args: argparse.Namespace, command: str) -> int:
    from scaledmm.bench.micro import host_overhead, run_bench
    from scaledmm.bench.report import table, write_results

    device = _device()
    _require_kernels_runnable(device)
    out_dir = Path(args.out or f"scaledmm-bench/{datetime.datetime.now():%Y%m%d-%H%M%S}")
    if device.type == "cpu":
        print(
            "No GPU: the kernels run in Triton's interpreter and the CUDA baselines are skipped; "
            "the times below only show that the benchmark runs."
        )
    if args.host_overhead:
        result = host_overhead(device, args.calls)
        print(
            f"host time per call, shape M={result['shape']['m']} N={result['shape']['n']} "
            f"K={result['shape']['k']}, {result['calls']} calls a round, median round (min-max):"
        )
        for name, us in result["us_per_call"].items():
            if isinstance(us, str):
                print(f"  {name:<28} {us}")
            else:
                spread = result["rounds_us"][name]
                print(f"  {name:<28} {us:8.1f} us ({spread['min']:.1f}-{spread['max']:.1f})")
        for name, ratio in result["ratios"].items():
            if ratio is not None:
                print(f"  {name} = {ratio:.2f}")
        out_dir.mkdir(parents=True, exist_ok=True)
        from scaledmm.bench.micro import environment

        result["environment"] = environment(device, command)
        (out_dir / "host_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out_dir / 'host_overhead.json'}")
        return 0

    shapes = _shapes_or_exit(args, "bench")
    result = run_bench(
        shapes,
        args.m,
        _dtypes(args, "bench"),
        device,
        command=command,
        replays=args.replays,
        accumulations=args.accumulation,
        block_size=args.block_size,
    )
    print(table(result))
    for path in write_results(result, out_dir):
        print(f"wrote {path}")
    return 0


def cmd_demo(args: argparse.Namespace, command: str) -> int:
    """A quick look: on a GPU a short benchmark of one model; without one, a correctness check of the
    kernels through Triton's interpreter."""
    device = _device()
    if device.type == "cuda":
        bench_argv = [
            "bench",
            "--model",
            "llama3-8b",
            "--m",
            "1,16,256,4096",
            *(["--out", args.out] if args.out else []),
        ]
        return cmd_bench(build_parser().parse_args(bench_argv), command)

    _require_kernels_runnable(device)
    import scaledmm
    from scaledmm.testing import make_operands, max_error_ratio

    print(
        "No GPU found: checking the kernels on the CPU through Triton's interpreter "
        "(timings need a GPU; on one, `scaledmm demo` benchmarks against torch._scaled_mm)."
    )
    worst = 0.0
    for dtype in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2):
        for M, N, K in ((1, 64, 128), (7, 33, 130), (64, 96, 257)):
            ops = make_operands(M, N, K, dtype, device)
            out = scaledmm.scaled_mm(*ops.args(), bias=ops.bias)
            ratio = max_error_ratio(out, ops)
            worst = max(worst, ratio)
            verdict = "ok" if ratio <= 1 else "WRONG"
            print(
                f"  {str(dtype).removeprefix('torch.'):<14} M={M:<3} N={N:<3} K={K:<3} "
                f"error {ratio:5.2f}x of the bound  {verdict}  config {scaledmm.select_config(M, N, K, dtype)}"
            )
    print("all results within the error bound" if worst <= 1 else "SOME RESULTS ARE WRONG")
    return 0 if worst <= 1 else 1


def _shapes_or_exit(args: argparse.Namespace, command: str):
    models = [m for group in args.model for m in group]
    if not (models or args.hf_config or args.shape):
        models = list(BLOCK_FP8_MODELS) if getattr(args, "block_size", None) else DEFAULT_MODELS
    try:
        return collect_shapes(models, args.hf_config, args.shape, args.tp, fused=not args.unfused)
    except (ValueError, OSError) as err:
        sys.exit(f"scaledmm {command}: {err}")


def cmd_tune(args: argparse.Namespace, command: str) -> int:
    import os

    from scaledmm.configs.lookup import CONFIG_DIR_ENV
    from scaledmm.tune.distributed import TuneSettings, tune_on_local_devices, tune_under_torchrun
    from scaledmm.tune.runner import Job

    shapes = _shapes_or_exit(args, "tune")
    dtypes = _dtypes(args, "tune")
    unknown = set(dtypes) - {"int8", "fp8"}
    if unknown:
        sys.exit(f"scaledmm tune: unknown dtypes {sorted(unknown)}; choose int8, fp8")
    out_dir = Path(args.out or os.environ.get(CONFIG_DIR_ENV) or "scaledmm-configs")
    if len(args.accumulation) != 1:
        sys.exit("scaledmm tune: one --accumulation per run (fast or precise); run it again for the other")
    block = args.block_size
    # Block-scaled jobs have no accumulation mode (promoted every block): "fast", as their files say.
    jobs = [
        Job(s.n, s.k, d, m, args.accumulation[0] if d == "fp8" and block is None else "fast", block)
        for s in shapes
        for d in dtypes
        for m in args.m
    ]
    scales = {}
    if block is not None:
        scales["scales"] = (
            f"block scales: 1 x {block[1]} groups of a, {block[0]} x {block[1]} blocks of b, bf16 bias, bf16 out"
        )
    deadline = None if args.time_limit is None else time.time() + args.time_limit
    settings = TuneSettings(
        deadline=deadline,
        jobs=jobs,
        out_dir=out_dir,
        command=command,
        replays=args.replays,
        max_candidates=args.max_candidates,
        compile_workers=args.compile_workers,
        retune=args.retune,
        **scales,
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        tune_under_torchrun(settings)
        return 0
    device = _device()
    _require_kernels_runnable(device)
    if device.type == "cpu":
        print("No GPU: tuning on the CPU through Triton's interpreter; the times only show the tuner runs.")
        world = 1
    else:
        world = _gpu_count(args.gpus, "tune")
    print(
        f"tuning {len(jobs)} points ({len(shapes)} shapes x {len(dtypes)} dtypes x {len(args.m)} M"
        f"{'' if block is None else f', block scales {block[0]}x{block[1]}'}) "
        f"on {world} {'GPU' if device.type == 'cuda' else 'CPU process'}{'s' if world > 1 else ''} "
        f"into {out_dir}",
        flush=True,
    )
    tune_on_local_devices(settings, world, device.type)
    return 0


def cmd_configs(args: argparse.Namespace, command: str) -> int:
    from scaledmm.configs.files import ConfigFileError, TunedTable, read_json
    from scaledmm.configs.lookup import config_dirs, list_config_files

    found = list_config_files()
    valid = [(p, t) for p, t in found if isinstance(t, TunedTable)]
    if args.summary:
        from scaledmm.tune.report import files_summary

        print(files_summary([read_json(path) for path, _ in valid]))
        return 0
    if args.json:
        rows = []
        for path, table in valid:
            try:
                meta = read_json(path)  # read again for its metadata: it may have changed since
            except ConfigFileError:
                meta = None
            rows.append(
                {
                    "device": table.device_name,
                    "N": table.n,
                    "K": table.k,
                    "dtype": table.dtype,
                    "accumulation": table.accumulation,
                    "block_shape": None if table.block_shape is None else list(table.block_shape),
                    "m_buckets": [b.m for b in table.buckets],
                    "path": str(path),
                    "triton_version": meta.get("triton") if isinstance(meta, dict) else None,
                }
            )
        print(json.dumps(rows, indent=1))
        for _, error in found:  # stdout stays the JSON list of usable files
            if not isinstance(error, TunedTable):
                print(f"INVALID, skipped: {error}", file=sys.stderr)
        return 0
    print("searched, in order: " + ", ".join(str(d) for d in config_dirs()))
    if not found:
        print("no config files: every call uses the heuristic (run `scaledmm tune` to make some)")
    for path, table in found:
        if isinstance(table, TunedTable):
            ms = [b.m for b in table.buckets]
            backends = sorted({b.backend for b in table.buckets})
            block = table.block_shape
            mode = table.accumulation if block is None else f"{block[0]}x{block[1]}"
            print(
                f"  {table.device_name:<24} N={table.n:<6} K={table.k:<6} {table.dtype:<5} {mode:<8} "
                f"{len(ms):>2} buckets (M {ms[0]}..{ms[-1]}; {'/'.join(backends)})  {path}"
            )
        else:
            print(f"  INVALID, skipped: {table}")
    return 0


def cmd_bench_model(args: argparse.Namespace, command: str) -> int:
    from scaledmm.bench.micro import environment
    from scaledmm.bench.model import (
        ARCHITECTURES,
        COMPILED_VARIANTS,
        EAGER_VARIANTS,
        VARIANTS,
        ModelRun,
        PartialResults,
        model_table,
        run_model_bench,
        run_model_bench_on_gpus,
        split_variants,
    )
    from scaledmm.bench.report import plot_model

    device = _device()
    _require_kernels_runnable(device)
    gpus = _gpu_count(args.gpus, "bench-model")
    models = [m for group in args.model for m in group] or DEFAULT_MODELS
    variants = args.variants or list(COMPILED_VARIANTS if args.compile else EAGER_VARIANTS)
    unknown = set(models) - set(ARCHITECTURES) or set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(
            f"scaledmm bench-model: unknown {sorted(unknown)}; models: {', '.join(ARCHITECTURES)}; "
            f"variants: {', '.join(VARIANTS)}"
        )
    run = ModelRun(
        batches=args.batch,
        context=args.context,
        prefill=args.prefill,
        replays=args.replays,
        compile=args.compile,
        compile_backend=args.compile_backend,
        profile_batch=args.profile_batch or None,
    )
    out_dir = _out_dir(args.out, "model")
    results = PartialResults(out_dir / "model_results.json", run, environment(device, command), models, variants)
    groups = split_variants(variants, gpus)
    if len(groups) == 1:
        run_model_bench(models, variants, run, device, command, layers=args.layers, on_row=results.add)
    else:
        for index, group in enumerate(groups):
            print(f"GPU {index} ({torch.cuda.get_device_name(index)}): {', '.join(group)}", flush=True)
        run_model_bench_on_gpus(models, groups, run, results.add, command, layers=args.layers)
    result = results.result()
    print(model_table(result))
    print(f"wrote {results.path}")  # rewritten after every row, complete after the last
    for path in plot_model(result, out_dir):
        print(f"wrote {path}")
    return 0


def cmd_eval_model(args: argparse.Namespace, command: str) -> int:
    from dataclasses import fields

    from scaledmm.bench.perplexity import EvalSettings, eval_table, run_eval

    device = _device()
    _require_kernels_runnable(device)
    if device.type == "cpu":
        print("No GPU: training and evaluating on the CPU (kernels in Triton's interpreter); use tiny settings.")
    names = {f.name for f in fields(EvalSettings)}
    try:
        settings = EvalSettings(**{k: v for k, v in vars(args).items() if k in names and v is not None})
    except (TypeError, ValueError) as err:
        sys.exit(f"scaledmm eval-model: {err}")
    result = run_eval(settings, device, command)
    print(eval_table(result))
    _write_result(result, args.out, "eval", "eval_results.json")
    return 0


def _out_dir(out: str | None, prefix: str) -> Path:
    """A command's output folder: `out`, or scaledmm-bench/<prefix>-<time>; made if missing."""
    out_dir = Path(out or f"scaledmm-bench/{prefix}-{datetime.datetime.now():%Y%m%d-%H%M%S}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _write_result(result: dict, out: str | None, prefix: str, file: str) -> Path:
    """A command's JSON result, into `out` or scaledmm-bench/<prefix>-<time> (atomically); returns
    the folder."""
    from scaledmm.configs.files import write_json_atomic

    out_dir = _out_dir(out, prefix)
    write_json_atomic(out_dir / file, result)
    print(f"wrote {out_dir / file}")
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaledmm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a quick benchmark on a GPU, or a correctness check without one")
    demo.add_argument("--out", help="where to write results (default: scaledmm-bench/<time>)")

    bench = sub.add_parser("bench", help="time scaledmm against the vendor kernels (../shared/BENCHMARKING.md)")
    _add_shape_args(bench)
    _add_grid_args(bench, DEFAULT_M)
    bench.add_argument("--out", help="where to write results (default: scaledmm-bench/<time>)")
    bench.add_argument("--host-overhead", action="store_true", help="measure CPU time per call on a tiny shape instead")
    bench.add_argument("--calls", type=int, default=3000, help="calls per host-overhead measurement")

    tune = sub.add_parser("tune", help="tune configs ahead of time for this GPU and write config files")
    _add_shape_args(tune)
    _add_grid_args(tune, TUNE_M)
    tune.add_argument(
        "--out",
        help="directory of the config files (default: $SCALEDMM_CONFIG_DIR, else "
        "./scaledmm-configs); an interrupted run continues there",
    )
    tune.add_argument("--gpus", default="1", help="'all', or how many GPUs of this host to use (default 1)")
    tune.add_argument("--max-candidates", type=int, help="time at most this many configs per point (quick runs)")
    tune.add_argument("--compile-workers", type=int, help="compile processes per GPU (default: cores / GPUs - 1)")
    tune.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="start no new job after this long; what is done is saved, and the same command continues",
    )
    tune.add_argument(
        "--retune",
        action="store_true",
        help="tune again the buckets the folder already holds (after a change the kernel revision does not "
        "see: the search space, the launch path); an interrupted --retune run continues when run again with --retune",
    )

    model = sub.add_parser("bench-model", help="a whole decoder: bf16 against W8A8 (scaledmm, torch._scaled_mm)")
    model.add_argument(
        "--model", action="append", type=_comma_list, default=[], help="llama3-8b, qwen3-4b (default: both)"
    )
    model.add_argument(
        "--variants",
        type=_comma_list,
        help="bf16 or <scaledmm|torch>-<int8|fp8>[-unfused|-fusedquant|-inductor] (scaledmm.bench.model says "
        "what each means); default: bf16, scaledmm-int8, scaledmm-fp8, scaledmm-fp8-unfused, torch-fp8; with "
        "--compile bf16, scaledmm-int8-fusedquant, scaledmm-fp8-fusedquant, scaledmm-fp8-inductor, scaledmm-fp8, "
        "torch-fp8-inductor",
    )
    model.add_argument(
        "--compile",
        action="store_true",
        help="run every variant, bf16 included, under torch.compile(fullgraph=True), in our CUDA graphs",
    )
    model.add_argument("--compile-backend", default="inductor", help=argparse.SUPPRESS)  # "aot_eager" in tests
    model.add_argument(
        "--profile-batch",
        type=int,
        default=1,
        help="the decode batch whose step is profiled (GPU time by kind of kernel); 0: none (default 1)",
    )
    model.add_argument("--batch", type=_int_list, default=[1, 8, 32, 128], help="decode batch sizes")
    model.add_argument("--context", type=int, default=512, help="cached tokens per sequence at the decode step")
    model.add_argument("--prefill", type=int, default=2048, help="prompt tokens of the prefill measurement")
    model.add_argument("--layers", type=int, help="fewer decoder layers than the model has (quick runs)")
    model.add_argument("--replays", type=int, default=20, help="CUDA graph replays per timing (>= 20)")
    model.add_argument(
        "--gpus",
        default="1",
        help="'all', or how many GPUs of this host to use (default 1: this process). The variants, in the order "
        "of --variants, are split into contiguous groups, one worker process per GPU: with 2 GPUs and variants "
        "a,b,c,d GPU 0 runs a,b and GPU 1 runs c,d, so the order decides which variants share a card. Each row "
        "records its GPU; ratios between rows of different GPUs compare two cards of one host",
    )
    model.add_argument(
        "--out",
        help="where to write model_results.json, rewritten after every variant so a killed run keeps the "
        "finished ones (default: scaledmm-bench/model-<time>)",
    )

    evaluate = sub.add_parser(
        "eval-model",
        help="train a small byte-level Llama on the Python standard library, then held-out perplexity of bf16, "
        "int8 and fp8 (per-token and static activations)",
    )
    evaluate.add_argument("--train-seconds", type=float, help="training time (default 100; about right on an H200)")
    evaluate.add_argument("--max-steps", type=int, help="stop training after this many steps (quick checks)")
    for name in ("layers", "hidden", "intermediate", "heads", "kv-heads", "seq-len", "batch", "eval-windows", "seed"):
        evaluate.add_argument(f"--{name}", type=int, help="(default: scaledmm.bench.perplexity.EvalSettings)")
    evaluate.add_argument("--calibration-windows", type=int, help="training windows the static scales come from")
    evaluate.add_argument("--eval-batch", type=int, help="windows per evaluation forward")
    evaluate.add_argument("--out", help="where to write eval_results.json (default: scaledmm-bench/eval-<time>)")

    configs = sub.add_parser("configs", help="list the tuned config files scaledmm finds")
    configs.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    configs.add_argument(
        "--summary",
        action="store_true",
        help="what the files gain as the tuner measured it: geomean speed over the vendor and the heuristic per "
        "card, dtype and range of M",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = shlex.join(["scaledmm", *argv])
    handler = {
        "demo": cmd_demo,
        "bench": cmd_bench,
        "bench-model": cmd_bench_model,
        "eval-model": cmd_eval_model,
        "tune": cmd_tune,
        "configs": cmd_configs,
    }[args.command]
    return handler(args, command)


if __name__ == "__main__":
    sys.exit(main())
