"""benchmarks/summarize_bench.py: several `scaledmm bench` runs pooled, each weight shape once."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import summarize_bench  # noqa: E402  (a benchmark script)

from scaledmm.bench.micro import SCALEDMM, TORCH_SCALED_MM, summarize  # noqa: E402


def _run(folder: Path, shape: str, n: int, k: int, vendor_us: float) -> Path:
    rows = [
        {"shape": shape, "n": n, "k": k, "m": 1, "dtype": "fp8", "method": method, "time_us": t}
        for method, t in ((SCALEDMM, 10.0), (TORCH_SCALED_MM, vendor_us))
    ]
    folder.mkdir()
    env = {"gpu": "NVIDIA H200", "device": "cuda:0", "date": "d", "command": f"bench {shape}"}
    (folder / "results.json").write_text(json.dumps({"environment": env, "rows": rows}))
    return folder


def test_a_shape_two_presets_share_counts_once(tmp_path):
    first = _run(tmp_path / "a", "llama3-70b-tp4.qkv", 2560, 8192, vendor_us=20.0)
    same_weight = _run(tmp_path / "b", "qwen2.5-72b-tp4.qkv", 2560, 8192, vendor_us=40.0)
    other = _run(tmp_path / "c", "qwen3-4b.o", 2560, 4096, vendor_us=10.0)
    rows, sources = summarize_bench.pooled_rows([first, same_weight, other])
    assert len(sources) == 3 and "bench qwen3-4b.o" in sources[2]
    assert {r["shape"] for r in rows} == {"2560x8192", "2560x4096"}
    decode = summarize(rows, ["fp8"])["fp8"][TORCH_SCALED_MM]["decode"]
    # The first run's 2x (not the second's 4x) and the other shape's 1x: geomean sqrt(2).
    assert decode["points"] == 2 and abs(decode["geomean"] - 2**0.5) < 1e-9 and decode["min"] == 1.0


LOG = """\
scaledmm bench: 100%|##########| 2/2 [00:01<00:00]
== fp8 (fast accumulation): scaledmm, and its speedup over each baseline (>1: scaledmm faster)
shape                      M        us  TFLOP/s    GB/s  %ceil       x torch._scaled_mm          x F.linear-bf16
llama3-70b-tp4.qkv         1      10.0      4.2    2097     49                    2.00*                     1.50
9216x3072                 64      20.0    181.2    1500     35                     0.50                        -

== int8: scaledmm, and its speedup over each baseline (>1: scaledmm faster)
shape                      M        us  TFLOP/s    GB/s  %ceil x torch._int_mm+epilogue       x torch._scaled_mm
llama3-70b-tp4.qkv         1       8.0      5.2    2621     62                        -                     2.50

== geomean speedup of scaledmm (points; min)
fp8         torch._scaled_mm                1.00 (2; 0.50)
"""


def test_a_bench_log_gives_back_the_ratios_it_printed(tmp_path):
    log = tmp_path / "bench.log"
    log.write_text(LOG)
    rows = summarize_bench.rows_from_log(log)
    weights = {(r["shape"], r["n"], r["k"]) for r in rows}
    assert weights == {("llama3-70b-tp4.qkv", 2560, 8192), ("9216x3072", 9216, 3072)}
    summary = summarize(rows, ["fp8", "int8"])
    vendor = summary["fp8"][TORCH_SCALED_MM]["decode"]
    assert vendor["points"] == 2 and abs(vendor["geomean"] - 1.0) < 1e-9 and vendor["min"] == 0.5
    assert abs(summary["fp8"]["F.linear-bf16"]["decode"]["geomean"] - 1.5) < 1e-9
    # int8 against the fp8 vendor: looked up under fp8, as the bench does.
    assert abs(summary["int8"][TORCH_SCALED_MM]["decode"]["geomean"] - 2.5) < 1e-9
