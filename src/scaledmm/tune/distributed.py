"""Running the tuning jobs on one GPU, on every GPU of a host, or on every rank of a torchrun job.

Every process tunes on one device. With several, they form a torch.distributed group (gloo: only
small Python objects travel) and follow one protocol:

1. one rank per host reads the journals of interrupted runs and sends them to rank 0, which
   merges them into the config files and broadcasts which jobs are done;
2. the remaining jobs are shared in groups that compile the same kernels (every shape at one M),
   balanced by expected cost, and each rank runs its groups in an order that keeps ranks compiling
   different kernels at the same time (`split_jobs`);
3. each rank tunes its share, appending every result to its journal as it comes; rank 0 also writes
   its results into the files at once;
4. at the end all results go to rank 0, which merges them; then every rank clears its journal.

So a killed run loses at most the jobs in flight, and running the same command again continues.
Every process writes a journal of its own (host, process id and a random token name it) and holds it
locked while it runs, so tuners sharing a folder neither read nor delete each other's journals, and
their merges into the files take turns (tune/store.py).
A `--retune` run (which tunes buckets the files already hold) knows what it has done only from its
journals: it keeps them when it stops at the time limit, and clears them when it has finished; run
again with `--retune` it continues (a run without it merges the journals and forgets them). A
finished `--retune` forgets only its own jobs: where journals hold results of another `--retune`
command that stopped early, they stay (store.forget_in_journals), and that command continues.
With several nodes the journals of other nodes reach rank 0 in step 1 of the next run.
"""

from __future__ import annotations

import datetime
import os
import secrets
import socket
import sys
import time
from concurrent.futures import wait
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import triton
from tqdm import tqdm

import scaledmm
from scaledmm.checks import INTERPRETER
from scaledmm.configs.files import normalize_device_name
from scaledmm.configs.lookup import device_name as name_of_device
from scaledmm.tune.report import closing_table
from scaledmm.tune.runner import Job, Precompiler, candidates, tune_job
from scaledmm.tune.store import Journal, ResultStore, forget_in_journals, job_of, read_journals

GROUP_TIMEOUT = datetime.timedelta(hours=12)  # a rank may tune for hours before the final gather


@dataclass
class TuneSettings:
    jobs: list[Job]
    out_dir: Path
    command: str = ""
    replays: int = 20
    max_candidates: int | None = None
    compile_workers: int | None = None  # per GPU; None: the host's cores shared among its GPUs
    progress: bool = True
    deadline: float | None = None  # time.time() after which no new job starts (--time-limit)
    retune: bool = False  # tune the buckets the files already hold for this kernel revision too
    scales: str = field(default="per-token a x per-channel b, bf16 bias, bf16 out")


class Group:
    """The ranks tuning together: torch.distributed when initialised, else this process alone."""

    def __init__(self):
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1

    def gather(self, obj) -> list | None:
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def compile_group(job: Job) -> tuple:
    """The jobs that compile the same kernels: every shape at one M, in one dtype and mode. Triton
    compiles a kernel per constexpr (tiles, stages, warps, split-K, the M edge's masking) and per
    specialisation of the integer arguments (1, or divisible by 16); M, N, K and the strides are
    run-time arguments. So the candidates of one M are the same kernels at every N, K (with K a
    multiple of the K step; only split-K choices and tile caps differ), while another M may
    specialise, mask or choose its tiles otherwise. Sorted, these keys put neighbouring M (which share
    most of their kernels, M = 2, 4 and 8 all of them) next to each other."""
    return (job.dtype, job.accumulation, job.block_size or (), job.m)


def split_jobs(jobs: list[Job], world: int) -> list[list[Job]]:
    """Each rank's jobs, in the order it runs them. Deterministic, so every rank computes the same split.

    Ranks on one host share Triton's cache on disk but not their compile pools, and each has a share
    of the cores: two ranks compiling one kernel at once both pay for it. So jobs go out in groups that
    compile the same kernels (`compile_group`), longest first to the least loaded rank (by `Job.cost`);
    where there are fewer than two groups per rank, the costliest are halved (contiguous shapes) until
    there are enough to balance. Each rank runs its groups in compile order (by dtype, mode and M), so
    a group's neighbours reuse its kernels, starting where its share crosses r/world of the whole list:
    ranks that start together compile different kernels (on two GPUs one begins at small M, the other
    near the middle), and a rank that comes to kernels another compiled before finds them in the cache."""
    by_key: dict[tuple, list[Job]] = {}
    for job in sorted(jobs):
        by_key.setdefault(compile_group(job), []).append(job)
    groups = [by_key[key] for key in sorted(by_key)]  # compile order

    def cost(group: list[Job]) -> float:
        return sum(job.cost for job in group)

    while groups and len(groups) < 2 * world:
        i = max(range(len(groups)), key=lambda g: (len(groups[g]) > 1, cost(groups[g])))
        if len(groups[i]) == 1:
            break
        half = len(groups[i]) // 2
        groups[i : i + 1] = [groups[i][:half], groups[i][half:]]

    owner = [0] * len(groups)
    loads = [0.0] * world
    for i in sorted(range(len(groups)), key=lambda g: (-cost(groups[g]), g)):
        owner[i] = loads.index(min(loads))
        loads[owner[i]] += cost(groups[i])

    total = sum(loads) or 1.0
    start_at = []  # each group's start, as a fraction of the whole list's cost in compile order
    done = 0.0
    for group in groups:
        start_at.append(done / total)
        done += cost(group)
    shares = []
    for rank in range(world):
        mine = [i for i in range(len(groups)) if owner[i] == rank]
        first = next((n for n, i in enumerate(mine) if start_at[i] >= rank / world), 0)
        shares.append([job for i in mine[first:] + mine[:first] for job in groups[i]])
    return shares


def _metadata(device: torch.device, settings: TuneSettings) -> dict:
    meta = {
        "scales": settings.scales,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "scaledmm": scaledmm.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": settings.command,
    }
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        meta["compute_capability"] = f"{major}.{minor}"
    return meta


def _compile_workers(settings: TuneSettings, device: torch.device) -> int:
    if device.type != "cuda" or INTERPRETER:
        return 0
    if settings.compile_workers is not None:
        return settings.compile_workers
    gpus_here = max(1, torch.cuda.device_count())
    return max(1, min(16, (os.cpu_count() or 2) // gpus_here - 1))


def tune(settings: TuneSettings, device: torch.device) -> list[dict] | None:
    """Run this rank's part of the protocol above. Rank 0 returns every result of this run (for the
    closing table); other ranks return None."""
    group = Group()
    names = group.gather(name_of_device(device))
    verdict = None
    if group.rank == 0:
        mixed = len(set(names)) > 1
        error = f"the ranks have different GPUs ({sorted(set(names))}); tune each kind apart" if mixed else None
        verdict = (names[0], error)
    card, error = group.broadcast(verdict)
    if error:
        raise RuntimeError(error)
    store = ResultStore(settings.out_dir, card, _metadata(device, settings))
    journal_dir = settings.out_dir / ".journal"
    host = normalize_device_name(socket.gethostname()) or "host"
    journal = Journal(journal_dir / f"{host}-{os.getpid()}-{secrets.token_hex(4)}-rank{group.rank}.jsonl")
    try:
        return _run_protocol(settings, device, group, store, journal)
    finally:
        journal.close()  # kept for the next run unless the protocol cleared it


def _run_protocol(
    settings: TuneSettings, device: torch.device, group: Group, store: ResultStore, journal: Journal
) -> list[dict] | None:
    """Steps 1-4 of the module docstring, writing this process's results to `journal`."""
    journal_dir = journal.path.parent

    # 1. Recover what interrupted runs left in journals (of any rank: a rerun may use fewer GPUs);
    # one rank per host reads its host's folder. Agree on what is left.
    hosts = group.gather(socket.gethostname())
    readers = None
    if group.rank == 0:
        first_rank_of = {}
        for rank, host in enumerate(hosts):
            first_rank_of.setdefault(host, rank)
        readers = set(first_rank_of.values())
    readers = group.broadcast(readers)
    found, read_paths = read_journals(journal_dir) if group.rank in readers else ([], [])
    recovered = group.gather(found)
    remaining = None
    if group.rank == 0:
        # Oldest first, so that where journals hold a job twice (a killed run, then a retune), the
        # newest result is the one the files keep.
        recovered = sorted((r for rs in recovered for r in rs), key=lambda r: r.get("at", 0.0))
        store.add(recovered)
        if settings.retune:
            # The files hold every job already; what an interrupted --retune did is what its journal says.
            done = {job_of(r) for r in recovered if r.get("retune")}
        else:
            done = store.done(settings.jobs)
        remaining = [j for j in settings.jobs if j not in done]
    remaining = group.broadcast(remaining)
    group.barrier()
    if not settings.retune:
        for path in read_paths:  # their content is in rank 0's files now
            path.unlink(missing_ok=True)

    # 2-3. Tune this rank's share.
    mine = split_jobs(remaining, group.world)[group.rank]
    results, left = _tune_share(mine, settings, device, journal, store if group.rank == 0 else None, group.rank)

    # 4. Merge everything on rank 0. A --retune run that stopped with jobs left keeps its journals
    # (they are how the same command continues); a finished one, or any other run, clears them.
    gathered = group.gather((results, left))
    if group.rank == 0:
        store.add([r for rs, _ in gathered for r in rs])
    finished = group.broadcast(None if group.rank else all(n == 0 for _, n in gathered))
    group.barrier()
    if finished or not settings.retune:
        if settings.retune:
            forget_in_journals(read_paths, set(settings.jobs))  # another --retune command's results stay
        else:
            for path in read_paths:
                path.unlink(missing_ok=True)
        journal.clear()  # last: it also removes the journal folder once empty
    if group.rank != 0:
        return None
    left = sum(n for _, n in gathered)
    if left:
        print(
            f"stopped at the time limit with {left} of {len(remaining)} jobs left: run the same command "
            "again to continue",
            flush=True,
        )
    return [r for rs, _ in gathered for r in rs]


def _tune_share(
    jobs: list[Job],
    settings: TuneSettings,
    device: torch.device,
    journal: Journal,
    store: ResultStore | None,
    rank: int,
) -> tuple[list[dict], int]:
    """Tune the jobs in order; return the results and how many jobs the deadline left unstarted."""
    if not jobs:
        return [], 0
    workers = _compile_workers(settings, device)
    precompiler = Precompiler(workers, device) if workers else None
    plans = {job: candidates(job, device, settings.max_candidates) for job in jobs}
    pending = {}
    lookahead = 2  # jobs compiled ahead of the one being timed

    def schedule(i: int) -> None:
        if precompiler and i < len(jobs) and jobs[i] not in pending:
            pending[jobs[i]] = precompiler.submit(jobs[i], plans[jobs[i]])

    results, left = [], 0
    bar = tqdm(
        jobs,
        desc=f"tune rank {rank} ({device})",
        unit="job",
        position=rank,
        disable=not settings.progress,
        dynamic_ncols=True,
    )
    try:
        for i, job in enumerate(bar):
            if settings.deadline is not None and time.time() > settings.deadline:
                left = len(jobs) - i
                break
            for ahead in range(i, i + lookahead + 1):
                schedule(ahead)
            if job in pending:
                # Compiling ahead only saves time: a config that failed there is still tried here,
                # where its launch error (if any) rejects it.
                wait(pending.pop(job))
            bar.set_postfix_str(f"N={job.n} K={job.k} {job.dtype} M={job.m}: {len(plans[job])} configs")
            try:
                result = tune_job(job, device, plans[job], settings.replays)
            except RuntimeError as err:  # no correct candidate: report it, tune the rest
                tqdm.write(f"scaledmm tune: skipped {job}: {err}", file=sys.stderr)
                continue
            journal.append({**result, "retune": settings.retune, "at": time.time()})
            if store is not None:
                store.add([result])
            results.append(result)
    finally:
        bar.close()
        if precompiler:
            precompiler.close()
    return results, left


# ----------------------------------------------------------------------------- launching


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tune_and_report(settings: TuneSettings, device: torch.device) -> None:
    """Tune this rank's share; rank 0 then prints the closing table of this run."""
    results = tune(settings, device)
    if results is not None:
        print(closing_table(results), flush=True)
        print(f"config files: {settings.out_dir}", flush=True)


def _spawned(rank: int, world: int, port: int, settings: TuneSettings, device_type: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=GROUP_TIMEOUT
    )
    try:
        device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tune_and_report(settings, device)
    finally:
        dist.destroy_process_group()


def tune_on_local_devices(settings: TuneSettings, world: int, device_type: str = "cuda") -> None:
    """One process per device of this host (`scaledmm tune --gpus ...`), joined in a gloo group over
    the loopback interface."""
    if world == 1:
        device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
        tune_and_report(settings, device)
        return
    torch.multiprocessing.spawn(_spawned, args=(world, _free_port(), settings, device_type), nprocs=world, join=True)


def tune_under_torchrun(settings: TuneSettings) -> None:
    """Every rank of a torchrun job (one node or several) takes its share; LOCAL_RANK picks the GPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    try:
        tune_and_report(settings, device)
    finally:
        dist.destroy_process_group()
