"""What the Gluon kernel (kernels/matmul_gluon.py) compiles to for sm_90, without a GPU (issue 17).

Compiles `scaled_mm_gluon_kernel` for every Gluon config of benchmarks/ab/warp_specialize.py, fp8 and
int8, as that A/B launches it (A row-major, B = weight.t(), per-token x per-channel fp32 scales, a
bf16 bias, bf16 output; meta tensors: every pointer 16-byte aligned; Triton's own launcher through
`kernel.warmup` on a stand-in sm_90 driver, with its bundled ptxas), optionally for the kernel of
another commit too (`--old`), and prints per compilation:

  smem      shared memory (bytes)
  regs      the launch's registers per thread (cuobjdump REG; with warp specialisation the kernel's
            maxnreg, which setmaxnreg then moves between the partitions' warpgroups)
  Rmax      the highest register the SASS names, plus one: what the widest partition really uses
  local     spilled bytes per thread (cuobjdump STACK + LOCAL)
  STL/LDL   spill stores and loads in the SASS, in all / in the K loop (the innermost loop that issues
            wgmma; a spill there costs every K step, one in the epilogue once per tile)
  setmaxnreg  the PTX's register moves, in order of first appearance: `+240` is setmaxnreg.inc 240,
            `-232` setmaxnreg.dec 232 (Triton 3.6 emits them itself from gl.warp_specialize's
            worker_num_regs; the default partition gets what the workers leave, see docs/performance.md)
  wgmma     the SASS's matrix instructions with their shapes and count (QGMMA fp8, IGMMA int8)
  overlap   whether a tile's epilogue can overlap another tile's wgmma: "yes" where two partitions
            each issue wgmma and store tiles (ping-pong), "no" where one partition does both
            (cooperative: its warps run the epilogue between tiles; only the loads run on)

    PYTHONPATH=src python3 benchmarks/ab/gluon_codegen.py [--old REV] [--keep DIR] [--dtypes fp8 int8]

`--keep DIR` writes each compilation's TTGIR, PTX and SASS there. About a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codegen_compare import machine_code
from warp_specialize import GLUON_CONFIGS

from scaledmm.kernels import matmul_gluon
from scaledmm.testing import sm90_target

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (4096, 28672, 4096)  # llama3-8b gate_up at M = 4096 (M, N and K are run-time values in this kernel)
DTYPES = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}
MATRIX_OPS = ("QGMMA", "IGMMA")


def kernel_module_at(rev: str, workdir: Path):
    """kernels/matmul_gluon.py as it is in commit `rev`, imported as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:src/scaledmm/kernels/matmul_gluon.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = workdir / f"matmul_gluon_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def config_for(module, config):
    """`config` as `module`'s GluonConfig, None where it sets fields that module's kernel lacks."""
    fields = {f.name for f in dataclasses.fields(module.GluonConfig)}
    values = dataclasses.asdict(config)
    defaults = {f.name: f.default for f in dataclasses.fields(type(config))}
    if any(values[name] != defaults[name] for name in values if name not in fields):
        return None
    return module.GluonConfig(**{name: value for name, value in values.items() if name in fields})


def operands(dtype: torch.dtype):
    meta = torch.device("meta")
    M, N, K = SHAPE
    a = torch.empty(M, K, dtype=dtype, device=meta)
    b = torch.empty(N, K, dtype=dtype, device=meta).t()
    scale_a, scale_b = torch.empty(M, 1, device=meta), torch.empty(1, N, device=meta)
    bias = torch.empty(N, dtype=torch.bfloat16, device=meta)
    return a, b, scale_a, scale_b, bias, torch.empty(M, N, dtype=torch.bfloat16, device=meta)


def k_loop_range(sass: str) -> tuple[int, int] | None:
    """The addresses of the innermost loop that issues wgmma: the shortest backward branch spanning a
    QGMMA or IGMMA."""
    matrix = [int(a, 16) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(\w+)", sass) if op in MATRIX_OPS]
    labels = {name: int(a, 16) for name, a in re.findall(r"^(\.L_x_\d+):\s*\n\s*/\*([0-9a-f]+)\*/", sass, re.M)}
    loops = []
    for address, target in re.findall(r"/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?BRA\s+`\((\.L_x_\d+)\)", sass):
        start, end = labels.get(target, 1 << 62), int(address, 16)
        if start < end and any(start <= m <= end for m in matrix):
            loops.append((end - start, start, end))
    return min(loops)[1:] if loops else None


def spill_counts(sass: str) -> str:
    instructions = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?(\w+)", sass)]
    spills = [a for a, op in instructions if op in ("STL", "LDL")]
    loop = k_loop_range(sass)
    in_loop = sum(loop[0] <= a <= loop[1] for a in spills) if loop else 0
    return f"{len(spills)}/{in_loop}"


def register_moves(ptx: str) -> str:
    moves = []
    for kind, value in re.findall(r"setmaxnreg\.(inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx):
        move = f"{'+' if kind == 'inc' else '-'}{value}"
        if move not in moves:
            moves.append(move)
    return " ".join(moves) or "-"


def matrix_instructions(sass: str) -> str:
    cells = []
    for op in MATRIX_OPS:
        shapes = re.findall(rf"\b{op}\.(\d+x\d+x\d+)", sass)
        for shape in sorted(set(shapes)):
            cells.append(f"{op}.{shape} x{shapes.count(shape)}")
    return " ".join(cells) or "none"


def partitions(ttgir: str) -> list[str]:
    """The bodies of the warp_specialize regions in the TTGIR: default first, then the workers."""
    starts = [m.start() for m in re.finditer(r"^\s*(default \{|partition\d+\()", ttgir, re.M)]
    return [ttgir[s:e] for s, e in zip(starts, [*starts[1:], len(ttgir)])]


def epilogue_overlap(ttgir: str) -> str:
    """Whether tiles are stored by a partition while another issues wgmma: two or more partitions
    each holding both."""
    both = sum(
        "ttng.warp_group_dot " in body and "ttng.async_tma_copy_local_to_global" in body for body in partitions(ttgir)
    )
    return "yes" if both >= 2 else "no"


def compile_config(module, config, dtype, keep: Path | None, label: str, precise: bool = False) -> dict:
    grid, args, kwargs = module.launch_arguments(*operands(dtype), config, num_sms=132, precise=precise)
    compiled = module.scaled_mm_gluon_kernel.warmup(*args, grid=grid, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        sass = machine_code(compiled, Path(tmp))
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", sass)
    registers = [int(r) for r in re.findall(r"\bR(\d+)\b", sass)]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^\w.-]+", "_", f"{label}.{config}.{str(dtype)[6:]}")
        (keep / f"{stem}.ttgir").write_text(compiled.asm["ttgir"])
        (keep / f"{stem}.ptx").write_text(compiled.asm["ptx"])
        (keep / f"{stem}.sass").write_text(sass)
    return {
        "smem": compiled.metadata.shared,
        "warps": compiled.metadata.num_warps,
        "regs": int(usage.group(1)),
        "rmax": max(registers, default=-1) + 1,
        "local": int(usage.group(2)) + int(usage.group(3)),
        "spills": spill_counts(sass),
        "setmaxnreg": register_moves(compiled.asm["ptx"]),
        "wgmma": matrix_instructions(sass),
        "overlap": epilogue_overlap(compiled.asm["ttgir"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", help="also compile the kernel of this commit (its configs as far as it has them)")
    parser.add_argument("--keep", type=Path, help="write the TTGIR, PTX and SASS listings here")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument(
        "--accumulation", choices=("fast", "precise"), default="fast", help="fp8's (precise: promoted every 128 K)"
    )
    args = parser.parse_args()
    precise = args.accumulation == "precise"
    with sm90_target(), tempfile.TemporaryDirectory() as tmp:
        kernels = {"this tree": matmul_gluon}
        if args.old:
            kernels = {args.old: kernel_module_at(args.old, Path(tmp)), **kernels}
        print(
            f"scaled_mm_gluon_kernel for sm_90 (triton {triton.__version__}), {args.accumulation} accumulation, "
            f"bf16 output, bias, M N K = {SHAPE}"
        )
        print(
            f"{'config':36} {'dtype':5} {'kernel':9} {'smem':>6} {'warps':>5} {'regs':>4} {'Rmax':>4} "
            f"{'local':>5} {'STL+LDL/loop':>12}  {'setmaxnreg':30} {'overlap':7} wgmma"
        )
        for config in GLUON_CONFIGS:
            for name in args.dtypes:
                for label, module in kernels.items():
                    own = config_for(module, config)
                    if own is None:
                        continue
                    try:
                        r = compile_config(module, own, DTYPES[name], args.keep, label, precise)
                    except Exception as err:  # one config that does not compile does not stop the others
                        message = str(err).strip().splitlines()[-1][:160] if str(err).strip() else ""
                        print(f"{config!s:36} {name:5} {label:9} {type(err).__name__}: {message}")
                        continue
                    print(
                        f"{config!s:36} {name:5} {label:9} {r['smem']:>6} {r['warps']:>5} {r['regs']:>4} "
                        f"{r['rmax']:>4} {r['local']:>5} {r['spills']:>12}  {r['setmaxnreg']:30} "
                        f"{r['overlap']:7} {r['wgmma']}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
