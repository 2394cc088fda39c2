"""`scaledmm bench-model` on a tiny decoder (transformers' Llama and Qwen3 classes, random weights)."""

import json

import pytest
import torch
from helpers import ON_GPU

from scaledmm.bench.model import ModelRun, build_decoder, model_table, run_model_bench
from scaledmm.bench.report import plot_model
from scaledmm.bench.shapes import DecoderDims
from scaledmm.nn import W8A8Linear

pytest.importorskip("transformers")

TINY = DecoderDims(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# The vendor kernel (torch-fp8) needs CUDA.
VARIANTS = ["bf16", "scaledmm-int8", "scaledmm-fp8", "scaledmm-fp8-unfused"] + (["torch-fp8"] if ON_GPU else [])


@pytest.mark.parametrize("name,variants", [("llama3-8b", VARIANTS), ("qwen3-4b", ["bf16", "scaledmm-fp8"])])
def test_tiny_decoder_end_to_end(name, variants, tmp_path):
    run = ModelRun(batches=(1, 2), context=8, prefill=16, replays=20)
    result = run_model_bench([name], variants, run, DEVICE, command="test", layers=1, vocab_size=128, dims=TINY)
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == variants
    for r in rows.values():
        assert r["decode_b1_us"] > 0 and r["decode_b2_us"] > 0 and r["prefill_us"] > 0
        # Random weights, dynamic per-token activations: the bar is 0.99.
        assert r["logits_cosine"] >= 0.99, (r["variant"], r["logits_cosine"])
    assert rows["bf16"]["logits_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert "scaledmm-fp8 over bf16" in model_table(result)
    json.dumps(result)  # serialisable as written by the CLI
    pytest.importorskip("matplotlib")
    (plot,) = plot_model(result, tmp_path)
    assert plot == tmp_path / "model_throughput.png" and plot.stat().st_size > 10_000


def test_build_decoder_has_the_preset_shapes():
    model = build_decoder("llama3-8b", torch.device("meta"), layers=1, vocab_size=128)
    shapes = {
        n.split(".")[-1]: tuple(m.weight.shape)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "layers.0" in n
    }
    assert shapes == {
        "q_proj": (4096, 4096),
        "k_proj": (1024, 4096),
        "v_proj": (1024, 4096),
        "o_proj": (4096, 4096),
        "gate_proj": (14336, 4096),
        "up_proj": (14336, 4096),
        "down_proj": (4096, 14336),
    }


def test_variants_swap_every_linear_but_lm_head():
    from scaledmm.bench.model import make_variant

    base = build_decoder("qwen3-4b", DEVICE, layers=1, vocab_size=128, dims=TINY)
    model = make_variant(base, "scaledmm-int8")
    kinds = {type(m).__name__ for n, m in model.named_modules() if "layers.0" in n and n.endswith("_proj")}
    assert kinds == {"W8A8Linear"} and type(model.lm_head) is torch.nn.Linear
    assert all(type(m) is not W8A8Linear for m in base.modules())  # the base model is left as it was
    assert model.model.layers[0].self_attn.k_proj.fused is not None
    unfused = make_variant(base, "scaledmm-fp8-unfused")
    assert unfused.model.layers[0].self_attn.k_proj.fused is None
    for option, impl in (("fusedquant", "triton"), ("inductor", "inductor")):
        model = make_variant(base, f"torch-fp8-{option}")
        assert model.model.layers[0].mlp.impl == impl and model.model.layers[0].mlp.down_proj.backend == "torch"


def test_compiled_variants_one_graph_for_every_batch_above_one():
    # aot_eager: dynamo and AOT autograd as on the GPU, without Inductor's C++ compiles on the CPU.
    run = ModelRun(batches=(1, 2, 4), context=8, prefill=16, replays=20, compile=True, compile_backend="aot_eager")
    variants = ["bf16", "scaledmm-int8-fusedquant", "scaledmm-fp8-inductor"]
    result = run_model_bench(["llama3-8b"], variants, run, DEVICE, command="test", layers=1, vocab_size=128, dims=TINY)
    for r in result["rows"]:
        # prefill, decode at batch 1 (sizes of 1 specialise), then one graph for batches 2 and 4
        assert r["compiled_graphs"] == 3, (r["variant"], r["compiled_graphs"])
        assert r["decode_b4_us"] > 0 and r["logits_cosine"] >= 0.99
    table = model_table(result)
    assert "compiled" in table and "3 graphs compiled" in table
    json.dumps(result)


def test_kernel_categories_and_breakdown():
    from scaledmm.bench.model import gpu_time_breakdown, kernel_category

    assert kernel_category("_scaled_mm_swap_kernel") == "linears"
    assert kernel_category("_quantized_linear_kernel") == "linears"  # quantizes inside a matmul
    assert kernel_category("nvjet_tst_64x8_64x16_4x1_v_bz_TNT") == "linears"  # cuBLAS (bf16 mm, _scaled_mm)
    assert kernel_category("_rms_norm_quantize_kernel") == "quantize"
    assert kernel_category("pytorch_flash::flash_fwd_splitkv_kernel<...>") == "attention"
    assert kernel_category("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "rest"
    kernels = {"_scaled_mm_kernel": 60.0, "_quantize_rows_kernel": 10.0, "fmha_cutlassF": 10.0, "triton_poi_x": 20.0}
    breakdown = gpu_time_breakdown(kernels, steps=2)
    assert breakdown["gpu_us_per_step"] == 50.0
    assert breakdown["share"] == {"attention": 0.1, "linears": 0.6, "quantize": 0.1, "rest": 0.2}
    assert breakdown["top_kernels"][0] == {"name": "_scaled_mm_kernel", "category": "linears", "us_per_step": 30.0}


def test_split_variants_keeps_the_order_given_in_contiguous_groups():
    from scaledmm.bench.model import split_variants

    assert split_variants(["a", "b", "c", "d"], 2) == [["a", "b"], ["c", "d"]]
    assert split_variants(["a", "b", "c"], 2) == [["a", "b"], ["c"]]  # the first groups take the extra
    assert split_variants(["a", "b", "c", "d", "e"], 3) == [["a", "b"], ["c", "d"], ["e"]]
    assert split_variants(["a", "b"], 4) == [["a"], ["b"]]  # no GPU without a variant
    assert split_variants(["a", "b", "c"], 1) == [["a", "b", "c"]]
    with pytest.raises(ValueError):
        split_variants(["a"], 0)


def _row(model: str, variant: str, gpu: int | None, decode_us: float = 1000.0) -> dict:
    return {
        "model": model,
        "variant": variant,
        "layers": 1,
        "gpu": None if gpu is None else {"index": gpu, "name": "NVIDIA H200"},
        "logits_cosine": 1.0,
        "decode_b1_us": decode_us,
        "prefill_us": 2000.0,
        "first_call_s": {},
    }


def test_partial_results_written_in_order_after_every_row(tmp_path):
    from scaledmm.bench.model import PartialResults

    path = tmp_path / "model_results.json"
    results = PartialResults(path, ModelRun(), {"gpu": "test"}, ["llama3-8b"], ["bf16", "scaledmm-fp8", "torch-fp8"])
    results.add(_row("llama3-8b", "torch-fp8", 1))  # the second GPU's worker may finish first
    written = json.loads(path.read_text())
    assert [r["variant"] for r in written["rows"]] == ["torch-fp8"] and written["complete"] is False
    results.add(_row("llama3-8b", "bf16", 0))
    assert [r["variant"] for r in json.loads(path.read_text())["rows"]] == ["bf16", "torch-fp8"]
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, replaced at once
    results.add(_row("llama3-8b", "scaledmm-fp8", 0))
    written = json.loads(path.read_text())
    assert [r["variant"] for r in written["rows"]] == ["bf16", "scaledmm-fp8", "torch-fp8"]
    assert written["complete"] is True and written["environment"] == {"gpu": "test"}
    assert results.result()["rows"] == written["rows"]


def test_table_of_a_partial_run_says_so():
    from scaledmm.bench.model import model_result

    rows = [_row("llama3-8b", "bf16", 0)]
    partial = model_result(rows, ModelRun(batches=(1,)), {}, complete=False)
    assert "partial: the run stopped after 1 rows" in model_table(partial)
    assert "partial" not in model_table(model_result(rows, ModelRun(batches=(1,)), {}))


def test_table_marks_the_gpu_of_each_row_when_there_were_several():
    from scaledmm.bench.model import model_result

    rows = [_row("llama3-8b", "bf16", 0), _row("llama3-8b", "scaledmm-fp8", 1, decode_us=500.0)]
    table = model_table(model_result(rows, ModelRun(batches=(1,)), {}))
    assert "ratios between rows of different GPUs compare two cards of one host" in table
    assert "GPU 0 NVIDIA H200, GPU 1 NVIDIA H200" in table
    assert "scaledmm-fp8 over bf16: decode b1 2.00x" in table  # ratios as on one GPU
    header, bf16, fp8 = (line.split() for line in table.splitlines()[2:5])
    assert header[1] == "gpu" and bf16[:2] == ["bf16", "0"] and fp8[:2] == ["scaledmm-fp8", "1"]
    one_gpu = model_table(model_result([_row("llama3-8b", "bf16", 0)], ModelRun(batches=(1,)), {}))
    assert "gpu" not in one_gpu.splitlines()[1] and "two cards" not in one_gpu


@pytest.mark.skipif(ON_GPU and torch.cuda.device_count() < 2, reason="two workers need two GPUs")
def test_workers_send_every_row_to_the_parent(tmp_path):
    from scaledmm.bench.model import PartialResults, run_model_bench_on_gpus

    # Two spawned processes (CPU ones without a GPU), one variant each, as `--gpus 2` runs them.
    run = ModelRun(batches=(1,), context=8, prefill=16, replays=20, profile_batch=None)
    variants = ["bf16", "scaledmm-int8"]
    results = PartialResults(tmp_path / "model_results.json", run, {}, ["llama3-8b"], variants)
    run_model_bench_on_gpus(
        ["llama3-8b"], [["bf16"], ["scaledmm-int8"]], run, results.add, "test", 1, 128, TINY, DEVICE.type
    )
    written = json.loads((tmp_path / "model_results.json").read_text())
    assert [r["variant"] for r in written["rows"]] == variants and written["complete"] is True
    # Same seed in both workers: the same decoder, so the cosine to bf16 means what it does on one GPU.
    assert written["rows"][1]["logits_cosine"] >= 0.99
    if ON_GPU:
        assert [r["gpu"]["index"] for r in written["rows"]] == [0, 1]


@pytest.mark.skipif(ON_GPU, reason="CPU workers (a GPU host covers the rows test above)")
def test_a_worker_error_reaches_the_parent():
    from torch.multiprocessing import ProcessRaisedException

    from scaledmm.bench.model import run_model_bench_on_gpus

    run = ModelRun(batches=(1,), context=8, prefill=16, replays=20, profile_batch=None)
    with pytest.raises(ProcessRaisedException, match="no-such-option"):
        groups = [["scaledmm-int8-no-such-option"]]
        run_model_bench_on_gpus(["llama3-8b"], groups, run, print, "test", 1, 128, TINY, "cpu")
