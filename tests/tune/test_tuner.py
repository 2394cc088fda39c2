"""`scaledmm tune` end to end on tiny shapes: files written, resumed after a kill, journals
recovered, and two gloo ranks sharing the work (Triton's interpreter on CPU; a GPU run uses CUDA)."""

import json
import multiprocessing
import socket
import sys
import warnings

import pytest
import torch
from helpers import ON_GPU

import scaledmm.tune.distributed as distributed
from scaledmm.cli import main
from scaledmm.configs import MatmulConfig, clear_cache
from scaledmm.configs.files import file_name, load_table
from scaledmm.configs.lookup import CONFIG_DIR_ENV, device_name, plan
from scaledmm.kernels.matmul import REVISIONS, kernel_revision
from scaledmm.tune.runner import Job
from scaledmm.tune.store import Journal, ResultStore, forget_in_journals

N, K = 48, 64
DEVICE_NAME = device_name(torch.device("cuda", 0) if ON_GPU else torch.device("cpu"))


def tune(out, ms="1,24", extra=()):
    return main(
        [
            "tune",
            "--shape",
            f"{N},{K}",
            "--dtype",
            "int8",
            "--m",
            ms,
            "--max-candidates",
            "2",
            "--compile-workers",
            "2",
            "--out",
            str(out),
            *extra,
        ]
    )


def config_file(out):
    return out / file_name(DEVICE_NAME, N, K, "int8")


def test_tune_writes_a_valid_file_that_the_lookup_uses(tmp_path, monkeypatch, capsys):
    assert tune(tmp_path) == 0
    table = load_table(config_file(tmp_path))
    assert [b.m for b in table.buckets] == [1, 24]
    data = json.loads(config_file(tmp_path).read_text())
    assert data["command"].startswith("scaledmm tune --shape 48,64")
    assert {"triton", "torch", "date", "scales"} <= set(data)
    for bucket in data["buckets"].values():
        assert bucket["time_us"] > 0 and bucket["candidates"] >= 1
        assert bucket["baselines_us"]["heuristic"] > 0  # the heuristic was timed alongside
    assert "x heuristic" in capsys.readouterr().out  # the closing table
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    clear_cache()
    try:
        chosen = plan(20, N, K, torch.int8, torch.device("cuda", 0) if ON_GPU else torch.device("cpu"))
        assert chosen.source == config_file(tmp_path)
        assert chosen.config == MatmulConfig.from_dict(data["buckets"]["24"]["config"])
    finally:
        clear_cache()


def test_a_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    real = distributed.tune_job
    tuned = []

    def dies_on_second(job, *args, **kwargs):
        if len(tuned) == 1:
            raise KeyboardInterrupt  # the run is killed while the second job is in flight
        tuned.append(job.m)
        return real(job, *args, **kwargs)

    monkeypatch.setattr(distributed, "tune_job", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        tune(tmp_path, ms="1,2,4")
    assert [b.m for b in load_table(config_file(tmp_path)).buckets] == tuned == [1]

    def counting(job, *args, **kwargs):
        tuned.append(job.m)
        return real(job, *args, **kwargs)

    monkeypatch.setattr(distributed, "tune_job", counting)
    assert tune(tmp_path, ms="1,2,4") == 0
    assert tuned == [1, 2, 4]  # only the jobs left were tuned
    assert [b.m for b in load_table(config_file(tmp_path)).buckets] == [1, 2, 4]
    assert not (tmp_path / ".journal").exists()


def test_journaled_results_are_recovered_without_tuning_them_again(tmp_path, monkeypatch):
    # A rank that finished a job but died before the final merge leaves it in its journal.
    entry = {
        "n": N,
        "k": K,
        "dtype": "int8",
        "m": 2,
        "backend": "triton",
        "config": MatmulConfig(16, 16, 64).to_dict(),
        "time_us": 5.0,
        "baselines_us": {"torch": None, "heuristic": 6.0, "triton": 5.0},
        "candidates": 1,
        "revision": REVISIONS["pointer"],
    }
    # Rank 1 of a killed two-GPU run; the rerun uses one GPU and must still pick it up.
    journal = Journal(tmp_path / ".journal" / f"{socket.gethostname()}-rank1.jsonl")
    journal.append(entry)
    journal.close()  # the rank is dead: its journal is no longer held
    with open(journal.path, "a") as f:
        f.write('{"n": 48, "k"')  # a line cut by the kill
    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job.m) or real(job, *a, **k))
    assert tune(tmp_path, ms="1,2") == 0
    assert tuned == [1]
    buckets = {b.m: b for b in load_table(config_file(tmp_path)).buckets}
    assert set(buckets) == {1, 2} and buckets[2].time_us == 5.0


@pytest.mark.skipif(ON_GPU, reason="the gloo test runs CPU ranks; a GPU host runs `scaledmm tune --gpus all`")
def test_two_gloo_ranks_share_the_jobs_and_rank_0_merges(tmp_path, capfd):
    settings = distributed.TuneSettings(
        jobs=[Job(N, K, "int8", m) for m in (1, 2, 3, 4)], out_dir=tmp_path, command="test", max_candidates=1
    )
    distributed.tune_on_local_devices(settings, world=2, device_type="cpu")
    err = capfd.readouterr().err
    assert "tune rank 0" in err and "tune rank 1" in err
    assert [b.m for b in load_table(config_file(tmp_path)).buckets] == [1, 2, 3, 4]
    assert not (tmp_path / ".journal").exists()


def test_time_limit_stops_between_jobs_and_the_rerun_continues(tmp_path, capsys):
    assert tune(tmp_path, ms="1,2,4", extra=("--time-limit", "0")) == 0
    assert "3 of 3 jobs left" in capsys.readouterr().out
    assert not config_file(tmp_path).exists()
    assert tune(tmp_path, ms="1,2,4") == 0
    assert [b.m for b in load_table(config_file(tmp_path)).buckets] == [1, 2, 4]


def test_a_job_without_a_correct_candidate_is_reported_and_the_rest_tuned(tmp_path, monkeypatch, capsys):
    real = distributed.tune_job

    def fails_at_m2(job, *args, **kwargs):
        if job.m == 2:
            raise RuntimeError("no candidate config ran correctly")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(distributed, "tune_job", fails_at_m2)
    assert tune(tmp_path, ms="1,2,4") == 0
    assert "skipped Job(n=48, k=64, dtype='int8', m=2," in capsys.readouterr().err
    assert [b.m for b in load_table(config_file(tmp_path)).buckets] == [1, 4]


def test_buckets_of_another_kernel_revision_are_tuned_again(tmp_path, monkeypatch):
    assert tune(tmp_path, ms="1,2") == 0
    path = config_file(tmp_path)
    data = json.loads(path.read_text())
    for bucket in data["buckets"].values():  # the revision of the kernel the bucket's config runs
        assert bucket["revision"] == kernel_revision(MatmulConfig.from_dict(bucket["config"]))
    data["buckets"]["2"]["revision"] = "0123456789ab"  # as if the kernel had changed since
    path.write_text(json.dumps(data))
    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job.m) or real(job, *a, **k))
    assert tune(tmp_path, ms="1,2") == 0
    assert tuned == [2]
    retuned = json.loads(path.read_text())["buckets"]["2"]  # its winner may differ: CPU timings are noise
    assert retuned["revision"] == kernel_revision(MatmulConfig.from_dict(retuned["config"])) != "0123456789ab"


def test_retune_tunes_current_buckets_again(tmp_path, monkeypatch):
    assert tune(tmp_path, ms="1,2") == 0
    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job.m) or real(job, *a, **k))
    assert tune(tmp_path, ms="1,2") == 0
    assert tuned == []
    assert tune(tmp_path, ms="1,2", extra=["--retune"]) == 0
    assert sorted(tuned) == [1, 2]


class TimeLimitInFirstJob:
    """The tuner's clock and jobs under a test's control: the clock jumps far ahead during every job, so a
    run with --time-limit stops after its first; `reset` winds it back; `tuned` lists the M of every job tuned."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        self.tuned = []
        real = distributed.tune_job

        def passes_the_limit(job, *args, **kwargs):
            self.tuned.append(job.m)
            self.now = 1e9
            return real(job, *args, **kwargs)

        monkeypatch.setattr(distributed.time, "time", lambda: self.now)
        monkeypatch.setattr(distributed, "tune_job", passes_the_limit)

    def reset(self):
        self.now = 0.0


def test_a_retune_stopped_at_the_time_limit_continues_when_run_again(tmp_path, monkeypatch, capsys):
    assert tune(tmp_path, ms="1,2,4") == 0
    run = TimeLimitInFirstJob(monkeypatch)
    assert tune(tmp_path, ms="1,2,4", extra=["--retune", "--time-limit", "100"]) == 0
    assert len(run.tuned) == 1 and "2 of 3 jobs left" in capsys.readouterr().out
    assert (tmp_path / ".journal").exists()

    run.reset()
    assert tune(tmp_path, ms="1,2,4", extra=["--retune"]) == 0
    assert sorted(run.tuned) == [1, 2, 4]  # the rerun tuned only what the first left
    assert not (tmp_path / ".journal").exists()
    assert tune(tmp_path, ms="1,2,4", extra=["--retune"]) == 0
    assert len(run.tuned) == 6  # a finished retune is forgotten: the next one tunes everything again


def test_a_finished_retune_keeps_what_another_retune_left(tmp_path, monkeypatch):
    # --retune over M = 1, 2, 4 stops after one job; a --retune of M = 8 then runs to its end. The first
    # command, run again, still continues where it stopped, and the second's own journal is gone.
    assert tune(tmp_path, ms="1,2,4,8") == 0
    run = TimeLimitInFirstJob(monkeypatch)
    assert tune(tmp_path, ms="1,2,4", extra=["--retune", "--time-limit", "100"]) == 0
    first = run.tuned[:]
    assert len(first) == 1
    run.reset()
    assert tune(tmp_path, ms="8", extra=["--retune"]) == 0
    assert run.tuned[1:] == [8]
    (journal,) = (tmp_path / ".journal").glob("*.jsonl")
    assert [json.loads(line)["m"] for line in journal.read_text().splitlines()] == first
    assert tune(tmp_path, ms="1,2,4", extra=["--retune"]) == 0
    assert sorted(run.tuned[2:] + first) == [1, 2, 4]  # only what the first left
    assert not (tmp_path / ".journal").exists()


def test_journals_merge_oldest_first_so_a_retune_result_wins(tmp_path, monkeypatch):
    # A killed plain run left an old result for M = 2 in rank 1's journal; an interrupted retune then
    # wrote a newer one in rank 0's. Rerunning the retune must keep the newer one, and count M = 2 done.
    def entry(time_us, retune, at):
        return {
            "n": N, "k": K, "dtype": "int8", "m": 2, "backend": "triton",
            "config": MatmulConfig(16, 16, 64).to_dict(), "time_us": time_us,
            "baselines_us": {"torch": None, "heuristic": 9.0, "triton": time_us},
            "candidates": 1, "revision": REVISIONS["pointer"], "retune": retune, "at": at,
        }  # fmt: skip

    journals = tmp_path / ".journal"
    for rank, line in enumerate([entry(5.0, True, 2.0), entry(999.0, False, 1.0)]):
        journal = Journal(journals / f"{socket.gethostname()}-rank{rank}.jsonl")
        journal.append(line)
        journal.close()
    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job.m) or real(job, *a, **k))
    assert tune(tmp_path, ms="1,2", extra=["--retune"]) == 0
    assert tuned == [1]
    assert {b.m: b.time_us for b in load_table(config_file(tmp_path)).buckets}[2] == 5.0
    assert not journals.exists()


def test_forgetting_jobs_keeps_only_other_jobs_retune_results(tmp_path):
    def entry(m, retune):
        return {
            "n": N, "k": K, "dtype": "int8", "m": m, "backend": "triton",
            "config": MatmulConfig(16, 16, 64).to_dict(), "time_us": 5.0,
            "baselines_us": {"torch": None, "heuristic": 9.0, "triton": 5.0},
            "candidates": 1, "revision": REVISIONS["pointer"], "retune": retune, "at": 1.0,
        }  # fmt: skip

    mixed, mine, held = (tmp_path / f"{name}.jsonl" for name in ("mixed", "mine", "held"))
    for path, lines in [(mixed, [entry(1, True), entry(2, True), entry(4, False)]), (mine, [entry(1, True)])]:
        journal = Journal(path)
        for line in lines:
            journal.append(line)
        journal.close()
    running = Journal(held)
    running.append(entry(2, True))  # a tuner that holds its journal
    forget_in_journals([mixed, mine, held], {Job(N, K, "int8", 1)})
    assert [json.loads(line)["m"] for line in mixed.read_text().splitlines()] == [2]  # M = 4 was no retune
    assert not mine.exists()
    assert held.exists() and len(running.read()) == 1
    running.close()


# ----------------------------------------------------------------------------- untrusted journals


def result(m, n=N, k=K, **changes):
    """A journal line as the tuner writes it."""
    entry = {
        "n": n, "k": k, "dtype": "int8", "m": m, "accumulation": "fast", "backend": "triton",
        "config": MatmulConfig(16, 16, 64).to_dict(), "time_us": 5.0,
        "baselines_us": {"torch": None, "heuristic": 6.0, "triton": 5.0},
        "candidates": 1, "revision": REVISIONS["pointer"], "retune": False, "at": 1.0,
    }  # fmt: skip
    entry.update(changes)
    return entry


def bad_journal_lines():
    line = lambda **changes: json.dumps({**result(2), **changes}).encode()
    return [
        b"42",
        b'{"n": 32}',
        b"[1, 2, 3]",
        b"null",
        line(m="abc"),
        line(m=0),
        line(m=True),
        line(n="../../../x"),
        line(dtype="../../x"),
        line(dtype="int4"),
        line(backend="cutlass"),
        line(config={"block_m": 4096, "block_n": 16, "block_k": 64}),
        line(config="16x16x64"),
        line(time_us=-1.0),
        line(time_us="fast"),
        line(baselines_us=[1.0]),
        line(revision="../x"),
        line(retune="yes"),
        line(at="yesterday"),  # the merge sorts by it
        line(at=float("nan")),
        json.dumps(result(2)).replace('"candidates": 1', '"candidates": ' + "9" * 5000).encode(),
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe\x00 not UTF-8 \x80",
        json.dumps(result(2)).encode("utf-16"),
    ]


def test_bad_journal_lines_are_skipped_with_one_warning_and_the_good_ones_recovered(tmp_path, monkeypatch):
    out = tmp_path / "out"
    journals = out / ".journal"
    journals.mkdir(parents=True)
    good = json.dumps(result(2)).encode()
    lines = bad_journal_lines()
    (journals / "otherhost-rank3.jsonl").write_bytes(b"\n".join([*lines[:10], good, *lines[10:]]) + b"\n")
    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job.m) or real(job, *a, **k))
    with pytest.warns(UserWarning, match=rf"otherhost-rank3.jsonl: skipped {len(lines)} of {len(lines) + 1} lines"):
        assert tune(out, ms="1,2") == 0
    assert tuned == [1]  # M = 2 came from the journal's one good line
    assert {b.m: b.time_us for b in load_table(config_file(out)).buckets}[2] == 5.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing written outside --out
    assert sorted(p.name for p in out.iterdir()) == [".lock", config_file(out).name]


def test_journal_reader_keeps_only_valid_results_and_ignores_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(json.dumps(result(1)).encode() + b"\n" + b'{"n": 48, "k"')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a cut last line is what every kill leaves: no warning
        assert Journal(path).read() == [result(1)]
    for line in bad_journal_lines():
        path.write_bytes(line + b"\n")
        with pytest.warns(UserWarning, match="skipped 1 of 1 lines"):
            assert Journal(path).read() == []


def test_an_append_after_a_cut_line_starts_on_a_new_line(tmp_path):
    # A --retune killed mid-write leaves a line without its newline; the next append must not be glued to it.
    path = tmp_path / "j.jsonl"
    path.write_bytes(json.dumps(result(1)).encode()[:-7])
    journal = Journal(path)
    journal.append(result(2))
    journal.append(result(4))
    journal.close()
    with pytest.warns(UserWarning, match="skipped 1 of 3 lines"):  # the cut line, not the two after it
        assert [r["m"] for r in Journal(path).read()] == [2, 4]


def test_journal_appends_do_not_follow_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".journal").mkdir()
    planted = tmp_path / ".journal" / "host-rank0.jsonl"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        Journal(planted).append(result(1))
    assert victim.read_text() == "precious\n"
    # Nor a planted journal folder.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".journal").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        Journal(tmp_path / "out" / ".journal" / "host-rank0.jsonl").append(result(1))
    assert not any((tmp_path / "elsewhere").iterdir())


# ----------------------------------------------------------------------------- two tuners, one folder


def _add_buckets(out, ms, start):
    store = ResultStore(out, DEVICE_NAME, {"command": "test"})
    start.wait()
    for m in ms:
        store.add([result(m)])


@pytest.mark.skipif(sys.platform != "linux", reason="forks the test process")
def test_two_writers_on_one_folder_lose_no_bucket(tmp_path):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    writers = [ctx.Process(target=_add_buckets, args=(tmp_path, range(w + 1, 301, 2), start)) for w in range(2)]
    for p in writers:
        p.start()
    start.set()
    for p in writers:
        p.join(timeout=300)
        assert p.exitcode == 0
    assert [b.m for b in load_table(config_file(tmp_path)).buckets] == list(range(1, 301))


def test_a_live_tuner_journal_is_left_alone_by_another_tuner(tmp_path, monkeypatch):
    # Another tuner on this folder is writing its journal (it holds it); a second tuner starting must
    # neither use nor delete it: only journals of finished or killed runs are recovered.
    live = Journal(tmp_path / ".journal" / "otherhost-999-rank1.jsonl")
    live.append(result(2, time_us=1.0))
    tuned = []
    real = distributed.tune_job
    monkeypatch.setattr(distributed, "tune_job", lambda job, *a, **k: tuned.append(job.m) or real(job, *a, **k))
    try:
        assert tune(tmp_path, ms="1,2") == 0
        assert tuned == [1, 2]
        assert [r["m"] for r in Journal(live.path).read()] == [2]  # still there, still whole
        live.append(result(4))  # and its owner can go on
    finally:
        live.close()
    assert tune(tmp_path, ms="1,2,4") == 0  # now a journal of a finished run: recovered and cleared
    assert tuned == [1, 2]
    assert not (tmp_path / ".journal").exists()


def test_each_tuner_process_writes_its_own_journal(tmp_path, monkeypatch):
    names = []
    real_append = Journal.append

    def append(self, entry):
        names.append(self.path.name)
        real_append(self, entry)

    monkeypatch.setattr(Journal, "append", append)
    assert tune(tmp_path, ms="1") == 0
    assert tune(tmp_path, ms="1,2") == 0
    assert len(names) == 2 and names[0] != names[1]
    assert all(name.startswith(socket.gethostname()) and name.endswith("-rank0.jsonl") for name in names)


def test_format_1_files_and_journals_are_merged_into_format_2(tmp_path):
    # A file and a journaled result of the version that wrote format 1: the configs said tma/swap_ab,
    # and the buckets named their revision `kernel`.
    old_config = {**MatmulConfig(16, 64, 64).to_dict(), "tma": 0, "swap_ab": 1}
    del old_config["kernel"]
    old_bucket = {"backend": "triton", "config": old_config, "time_us": 4.0, "kernel": REVISIONS["swapped"]}
    config_file(tmp_path).write_text(
        json.dumps(
            {
                "format_version": 1, "device_name": DEVICE_NAME, "n": N, "k": K, "dtype": "int8",
                "restamped": "a note", "buckets": {"1": old_bucket},
            }
        )
    )  # fmt: skip
    store = ResultStore(tmp_path, DEVICE_NAME, {"command": "test"})
    assert store.done([Job(N, K, "int8", 1), Job(N, K, "int8", 2)]) == {Job(N, K, "int8", 1)}
    store.add([{"n": N, "k": K, "dtype": "int8", "m": 2, **old_bucket, "kernel": "0123456789ab"}])
    data = json.loads(config_file(tmp_path).read_text())
    assert data["format_version"] == 2 and data["restamped"] == "a note" and data["command"] == "test"
    for m, revision in (("1", REVISIONS["swapped"]), ("2", "0123456789ab")):
        assert data["buckets"][m]["config"] == MatmulConfig(16, 64, 64, kernel="swapped").to_dict()
        assert data["buckets"][m]["revision"] == revision and "kernel" not in data["buckets"][m]
    assert [b.revision for b in load_table(config_file(tmp_path)).buckets] == [REVISIONS["swapped"], "0123456789ab"]


def test_the_screen_shortlists_the_fastest_correct_candidates_and_only_they_reach_the_final(monkeypatch):
    """Successive halving: the final round times the SHORTLIST fastest screened candidates that are
    correct (a fast wrong one gives its place to the next) plus the heuristic, never the rest."""
    import scaledmm.tune.runner as runner
    from scaledmm.bench.timing import Timing
    from scaledmm.tune.space import candidate_configs

    device = torch.device("cuda", 0) if ON_GPU else torch.device("cpu")
    job = Job(N, K, "int8", 16)
    space = candidate_configs(job.m, N, K, 227 * 1024, 132, tma=False)
    configs = [*space[: runner.SHORTLIST + 4], space[-1]]  # the last plays the heuristic
    screen_us = {c: 10.0 + i for i, c in enumerate(configs)}  # the screen ranks them in list order
    screen_us[configs[-1]] = 1000.0  # the heuristic screens slowest, and still reaches the final
    wrong = configs[0]  # the fastest, and wrong

    class WrongForOne(runner.CandidateCall):
        def __call__(self, *args):
            out = super().__call__(*args)
            return out + 1000 if self.config == wrong else out

    finalists = []

    def final_round(contenders, replays, warmup_ms):
        finalists.extend(fn.config for fn, _ in contenders if isinstance(fn, runner.CandidateCall))
        return [Timing(5.0 + i, 5.0, 5.0) for i in range(len(contenders))]

    monkeypatch.setattr(runner, "CandidateCall", WrongForOne)
    monkeypatch.setattr(runner, "screen_time_us", lambda fn, inputs, warmup_ms=0.0: screen_us[fn.config])
    monkeypatch.setattr(runner, "time_interleaved", final_round)
    monkeypatch.setattr(runner, "group_variants", lambda config, m: [])

    result = runner.tune_job(job, device, configs)
    assert finalists == [*configs[1 : runner.SHORTLIST + 1], configs[-1]]
    assert MatmulConfig.from_dict(result["config"]) == configs[1]  # the fastest of the final round
    assert result["candidates"] == len(configs)
