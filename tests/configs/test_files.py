"""Config files: names, validation of bad files (each skipped with one warning, the heuristic
serving), the bucket rule, the search order, device families, and the cache."""

import contextlib
import json
import os
import signal
import warnings

import pytest
import torch

from scaledmm import MatmulConfig
from scaledmm.cli import main
from scaledmm.configs import clear_cache, heuristic_config, plan, select_config
from scaledmm.configs.files import (
    FORMAT_VERSION,
    MAX_FILE_BYTES,
    ConfigFileError,
    device_family,
    file_name,
    load_table,
    normalize_device_name,
    parse_file_name,
    write_json_atomic,
)
from scaledmm.configs.lookup import CONFIG_DIR_ENV

CPU = torch.device("cpu")
N, K = 96, 64
TUNED = {
    1: MatmulConfig(16, 32, 64, 1, 2, 2),
    16: MatmulConfig(16, 64, 64, 2, 4, 3),
    256: MatmulConfig(64, 64, 64, 4, 4, 2),
}


def table_json(device="cpu", n=N, k=K, dtype="int8", buckets=None, backend="triton"):
    buckets = buckets or TUNED
    return {
        "format_version": FORMAT_VERSION,
        "device_name": device,
        "n": n,
        "k": k,
        "dtype": dtype,
        "triton": "3.6.0",
        "torch": "2.13.0",
        "date": "2026-11-27",
        "scales": "per-token x per-channel",
        "buckets": {
            str(m): {
                "backend": backend,
                "config": c.to_dict(),
                "time_us": 10.0,
                "baselines_us": {"torch": 12.0, "heuristic": None},
                "candidates": 3,
            }
            for m, c in buckets.items()
        },
    }


def write(directory, data, name=None):
    path = directory / (name or file_name(data["device_name"], data["n"], data["k"], data["dtype"]))
    path.write_text(json.dumps(data) if isinstance(data, dict) else data)
    return path


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    yield tmp_path
    clear_cache()


def test_file_names():
    name = file_name("NVIDIA H100 80GB HBM3", 6144, 4096, "fp8")
    assert name == "N=6144,K=4096,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json"
    assert parse_file_name(name) == ("NVIDIA_H100_80GB_HBM3", 6144, 4096, "fp8", "fast", None)
    precise = file_name("NVIDIA H200", 6144, 4096, "fp8", "precise")
    assert precise == "N=6144,K=4096,device_name=NVIDIA_H200,dtype=fp8_w8a8,accumulation=precise.json"
    assert parse_file_name(precise) == ("NVIDIA_H200", 6144, 4096, "fp8", "precise", None)
    assert file_name("NVIDIA H200", 6144, 4096, "int8", "precise").endswith("dtype=int8_w8a8.json")  # exact anyway
    assert parse_file_name("N=1,K=1,device_name=x,dtype=int8_w8a8,accumulation=precise.json") is None
    assert parse_file_name("notes.json") is None
    assert normalize_device_name(" NVIDIA H100 PCIe ") == "NVIDIA_H100_PCIe"


@pytest.mark.parametrize(
    "name,family",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100"),
        ("NVIDIA_H100_NVL", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "H200"),
        ("NVIDIA A100-SXM4-80GB", None),
        ("cpu", None),
    ],
)
def test_device_families(name, family):
    assert device_family(name) == family


def test_tuned_buckets_are_used_by_the_smallest_tuned_m_at_least_m(config_dir):
    write(config_dir, table_json())
    for M, tuned_m in [(1, 1), (2, 16), (16, 16), (17, 256), (256, 256), (257, 256), (512, 256)]:
        assert select_config(M, N, K, torch.int8, CPU) == TUNED[tuned_m], M
    # Far past the tuned range the file's tiles are too small: the heuristic serves.
    assert plan(513, N, K, torch.int8, CPU).source is None
    assert plan(3, N, K, torch.int8, CPU).source.parent == config_dir
    # A neighbouring shape borrows the file's buckets; far shapes and other dtypes get the heuristic.
    assert select_config(3, N + 1, K, torch.int8, CPU) == TUNED[16]
    assert select_config(3, 4 * N, K, torch.int8, CPU) == heuristic_config(3, 4 * N, K, torch.int8, 132, 227 * 1024)
    assert plan(3, N, K, torch.float8_e4m3fn, CPU).source is None


def test_lookup_is_cached(config_dir):
    path = write(config_dir, table_json())
    first = plan(3, N, K, torch.int8, CPU)
    path.unlink()
    assert plan(3, N, K, torch.int8, CPU) is first  # no file system access once planned
    clear_cache()
    assert plan(3, N, K, torch.int8, CPU).source is None


def test_user_dir_comes_before_shipped_files(config_dir, monkeypatch):
    shipped = config_dir / "shipped"
    shipped.mkdir()
    write(shipped, table_json(buckets={1: MatmulConfig(16, 16, 32)}))
    write(config_dir, table_json())
    monkeypatch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", shipped)
    clear_cache()
    assert select_config(1, N, K, torch.int8, CPU) == TUNED[1]
    monkeypatch.delenv(CONFIG_DIR_ENV)
    clear_cache()
    assert select_config(1, N, K, torch.int8, CPU) == MatmulConfig(16, 16, 32)


def test_a_file_tuned_for_small_m_leaves_large_m_to_the_next_file(config_dir, monkeypatch):
    shipped = config_dir / "shipped"
    shipped.mkdir()
    write(shipped, table_json())  # tuned to M = 256
    write(config_dir, table_json(buckets={1: MatmulConfig(16, 16, 32), 8: MatmulConfig(16, 32, 32)}))
    monkeypatch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", shipped)
    clear_cache()
    assert select_config(16, N, K, torch.int8, CPU) == MatmulConfig(16, 32, 32)  # the user's, 2x past 8
    assert select_config(17, N, K, torch.int8, CPU) == TUNED[256]  # the shipped file's
    assert plan(17, N, K, torch.int8, CPU).source.parent == shipped


def test_a_broken_file_warns_only_when_the_lookup_reaches_it(config_dir, monkeypatch):
    shipped = config_dir / "shipped"
    shipped.mkdir()
    write(shipped, "{ not json", name=file_name("cpu", N, K, "int8"))
    write(config_dir, table_json(buckets={8: MatmulConfig(16, 32, 32)}))
    monkeypatch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", shipped)
    clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_config(8, N, K, torch.int8, CPU) == MatmulConfig(16, 32, 32)
    with pytest.warns(UserWarning, match="skipped"):
        assert plan(17, N, K, torch.int8, CPU).source is None


def test_a_family_member_serves_when_the_exact_card_has_no_file(config_dir, monkeypatch):
    write(config_dir, table_json(device="NVIDIA H100 80GB HBM3"))
    monkeypatch.setattr("scaledmm.configs.lookup.device_name", lambda device: "NVIDIA H100 PCIe")
    clear_cache()
    assert select_config(1, N, K, torch.int8, CPU) == TUNED[1]
    monkeypatch.setattr("scaledmm.configs.lookup.device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    clear_cache()
    assert plan(1, N, K, torch.int8, CPU).source is None


def bad_files():
    good = table_json()

    def edit(fn):
        data = json.loads(json.dumps(good))
        fn(data)
        return data

    bucket = lambda d: d["buckets"]["1"]
    return {
        "truncated JSON": (json.dumps(good)[:-20], "not readable JSON"),
        "not an object": ("[1, 2]", "top level must be an object"),
        "unknown top-level key": (edit(lambda d: d.update(speed="fast")), "unknown keys ['speed']"),
        "missing buckets": (edit(lambda d: d.pop("buckets")), "lacks ['buckets']"),
        "unknown format version": (edit(lambda d: d.update(format_version=3)), "format_version"),
        "format-1 key in a format-2 config": (
            edit(lambda d: bucket(d)["config"].update(tma=0)),
            "unknown MatmulConfig",
        ),
        "unknown kernel": (edit(lambda d: bucket(d)["config"].update(kernel="stream-k")), "kernel must be one of"),
        "revision not hexadecimal": (edit(lambda d: bucket(d).update(revision="v2")), "revision must be"),
        "n as a string": (edit(lambda d: d.update(n="96")), "n must be an integer"),
        "dtype unknown": (edit(lambda d: d.update(dtype="int4")), "dtype must be"),
        "empty buckets": (edit(lambda d: d.update(buckets={})), "non-empty object"),
        "bucket key not M": (edit(lambda d: d["buckets"].update({"big": bucket(d)})), "bucket key 'big'"),
        "bucket M zero": (edit(lambda d: d["buckets"].update({"0": bucket(d)})), "bucket M must be"),
        "bucket key a unicode digit": (edit(lambda d: d["buckets"].update({"\u00b2": bucket(d)})), "bucket key"),
        "unknown bucket key": (edit(lambda d: bucket(d).update(note=1)), "unknown keys ['note']"),
        "unknown backend": (edit(lambda d: bucket(d).update(backend="cutlass")), "backend must be one of"),
        "non-power-of-two block": (edit(lambda d: bucket(d)["config"].update(block_n=48)), "power of two"),
        "absurd block": (edit(lambda d: bucket(d)["config"].update(block_m=4096)), "block_m must be in"),
        "float warps": (edit(lambda d: bucket(d)["config"].update(num_warps=4.0)), "must be an int"),
        "unknown config key": (edit(lambda d: bucket(d)["config"].update(split_m=2)), "unknown MatmulConfig"),
        "negative time": (edit(lambda d: bucket(d).update(time_us=-1)), "time_us must be a positive"),
        "NaN time": (edit(lambda d: bucket(d)["baselines_us"].update(torch=float("nan"))), "baselines_us"),
    }


@pytest.mark.parametrize("case", list(bad_files()))
def test_bad_file_is_skipped_with_one_warning_and_the_heuristic_serves(config_dir, case):
    content, words = bad_files()[case]
    path = write(config_dir, content, name=file_name("cpu", N, K, "int8"))
    with pytest.raises(ConfigFileError, match=words.replace("[", r"\[").replace("]", r"\]")):
        load_table(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = select_config(3, N, K, torch.int8, CPU)
        select_config(4, N, K, torch.int8, CPU)  # a second call warns no more
    assert got == heuristic_config(3, N, K, torch.int8, 132, 227 * 1024)
    assert len(caught) == 1 and path.name in str(caught[0].message)


def test_content_must_match_the_file_name(config_dir):
    path = write(config_dir, table_json(), name=file_name("cpu", N + 1, K, "int8"))
    with pytest.raises(
        ConfigFileError, match=r"the name says \(device, N, K, dtype, accumulation, block shape\) = \(.cpu., 97"
    ):
        load_table(path)
    other_card = write(config_dir, table_json(device="NVIDIA H100 PCIe"), name=file_name("NVIDIA H200", N, K, "int8"))
    with pytest.raises(ConfigFileError, match="NVIDIA_H200"):
        load_table(other_card)


def test_select_config_refuses_other_dtypes():
    with pytest.raises(TypeError, match="dtype must be one of"):
        select_config(16, N, K, torch.bfloat16, CPU)


def test_oddly_named_json_is_skipped_with_a_warning(config_dir):
    write(config_dir, table_json(), name="my-tuning.json")
    with pytest.warns(UserWarning, match="not a config file name"):
        assert plan(3, N, K, torch.int8, CPU).source is None


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: fails midway
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------- untrusted files


@contextlib.contextmanager
def fails_instead_of_hanging(seconds=10):
    """A read that blocks (a FIFO) fails the test instead of hanging the suite."""

    def timeout(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def huge_int_file(where):
    text = json.dumps(table_json())
    digits = "9" * 5000  # past Python's 4300-digit limit on int(str)
    if where == "value":
        return text.replace('"candidates": 3', f'"candidates": {digits}', 1)
    return text.replace('"16": {', f'"{digits}": {{', 1)  # a bucket key


def special_files():
    """(make it at path, words in the error) for files that are not plain, small, UTF-8 JSON."""
    return {
        "huge integer value": (lambda p: p.write_text(huge_int_file("value")), "integer"),
        "huge integer bucket key": (lambda p: p.write_text(huge_int_file("key")), "integer"),
        "deep nesting": (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "nested too deep"),
        "deep nesting in a value": (
            lambda p: p.write_text(json.dumps(table_json()).replace('"3.6.0"', "[" * 100_000 + "]" * 100_000)),
            "nested too deep",
        ),
        "not UTF-8": (lambda p: p.write_bytes(json.dumps(table_json()).encode("utf-16")), "not UTF-8"),
        "too big": (lambda p: p.write_text(json.dumps(table_json()) + " " * (MAX_FILE_BYTES + 1)), "larger than"),
        "a FIFO": (lambda p: os.mkfifo(p), "not a regular file"),
        "a directory": (lambda p: p.mkdir(), "not a regular file"),
        "a symlink to /dev/zero": (lambda p: p.symlink_to("/dev/zero"), "not a regular file"),
        "a dangling symlink": (lambda p: p.symlink_to(p.parent / "gone.json"), "not readable"),
        "a symlink loop": (lambda p: p.symlink_to(p), "not readable"),
    }


@pytest.mark.parametrize("case", list(special_files()))
def test_untrusted_file_is_skipped_with_one_warning_never_raising_or_hanging(config_dir, case):
    make, words = special_files()[case]
    path = config_dir / file_name("cpu", N, K, "int8")
    make(path)
    with fails_instead_of_hanging():
        with pytest.raises(ConfigFileError, match=words):
            load_table(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = select_config(3, N, K, torch.int8, CPU)
            select_config(4, N, K, torch.int8, CPU)
    assert got == heuristic_config(3, N, K, torch.int8, 132, 227 * 1024)
    assert len(caught) == 1 and path.name in str(caught[0].message)
    assert len(str(caught[0].message)) < 1000  # the warning quotes, never dumps, what it found


def test_a_symlink_to_a_regular_file_is_read(config_dir):
    # Deployments link config files into place (Kubernetes ConfigMaps, Nix): what counts is the file
    # the link resolves to, checked on the opened descriptor.
    target = write(config_dir / "..", table_json(), name="elsewhere.json")
    (config_dir / file_name("cpu", N, K, "int8")).symlink_to(target)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_config(1, N, K, torch.int8, CPU) == TUNED[1]


def test_a_bad_file_falls_back_to_the_next_file(config_dir, monkeypatch):
    shipped = config_dir / "shipped"
    shipped.mkdir()
    write(shipped, table_json())
    (config_dir / file_name("cpu", N, K, "int8")).write_text(huge_int_file("key"))
    monkeypatch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", shipped)
    clear_cache()
    with pytest.warns(UserWarning, match="integer"):
        assert select_config(1, N, K, torch.int8, CPU) == TUNED[1]


def test_configs_command_lists_untrusted_files_with_their_error(config_dir, capsys, monkeypatch):
    # Only this test's files: the listing's size then says that no bad file's content was echoed.
    shipped = config_dir / "shipped"
    shipped.mkdir()
    monkeypatch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", shipped)
    clear_cache()
    for i, (make, _) in enumerate(special_files().values()):
        make(config_dir / file_name("cpu", N + i, K, "int8"))
    write(config_dir, table_json(n=N + 100))
    with fails_instead_of_hanging():
        assert main(["configs"]) == 0
        out = capsys.readouterr().out
        assert out.count("INVALID, skipped") == len(special_files())
        assert f"N={N + 100}" in out and len(out) < 5_000
        assert main(["configs", "--json"]) == 0
        captured = capsys.readouterr()
    assert [row["N"] for row in json.loads(captured.out) if row["path"].startswith(str(config_dir))] == [N + 100]
    assert captured.err.count("INVALID, skipped") == len(special_files())


def test_an_unreadable_config_dir_is_ignored_with_a_warning(config_dir, monkeypatch):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(config_dir / "a-file"))
    (config_dir / "a-file").write_text("")
    clear_cache()
    with pytest.warns(UserWarning, match="not a directory"):
        assert plan(3, N, K, torch.int8, CPU).source is None


def format_1(config: MatmulConfig, **bucket) -> dict:
    """A table of one bucket at M = 1 as format 1 wrote it: tma and swap_ab flags, the revision as `kernel`."""
    old_config = {**config.to_dict(), "tma": int(config.kernel == "tma"), "swap_ab": int(config.kernel == "swapped")}
    del old_config["kernel"]
    data = table_json(buckets={1: config})
    data["format_version"] = 1
    data["buckets"]["1"].update(config=old_config, **bucket)
    return data


@pytest.mark.parametrize("kernel", ["pointer", "swapped", "tma"])
def test_format_1_files_are_read(config_dir, kernel):
    config = MatmulConfig(16, 32, 64, kernel=kernel)
    path = write(config_dir, format_1(config, kernel="0123456789ab"))
    (bucket,) = load_table(path).buckets
    assert bucket.config == config and bucket.revision == "0123456789ab"
    assert select_config(1, N, K, torch.int8, CPU) == config


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda c: c.update(tma=2), "MatmulConfig.tma must be 0 or 1"),
        (lambda c: c.update(swap_ab="1"), "MatmulConfig.swap_ab must be 0 or 1"),
        (lambda c: c.update(tma=1, swap_ab=1), "exclude each other"),
        (lambda c: c.update(kernel="tma"), "a format-1 config has no key 'kernel'"),
    ],
    ids=["tma=2", "swap_ab a string", "both", "format-2 key"],
)
def test_bad_format_1_configs_are_refused(config_dir, edit, words):
    data = format_1(MatmulConfig(16, 32, 64))
    edit(data["buckets"]["1"]["config"])
    with pytest.raises(ConfigFileError, match=f"bucket 1: .*{words}"):
        load_table(write(config_dir, data))
