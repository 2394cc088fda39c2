"""Same bits before and after a refactor: run every shipped bucket's config with two source trees and
compare the outputs' sha256 digests.

Each tree runs in a process of its own, with its own scaledmm: it loads the shipped config files with
its own `configs.files.load_table` and calls its own `scaledmm.scaled_mm(..., config=bucket.config)`
for each bucket, on inputs drawn as ../../BENCHMARKING.md prescribes from a seed fixed per bucket (the
file's dtype, int8 or fp8 e4m3; per-token [M, 1] and per-channel [1, N] fp32 scales; bf16 bias; B =
weight.t() of a row-major weight; bf16 output; M the bucket's). The last line says PASS when every
bucket's output is bitwise the same in both trees, else FAIL.

    python3 benchmarks/ab/refactor_bitwise.py --old OLD/src --new src

where OLD/src is the src folder of the version before, e.g. made with
`mkdir -p ab-old && git archive 310729a src | tar -x -C ab-old`. On a machine without a GPU,
TRITON_INTERPRET=1 runs a few buckets at small M in Triton's interpreter (a check of the script):

    TRITON_INTERPRET=1 python3 benchmarks/ab/refactor_bitwise.py --old ab-old/src --new src --limit 3 --max-m 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _seed(file: str, m: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{file}:{m}".encode()).digest()[:8], "little")


def _inputs(M: int, N: int, K: int, dtype, device, seed: int):
    """BENCHMARKING.md's operands, drawn here (not by the tree's scaledmm.testing) so that both trees
    get the same ones."""
    import torch

    gen = torch.Generator(device).manual_seed(seed)
    if dtype == torch.int8:
        a = torch.randint(-127, 128, (M, K), dtype=torch.int8, device=device, generator=gen)
        weight = torch.randint(-127, 128, (N, K), dtype=torch.int8, device=device, generator=gen)
    else:
        a = torch.randn(M, K, device=device, generator=gen).clamp(-448, 448).to(dtype)
        weight = torch.randn(N, K, device=device, generator=gen).clamp(-448, 448).to(dtype)
    scale_a = torch.rand(M, 1, device=device, generator=gen) + 0.5
    scale_b = torch.rand(1, N, device=device, generator=gen) + 0.5
    bias = torch.randn(N, device=device, generator=gen).to(torch.bfloat16)
    return a, weight.t(), scale_a, scale_b, bias


def _compile(launch: tuple) -> None:
    """Compile one launch ahead (in a worker process): only Triton's on-disk cache is filled."""
    import torch

    from scaledmm.kernels.matmul import compile_scaled_mm

    M, N, K, dtype, config = launch
    meta = torch.device("meta")  # every pointer 16-byte aligned, as the run's tensors are
    a, b = torch.empty(M, K, dtype=dtype, device=meta), torch.empty(N, K, dtype=dtype, device=meta).t()
    scale_a, scale_b = torch.empty(M, 1, device=meta), torch.empty(1, N, device=meta)
    bias, out = torch.empty(N, dtype=torch.bfloat16, device=meta), torch.empty(M, N, dtype=torch.bfloat16, device=meta)
    try:
        compile_scaled_mm(a, b, scale_a, scale_b, bias, out, config)
    except Exception as err:  # the run compiles it again and reports what fails
        print(f"compiling {launch} ahead failed: {err}", file=sys.stderr)


def run_tree(args: argparse.Namespace) -> None:
    """Run the buckets asked for with the scaledmm on sys.path; write one JSON line per bucket to
    args.out. On a GPU their kernels are compiled first, by args.compile_workers processes."""
    import torch

    import scaledmm
    from scaledmm.configs.files import load_table

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
    ms = None if args.m is None else {int(m) for m in args.m.split(",")}
    jobs = []
    for path in sorted((Path(scaledmm.__file__).parent / "configs" / "data").glob("*.json")):
        if args.file not in path.name:
            continue
        table = load_table(path)
        for bucket in table.buckets:
            if (ms is None or bucket.m in ms) and (args.limit is None or len(jobs) < args.limit):
                M = bucket.m if args.max_m is None else min(bucket.m, args.max_m)
                jobs.append((path.name, table.n, table.k, dtypes[table.dtype], bucket, M))
    if device.type == "cuda" and args.compile_workers > 0:
        launches = {(M, N, K, dtype, bucket.config) for _, N, K, dtype, bucket, M in jobs}
        with ProcessPoolExecutor(args.compile_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_compile, launches))
    rows = []
    for file, N, K, dtype, bucket, M in jobs:
        a, b, scale_a, scale_b, bias = _inputs(M, N, K, dtype, device, _seed(file, M))
        result = scaledmm.scaled_mm(a, b, scale_a, scale_b, torch.bfloat16, bias, config=bucket.config)
        bits = result.view(torch.int16).cpu().numpy().tobytes()
        rows.append(
            {
                "file": file,
                "m": bucket.m,
                "run_m": M,
                "config": str(bucket.config),
                "sha256": hashlib.sha256(bits).hexdigest(),
                "finite": bool(torch.isfinite(result).all()),
            }
        )
        del a, b, scale_a, scale_b, bias, result
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton's interpreter)"
    header = {"device": name, "torch": torch.__version__, "scaledmm": scaledmm.__file__}
    args.out.write_text(json.dumps(header) + "\n" + "".join(json.dumps(row) + "\n" for row in rows))


def _run(src: Path, out: Path, args: argparse.Namespace) -> tuple[dict, list[dict]]:
    command = [sys.executable, __file__, "--run", "--out", str(out), "--file", args.file]
    command += ["--compile-workers", str(args.compile_workers)]
    command += ["--limit", str(args.limit)] if args.limit is not None else []
    command += ["--max-m", str(args.max_m)] if args.max_m is not None else []
    command += ["--m", args.m] if args.m is not None else []
    subprocess.run(command, env={**os.environ, "PYTHONPATH": str(src)}, check=True, cwd=ROOT)
    header, *rows = (json.loads(line) for line in out.read_text().splitlines())
    return header, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, help="the src folder of the version before")
    parser.add_argument("--new", type=Path, default=ROOT / "src", help="the src folder after (default: this tree's)")
    parser.add_argument("--limit", type=int, help="only the first LIMIT buckets")
    parser.add_argument("--max-m", type=int, help="run each bucket at min(M, MAX_M) rows (a quick check)")
    parser.add_argument("--file", default="", help="only the files whose name contains this")
    parser.add_argument("--m", help="only the buckets of these M (comma-separated)")
    parser.add_argument(
        "--compile-workers", type=int, default=os.cpu_count(), help="processes compiling ahead (default: %(default)s)"
    )
    parser.add_argument("--run", action="store_true", help=argparse.SUPPRESS)  # the child: one tree
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_tree(args)
        return 0
    if args.old is None:
        parser.error("--old is required")

    with tempfile.TemporaryDirectory() as tmp:
        old_header, old_rows = _run(args.old.resolve(), Path(tmp) / "old.jsonl", args)
        new_header, new_rows = _run(args.new.resolve(), Path(tmp) / "new.jsonl", args)
    print(f"old: {old_header}\nnew: {new_header}")
    new_by_bucket = {(r["file"], r["m"]): r for r in new_rows}
    same = 0
    print(f"{'file':70} {'M':>5} {'run M':>5}  {'config':30} {'old sha256':16} {'new sha256':16}")
    for old in old_rows:
        new = new_by_bucket.get((old["file"], old["m"]))
        if new is None or new["config"] != old["config"]:
            print(f"{old['file']:70} {old['m']:>5}  missing, or another config in the new tree")
            continue
        ok = old["sha256"] == new["sha256"] and old["finite"] and new["finite"]
        same += ok
        verdict = "same" if ok else "DIFFERENT" if old["sha256"] != new["sha256"] else "same, NOT FINITE"
        print(
            f"{old['file']:70} {old['m']:>5} {old['run_m']:>5}  {old['config']:30} "
            f"{old['sha256'][:16]} {new['sha256'][:16]}  {verdict}"
        )
    passed = same == len(old_rows) == len(new_rows) > 0
    print(f"{'PASS' if passed else 'FAIL'}: {same} of {len(old_rows)} buckets bitwise identical")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
