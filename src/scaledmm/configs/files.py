"""Tuned config files: their names, their format, validation, and atomic writes.

One JSON file per (device, N, K, dtype), named as vLLM names its tuned files:

    N=6144,K=4096,device_name=NVIDIA_H100_80GB_HBM3,dtype=fp8_w8a8.json

holding metadata (versions, card, date, command, scaling mode, fp8 accumulation mode; "restamped"
where revisions were carried over to a refactored kernel that compiles to the same code) and
`buckets`: for each tuned M, the backend that won, the best Triton config, the measured times of the
winner and the baselines, and the revision of the kernel it was tuned with. Files are read with
`json` only and validated field by field; a file that fails raises ConfigFileError, which the lookup
turns into one warning and the heuristic. A file is untrusted: only a regular file (or a symlink to
one) of at most MAX_FILE_BYTES is read, without blocking, as UTF-8, and nothing in it can raise
anything but ConfigFileError (`load_table`).

Format 2 names the kernel a config runs (`"kernel": "pointer"`, "swapped", "tma" or "gluon") and the
bucket's kernel revision `revision`; a gluon config may say `"pingpong": true` and `"store_n": 64`
(MatmulConfig), keys the other kernels' configs leave out. Format 1 files, whose configs said
`"tma": 0|1, "swap_ab": 0|1` and whose buckets named the revision `kernel`, are still read (`upgrade`
converts them).

Block-scaled fp8 (scaled_mm's `block_size`) has files of its own, named as vLLM names its
w8a8_block_fp8 files, `block_shape=[block_n,block_k]` before `.json`:

    N=7168,K=2048,device_name=NVIDIA_H200,dtype=fp8_w8a8,block_shape=[128,128].json

and saying `"block_shape": [block_n, block_k]` in their content; their configs run the block-scaled
kernel (kernels/matmul_block.py), whose sums are promoted every block whatever the accumulation mode,
so they have no accumulation mode (the name has none; the content says "fast" or nothing). The
format is format 2 with that one key more.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from scaledmm.configs.config import MatmulConfig

FORMAT_VERSION = 2
BACKENDS = ("triton", "torch")  # ours, or the vendor kernel (torch._scaled_mm / torch._int_mm + epilogue)
DTYPE_NAMES = {torch.int8: "int8", torch.float8_e4m3fn: "fp8", torch.float8_e5m2: "fp8"}
DTYPE_BY_NAME = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}  # what the tuner and the bench run
MAX_M = 2**31 - 1
# fp8's accumulation modes (scaledmm.scaled_mm's `accumulation`); int8 sums exactly and is "fast" here.
ACCUMULATIONS = ("fast", "precise")

_NAME = re.compile(
    r"^N=(\d+),K=(\d+),device_name=([A-Za-z0-9_.\-]+),dtype=(int8|fp8)_w8a8"
    r"(,accumulation=precise|,block_shape=\[(\d+),(\d+)\])?\.json$"
)
_REQUIRED = {"format_version", "device_name", "n", "k", "dtype", "buckets"}
_OPTIONAL = {"compute_capability", "scales", "triton", "torch", "scaledmm", "date", "command"} | {
    "accumulation",  # the fp8 accumulation mode the buckets were tuned in; "fast" where absent
    "restamped",  # a note on revisions carried over to a refactored kernel (format 2)
    "block_shape",  # [block_n, block_k] of a block-scaled fp8 file; absent in the others
}
MAX_BLOCK_SIDE = 4096  # a scale block larger than this is not a block-scaled format anyone uses
_BUCKET_REQUIRED = {"backend", "config"}
_BUCKET_OPTIONAL = {"time_us", "baselines_us", "candidates", "revision"}

# How far past its largest tuned M a file still serves: the tuner's grid steps by at most 2x, and its
# default ends at 8192, so 16384 still takes the 8192 bucket.
MAX_EXTRAPOLATION = 2


class ConfigFileError(ValueError):
    """A tuned config file that cannot be used; the message names the file and what is wrong."""


def normalize_device_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3' (spaces and odd characters to _)."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", name.strip()).strip("_")


def device_family(name: str) -> str | None:
    """The family whose tuned files can serve a card without its own: H100 variants (SXM, PCIe, NVL)
    share one, H200 variants (and GH200) another. None for other cards: they need exact files."""
    upper = name.upper()
    for family in ("H200", "H100"):
        if family in upper:
            return family
    return None


def file_name(
    device_name: str,
    n: int,
    k: int,
    dtype: str,
    accumulation: str = "fast",
    block_shape: tuple[int, int] | None = None,
) -> str:
    """The file of one (card, N, K, dtype) and, for fp8, accumulation mode or block shape: fast files
    carry the plain vLLM-style name (what every file tuned before the choice existed ran), precise
    ones `,accumulation=precise` before `.json`, block-scaled ones `,block_shape=[block_n,block_k]`."""
    if block_shape is not None:
        mode = f",block_shape=[{block_shape[0]},{block_shape[1]}]"
    else:
        mode = ",accumulation=precise" if dtype == "fp8" and accumulation == "precise" else ""
    return f"N={n},K={k},device_name={normalize_device_name(device_name)},dtype={dtype}_w8a8{mode}.json"


def parse_file_name(name: str) -> tuple[str, int, int, str, str, tuple[int, int] | None] | None:
    """(normalized device, N, K, dtype, accumulation, block shape) from a file name, or None if it is
    not a config file name. int8 files, exact in either mode, read as "fast"; so do block-scaled
    files (fp8 only), and the block shape is None for the others."""
    match = _NAME.match(name)
    if not match:
        return None
    n, k, device, dtype, mode, block_n, block_k = match.groups()
    if mode and dtype != "fp8":
        return None
    block_shape = None
    if block_n is not None:
        if max(len(block_n), len(block_k)) > len(str(MAX_BLOCK_SIDE)):  # before int(): the regex bounds no length
            return None
        block_shape = (int(block_n), int(block_k))
        if not all(1 <= side <= MAX_BLOCK_SIDE for side in block_shape):
            return None
    precise = mode == ",accumulation=precise"
    return device, int(n), int(k), dtype, "precise" if precise else "fast", block_shape


@dataclass(frozen=True)
class Bucket:
    """What was tuned at one M: the backend to run and the best Triton config."""

    m: int
    backend: str
    config: MatmulConfig
    time_us: float | None = None
    revision: str | None = None  # of the kernel it was tuned with (kernels.matmul.kernel_revision)
    # Three of the baselines timed at tuning: the heuristic's config on ours, the vendor in the file's
    # accumulation mode (None where cuBLAS refused it), and ours with `config`. lookup.plan weighs
    # them for a shape without a file (heuristic_beat_vendor) and for a block-scaled bucket the vendor
    # won at an M it must pad for (heuristic.padded_block_vendor_loses).
    heuristic_us: float | None = None
    vendor_us: float | None = None
    triton_us: float | None = None


@dataclass(frozen=True)
class TunedTable:
    """The validated content of one file, buckets sorted by M."""

    path: Path
    device_name: str
    n: int
    k: int
    dtype: str
    buckets: tuple[Bucket, ...]
    accumulation: str = "fast"  # the fp8 accumulation mode its buckets were tuned in
    block_shape: tuple[int, int] | None = None  # (block_n, block_k) of a block-scaled fp8 file

    def bucket_for(self, M: int) -> Bucket | None:
        """The bucket of the smallest tuned M >= M; beyond the last, the last up to
        MAX_EXTRAPOLATION times its M; None further out.

        A config tuned for at least as many rows keeps every SM busy at this M too, and its tiles
        are sized for no fewer rows than there are. Far beyond the tuned range (a file tuned for
        decode only, asked for a prefill) its tiles are too small: the next file, or the heuristic,
        serves.
        """
        for bucket in self.buckets:
            if bucket.m >= M:
                return bucket
        last = self.buckets[-1]
        return last if M <= MAX_EXTRAPOLATION * last.m else None


def _fail(path: Path, what: str) -> ConfigFileError:
    return ConfigFileError(f"{path}: {what}")


def _positive_int(path: Path, name: str, value: object, high: int = MAX_M) -> int:
    if type(value) is not int or not 1 <= value <= high:
        raise _fail(path, f"{name} must be an integer in [1, {high}], got {value!r}")
    return value


def _time(path: Path, name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise _fail(path, f"{name} must be a positive number of microseconds or null, got {value!r}")
    return float(value)


def _check_keys(path: Path, where: str, data: dict, required: set[str], optional: set[str]) -> None:
    missing = required - set(data)
    unknown = set(data) - required - optional
    if missing:
        raise _fail(path, f"{where} lacks {sorted(missing)}")
    if unknown:
        raise _fail(path, f"{where} has unknown keys {sorted(unknown)}")


def _upgrade_config(path: Path, where: str, config: dict) -> dict:
    """A format-1 config (tma and swap_ab, 0 or 1, at most one set) with its kernel named instead."""
    config = dict(config)
    if "kernel" in config:
        raise _fail(path, f"{where}: a format-1 config has no key 'kernel'")
    flags = {name: config.pop(name, 0) for name in ("tma", "swap_ab")}
    for name, value in flags.items():
        if type(value) is not int or value not in (0, 1):
            raise _fail(path, f"{where}: MatmulConfig.{name} must be 0 or 1 in a format-1 file, got {value!r}")
    if flags["tma"] and flags["swap_ab"]:
        raise _fail(path, f"{where}: MatmulConfig.tma and MatmulConfig.swap_ab exclude each other: set at most one")
    config["kernel"] = "tma" if flags["tma"] else "swapped" if flags["swap_ab"] else "pointer"
    return config


def upgrade_bucket(path: Path, where: str, entry: dict) -> dict:
    """A format-1 bucket (or a tuning result of then) in the current format: its config names its
    kernel, and its revision is `revision`, no longer `kernel`."""
    entry = dict(entry)
    if isinstance(entry.get("config"), dict):
        entry["config"] = _upgrade_config(path, where, entry["config"])
    if "kernel" in entry:
        entry["revision"] = entry.pop("kernel")
    return entry


def upgrade(path: Path, data: object) -> object:
    """The decoded JSON of a config file in the current format: a format-1 file converted
    (`upgrade_bucket`), anything else as it is. Validation is parse_table's: what is not as format 1
    has it is left for it to report."""
    if not (isinstance(data, dict) and data.get("format_version") == 1 and isinstance(data.get("buckets"), dict)):
        return data
    buckets = {
        key: upgrade_bucket(path, f"bucket {key}", entry) if isinstance(entry, dict) else entry
        for key, entry in data["buckets"].items()
    }
    return {**data, "format_version": FORMAT_VERSION, "buckets": buckets}


def parse_table(path: Path, data: object) -> TunedTable:
    """Validate the decoded JSON of a config file (of the current format, or format 1)."""
    if not isinstance(data, dict):
        raise _fail(path, f"the top level must be an object, got {type(data).__name__}")
    _check_keys(path, "the file", data, _REQUIRED, _OPTIONAL)
    if data["format_version"] not in (1, FORMAT_VERSION):
        raise _fail(path, f"format_version {data['format_version']!r} is not {FORMAT_VERSION} (or 1, still read)")
    data = upgrade(path, data)
    if not isinstance(data["device_name"], str) or not data["device_name"]:
        raise _fail(path, f"device_name must be a non-empty string, got {data['device_name']!r}")
    n = _positive_int(path, "n", data["n"])
    k = _positive_int(path, "k", data["k"])
    if data["dtype"] not in ("int8", "fp8"):
        raise _fail(path, f"dtype must be 'int8' or 'fp8', got {data['dtype']!r}")
    accumulation = data.get("accumulation", "fast")
    if accumulation not in ACCUMULATIONS or (data["dtype"] == "int8" and accumulation != "fast"):
        raise _fail(path, f"accumulation must be 'fast' or (fp8 only) 'precise', got {accumulation!r}")
    block_shape = _block_shape(path, data.get("block_shape"), data["dtype"], accumulation)
    named = parse_file_name(path.name)
    content = (normalize_device_name(data["device_name"]), n, k, data["dtype"], accumulation, block_shape)
    if named is not None and named != content:
        raise _fail(
            path,
            f"the name says (device, N, K, dtype, accumulation, block shape) = {named} but the content {content}",
        )
    buckets_in = data["buckets"]
    if not isinstance(buckets_in, dict) or not buckets_in:
        raise _fail(path, "buckets must be a non-empty object mapping M to a tuned entry")
    buckets = []
    for key, entry in buckets_in.items():
        if not re.fullmatch(r"[0-9]+", key):  # not str.isdigit: it accepts '²', which int() refuses
            raise _fail(path, f"bucket key {key!r} is not a positive integer M")
        m = _positive_int(path, "bucket M", int(key))
        where = f"bucket {m}"
        if not isinstance(entry, dict):
            raise _fail(path, f"{where} must be an object")
        _check_keys(path, where, entry, _BUCKET_REQUIRED, _BUCKET_OPTIONAL)
        if entry["backend"] not in BACKENDS:
            raise _fail(path, f"{where}: backend must be one of {BACKENDS}, got {entry['backend']!r}")
        if not isinstance(entry["config"], dict):
            raise _fail(path, f"{where}: config must be an object")
        try:
            config = MatmulConfig.from_dict(entry["config"])
        except (TypeError, ValueError) as err:
            raise _fail(path, f"{where}: {err}") from None
        time_us = _time(path, f"{where}: time_us", entry.get("time_us"))
        baselines = entry.get("baselines_us", {})
        if not isinstance(baselines, dict):
            raise _fail(path, f"{where}: baselines_us must be an object")
        if "candidates" in entry:
            _positive_int(path, f"{where}: candidates", entry["candidates"], 10**6)
        revision = entry.get("revision")
        if revision is not None and not (isinstance(revision, str) and re.fullmatch(r"[0-9a-f]{1,64}", revision)):
            raise _fail(path, f"{where}: revision must be a hexadecimal kernel revision, got {revision!r}")
        times = {name: _time(path, f"{where}: baselines_us[{name!r}]", value) for name, value in baselines.items()}
        # The vendor in the file's own accumulation mode only: "torch (precise: ...)" ran where cuBLAS
        # refused fast accumulation, a slower kernel than a call of another shape may get.
        vendor_us = times.get("torch")
        heuristic_us, triton_us = times.get("heuristic"), times.get("triton")
        buckets.append(Bucket(m, entry["backend"], config, time_us, revision, heuristic_us, vendor_us, triton_us))
    buckets.sort(key=lambda b: b.m)
    return TunedTable(path, data["device_name"], n, k, data["dtype"], tuple(buckets), accumulation, block_shape)


def _block_shape(path: Path, value: object, dtype: str, accumulation: str) -> tuple[int, int] | None:
    """A file's `block_shape` ([block_n, block_k] of a block-scaled fp8 file), or None where absent.
    Whether its configs fit the block is the lookup's question (lookup.block_unfit_reason): a bucket
    that does not is skipped there, the rest of the file still serves."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2):
        raise _fail(path, f"block_shape must be [block_n, block_k], got {value!r}")
    block_shape = tuple(_positive_int(path, "block_shape", side, MAX_BLOCK_SIDE) for side in value)
    if dtype != "fp8" or accumulation != "fast":
        raise _fail(path, "block_shape is for fp8 files without an accumulation mode (sums are promoted every block)")
    return block_shape


MAX_FILE_BYTES = 1 << 20  # a tuned file is about 10 KB; a cap keeps a huge or endless file out of memory
_MAX_INT_DIGITS = 20  # no field needs more; int() of a longer string is slow, and past 4,300 digits raises
_MAX_MESSAGE = 500  # an error quotes what it found, cut to this many characters


@contextlib.contextmanager
def open_regular_file(path: Path, follow_symlinks: bool = True) -> Iterator[int]:
    """A descriptor of `path` open for reading, if it is a regular file; ConfigFileError otherwise.

    O_NONBLOCK makes the open of a FIFO return at once instead of waiting for a writer, and the type is
    checked on the opened descriptor (fstat), so the file checked is the file read, whatever is renamed
    meanwhile. A symlink counts as the file it resolves to (deployments link config files into place:
    Kubernetes ConfigMaps, Nix); a link to a device such as /dev/zero is refused like the device.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_BINARY", 0)  # O_BINARY: no newline translation (Windows)
    flags |= getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else os.O_NOFOLLOW)  # POSIX only
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise _fail(path, f"not readable ({err.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _fail(path, "not a regular file")
        yield fd
    finally:
        os.close(fd)


def read_capped(path: Path, fd: int, max_bytes: int) -> bytes:
    """All bytes of an open regular file, or ConfigFileError if there are more than `max_bytes`."""
    chunks, size = [], 0
    try:
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)  # a file growing while read stops at the cap too
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as err:
        raise _fail(path, f"not readable ({err.strerror})") from None
    if size > max_bytes:
        raise _fail(path, f"larger than {max_bytes} bytes: not a config file")
    return b"".join(chunks)


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def parse_json(path: Path, raw: bytes) -> object:
    """Decode UTF-8 JSON; ConfigFileError for anything else, also for integers of absurd length and
    nesting too deep for the parser."""
    try:
        text = raw.decode("utf-8")  # not json.loads(bytes): it would guess UTF-16 or UTF-32 too
    except UnicodeDecodeError as err:
        raise _fail(path, f"not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        return json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise _fail(path, "not readable JSON (nested too deep)") from None
    except ValueError as err:  # json.JSONDecodeError, or _bounded_int
        raise _fail(path, f"not readable JSON ({_shorten(str(err))})") from None


def read_json(path: Path) -> object:
    """The JSON content of an untrusted file (see `open_regular_file`), or ConfigFileError."""
    with open_regular_file(path) as fd:
        raw = read_capped(path, fd, MAX_FILE_BYTES)
    return parse_json(path, raw)


def _shorten(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + f"... ({len(text)} characters)"


def checked_table(path: Path, data: object) -> TunedTable:
    """`parse_table`, with whatever the content provokes as a ConfigFileError of reasonable length."""
    try:
        return parse_table(path, data)
    except ConfigFileError as err:
        raise ConfigFileError(_shorten(str(err))) from None
    except Exception as err:  # int() of a bucket key past 4,300 digits, say: no file may crash a call
        raise _fail(path, _shorten(f"invalid content ({type(err).__name__}: {err})")) from None


def load_table(path: Path) -> TunedTable:
    """Read and validate one file (json only, never pickle); ConfigFileError for anything wrong with it."""
    return checked_table(path, read_json(path))


def write_json_atomic(path: Path, data: dict) -> None:
    """Write so that a reader (or a run killed mid-write) sees the old file or the new one, never half."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=False) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """write_json_atomic's way for any text (the tuner's journals, rewritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide shared config files from other users
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
