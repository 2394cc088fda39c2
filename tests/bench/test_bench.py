"""`scaledmm bench` end to end on tiny shapes; on the CPU the CUDA baselines are skipped and say so."""

import csv
import json

import pytest
from helpers import ON_GPU

from scaledmm.bench.micro import SCALEDMM, summarize
from scaledmm.cli import main

ENV_FIELDS = {"gpu", "torch", "triton", "date", "command"}
GPU_ENV_FIELDS = {"driver", "sm_clock"}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--shape", "64,128", "--m", "1,24", "--replays", "20", "--out", str(out)]) == 0
    return out


def test_json_carries_environment_rows_and_summary(bench_dir):
    result = json.loads((bench_dir / "results.json").read_text())
    env = result["environment"]
    assert set(env) >= ENV_FIELDS
    assert env["command"].startswith("scaledmm bench --shape 64,128")
    if ON_GPU:
        assert set(env) >= GPU_ENV_FIELDS and result["ceilings"]["copy_gbps"] > 0
    rows = result["rows"]
    points = {(r["m"], r["dtype"], r["method"]) for r in rows}
    for m in (1, 24):
        for dtype in ("int8", "fp8"):
            assert (m, dtype, SCALEDMM) in points
        assert (m, "bf16", "F.linear-bf16") in points
    ours = [r for r in rows if r["method"] == SCALEDMM]
    assert all(r["time_us"] > 0 and r["max_error_ratio"] <= 1 for r in ours)
    if not ON_GPU:
        skipped = [r for r in rows if r["time_us"] is None]
        assert skipped and all(r["note"] == "the vendor kernels need CUDA tensors" for r in skipped)
    assert result["summary"]["fp8"]["scaledmm-heuristic"]["all"]["points"] == 2


def test_csv_has_one_row_per_point_and_method(bench_dir):
    lines = (bench_dir / "results.csv").read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert any(line.startswith("# command: scaledmm bench") for line in header)
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert {"shape", "n", "k", "m", "dtype", "method", "time_us"} <= set(rows[0])
    assert len(rows) == len(json.loads((bench_dir / "results.json").read_text())["rows"])


def test_plots_are_drawn(bench_dir):
    pytest.importorskip("matplotlib")
    for name in ("speedup.png", "roofline.png"):
        assert (bench_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_geomeans():
    def row(m, dtype, method, t):
        return {"shape": "s", "m": m, "dtype": dtype, "method": method, "time_us": t}

    rows = [
        row(1, "fp8", "scaledmm", 10.0),
        row(1, "fp8", "torch._scaled_mm", 20.0),
        row(2, "fp8", "scaledmm", 10.0),
        row(2, "fp8", "torch._scaled_mm", 5.0),
        row(1024, "fp8", "scaledmm", 10.0),
        row(1024, "fp8", "torch._scaled_mm", 30.0),
        row(1, "int8", "scaledmm", 10.0),
    ]
    summary = summarize(rows, ["fp8", "int8"])
    vendor = summary["fp8"]["torch._scaled_mm"]
    assert vendor["decode"] == {"geomean": pytest.approx(1.0), "points": 2, "min": 0.5}
    assert vendor["prefill"]["geomean"] == pytest.approx(3.0)
    assert vendor["all"]["geomean"] == pytest.approx(3.0 ** (1 / 3))
    # int8 is set against the fp8 vendor kernel at the same point.
    assert summary["int8"]["torch._scaled_mm"]["decode"]["geomean"] == pytest.approx(2.0)


def test_host_overhead(tmp_path):
    assert main(["bench", "--host-overhead", "--calls", "3", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "host_overhead.json").read_text())
    assert result["us_per_call"]["scaledmm.scaled_mm (fp8)"] > 0
    assert result["us_per_call"]["W8A8Linear forward (int8)"] > 0
    assert result["ratios"]["W8A8Linear (fp8) / nn.Linear"] > 0
    assert result["environment"]["command"] == f"scaledmm bench --host-overhead --calls 3 --out {tmp_path}"


def test_bad_arguments_exit_with_a_message(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--m", "0,1"])
    assert "integers >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown model preset"):
        main(["bench", "--model", "nope"])
