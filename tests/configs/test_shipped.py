"""The config files shipped in the package: every one valid, named for its content, produced by the
tuner on the card it names, and listed by `scaledmm configs`."""

import json

import pytest

from scaledmm.cli import main
from scaledmm.configs import clear_cache
from scaledmm.configs.files import FORMAT_VERSION, load_table, normalize_device_name, parse_file_name
from scaledmm.configs.lookup import CONFIG_DIR_ENV, SHIPPED_DIR
from scaledmm.kernels.matmul import kernel_revision
from scaledmm.kernels.matmul_block import block_kernel_revision

SHIPPED = sorted(SHIPPED_DIR.glob("*.json"))


def test_files_are_shipped():
    assert SHIPPED, f"no config files in {SHIPPED_DIR}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_file_is_valid_and_from_the_tuner(path):
    table = load_table(path)  # raises on anything invalid
    assert parse_file_name(path.name) == (
        normalize_device_name(table.device_name),
        table.n,
        table.k,
        table.dtype,
        table.accumulation,
        table.block_shape,
    )
    data = json.loads(path.read_text())
    assert data["command"].startswith("scaledmm tune")
    assert data["compute_capability"] and data["triton"] and data["date"]
    for bucket in data["buckets"].values():
        # The winner's time is the faster of the best Triton config and the vendor kernel (named
        # "torch", or "torch (precise: ...)" where cuBLAS refused fast accumulation for the shape).
        (vendor,) = [name for name in bucket["baselines_us"] if name.startswith("torch")]
        times = [t for t in (bucket["baselines_us"]["triton"], bucket["baselines_us"][vendor]) if t]
        assert bucket["time_us"] == pytest.approx(min(times))
        assert (bucket["backend"] == "torch") == (bucket["time_us"] < bucket["baselines_us"]["triton"])


# Buckets whose kernel compiles to other machine code than the one they were timed with, and that no
# card of their kind was at hand to re-tune: they stay in service (a config is valid for any kernel
# revision) and `scaledmm tune` re-tunes them as stale on the next run on their card. The int8 split-K
# bucket below took the shared split-K ending of the refactor of issue 14, which ptxas allocates
# registers for differently (benchmarks/ab/codegen_compare.py).
STALE = {("N=2560,K=9728,device_name=NVIDIA_H100_80GB_HBM3,dtype=int8_w8a8.json", 96)}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_buckets_were_tuned_with_the_current_kernels(path):
    # A kernel's revision hashes its code (kernels/revision.py): a change of code makes its buckets
    # stale, and `scaledmm tune` (on the card the file names) must re-tune them before the change
    # lands, or show that the new code compiles to the same machine code and re-stamp them.
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION
    table = load_table(path)
    for bucket in table.buckets:
        revision_of = block_kernel_revision if table.block_shape is not None else kernel_revision
        current = revision_of(bucket.config)
        stale = bucket.revision != current
        assert stale == ((path.name, bucket.m) in STALE), f"M={bucket.m} is {'stale' if stale else 'current'}"


def test_configs_lists_them_as_json(capsys, monkeypatch):
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    clear_cache()
    assert main(["configs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(SHIPPED)
    for row in rows:
        assert set(row) == {
            "device", "N", "K", "dtype", "accumulation", "block_shape", "m_buckets", "path", "triton_version"
        }  # fmt: skip
        assert row["dtype"] in ("int8", "fp8") and row["m_buckets"] == sorted(row["m_buckets"])
    clear_cache()


def test_configs_table_names_invalid_files(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "N=8,K=8,device_name=cpu,dtype=int8_w8a8.json"
    bad.write_text("{")
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    assert f"searched, in order: {tmp_path}" in out
    assert "INVALID, skipped" in out and bad.name in out
    clear_cache()
