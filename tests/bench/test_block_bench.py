"""`scaledmm bench --block-size` on a tiny shape: block-scaled rows for scaledmm (auto, triton, the
heuristic's tile), checked against the reference, beside torch._scaled_mm's block mode (skipped on
the CPU, and at M = 1 where it refuses); and the block-scaled presets of the public shape set."""

import json
from pathlib import Path

import pytest
from helpers import ON_GPU

from scaledmm.bench.micro import BLOCK_LABEL, HEURISTIC, SCALEDMM, TORCH_SCALED_MM, TRITON
from scaledmm.bench.shapes import BLOCK_FP8_MODELS, preset_shapes
from scaledmm.cli import main

SHARED_SHAPES = Path(__file__).resolve().parents[3] / "shared" / "shapes.json"


def test_block_bench_rows(tmp_path, capsys):
    assert main(["bench", "--shape", "48,256", "--block-size", "128,128", "--m", "1,20", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== fp8-block (block scales, promoted every block)" in out
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["dtype"] for r in rows} == {"bf16", BLOCK_LABEL}
    ours = [r for r in rows if r["dtype"] == BLOCK_LABEL and r["method"] in (SCALEDMM, TRITON, HEURISTIC)]
    assert len(ours) == 6 and all(r["time_us"] > 0 and r["max_error_ratio"] <= 1 for r in ours)
    vendor = {r["m"]: r for r in rows if r["method"] == TORCH_SCALED_MM}
    assert vendor[1]["time_us"] is None  # the CPU, or M = 1 on a GPU: refused
    if not ON_GPU:
        assert vendor[20]["note"] == "the vendor kernels need CUDA tensors"


@pytest.mark.skipif(not SHARED_SHAPES.exists(), reason="shared/shapes.json is not beside this checkout")
def test_block_presets_match_the_public_shape_set():
    public = json.loads(SHARED_SHAPES.read_text())["block_fp8"]
    assert set(public) == set(BLOCK_FP8_MODELS)
    for model, layers in public.items():
        shapes = {s.name.split(".")[-1]: (s.n, s.k) for s in preset_shapes(model)}
        assert shapes == {name: tuple(v) for name, v in layers.items()}


def test_a_shape_list_preset_has_no_tp_or_unfused_form():
    with pytest.raises(ValueError, match="deepseek-v3 is a fixed list of shapes"):
        preset_shapes("deepseek-v3", tp=2)
    assert len(preset_shapes("qwen3-8b-fp8", tp=2)) == 4  # a preset by its dimensions divides
