"""The timing module's bookkeeping (its numbers are checked on the GPU by the benchmark, not here)."""

import itertools

import torch
from helpers import DEVICE

from scaledmm.bench.timing import (
    MIN_REPLAYS,
    Timing,
    replay_schedule,
    rotation_count,
    time_calls,
    time_interleaved,
)


def test_one_timing_per_job_in_order():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn(x):
            calls[name] += 1
            return x * 2

        return fn

    inputs = [(torch.ones(8, device=DEVICE),), (torch.ones(8, device=DEVICE),)]
    timings = time_interleaved([(make("a"), inputs), (make("b"), inputs)])
    assert len(timings) == 2 and all(isinstance(t, Timing) for t in timings)
    assert all(0 < t.min_us <= t.median_us <= t.max_us for t in timings)
    assert calls["a"] == calls["b"] >= len(inputs)  # both ran, as often as each other
    assert isinstance(time_calls(make("a"), inputs, replays=MIN_REPLAYS), Timing)


def test_rotation_keeps_at_least_two_copies():
    assert rotation_count(10**12, torch.device(DEVICE)) == 2
    assert rotation_count(1, torch.device(DEVICE)) >= 2


def test_each_timed_replay_follows_its_own_job_and_rounds_rotate():
    schedule = list(replay_schedule(3, 4))
    timed = [(r, j) for r, j, t in schedule if t]
    assert sorted(timed) == [(r, j) for r in range(4) for j in range(3)]  # every job once a round
    for before, (r, j, t) in itertools.pairwise(schedule):
        if t:  # the lead-in: what ran just before a timed replay is the same job, untimed
            assert before == (r, j, False)
    assert [j for r, j, t in schedule if t and r == 1] == [1, 2, 0]  # round r starts with job r mod n
