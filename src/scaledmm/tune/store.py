"""Where tuning results go: config files updated atomically as results come, and per-rank journals
so that an interrupted run loses at most the jobs in flight."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from scaledmm.configs.files import FORMAT_VERSION, file_name, load_table, upgrade, upgrade_bucket, write_json_atomic
from scaledmm.kernels.matmul import kernel_revision
from scaledmm.tune.runner import Job

BUCKET_FIELDS = ("backend", "config", "time_us", "baselines_us", "candidates", "revision")


class ResultStore:
    """The config files of one device in one directory; `metadata` goes into every file written."""

    def __init__(self, directory: Path, device_name: str, metadata: dict):
        self.directory = directory
        self.device_name = device_name
        self.metadata = metadata

    def _path(self, n: int, k: int, dtype: str) -> Path:
        return self.directory / file_name(self.device_name, n, k, dtype)

    def done(self, jobs: list[Job]) -> set[Job]:
        """The jobs whose M bucket the existing files hold, tuned with the kernel their config runs as it is now. A
        bucket of another kernel revision is stale and tuned again; a file that does not validate
        counts as holding nothing, and is rewritten."""
        held: set[Job] = set()
        for n, k, dtype in {(j.n, j.k, j.dtype) for j in jobs}:
            path = self._path(n, k, dtype)
            if path.exists():
                try:
                    buckets = load_table(path).buckets
                except ValueError:
                    continue
                held |= {Job(n, k, dtype, b.m) for b in buckets if b.revision == kernel_revision(b.config)}
        return held & set(jobs)

    def add(self, results: list[dict]) -> None:
        """Merge results into their files (one atomic rewrite per file touched)."""
        by_file: dict[tuple[int, int, str], list[dict]] = {}
        for r in results:
            by_file.setdefault((r["n"], r["k"], r["dtype"]), []).append(r)
        for (n, k, dtype), rows in by_file.items():
            path = self._path(n, k, dtype)
            existing = {"buckets": {}}
            if path.exists():
                try:
                    load_table(path)
                    existing = upgrade(path, json.loads(path.read_text()))  # a format-1 file is rewritten in 2
                except ValueError:
                    pass
            buckets = existing["buckets"]
            for r in rows:
                if "kernel" in r:  # a result journaled by a version that wrote format-1 files
                    r = upgrade_bucket(path, f"the journaled result for M={r['m']}", r)
                buckets[str(r["m"])] = {f: r[f] for f in BUCKET_FIELDS if f in r}
            # The run's metadata replaces the file's; a note on re-stamped revisions stays with them.
            carried = {"restamped": existing["restamped"]} if "restamped" in existing else {}
            data = {
                "format_version": FORMAT_VERSION,
                "device_name": self.device_name,
                "n": n,
                "k": k,
                "dtype": dtype,
                **self.metadata,
                **carried,
                "buckets": dict(sorted(buckets.items(), key=lambda kv: int(kv[0]))),
            }
            write_json_atomic(path, data)


def read_journals(directory: Path) -> tuple[list[dict], list[Path]]:
    """Every result in the journals of a folder (any host, any rank), and the files read."""
    paths = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    return [r for p in paths for r in Journal(p).read()], paths


class Journal:
    """An append-only file of results, one JSON line each, flushed to disk per line."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, result: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(result) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """Every complete line (a line cut by a kill is ignored)."""
        if not self.path.exists():
            return []
        results = []
        for line in self.path.read_text().splitlines():
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return results

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the journal folder goes with the last journal in it
            self.path.parent.rmdir()
