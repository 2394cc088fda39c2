"""Fuzzing the readers of untrusted files, config files and tuner journals, with random bytes, valid
files with random edits, and random JSON (huge integers, deep nesting, wrong types): a config file
either validates or gives ConfigFileError, one warning and the fallback; a journal gives its valid
results (which merge into a valid file) and warnings. Never another exception."""

import json
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from scaledmm import MatmulConfig
from scaledmm.configs import clear_cache, heuristic_config, plan
from scaledmm.configs.files import ConfigFileError, file_name, load_table, parse_file_name
from scaledmm.configs.lookup import CONFIG_DIR_ENV, list_config_files
from scaledmm.kernels.matmul import REVISIONS
from scaledmm.tune.store import Journal, ResultStore, read_journals, validate_result

CPU = torch.device("cpu")
N, K = 96, 64
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Markers a generated tree may hold, replaced in its JSON text by what json.dumps cannot write.
SPECIALS = {
    '"@@HUGE_INT@@"': "9" * 5000,  # past Python's 4,300-digit int() limit
    "@@HUGE_KEY@@": "9" * 5000,  # inside its quotes: a bucket key of 5,000 digits
    '"@@DEEP@@"': "[" * 5000 + "]" * 5000,  # past the JSON parser's recursion limit
}

GOOD_TABLE = {
    "format_version": 2,
    "device_name": "cpu",
    "n": N,
    "k": K,
    "dtype": "int8",
    "triton": "3.6.0",
    "buckets": {
        "1": {"backend": "triton", "config": MatmulConfig(16, 32, 64).to_dict(), "time_us": 10.0},
        "16": {
            "backend": "torch",
            "config": MatmulConfig(16, 64, 64).to_dict(),
            "time_us": 9.0,
            "baselines_us": {"triton": 11.0, "heuristic": None},
            "candidates": 3,
            "revision": "abc123",
        },
    },
}

GOOD_RESULT = {
    "n": 48, "k": 64, "dtype": "int8", "m": 2, "accumulation": "fast", "backend": "triton",
    "config": MatmulConfig(16, 16, 64).to_dict(), "time_us": 5.0,
    "baselines_us": {"torch": None, "heuristic": 6.0, "triton": 5.0},
    "candidates": 1, "revision": REVISIONS["pointer"], "retune": False, "at": 1.0,
}  # fmt: skip

keys = st.sampled_from(["n", "m", "buckets", "config", "block_m", "1", "0", "-3", "@@HUGE_KEY@@"]) | st.text(max_size=6)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([0, -1, 1, 2**31, 16, 64, "@@HUGE_INT@@", "@@DEEP@@", "int8", "fp8", "triton", "torch"])
    | st.floats()
    | st.text(max_size=8)
)
json_trees = st.recursive(
    leaves, lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4), max_leaves=12
)


def dump(tree) -> bytes:
    text = json.dumps(tree)
    for marker, replacement in SPECIALS.items():
        text = text.replace(marker, replacement)
    return text.encode()


@st.composite
def edited_trees(draw, good):
    """`good` with one value replaced, one key removed or one key added, somewhere in it."""
    tree = json.loads(json.dumps(good))
    node = tree
    while True:
        key = draw(st.sampled_from(sorted(node)))
        if isinstance(node[key], dict) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            node[key] = draw(json_trees)
        elif action == "remove":
            del node[key]
        else:
            node[draw(keys)] = draw(json_trees)
        return tree


@st.composite
def edited_bytes(draw, good: bytes):
    """`good` with a few bytes replaced, inserted or removed."""
    data = bytearray(good)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 3))
        data[at : at + cut] = draw(st.binary(max_size=3))
    return bytes(data)


def untrusted(good):
    return st.one_of(
        st.binary(max_size=300),
        st.builds(dump, json_trees),
        st.builds(dump, edited_trees(good)),
        edited_bytes(dump(good)),
    )


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz-configs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CONFIG_DIR_ENV, str(directory))
        patch.setattr("scaledmm.configs.lookup.SHIPPED_DIR", directory / "none")  # only the fuzzed file
        yield directory
    clear_cache()


@FUZZ
@given(content=untrusted(GOOD_TABLE))
def test_a_config_file_validates_or_warns_once_and_falls_back(config_dir, content):
    path = config_dir / file_name("cpu", N, K, "int8")
    path.write_bytes(content)
    try:
        table = load_table(path)
    except ConfigFileError as err:
        table = err
    event(type(table).__name__)  # --hypothesis-show-statistics: how many fuzzed files still validate
    clear_cache()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = plan(3, N, K, torch.int8, CPU)
        plan(4, N, K, torch.int8, CPU)
        listed = dict(list_config_files())[path]
    if isinstance(table, ConfigFileError):
        assert len(caught) == 1 and path.name in str(caught[0].message) and len(str(caught[0].message)) < 1000
        assert chosen.source is None
        assert chosen.config == heuristic_config(3, N, K, torch.int8, 132, 227 * 1024)
        assert isinstance(listed, ConfigFileError)
    else:
        assert not caught
        bucket = table.bucket_for(3)
        assert chosen.source == (path if bucket else None)
        assert listed == table


@pytest.fixture(scope="module")
def journal_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-journals")


@FUZZ
@given(lines=st.lists(untrusted(GOOD_RESULT), max_size=5), newline_at_end=st.booleans())
def test_a_journal_gives_only_valid_results_and_they_merge_into_a_valid_file(journal_dir, lines, newline_at_end):
    journals = journal_dir / ".journal"
    journals.mkdir(exist_ok=True)
    path = journals / "fuzz.jsonl"
    # A line of bytes may hold newlines: it is then several lines, which is fuzzing too.
    raw = b"\n".join(lines) + (b"\n" if newline_at_end else b"")
    path.write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results, read = read_journals(journals)
    assert read == ([path] if raw else [])
    event(f"{len(results)} valid results")
    for result in results:
        assert validate_result(result) == result
    ResultStore(journal_dir, "cpu", {}).add(results)
    for result in results:
        table = load_table(journal_dir / file_name("cpu", result["n"], result["k"], result["dtype"]))
        assert result["m"] in {b.m for b in table.buckets}
    written = {p.name for p in journal_dir.iterdir()} - {".journal", ".lock"}
    assert all(parse_file_name(name) for name in written)  # config files, in the folder, and nothing else
    Journal(path).clear()
