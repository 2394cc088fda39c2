"""Same bits before and after a refactor: every bucket of the shipped config files, computed by two
source trees of scaledmm on the same inputs, compared by the SHA-256 of their outputs.

Each tree runs in its own process (PYTHONPATH=<tree>), reads the shipped tables with its own
`configs.files.load_table` and calls its own `scaledmm.scaled_mm(..., config=bucket.config)`, so
each runs its own kernels with the tiles the buckets name. Inputs follow ../shared/BENCHMARKING.md
(int8 uniform in [-127, 127], fp8 from randn, per-token x per-channel scales in [0.5, 1.5), bf16
bias, bf16 out), drawn from a fixed seed per point, identical for both trees.

    git worktree add /tmp/old 310729a
    PYTHONPATH=src python benchmarks/ab/refactor_bitwise.py --old /tmp/old/src --new src

It prints a table and a last line PASS or FAIL; --limit N keeps the first N buckets (a quick check,
on the CPU interpreter too: TRITON_INTERPRET=1 with small --max-m).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

# The part that runs inside each tree's process: it may import only what both trees have.
WORKER = r"""
import hashlib, json, sys
from pathlib import Path
import torch
import scaledmm
from scaledmm.configs.files import load_table

data_dir, limit, max_m, out_path = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
device = "cuda" if torch.cuda.is_available() else "cpu"
points = []
for path in sorted(data_dir.glob("*.json")):
    table = load_table(path)
    for bucket in table.buckets:
        if bucket.m <= max_m:
            points.append((path.name, table.n, table.k, table.dtype, bucket.m, bucket.config))
points = points[:limit] if limit else points
digests = {}
for name, n, k, dtype, m, config in points:
    gen = torch.Generator(device).manual_seed(n * 7919 + k * 31 + m)
    if dtype == "int8":
        a = torch.randint(-127, 128, (m, k), generator=gen, device=device, dtype=torch.int8)
        w = torch.randint(-127, 128, (n, k), generator=gen, device=device, dtype=torch.int8)
    else:
        fp8 = torch.float8_e4m3fn
        a = torch.randn(m, k, generator=gen, device=device).clamp(-448, 448).to(fp8)
        w = torch.randn(n, k, generator=gen, device=device).clamp(-448, 448).to(fp8)
    scale_a = torch.rand(m, 1, generator=gen, device=device) + 0.5
    scale_b = torch.rand(1, n, generator=gen, device=device) + 0.5
    bias = torch.randn(n, generator=gen, device=device).to(torch.bfloat16)
    out = scaledmm.scaled_mm(a, w.t(), scale_a, scale_b, torch.bfloat16, bias, config=config)
    key = f"{name}:M={m}"
    digests[key] = [hashlib.sha256(out.view(torch.int16).cpu().numpy().tobytes()).hexdigest(), str(config)]
Path(out_path).write_text(json.dumps(digests))
"""


def run_tree(src: str, data_dir: str, limit: int, max_m: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out_path = f.name
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    subprocess.run([sys.executable, "-c", WORKER, data_dir, str(limit), str(max_m), out_path], env=env, check=True)
    with open(out_path) as f:
        return json.load(f)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the src folder of the tree before")
    parser.add_argument("--new", required=True, help="the src folder of the tree after")
    parser.add_argument(
        "--data", help="the config files to run (default: the old tree's shipped files, which both trees read)"
    )
    parser.add_argument("--limit", type=int, default=0, help="only the first N buckets (0: all)")
    parser.add_argument("--max-m", type=int, default=1 << 30, help="only buckets up to this M")
    args = parser.parse_args()
    data_dir = os.path.abspath(args.data or os.path.join(args.old, "scaledmm", "configs", "data"))
    old = run_tree(args.old, data_dir, args.limit, args.max_m)
    new = run_tree(args.new, data_dir, args.limit, args.max_m)
    differ = sorted(k for k in old if old[k][0] != new.get(k, [None])[0])
    missing = sorted(set(old) ^ set(new))
    for key in sorted(old):
        state = "same" if key not in differ else "DIFFERENT"
        print(f"{key:<90} {old[key][1]:<32} {state}")
    digest = hashlib.sha256("".join(v[0] for _, v in sorted(new.items())).encode()).hexdigest()[:16]
    print(f"{len(old)} buckets; {len(differ)} differ; {len(missing)} missing in one tree; all outputs' digest {digest}")
    print("PASS" if not differ and not missing else "FAIL")
    return 0 if not differ and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
