"""`scaledmm eval-model` end to end, tiny: a few training steps on the CPU, every variant evaluated."""

import json
import math

import pytest
import torch
from helpers import DEVICE

from scaledmm.bench.perplexity import EVAL_VARIANTS, EvalSettings, eval_table, run_eval, stdlib_corpus

pytest.importorskip("transformers")

TINY = EvalSettings(
    layers=1, hidden=64, intermediate=128, heads=2, kv_heads=1, seq_len=16, batch=2, train_seconds=60.0,
    max_steps=3, warmup_steps=1, eval_windows=1, eval_batch=1, calibration_windows=1, max_corpus_bytes=1 << 20,
)  # fmt: skip


def test_corpus_holds_out_whole_files():
    train, held_out, info = stdlib_corpus(holdout_every=10, max_bytes=1 << 20)
    assert train.dtype == torch.uint8 and info["train_bytes"] == train.numel() > 0
    assert 0 < held_out.numel() < train.numel()


def test_eval_model_end_to_end():
    result = run_eval(TINY, torch.device(DEVICE), command="test", log=lambda *_: None)
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == [name for name, _ in EVAL_VARIANTS]
    assert result["training"]["steps"] == 3 and math.isfinite(result["training"]["final_train_loss"])
    assert rows["bf16"]["vs_bf16"] == 0 and rows["bf16"]["logits_cosine"] == pytest.approx(1.0, abs=1e-4)
    for r in rows.values():
        # Barely trained: about uniform over 256 bytes, and every quantized model close to bf16.
        assert 100 < r["perplexity"] < 1000 and abs(r["vs_bf16"]) < 0.05, r
        assert r["logits_cosine"] > 0.95, r
    assert "fp8 precise static" in eval_table(result)
    json.dumps(result)


def test_cli_settings():
    from scaledmm.cli import build_parser

    args = build_parser().parse_args(["eval-model", "--layers", "2", "--kv-heads", "1", "--train-seconds", "5"])
    assert (args.layers, args.kv_heads, args.train_seconds, args.hidden) == (2, 1, 5.0, None)


@pytest.mark.parametrize(
    "field,value,error",
    [("eval_batch", 0, ValueError), ("layers", 2.5, TypeError), ("kv_heads", 3, ValueError)],
)
def test_settings_are_checked_before_any_training(field, value, error):
    with pytest.raises(error, match=field):
        EvalSettings(**{field: value})


def test_cli_refuses_bad_settings_naming_them():
    from scaledmm.cli import main

    with pytest.raises(SystemExit, match="scaledmm eval-model: eval_batch must be an int >= 1, got 0"):
        main(["eval-model", "--eval-batch", "0"])
