"""Why INT8 trails our FP8 at mid M on an H200 (issue 17), offline: the tuned files and the SASS.

1. The shipped H200 files (src/scaledmm/configs/data, int8_w8a8 beside fp8_w8a8): per shape and M >= 128,
   the best Triton time of each dtype (baselines_us["triton"]), its config, and fp8 time / int8 time
   (< 1: int8 slower); then per M range the geomean and minimum, and which kernels won. Both dtypes are
   tuned over one space (tune/space.candidate_configs takes no dtype; the files' candidate counts agree).
2. The mid-M winners of both dtypes (and the TMA tiles), compiled for sm_90 without a GPU (Triton's
   bundled ptxas, a stand-in driver as gluon_codegen.py) in fp8, int8, and int8 with its wgmma made
   asynchronous in the PTX (`async_int8_ptx`, "int8a": the probe of what Triton's rule costs), at
   N = K = 4096, M = 256, bf16 output, per-token x per-channel scales and a bias. Per compilation:

   smem KB    shared memory; CTA/SM: how many programs fit one SM (shared memory and registers; the
              TMA kernel launches one per SM whatever fits)
   regs, spill registers per thread and spilled bytes
   mma/step   the SASS's matrix instructions in the K loop (QGMMA fp8, IGMMA int8) and their shape
   wait       the wgmma waits in the K loop (WARPGROUP.DEPBAR.LE gsb0, N): 1 = one K step's wgmma
              still in flight while the next step's loads and wgmma issue (asynchronous, as CUTLASS);
              0 only = every K step drains the tensor core before anything else issues (serialized)
   loop       SASS instructions in the K loop; epi: int->fp32 conversions (I2FP), FMUL+FFMA, packs (F2FP)
              after it

What it shows (Triton 3.6): int8 and fp8 compile to the same tiles, the same wgmma shape (n = 128 on these
tiles) and count per K step, the same shared memory and about the same registers; int8's epilogue adds
one I2FP per accumulator, once per tile. The difference is the wait: Triton's WGMMA pipeliner
(lib/Dialect/TritonGPU/Transforms/Pipeliner/WGMMAPipeline.cpp, dotCanBeProperlyAsync, "Rule 2.1: We
don't make the dot async if the accumulator is not fp32") leaves every int32-accumulator dot
synchronous: `warp_group_dot_wait {pendings = 0}` after each K step in the TTGIR, DEPBAR 0 in the SASS,
where fp8 gets pendings = 1. An int8 program therefore idles its tensor cores during each step's wait,
barrier and load issue, and only another program on the SM (two CTAs per SM) hides it; configs with
one program per SM (the TMA kernel, which is persistent, and the deep-pipeline pointer tiles that win
fp8's mid M) lose in int8. That is where the gap is: mid M, where fp8 wins with those configs.
The "int8a" rows show the pointer kernel's int8 PTX with the in-loop wait relaxed to 1 (and waits
added before the accumulator is read): ptxas keeps it asynchronous (DEPBAR 1 in the loop, as fp8).
In the TMA kernel's flattened loop ptxas re-serializes it (C7515, DEPBAR 0 only).

    PYTHONPATH=src python3 benchmarks/ab/int8_fp8_gap.py [--files-only] [--keep DIR]

About a minute on two CPU cores (30 compilations). `--keep DIR` writes each compilation's TTGIR, PTX
and SASS there.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codegen_compare import machine_code  # benchmarks/ab/, beside this script
from gluon_codegen import MATRIX_OPS, k_loop_range

from scaledmm.configs import MatmulConfig
from scaledmm.kernels import matmul, matmul_tma
from scaledmm.testing import sm90_target

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "src" / "scaledmm" / "configs" / "data"
CARD = "NVIDIA_H200"
MID_M = (128, 512)  # the range where the gap is
CODEGEN_SHAPE = (256, 4096, 4096)  # M, N, K
DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
H200_LIMITS = (132, 232448)  # SMs, shared memory per block (configs.device_limits on an H200)
SM_SHARED_BYTES = 228 * 1024  # per SM on sm_90; each CTA also takes 1 KB reserved
SM_REGISTERS = 64 * 1024
EXTRA_CONFIGS = (  # fp8's TMA winners, compiled whether or not the files pick them
    MatmulConfig(128, 128, 128, group_m=8, num_warps=4, num_stages=5, kernel="tma"),
    MatmulConfig(128, 256, 128, group_m=8, num_warps=8, num_stages=3, kernel="tma"),
)


# ----------------------------------------------------------------------------- the asynchronous int8 probe

_S8_WGMMA = re.compile(r"^\s*wgmma\.mma_async\.sync\.aligned\.m\d+n\d+k\d+\.s32\.[su]8\.[su]8\s*\{([^}]*)\}")
_WAIT_ALL = "\twgmma.wait_group.sync.aligned 0;"


def _touches(text: str, accumulators: set[str]) -> bool:
    """Whether a PTX instruction (not a directive) names an accumulator register, or ends the kernel."""
    if not text or text.startswith("."):
        return False
    return bool(accumulators.intersection(re.findall(r"%r\d+", text))) or text.startswith("ret")


def async_int8_ptx(ptx: str) -> tuple[str, int, int]:
    """The PTX with each int8 K step's wgmma left in flight, as Triton does for fp8: the wait right
    after an int8 `wgmma.commit_group` becomes `wait_group 1`, and a `wait_group 0` goes before any
    other instruction that names an accumulator register, and before `ret`, wherever a wgmma may still
    be in flight (after a wgmma, and at every label: control may come from the loop). Returns (ptx,
    waits relaxed, waits added); the PTX unchanged without int8 wgmma. ptxas checks the result: where
    it finds an accumulator touched in flight anyway it serializes the wgmma itself (warning C7515)."""
    lines = ptx.splitlines()
    accumulators = set()
    for line in lines:
        match = _S8_WGMMA.match(line)
        if match:
            accumulators |= {register.strip() for register in match.group(1).split(",")}
    if not accumulators:
        return ptx, 0, 0
    out, relaxed, added = [], 0, 0
    in_flight = after_commit = False
    for line in lines:
        text = line.split("//", 1)[0].strip()
        if re.match(r"^\$?[\w$]+:", text):
            in_flight = True
        if _S8_WGMMA.match(line):
            in_flight = True
        elif text.startswith("wgmma.commit_group"):
            after_commit = True
        elif text == "wgmma.wait_group.sync.aligned 0;":
            if after_commit:
                line = line.replace("aligned 0;", "aligned 1;")
                relaxed += 1
            else:
                in_flight = False
            after_commit = False
        elif in_flight and _touches(text, accumulators):
            out.append(_WAIT_ALL)
            added += 1
            in_flight = False
        out.append(line)
    return "\n".join(out) + "\n", relaxed, added


def async_int8_override(kernel, grid, args, kwargs, workdir: Path) -> dict:
    """`kwargs` plus Triton's `ir_override` option naming the probe's PTX for this launch (written to
    `workdir`, named by its content: Triton keys its cache by the option's file name)."""
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    ptx, _, _ = async_int8_ptx(compiled.asm["ptx"])
    path = workdir / f"{hashlib.sha256(ptx.encode()).hexdigest()[:20]}.ptx"
    path.write_text(ptx)
    return dict(kwargs, ir_override=str(path))


def loop_waits(sass: str) -> str:
    """The wgmma wait depths in the K loop of a SASS listing ("1,0": some wait for all but one group)."""
    loop = k_loop_range(sass)
    if loop is None:
        return "-"
    depths = {
        int(depth, 16)
        for address, depth in re.findall(r"/\*([0-9a-f]{4,})\*/\s+WARPGROUP\.DEPBAR\.LE\s+gsb0,\s+(0x[0-9a-f]+)", sass)
        if loop[0] <= int(address, 16) <= loop[1]
    }
    return ",".join(str(d) for d in sorted(depths, reverse=True)) or "none"


# ----------------------------------------------------------------------------- 1. the tuned files


def short(config: MatmulConfig) -> str:
    name = {"pointer": "ptr", "tma": "tma", "swapped": "swp"}[config.kernel]
    split = f" k{config.split_k}" if config.split_k > 1 else ""
    return (
        f"{name} {config.block_m}x{config.block_n}x{config.block_k} w{config.num_warps} s{config.num_stages}"
        f" g{config.group_m}{split}"
    )


def best_triton(bucket: dict) -> float | None:
    """The best Triton time of a bucket: its baseline "triton", or its time where Triton won."""
    return bucket.get("baselines_us", {}).get("triton") or (
        bucket["time_us"] if bucket["backend"] == "triton" else None
    )


def file_rows() -> list[dict]:
    """Per shape and M >= 128 tuned in both dtypes: both best Triton times and configs (read from the
    JSON: load_table keeps neither the baselines nor the candidate counts)."""
    rows = []
    for int8_path in sorted(DATA.glob(f"*device_name={CARD},dtype=int8_w8a8.json")):
        fp8_path = int8_path.with_name(int8_path.name.replace("int8_w8a8", "fp8_w8a8"))
        if not fp8_path.exists():
            continue
        int8, fp8 = json.loads(int8_path.read_text()), json.loads(fp8_path.read_text())
        for m, bucket in int8["buckets"].items():
            other = fp8["buckets"].get(m)
            if int(m) < MID_M[0] or other is None:
                continue
            t_int8, t_fp8 = best_triton(bucket), best_triton(other)
            if t_int8 and t_fp8:
                rows.append(
                    {
                        "n": int8["n"], "k": int8["k"], "m": int(m), "fp8_us": t_fp8, "int8_us": t_int8,
                        "ratio": t_fp8 / t_int8, "fp8": MatmulConfig(**other["config"]),
                        "int8": MatmulConfig(**bucket["config"]),
                        "candidates": (other.get("candidates"), bucket.get("candidates")),
                    }
                )  # fmt: skip
    return sorted(rows, key=lambda r: (r["n"], r["k"], r["m"]))


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def m_range(m: int) -> str:
    return f"{MID_M[0]}-{MID_M[1]}" if m <= MID_M[1] else f">{MID_M[1]}"


def print_files(rows: list[dict]) -> None:
    print("Tuned H200 files: fp8 time / int8 time per point (< 1: int8 slower), best Triton config of each")
    print(f"{'N':>6} {'K':>6} {'M':>5} {'fp8 us':>8} {'int8 us':>8} {'ratio':>6}  {'fp8 winner':32} {'int8 winner':32}")
    for r in rows:
        mark = " <" if r["ratio"] < 0.95 else ""
        print(
            f"{r['n']:>6} {r['k']:>6} {r['m']:>5} {r['fp8_us']:>8.1f} {r['int8_us']:>8.1f} {r['ratio']:>6.3f}  "
            f"{short(r['fp8']):32} {short(r['int8']):32}{mark}"
        )
    print("\nper M range: geomean (min) of fp8/int8 time; points under 0.95; winners' kernels (fp8 | int8)")
    by_range = defaultdict(list)
    for r in rows:
        by_range[m_range(r["m"])].append(r)
    for label, group in by_range.items():
        kinds = [Counter(r[d].kernel for r in group) for d in ("fp8", "int8")]
        under = sum(r["ratio"] < 0.95 for r in group)
        print(
            f"  M {label:8} {geomean(r['ratio'] for r in group):.3f} ({min(r['ratio'] for r in group):.3f}), "
            f"{under} of {len(group)} under 0.95; fp8 {dict(kinds[0])} | int8 {dict(kinds[1])}"
        )
    mid = [r for r in rows if r["m"] <= MID_M[1]]
    tma_mid = [r for r in mid if r["fp8"].kernel == "tma"]
    elsewhere = geomean(r["ratio"] for r in mid if r not in tma_mid)
    print(
        f"  mid M where fp8 won with the TMA kernel: {len(tma_mid)} of {len(mid)} points, int8 geomean there "
        f"{geomean(r['ratio'] for r in tma_mid):.3f}; elsewhere {elsewhere:.3f}"
    )
    differ = [r for r in rows if r["candidates"][0] != r["candidates"][1]]
    most = max((abs(r["candidates"][0] - r["candidates"][1]) for r in differ), default=0)
    print(
        f"  candidate counts (one space for both dtypes) differ at {len(differ)} of {len(rows)} points, by at most "
        f"{most} (candidates that failed a check)"
    )


# ----------------------------------------------------------------------------- 2. the code


def codegen_configs(rows: list[dict], count: int = 8) -> list[MatmulConfig]:
    """The most frequent mid-M winners of both dtypes (group_m set to 8: a run-time argument), then
    EXTRA_CONFIGS."""
    counts = Counter()
    for r in rows:
        if r["m"] <= MID_M[1]:
            for dtype in ("fp8", "int8"):
                config = r[dtype]
                counts[MatmulConfig(**{**config.__dict__, "group_m": 8})] += 1
    configs = [config for config, _ in counts.most_common(count)]
    return configs + [c for c in EXTRA_CONFIGS if c not in configs]


@contextlib.contextmanager
def sm90_compilation():
    """Compile as on an H200 without a GPU: Triton's driver replaced by one that names sm_90, TMA
    configs running the TMA kernel, an H200's SM count and shared memory for the launcher."""
    has_tma, limits = matmul_tma.device_has_tma, matmul.device_limits
    matmul_tma.device_has_tma = lambda device: True
    matmul.device_limits = lambda device: H200_LIMITS
    try:
        with sm90_target():
            yield
    finally:
        matmul_tma.device_has_tma, matmul.device_limits = has_tma, limits


def compile_one(config: MatmulConfig, dtype_name: str, workdir: Path, keep: Path | None) -> dict:
    M, N, K = CODEGEN_SHAPE
    meta = torch.device("meta")
    dtype = DTYPES["fp8" if dtype_name == "fp8" else "int8"]
    a = torch.empty(M, K, dtype=dtype, device=meta)
    b = torch.empty(N, K, dtype=dtype, device=meta).t()
    scale_a, scale_b = torch.empty(M, 1, device=meta), torch.empty(1, N, device=meta)
    bias = torch.empty(N, dtype=torch.bfloat16, device=meta)
    out = torch.empty(M, N, dtype=torch.bfloat16, device=meta)
    kernel, grid, args, kwargs, _ = matmul._kernel_and_arguments(
        a, b, scale_a, scale_b, bias, out, config, False, torch.device("cuda", 0)
    )
    if dtype_name == "int8a":
        kwargs = async_int8_override(kernel, grid, args, kwargs, workdir)
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    sass = machine_code(compiled, workdir)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^\w.-]+", "_", f"{short(config)}.{dtype_name}")
        for suffix, text in (("ttgir", compiled.asm["ttgir"]), ("ptx", compiled.asm["ptx"]), ("sass", sass)):
            (keep / f"{stem}.{suffix}").write_text(text)
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", sass)
    registers = int(usage.group(1))
    instructions = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([\w.]+)", sass)]
    loop = k_loop_range(sass) or (0, -1)
    in_loop = [op for a, op in instructions if loop[0] <= a <= loop[1]]
    after = [op for a, op in instructions if a > loop[1]]
    mma = Counter(op for op in in_loop if op.split(".")[0] in MATRIX_OPS)
    threads = compiled.metadata.num_warps * 32
    by_shared = SM_SHARED_BYTES // (compiled.metadata.shared + 1024)
    by_registers = SM_REGISTERS // (math.ceil(registers / 8) * 8 * threads)
    return {
        "smem_kb": compiled.metadata.shared / 1024,
        "ctas": 1 if config.kernel == "tma" else min(by_shared, by_registers),
        "regs": registers,
        "spill": int(usage.group(2)) + int(usage.group(3)),
        "mma": " ".join(f"{n}x {'.'.join(op.split('.')[:2])}" for op, n in sorted(mma.items())) or "none",
        "wait": loop_waits(sass),
        "loop": len(in_loop),
        "i2f": sum(op.startswith("I2FP") for op in after),
        "fmul": sum(op.startswith(("FMUL", "FFMA")) for op in after),
        "f2fp": sum(op.startswith("F2FP") for op in after),
        "pendings": ",".join(
            sorted(set(re.findall(r"warp_group_dot_wait[^\n]*pendings = (\d+)", compiled.asm["ttgir"])))
        ),
    }


def print_codegen(configs: list[MatmulConfig], keep: Path | None) -> None:
    M, N, K = CODEGEN_SHAPE
    print(f"\nsm_90 code at M, N, K = {M}, {N}, {K} (bf16 out, bias; int8a: the probe, int8 wgmma made asynchronous)")
    print(
        f"{'config':34} {'dtype':5} {'smem KB':>7} {'CTA/SM':>6} {'regs':>4} {'spill':>5}  {'mma/step':24} "
        f"{'wait':>4} {'ttgir':>5} {'loop':>5} {'I2FP':>4} {'FMUL':>4} {'F2FP':>4}"
    )
    with sm90_compilation(), tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            for dtype_name in ("fp8", "int8", "int8a"):
                try:
                    r = compile_one(config, dtype_name, Path(tmp), keep)
                except Exception as err:  # one failing compilation does not stop the others
                    print(f"{short(config):34} {dtype_name:5} {type(err).__name__}: {str(err)[:120]}")
                    continue
                print(
                    f"{short(config):34} {dtype_name:5} {r['smem_kb']:>7.1f} {r['ctas']:>6} {r['regs']:>4} "
                    f"{r['spill']:>5}  {r['mma']:24} {r['wait']:>4} {r['pendings']:>5} {r['loop']:>5} "
                    f"{r['i2f']:>4} {r['fmul']:>4} {r['f2fp']:>4}",
                    flush=True,
                )
    print(
        "wait: the SASS's wgmma wait depths in the K loop; ttgir: Triton's warp_group_dot_wait pendings (int8a changes "
        "the PTX after it); the TMA kernel's loop is flattened, its epilogue inside it (no I2FP/FMUL counted after)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files-only", action="store_true", help="only the tuned files' table")
    parser.add_argument("--keep", type=Path, help="write each compilation's TTGIR, PTX and SASS here")
    args = parser.parse_args()
    rows = file_rows()
    print_files(rows)
    if not args.files_only:
        print_codegen(codegen_configs(rows), args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
