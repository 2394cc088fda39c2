"""A/B of two kernel versions in one run: rows past M wrapped (commit 1985195) against masked when
M < BLOCK_M (commit 657c2fb). Both are loaded from git history, so the measurement in
benchmarks/results/h100-2026-11-27/mask_ab.log can be repeated on any card:

    PYTHONPATH=src python3 benchmarks/ab/mask_rows.py

Each kernel is timed by the benchmark protocol on the same inputs and config; the newer one twice,
so that the spread of one kernel against itself shows the noise.
"""

import importlib.util
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import scaledmm
from scaledmm.bench.timing import rotation_count, time_calls
from scaledmm.testing import make_operands, max_error_ratio

VERSIONS = {"wrapped": "1985195", "masked": "657c2fb"}


def load_kernel(commit: str):
    source = subprocess.run(
        ["git", "show", f"{commit}:src/scaledmm/kernels/matmul.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / f"matmul_{commit}.py"  # Triton reads a kernel's source from its file
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.launch_scaled_mm


def runner(launch):
    def run(a, b, sa, sb, bias, config):
        out = torch.empty(a.shape[0], b.shape[1], dtype=torch.bfloat16, device=a.device)
        launch(a, b, sa, sb, bias, out, config)
        return out

    return run


def main() -> int:
    device = torch.device("cuda")
    before, now = (runner(load_kernel(c)) for c in VERSIONS.values())
    print(f"{torch.cuda.get_device_name()}: us per call (median), rows wrapped before vs masked now")
    ratios, noise = {}, []
    for n, k in [(6144, 4096), (4096, 14336), (2560, 4096), (28672, 4096)]:
        for m in [1, 2, 4, 8, 12, 16, 24, 48]:
            for dtype in (torch.float8_e4m3fn, torch.int8):
                config = scaledmm.select_config(m, n, k, dtype)
                ops = [make_operands(m, n, k, dtype, device) for _ in range(rotation_count(n * k, device))]
                error = max_error_ratio(now(*ops[0].args(), ops[0].bias, config), ops[0])
                inputs = [(*o.args(), o.bias, config) for o in ops]
                t_now = time_calls(now, inputs).median_us
                t_before = time_calls(before, inputs).median_us
                t_again = time_calls(now, inputs).median_us
                noise.append(abs(t_again / t_now - 1))
                ratios.setdefault(m, []).append(t_before / t_now)
                print(
                    f"{n:6d} {k:6d} {m:4d} {str(dtype)[6:]:14s} before {t_before:7.1f} now {t_now:7.1f} "
                    f"(again {t_again:7.1f}) speedup {t_before / t_now:5.3f} error {error:.2f} {config}",
                    flush=True,
                )
    for m, r in ratios.items():
        geomean = math.exp(sum(map(math.log, r)) / len(r))
        print(f"M={m:3d} geomean speedup {geomean:.3f} (min {min(r):.3f}, max {max(r):.3f})")
    print(f"same kernel twice: median |difference| {sorted(noise)[len(noise) // 2]:.1%}, max {max(noise):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
