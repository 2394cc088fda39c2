"""Does a kernel edit change the code the shipped buckets run? Compile every shipped bucket for sm_90
with the kernels of two source trees and compare what Triton generates.

Each bucket of the shipped config files (src/scaledmm/configs/data) is compiled as its launch would
specialise it, at its M and at the smallest M it serves: 8-bit operands of the file's dtype (A
row-major, B = weight.t()), per-token x per-channel fp32 scales, bf16 bias, bf16 output (the tuned
case), pointers 16-byte aligned, the integer arguments and constexprs as each tree's own launcher
computes them (`matmul._kernel_and_arguments`; a TMA config runs the TMA kernel, as on an H100). A
block-scaled file's buckets run the block kernel their config names, pointer or swapped
(`matmul_block.block_launch_arguments`), with the scales laid out as the tuner times them (scale_a
[M, K blocks], scale_b the transposed view of the weight's [N blocks, K blocks]). Each tree loads
the shipped tables with its own `configs.files.load_table`, in a process of its own.
Compared per bucket, in the order Triton makes them:
- TTGIR, without location info and with values renamed in order (Triton names them after variables);
- PTX, without debug info (line table, debug sections and the labels only they use);
- the machine code: every non-debug section of the cubin (nvdisasm), its resource usage (cuobjdump)
  and the launch metadata (shared memory, warps...). This is what the GPU runs, so a bucket whose
  machine code is identical keeps its measured times; ptxas can turn a reordered TTGIR into the same
  code, and identical PTX into another register allocation (the debug labels steer it).
Triton compiles for sm_90 without a GPU, so this runs on any machine (a few minutes):

    PYTHONPATH=src python3 benchmarks/ab/codegen_compare.py --old 310729a [--keep DIR] [--restamp] [--files GLOB]

`--old` is a commit (its src/ is taken with `git archive`) or a source folder; `--new` the source
folder of this tree. With `--restamp` the buckets whose machine code is identical (or with `--same
ttgir` or `--same ptx` that form), and which were tuned with the old kernel as it was, get their
kernel's new revision in the new tree's files, with a "restamped" note in the file's metadata, and
every file is rewritten in the current format; the other buckets keep their revision, so the tuner
sees them stale (their configs stay in service).
`--keep DIR` keeps the compared texts and prints a diff command for each difference; `--files GLOB`
takes only the shipped files whose names match (e.g. '*block_shape=*', the block-scaled ones).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORMS = ("ttgir", "ptx", "sass")  # what is compared, in the order Triton makes them
FORM_NAMES = {
    "ttgir": "TTGIR",
    "ptx": "PTX",
    "sass": "machine code (cubin code, resources and launch metadata)",
}


# ----------------------------------------------------------------------------- normal forms of the IR


def _drop_locations(text: str) -> str:
    """The text without ` loc(...)` annotations (nested parentheses included)."""
    out, i = [], 0
    while True:
        j = text.find(" loc(", i)
        if j < 0:
            return "".join(out) + text[i:]
        out.append(text[i:j])
        depth, k = 0, j + 4
        while True:
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            k += 1
            if depth == 0:
                break
        i = k


def normal_ttgir(ttgir: str) -> str:
    """TTGIR without location info, and with SSA values renamed in order of appearance: Triton names
    values after the Python variables that hold them (`%tile_m_4`), which a refactor may rename."""
    lines = [line for line in ttgir.splitlines() if not line.startswith("#loc")]
    text = _drop_locations("\n".join(lines))
    names: dict[str, str] = {}

    def rename(match: re.Match) -> str:
        return names.setdefault(match.group(0), f"%v{len(names)}")

    return re.sub(r"%[A-Za-z_0-9][\w$.\-]*", rename, text)


def normal_ptx(ptx: str) -> str:
    """PTX without the debug line table, file names, comments, debug sections and the labels that only
    the debug sections refer to ($L__tmp3:, numbered in the order of source locations)."""
    text = re.sub(r"\.section\s+\.debug_\w+\s*\{.*?\n\s*\}", "", ptx, flags=re.S)
    lines = []
    for line in text.splitlines():
        line = line.split("//", 1)[0].rstrip()
        if (
            line
            and not line.lstrip().startswith((".loc", ".file"))
            and not re.fullmatch(r"\$L__(tmp|func_\w+?)\d+:", line)
        ):
            lines.append(line)
    return "\n".join(lines)


def machine_code(compiled, workdir: Path) -> str:
    """The compiled kernel as the GPU gets it: the launch metadata (shared memory, warps, ...), the
    resource usage (registers, stack; cuobjdump) and every section of the cubin but the debug ones
    (code, attributes, constants, shared memory; nvdisasm), with the tools that ship with Triton."""
    import triton

    path = workdir / "kernel.cubin"
    path.write_bytes(compiled.asm["cubin"])
    tools = triton.knobs.nvidia
    metadata = {k: str(v) for k, v in compiled.metadata._asdict().items() if k not in ("hash", "extern_libs")}
    usage = subprocess.run([tools.cuobjdump.path, "-res-usage", str(path)], capture_output=True, text=True, check=True)
    listing = subprocess.run([tools.nvdisasm.path, str(path)], capture_output=True, text=True, check=True).stdout
    sections = re.split(r"(?m)^(?=//-{5,} )", listing)
    kept = [section for section in sections if not re.match(r"//-+ \.(nv_)?debug", section)]
    return json.dumps(metadata, indent=0) + "\n" + usage.stdout + "".join(kept)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- one tree (a child process)


def dump(data_dir: Path, out: Path, texts: Path, limit: int | None, files: str) -> None:
    """Compile every bucket with the scaledmm on sys.path, at its M and at the smallest M it serves
    (other integer specialisations, masks and early loads); write one JSON line per bucket to `out`,
    with the hashes of each form per M, and each distinct form into `texts` (named by its hash)."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from scaledmm.configs.files import load_table
    from scaledmm.kernels import matmul, matmul_block, matmul_tma

    matmul_tma.device_has_tma = lambda device: True  # an H100: TMA configs run the TMA kernel
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    dtypes = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
    meta = torch.device("meta")  # no memory, data_ptr() 0: every pointer 16-byte aligned
    texts.mkdir(parents=True, exist_ok=True)
    compiled: dict[tuple, dict[str, str]] = {}

    def compile_launch(M, N, K, dtype, config, block_shape) -> tuple[str, dict[str, str]]:
        a = torch.empty(M, K, dtype=dtype, device=meta)
        b = torch.empty(N, K, dtype=dtype, device=meta).t()
        bias = torch.empty(N, dtype=torch.bfloat16, device=meta)
        out = torch.empty(M, N, dtype=torch.bfloat16, device=meta)
        if block_shape is not None:
            blocks_n, blocks_k = -(-N // block_shape[0]), -(-K // block_shape[1])
            scale_a, scale_b = torch.empty(M, blocks_k, device=meta), torch.empty(blocks_n, blocks_k, device=meta).t()
            # The config's kernel (pointer or swapped); a tree before the swapped form has the pointer one only.
            kernels = getattr(matmul_block, "BLOCK_KERNEL_FUNCTIONS", {"pointer": matmul_block._block_scaled_mm_kernel})
            kernel = kernels[config.kernel]
            _, args, kwargs = matmul_block.block_launch_arguments(
                a, b, scale_a, scale_b, bias, out, config, block_shape
            )
        else:
            scale_a, scale_b = torch.empty(M, 1, device=meta), torch.empty(1, N, device=meta)
            # The shipped buckets were tuned in fast accumulation: a tree with the choice compiles that mode.
            mode = (False,) if "precise" in inspect.signature(matmul._kernel_and_arguments).parameters else ()
            kernel, _, args, kwargs, _ = matmul._kernel_and_arguments(
                a, b, scale_a, scale_b, bias, out, config, *mode, meta
            )
        # What JITFunction.run does before compiling, for the sm_90 backend instead of the driver's.
        kwargs = dict(kwargs, debug=False, instrumentation_mode=triton.knobs.compilation.instrumentation_mode)
        binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        key = (kernel.fn.__name__, str(signature), str(constexprs), str(attrs), str(options))
        if key not in compiled:
            source = ASTSource(kernel, signature, constexprs, attrs)
            result = triton.compile(source, target=target, options=options.__dict__)
            forms = {
                "ttgir": normal_ttgir(result.asm["ttgir"]),
                "ptx": normal_ptx(result.asm["ptx"]),
                "sass": machine_code(result, texts),
            }
            for suffix, text in forms.items():
                (texts / f"{_sha(text)}.{suffix}").write_text(text)
            compiled[key] = {suffix: _sha(text) for suffix, text in forms.items()}
        return kernel.fn.__name__, compiled[key]

    rows = []
    for path in sorted(data_dir.glob(files)):
        table = load_table(path)
        block_shape = getattr(table, "block_shape", None)
        smallest = 1
        for bucket in table.buckets:
            if limit is not None and len(rows) >= limit:
                break
            ms = sorted({smallest, bucket.m})
            smallest = bucket.m + 1
            launches = [
                compile_launch(M, table.n, table.k, dtypes[table.dtype], bucket.config, block_shape) for M in ms
            ]
            block = block_shape is not None
            revision = (matmul_block.block_kernel_revision if block else matmul.kernel_revision)(bucket.config)
            rows.append(
                {
                    "file": path.name,
                    "m": bucket.m,
                    "ms": ms,
                    "config": str(bucket.config),
                    "kernel": launches[-1][0],
                    "revision": revision,
                    "recorded": getattr(bucket, "revision", None) or getattr(bucket, "kernel", None),
                    **{form: [forms[form] for _, forms in launches] for form in FORMS},
                }
            )
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} buckets, {len(compiled)} distinct compilations", file=sys.stderr)


# ----------------------------------------------------------------------------- both trees, compared


def _old_tree(old: str, workdir: Path) -> Path:
    """The src folder of `old`: a folder as given, or a commit's src/ extracted with git archive."""
    if Path(old).is_dir():
        return Path(old).resolve()
    archive = workdir / "old.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", old, "src"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "old", filter="data")
    return workdir / "old" / "src"


def _run_tree(src: Path, out: Path, texts: Path, limit: int | None, files: str, cache: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, never interpret
    env.update(PYTHONPATH=str(src), TRITON_CACHE_DIR=str(cache))
    data_dir = src / "scaledmm" / "configs" / "data"
    command = [sys.executable, __file__, "--dump", str(data_dir), "--out", str(out), "--texts", str(texts)]
    command += ["--files", files]
    if limit is not None:
        command += ["--limit", str(limit)]
    subprocess.run(command, env=env, check=True)
    return [json.loads(line) for line in out.read_text().splitlines()]


def compare(old_rows: list[dict], new_rows: list[dict], texts: Path | None, criterion: str) -> list[dict]:
    """Print the table of buckets and what compiled the same, and return the new tree's rows of the
    buckets to re-stamp: the same `criterion` form, and tuned with the old tree's kernel as it was."""
    new_by_bucket = {(r["file"], r["m"]): r for r in new_rows}
    restampable = []
    counts = dict.fromkeys(FORMS, 0)
    print(f"{'file':70} {'M':>5}  {'config':30} {'kernel':23} {'  '.join(f.upper() for f in FORMS)}")
    for old in old_rows:
        new = new_by_bucket.pop((old["file"], old["m"]), None)
        if new is None or new["config"] != old["config"]:
            print(f"{old['file']:70} {old['m']:>5}  missing or another config in the new tree")
            continue
        same = {form: old[form] == new[form] for form in FORMS}
        counts = {form: counts[form] + same[form] for form in FORMS}
        current = old["recorded"] == old["revision"]
        if same[criterion] and current:
            restampable.append({**new, "same_ttgir": same["ttgir"]})
        marks = "  ".join(f"{'same' if same[f] else 'DIFF':{len(f)}}" for f in FORMS)
        stale = "" if current else f"  (stale before: {old['recorded']} is not {old['revision']})"
        print(f"{old['file']:70} {old['m']:>5}  {old['config']:30} {old['kernel']:23} {marks}{stale}")
        for form in FORMS if texts is not None else ():
            for M, old_sha, new_sha in zip(old["ms"], old[form], new[form]):
                if old_sha != new_sha:
                    print(f"    M={M}: diff {texts}/old/{old_sha}.{form} {texts}/new/{new_sha}.{form}")
    for file, m in new_by_bucket:
        print(f"{file:70} {m:>5}  only in the new tree")
    print("identical: " + ", ".join(f"{form.upper()} {counts[form]}" for form in FORMS) + f" of {len(old_rows)}")
    revisions = sorted({(r["kernel"], r["revision"]) for r in new_rows})
    print("new revisions: " + ", ".join(f"{kernel} {revision}" for kernel, revision in revisions))
    return restampable


def restamp(new_src: Path, restampable: list[dict], old: str, criterion: str, files: str) -> None:
    """Give the buckets to re-stamp their new revision in the new tree's files, with a provenance
    note, and rewrite every file in the current format; the other buckets keep their revision."""
    sys.path.insert(0, str(new_src))
    from scaledmm.configs.files import FORMAT_VERSION, upgrade, write_json_atomic

    by_file: dict[str, list[dict]] = {}
    for row in restampable:
        by_file.setdefault(row["file"], []).append(row)
    today = datetime.date.today().isoformat()
    for path in sorted((new_src / "scaledmm" / "configs" / "data").glob(files)):
        data = upgrade(path, json.loads(path.read_text()))
        rows = by_file.get(path.name, [])
        for row in rows:
            data["buckets"][str(row["m"])]["revision"] = row["revision"]
        if rows:
            kept = sorted(set(map(int, data["buckets"])) - {row["m"] for row in rows})
            buckets = data.pop("buckets")  # the note goes with the metadata, before the buckets
            data["restamped"] = (
                f"{today}: the revisions of {len(rows)} of {len(buckets)} buckets were carried over from the "
                f"kernels of commit {old} to their refactored form, which compiles to the same {FORM_NAMES[criterion]} "
                f"for sm_90 at each bucket's launch (the TTGIR is identical too for "
                f"{sum(row['same_ttgir'] for row in rows)} of them; benchmarks/ab/codegen_compare.py). "
                "Their times are those measured before. "
                + (f"Not carried over (other code, stale): M = {', '.join(map(str, kept))}." if kept else "")
            ).strip()
            data["buckets"] = buckets
        assert data["format_version"] == FORMAT_VERSION
        write_json_atomic(path, data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="310729a", help="a commit or a src folder (default: %(default)s)")
    parser.add_argument("--new", type=Path, default=ROOT / "src", help="the src folder (default: this tree's)")
    parser.add_argument("--limit", type=int, help="only the first LIMIT buckets (a quick check)")
    parser.add_argument("--keep", type=Path, help="keep the normal TTGIR and PTX texts here, to diff them")
    parser.add_argument("--restamp", action="store_true", help="re-stamp the identical buckets (see above)")
    parser.add_argument(
        "--same", choices=FORMS, default="sass", help="what must be identical to re-stamp (default: %(default)s)"
    )
    parser.add_argument("--files", default="*.json", help="the shipped files to compare (default: %(default)s)")
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)  # the child: a data folder to compile
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--texts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump is not None:
        dump(args.dump, args.out, args.texts, args.limit, args.files)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        texts = args.keep or workdir / "texts"
        cache = Path(tempfile.gettempdir()) / "scaledmm-codegen-cache"
        start = time.monotonic()
        old_src = _old_tree(args.old, workdir)
        old_rows = _run_tree(old_src, workdir / "old.jsonl", texts / "old", args.limit, args.files, cache)
        new_rows = _run_tree(args.new.resolve(), workdir / "new.jsonl", texts / "new", args.limit, args.files, cache)
        restampable = compare(old_rows, new_rows, args.keep, args.same)
        print(f"{time.monotonic() - start:.0f} s")
        if args.restamp:
            restamp(args.new.resolve(), restampable, args.old, args.same, args.files)
            print(f"re-stamped {len(restampable)} buckets in {args.new / 'scaledmm/configs/data'} (format 2)")
        print(f"{len(restampable)} of {len(old_rows)} buckets have the same {args.same.upper()} and were current")
    return 0 if len(restampable) == len(old_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
