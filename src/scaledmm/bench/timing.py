"""Timing by ../shared/BENCHMARKING.md, shared by `scaledmm bench` and the tuner.

Cold weights: R copies of every input, called in turn, so the weight comes from HBM as in a model.
No launch gaps: the R calls are captured in one CUDA graph, replayed for 25 ms to bring the clocks
up, then replayed at least 20 times, each replay timed with CUDA events; per-call time = replay
time / R. Methods compared at one point are timed together (`time_interleaved`): their graphs
replay in turn, so that clock drift falls on all of them alike, and each timed replay follows an
untimed one of the same graph, so that no method is timed right after another one. Without a GPU
(Triton's interpreter) the calls are timed with the host clock instead; such numbers only show the
code runs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

MIN_REPLAYS = 20
WARMUP_MS = 25.0
MAX_WARMUP_REPLAYS = 2000
L2_MULTIPLE = 4  # R x weight bytes >= 4 x L2


@dataclass(frozen=True)
class Timing:
    """Per-call time in microseconds over the replays: median, min and max."""

    median_us: float
    min_us: float
    max_us: float


def rotation_count(weight_bytes: int, device: torch.device, max_copies: int = 64) -> int:
    """How many copies of the inputs keep the weight out of L2 between its uses (R >= 2)."""
    if device.type != "cuda":
        return 2
    l2 = torch.cuda.get_device_properties(device).L2_cache_size
    return min(max_copies, max(2, math.ceil(L2_MULTIPLE * l2 / max(weight_bytes, 1))))


def time_calls(
    fn: Callable[..., object],
    inputs: Sequence[Sequence[object]],
    replays: int = MIN_REPLAYS,
    warmup_ms: float = WARMUP_MS,
) -> Timing:
    """Time `fn(*inputs[i])` for i = 0..R-1, per the protocol; returns the per-call time.

    `fn` is compiled in a first round of calls if it is not yet. `warmup_ms` of graph replays bring
    an idle GPU's clocks up; a caller timing many candidates back to back (the tuner) can pass less.
    """
    return time_interleaved([(fn, inputs)], replays, warmup_ms)[0]


def time_interleaved(
    jobs: Sequence[tuple[Callable[..., object], Sequence[Sequence[object]]]],
    replays: int = MIN_REPLAYS,
    warmup_ms: float = WARMUP_MS,
) -> list[Timing]:
    """Time several `(fn, inputs)` in one go: each is captured in its own CUDA graph, and the graphs
    are replayed in turn, round after round (round r starting with job r mod n), so that a slow
    drift of the clock (power limit, heat) falls on every job alike instead of on whichever ran
    last. Methods compared at one point should be timed together like this.

    Each timed replay follows an untimed replay of the same graph: the GPU's state when a job
    starts (its clock after the work before, what that work left in L2) is then the job's own, not
    whichever job preceded it. Timed straight after another job, one vendor kernel timed as two
    methods read 0.94-1.02x itself in one block bench, and 0.98-1.02x with the lead-in (H200,
    session 13; docs/performance.md). At compute-bound points a kernel's replays can still fall into
    two groups some 10% apart, and two medians into different ones."""
    replays = max(replays, MIN_REPLAYS)
    tensors = [next((x for x in inputs[0] if isinstance(x, torch.Tensor)), None) for _, inputs in jobs]
    if any(t is None or t.device.type != "cuda" for t in tensors):
        return [_time_on_host(fn, inputs) for fn, inputs in jobs]

    graphs = [_capture(fn, inputs) for fn, inputs in jobs]
    _warm_up(graphs, warmup_ms)
    n = len(graphs)
    starts = [[torch.cuda.Event(enable_timing=True) for _ in range(replays)] for _ in range(n)]
    ends = [[torch.cuda.Event(enable_timing=True) for _ in range(replays)] for _ in range(n)]
    for r, j, timed in replay_schedule(n, replays):
        if timed:
            starts[j][r].record()
            graphs[j].replay()
            ends[j][r].record()
        else:
            graphs[j].replay()
    torch.cuda.synchronize()
    timings = []
    for j, (_, inputs) in enumerate(jobs):
        per_call = [s.elapsed_time(e) * 1000.0 / len(inputs) for s, e in zip(starts[j], ends[j])]
        timings.append(Timing(statistics.median(per_call), min(per_call), max(per_call)))
    del graphs
    return timings


def _warm_up(graphs: Sequence[torch.cuda.CUDAGraph], warmup_ms: float) -> None:
    """Replay the graphs in turn for about warmup_ms, so that an idle GPU's clocks are up before the
    timed replays."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for graph in graphs:
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    for _ in range(min(MAX_WARMUP_REPLAYS, math.ceil(warmup_ms / max(start.elapsed_time(end), 1e-3)))):
        for graph in graphs:
            graph.replay()


def replay_schedule(jobs: int, replays: int) -> Iterator[tuple[int, int, bool]]:
    """(round, job, timed) for each replay of `time_interleaved`, in order: round r replays the jobs
    starting with job r mod jobs, each job once untimed (the lead-in) and then once timed."""
    for r in range(replays):
        for i in range(jobs):
            j = (r + i) % jobs
            yield r, j, False
            yield r, j, True


SCREEN_REPLAYS = 3


def screen_time_us(
    fn: Callable[..., object], inputs: Sequence[Sequence[object]], replays: int = SCREEN_REPLAYS, warmup_ms: float = 0.0
) -> float:
    """A brief timing for ranking many candidates (the tuner's screen): the R calls captured in one
    graph as `time_calls` does, one untimed replay (plus `warmup_ms` more), then `replays` timed ones;
    the fastest per-call time. Not a number to report: the protocol's numbers come from
    `time_interleaved`, which the tuner's final round uses."""
    if not isinstance(inputs[0][0], torch.Tensor) or inputs[0][0].device.type != "cuda":
        return _time_on_host(fn, inputs).min_us
    graph = _capture(fn, inputs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    for _ in range(min(MAX_WARMUP_REPLAYS, math.ceil(warmup_ms / max(start.elapsed_time(end), 1e-3)))):
        graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(replays)]
    for s, e in events:
        s.record()
        graph.replay()
        e.record()
    torch.cuda.synchronize()
    del graph
    return min(s.elapsed_time(e) for s, e in events) * 1000.0 / len(inputs)


def _capture(fn: Callable[..., object], inputs: Sequence[Sequence[object]]) -> torch.cuda.CUDAGraph:
    """The R calls of `fn` in one CUDA graph, after a first round outside it (compiles, cuBLAS
    handles, lazily allocated state), run on the capture stream as PyTorch's CUDA-graph docs do:
    state kept per stream (scaledmm's split-K arrival counts) then exists before the capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for args in inputs:
            fn(*args)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        for args in inputs:
            fn(*args)
    torch.cuda.current_stream().wait_stream(stream)
    return graph


HOST_ROUNDS = 3  # without a GPU the times only show the code runs: a few rounds do


def _time_on_host(fn, inputs) -> Timing:
    for args in inputs:
        fn(*args)
    per_call = []
    for _ in range(HOST_ROUNDS):
        start = time.perf_counter()
        for args in inputs:
            fn(*args)
        per_call.append((time.perf_counter() - start) * 1e6 / len(inputs))
    return Timing(statistics.median(per_call), min(per_call), max(per_call))


def host_time_per_call(fn: Callable[[], object], calls: int = 3000, warmup: int = 100) -> float:
    """CPU time per call in microseconds, over `calls` calls with no synchronisation in the loop."""
    for _ in range(min(warmup, calls)):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return elapsed * 1e6 / calls
