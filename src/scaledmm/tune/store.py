"""Where tuning results go: config files updated atomically as results come, and per-process journals
so that an interrupted run loses at most the jobs in flight.

Journals are untrusted as config files are: every line is checked as a result (`validate_result`) and a
bad one is skipped with a warning, so paths are built only from validated integers and known names.
Several tuners may share a folder:

- every read-merge-write of a config file holds an exclusive flock on the folder's lock file, so a merge
  never drops what another process merged meanwhile;
- each process writes its own journal (the caller names it uniquely) and holds an exclusive flock on it
  from its first line until it is closed; `read_journals` passes over held journals, so a tuner never
  uses or deletes the journal of one still running, and the journal of a killed one (whose lock went
  with it) is recovered by the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import stat
import warnings
from pathlib import Path

from scaledmm.configs.files import (
    ACCUMULATIONS,
    DTYPE_BY_NAME,
    FORMAT_VERSION,
    MAX_M,
    ConfigFileError,
    checked_table,
    file_name,
    load_table,
    open_regular_file,
    parse_json,
    read_capped,
    read_json,
    upgrade,
    upgrade_bucket,
    write_json_atomic,
    write_text_atomic,
)
from scaledmm.tune.runner import Job, job_revision

BUCKET_FIELDS = ("backend", "config", "time_us", "baselines_us", "candidates", "revision")
LOCK_NAME = ".lock"  # in the output folder; the lookup reads only *.json
MAX_JOURNAL_BYTES = 256 << 20  # a result is about 400 bytes: far more lines than any tuning grid


def _shown(value: object) -> str:
    """A short repr of an untrusted value."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep, or an int past 4,300 digits
        return f"an unprintable {type(value).__name__}"
    return text if len(text) <= 80 else text[:80] + "..."


def validate_result(result: object, where: object = "result") -> dict:
    """A tuning result (a journal line) checked field by field; the copy returned holds only the known
    fields. Raises ConfigFileError (a ValueError) naming what is wrong.

    The bucket fields are checked by the rules of a config file, on a one-bucket file of this result,
    so whatever passes merges into a valid file.
    """
    if not isinstance(result, dict):
        raise ConfigFileError(f"{where}: a result must be an object, got {type(result).__name__}")
    for name in ("n", "k", "m"):
        value = result.get(name)
        if type(value) is not int or not 1 <= value <= MAX_M:
            raise ConfigFileError(f"{where}: {name} must be an integer in [1, {MAX_M}], got {_shown(value)}")
    dtype = result.get("dtype")
    if not (isinstance(dtype, str) and dtype in DTYPE_BY_NAME):
        raise ConfigFileError(f"{where}: dtype must be one of {sorted(DTYPE_BY_NAME)}, got {_shown(dtype)}")
    accumulation = result.get("accumulation", "fast")
    if accumulation not in ACCUMULATIONS or (dtype == "int8" and accumulation != "fast"):
        raise ConfigFileError(f"{where}: accumulation must be 'fast' or (fp8) 'precise', got {_shown(accumulation)}")
    n, k, m = result["n"], result["k"], result["m"]
    if "kernel" in result:  # journaled by a version that wrote format-1 files
        result = upgrade_bucket(Path(str(where)), f"the result for M={m}", result)
    bucket = {f: result[f] for f in BUCKET_FIELDS if f in result}
    one_bucket = {"format_version": FORMAT_VERSION, "device_name": "journal", "n": n, "k": k, "dtype": dtype}
    if "block_shape" in result:  # checked by the file's rules: [block_n, block_k], fp8 only, no accumulation
        one_bucket |= {"block_shape": result["block_shape"], "accumulation": accumulation}
    table = checked_table(Path(str(where)), {**one_bucket, "buckets": {str(m): bucket}})
    clean = {"n": n, "k": k, "dtype": dtype, "m": m, "accumulation": accumulation, **bucket}
    if table.block_shape is not None:
        clean["block_shape"] = list(table.block_shape)
    if "retune" in result:
        if type(result["retune"]) is not bool:
            raise ConfigFileError(f"{where}: retune must be true or false, got {_shown(result['retune'])}")
        clean["retune"] = result["retune"]
    if "at" in result:  # the merge sorts by it
        at = result["at"]
        if type(at) not in (int, float) or not math.isfinite(at):
            raise ConfigFileError(f"{where}: at must be a finite time stamp, got {_shown(at)}")
        clean["at"] = at
    return clean


def job_of(result: dict) -> Job:
    """The job a (validated) result is of."""
    block = tuple(result["block_shape"]) if "block_shape" in result else None
    return Job(result["n"], result["k"], result["dtype"], result["m"], result["accumulation"], block)


class ResultStore:
    """The config files of one device in one directory; `metadata` goes into every file written."""

    def __init__(self, directory: Path, device_name: str, metadata: dict):
        self.directory = directory
        self.device_name = device_name
        self.metadata = metadata

    def _path(self, n: int, k: int, dtype: str, accumulation: str, block_shape: tuple[int, int] | None) -> Path:
        return self.directory / file_name(self.device_name, n, k, dtype, accumulation, block_shape)

    def done(self, jobs: list[Job]) -> set[Job]:
        """The jobs whose M bucket the existing files hold, tuned with the kernel their config runs as it is now. A
        bucket of another kernel revision is stale and tuned again; a file that does not validate
        counts as holding nothing, and is rewritten."""
        held: set[Job] = set()
        for n, k, dtype, accumulation, block in {(j.n, j.k, j.dtype, j.accumulation, j.block_size) for j in jobs}:
            path = self._path(n, k, dtype, accumulation, block)
            if path.exists():
                try:
                    buckets = load_table(path).buckets
                except ValueError:
                    continue
                jobs_held = ((Job(n, k, dtype, b.m, accumulation, block), b) for b in buckets)
                held |= {job for job, b in jobs_held if b.revision == job_revision(job, b.config)}
        return held & set(jobs)

    def add(self, results: list[dict]) -> None:
        """Merge results into their files (one atomic rewrite per file touched), under the folder's lock.
        A result that does not validate raises ValueError: results come from the tuner or a journal's
        validated lines."""
        by_file: dict[tuple, list[dict]] = {}
        for r in map(validate_result, results):
            job = job_of(r)
            by_file.setdefault((job.n, job.k, job.dtype, job.accumulation, job.block_size), []).append(r)
        if not by_file:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the close
            for (n, k, dtype, accumulation, block), rows in by_file.items():
                path = self._path(n, k, dtype, accumulation, block)
                existing = self._existing(path)
                buckets = dict(existing["buckets"])
                mode = {"accumulation": accumulation} if dtype == "fp8" else {}
                if block:  # block-scaled files have no accumulation mode: the block says how sums are promoted
                    mode = {"block_shape": list(block)}
                for r in rows:
                    buckets[str(r["m"])] = {f: r[f] for f in BUCKET_FIELDS if f in r}
                data = {
                    "format_version": FORMAT_VERSION,
                    "device_name": self.device_name,
                    "n": n,
                    "k": k,
                    "dtype": dtype,
                    **mode,
                    **self.metadata,
                    # A note on re-stamped revisions stays with the buckets it is about.
                    **({"restamped": existing["restamped"]} if "restamped" in existing else {}),
                    "buckets": dict(sorted(buckets.items(), key=lambda kv: int(kv[0]))),
                }
                write_json_atomic(path, data)
        finally:
            os.close(lock)

    @staticmethod
    def _existing(path: Path) -> dict:
        """A file's content in the current format (a format-1 file converted; every field kept); no
        buckets if it is missing or invalid (it is then rewritten with the new results)."""
        try:
            data = read_json(path)
            checked_table(path, data)
        except ConfigFileError:
            return {"buckets": {}}
        return upgrade(path, data)


def _parse_journal(path: Path, raw: bytes) -> list[dict]:
    """The valid results of a journal's bytes; one warning for the file counts the lines skipped. A last
    line without its newline is one cut by a kill: ignored without a warning."""
    lines = raw.split(b"\n")
    cut = lines.pop()  # b"" when the file ends with a newline
    results, bad = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            results.append(validate_result(parse_json(path, line), f"{path}:{number}"))
        except ConfigFileError:
            bad += 1
    if cut.strip():
        with contextlib.suppress(ConfigFileError):
            results.append(validate_result(parse_json(path, cut), path))
    if bad:
        total = bad + len(results)
        warnings.warn(f"{path}: skipped {bad} of {total} lines that are not valid tuning results", stacklevel=3)
    return results


def read_journals(directory: Path) -> tuple[list[dict], list[Path]]:
    """The results in the journals of a folder (any host, any rank) that no running process holds, and the
    journals read (those with content: an empty one may be a journal just created, not yet held).

    A journal that cannot be read (a symlink, not a regular file, too large) is left alone with a warning,
    as is a folder that is a symlink (the caller deletes the journals it read).
    """
    if directory.is_symlink():
        warnings.warn(f"{directory} is a symlink, not a journal folder; ignored", stacklevel=2)
        return [], []
    results, read = [], []
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        try:
            with open_regular_file(path, follow_symlinks=False) as fd:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # the journal of a running tuner
                raw = read_capped(path, fd, MAX_JOURNAL_BYTES)
        except ConfigFileError as err:
            warnings.warn(f"{err}; journal ignored", stacklevel=2)
            continue
        if raw:
            results += _parse_journal(path, raw)
            read.append(path)
    return results, read


def forget_in_journals(paths: list[Path], jobs: set[Job]) -> None:
    """What a finished `--retune` run does to the journals it read (`read_journals`): each keeps only
    the --retune results of jobs outside `jobs`, those of another --retune command that stopped before
    its end (run again, it continues from them), rewritten atomically; a journal left with none is
    deleted. Results of `jobs` go: the files hold this run's newer ones, which a journal read again
    would overwrite. A journal that a running tuner has taken since is left alone."""
    for path in paths:
        try:
            with open_regular_file(path, follow_symlinks=False) as fd:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                kept = [
                    r
                    for r in _parse_journal(path, read_capped(path, fd, MAX_JOURNAL_BYTES))
                    if r.get("retune") and job_of(r) not in jobs
                ]
                if not kept:
                    path.unlink(missing_ok=True)
                    continue
                # Readers (and a crash) see the old journal or the new one, never half.
                write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        except (ConfigFileError, FileNotFoundError) as err:
            warnings.warn(f"{err}; journal left as it is", stacklevel=2)


class Journal:
    """An append-only file of results, one JSON line each, flushed to disk per line. Its writer holds an
    exclusive flock on it from the first append until `close` or `clear`."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is not None:
            return self._fd
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Neither a symlink planted for the file nor one for its folder is followed.
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(self.path.name, flags, 0o644, dir_fd=folder)
        finally:
            os.close(folder)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # O_NONBLOCK: a planted FIFO did not block the open
                raise OSError(f"{self.path}: not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while `read_journals` reads it
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    def append(self, result: dict) -> None:
        fd = self._open()
        line = (json.dumps(result) + "\n").encode()
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line  # the last line was cut (a kill mid-write): end it, or this one is lost with it
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)

    def read(self) -> list[dict]:
        """Every valid result (see `read_journals`), whether or not a writer holds the journal."""
        if not os.path.lexists(self.path):
            return []
        try:
            with open_regular_file(self.path, follow_symlinks=False) as fd:
                raw = read_capped(self.path, fd, MAX_JOURNAL_BYTES)
        except ConfigFileError as err:
            warnings.warn(f"{err}; journal ignored", stacklevel=2)
            return []
        return _parse_journal(self.path, raw)

    def close(self) -> None:
        """Stop writing; the journal stays for the next run to recover."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.close()
        with contextlib.suppress(OSError):  # the journal folder goes with the last journal in it
            self.path.parent.rmdir()
