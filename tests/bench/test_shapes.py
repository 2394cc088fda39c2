"""Model presets, HuggingFace configs and tensor parallelism give the right (N, K)."""

import json
from pathlib import Path

import pytest

from scaledmm.bench.shapes import DEFAULT_M, M_DECODE, M_MID, M_PREFILL, collect_shapes, m_range, preset_shapes

SHARED_SHAPES = Path(__file__).resolve().parents[3] / "shared" / "shapes.json"


def nk(shapes):
    return {s.name.split(".")[-1]: (s.n, s.k) for s in shapes}


def test_llama3_8b():
    assert nk(preset_shapes("llama3-8b")) == {
        "qkv": (6144, 4096),
        "o": (4096, 4096),
        "gate_up": (28672, 4096),
        "down": (4096, 14336),
    }


@pytest.mark.parametrize(
    "tp,expected",
    [
        (2, {"qkv": (3072, 4096), "o": (4096, 2048), "gate_up": (14336, 4096), "down": (4096, 7168)}),
        (4, {"qkv": (1536, 4096), "o": (4096, 1024), "gate_up": (7168, 4096), "down": (4096, 3584)}),
        # 8 KV heads over 8 ranks: one each. (32/8 q + 2 * 1 kv) * 128 = 768.
        (8, {"qkv": (768, 4096), "o": (4096, 512), "gate_up": (3584, 4096), "down": (4096, 1792)}),
    ],
)
def test_llama3_8b_tensor_parallel(tp, expected):
    assert nk(preset_shapes("llama3-8b", tp)) == expected


def test_kv_heads_are_replicated_beyond_their_count():
    # qwen2.5-7b has 28 query and 4 KV heads: at tp 4 a rank holds 7 and 1; at tp 8 the heads do not
    # divide, and at tp 2 each rank holds 2 KV heads.
    assert nk(preset_shapes("qwen2.5-7b", 4))["qkv"] == ((7 + 2 * 1) * 128, 3584)
    assert nk(preset_shapes("qwen2.5-7b", 2))["qkv"] == ((14 + 2 * 2) * 128, 3584)
    # llama3-70b: 64 query, 8 KV heads; at tp 16 a rank keeps one replicated KV head.
    assert nk(preset_shapes("llama3-70b", 16))["qkv"] == ((4 + 2 * 1) * 128, 8192)


@pytest.mark.skipif(not SHARED_SHAPES.exists(), reason="shared/shapes.json is not beside this checkout")
def test_presets_and_m_values_match_the_public_shape_set():
    public = json.loads(SHARED_SHAPES.read_text())
    for model, layers in public["models"].items():
        assert nk(preset_shapes(model)) == {name: tuple(v) for name, v in layers.items()}
    assert list(M_DECODE) == public["m_decode"]
    assert list(M_MID) == public["m_mid"]
    assert list(M_PREFILL) == public["m_prefill"]


def test_hf_config(tmp_path):
    config = {
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "model_type": "qwen3",
    }
    path = tmp_path / "qwen3-4b" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    assert nk(collect_shapes([], [str(path)], [])) == nk(preset_shapes("qwen3-4b"))
    assert collect_shapes([], [str(path)], [])[0].name == "qwen3-4b.qkv"
    # head_dim and num_key_value_heads default as in transformers.
    del config["head_dim"], config["num_key_value_heads"]
    path.write_text(json.dumps(config))
    assert nk(collect_shapes([], [str(path)], []))["qkv"] == (3 * 2560, 2560)


def test_hf_config_missing_key(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ValueError, match="a decoder config needs 'num_attention_heads'"):
        collect_shapes([], [str(path)], [])


def test_explicit_shapes_and_duplicates():
    shapes = collect_shapes(["llama3-8b", "mistral-7b"], [], ["4096,4096", "7,33"])
    assert [(s.n, s.k) for s in shapes][-1] == (7, 33)
    assert len(shapes) == 5  # mistral-7b and 4096,4096 repeat llama3-8b's shapes
    with pytest.raises(ValueError, match="N,K"):
        collect_shapes([], [], ["4096x4096"])
    with pytest.raises(ValueError, match="unknown model preset"):
        collect_shapes(["llama9"], [], [])
    with pytest.raises(ValueError, match="tp=3 must divide"):
        collect_shapes(["llama3-8b"], [], [], tp=3)


def test_m_ranges():
    assert [m_range(m) for m in (1, 64, 128, 512, 1024)] == ["decode", "decode", "mid", "mid", "prefill"]
    assert DEFAULT_M == M_DECODE + M_MID + M_PREFILL


def test_unfused_shapes_as_transformers_holds_them():
    shapes = collect_shapes(["llama3-8b"], [], [], fused=False)
    # k and v share a shape, as gate and up do: each is listed once.
    assert [(s.name, s.n, s.k) for s in shapes] == [
        ("llama3-8b.q", 4096, 4096),
        ("llama3-8b.k", 1024, 4096),
        ("llama3-8b.gate", 14336, 4096),
        ("llama3-8b.down", 4096, 14336),
    ]
    assert nk(preset_shapes("qwen3-4b", 2, fused=False))["k"] == (512, 2560)
