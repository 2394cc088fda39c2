"""tune.report.files_summary: the geomeans `scaledmm configs --summary` prints from tuned files."""

import math

import pytest

from scaledmm.cli import main
from scaledmm.tune.report import files_summary


def _table(buckets: dict) -> dict:
    return {"device_name": "NVIDIA H200", "dtype": "fp8", "accumulation": "fast", "buckets": buckets}


def _bucket(auto: float, **baselines: float) -> dict:
    return {"backend": "triton", "time_us": auto, "baselines_us": baselines}


def _cells(summary: str, m_range: str) -> list[str]:
    """The words after the range of M on its line: vendor / auto (4 words), vendor / ours, heuristic / auto."""
    line = next(line for line in summary.splitlines() if f" {m_range} " in line)
    return line.split(f" {m_range} ")[1].split()


def test_geomeans_per_range_of_m():
    table = _table(
        {
            "1": _bucket(10.0, torch=20.0, triton=10.0, heuristic=10.0),
            "64": _bucket(10.0, torch=80.0, triton=10.0, heuristic=40.0),  # decode: geomean 4.0 of 2 and 8
            "4096": _bucket(100.0, torch=100.0, triton=125.0, heuristic=150.0),  # the vendor won
        }
    )
    summary = files_summary([table])
    decode, prefill = _cells(summary, "decode"), _cells(summary, "prefill")
    assert decode[0:4] == ["4.00", "(min", "2.00,", "2)"]  # vendor / auto
    assert decode[8] == f"{math.sqrt(4.0):.2f}"  # heuristic / auto: geomean of 1 and 4
    assert prefill[0] == "1.00" and prefill[4] == "0.80"  # auto runs the vendor; ours alone is slower
    assert " mid " not in summary  # no bucket in that range


def test_a_vendor_that_refused_counts_only_for_the_heuristic():
    table = _table({"8": _bucket(10.0, torch=None, triton=10.0, heuristic=15.0)})
    cells = _cells(files_summary([table]), "decode")
    assert cells[:3] == ["-", "-", "1.50"]


def test_block_tables_are_a_mode_of_their_own():
    table = dict(_table({"16": _bucket(10.0, torch=12.0, triton=10.0)}), block_shape=[128, 128])
    assert "block 128x128" in files_summary([table])


def test_no_measured_times():
    assert files_summary([]) == "no tuned file records its measured times"


def test_cli_summarises_the_shipped_files(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("SCALEDMM_CONFIG_DIR", raising=False)
    assert main(["configs", "--summary"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA H200" in out and "vendor / auto" in out
