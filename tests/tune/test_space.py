"""The search space and the sharing of jobs among ranks."""

import pytest
import torch
import triton

from scaledmm.configs import MatmulConfig
from scaledmm.configs.heuristic import fills_every_split
from scaledmm.configs.lookup import unfit_reason
from scaledmm.tune.distributed import compile_group, split_jobs
from scaledmm.tune.runner import Job
from scaledmm.tune.space import GLUON_CONFIGS, block_candidate_configs, candidate_configs, group_variants

H100_SHARED = 227 * 1024
H100_SMS = 132


@pytest.mark.parametrize("M", [1, 16, 24, 64, 96, 256, 1024, 8192])
@pytest.mark.parametrize("N,K", [(6144, 4096), (4096, 14336), (40, 50)])
def test_every_candidate_fits_the_gpu_and_the_problem(M, N, K):
    space = candidate_configs(M, N, K, H100_SHARED, H100_SMS)
    assert space, "an empty space"
    for c in space:
        assert c.num_stages * (c.block_m + c.block_n) * c.block_k <= H100_SHARED - 16 * 1024
        assert 4 <= c.block_m * c.block_n // (c.num_warps * 32) <= 128
        assert c.block_n <= max(32, 2 * N) and c.block_k <= max(64, 2 * K)
        # Tiles of up to twice M rows, and 64-row tiles at decode (the rows past M masked).
        assert c.block_m <= max(16, 2 * M) or (c.block_m == 64 and M <= 64) or M > 512
    assert len(set(space)) == len(space)


def test_small_m_is_searched_with_short_tiles_and_large_m_with_big_ones():
    for M in (1, 16):
        assert {c.block_m for c in candidate_configs(M, 4096, 4096, H100_SHARED, H100_SMS)} == {16, 64}
    assert {c.block_m for c in candidate_configs(8192, 4096, 4096, H100_SHARED, H100_SMS)} == {64, 128, 256}


def test_less_shared_memory_means_a_smaller_space():
    small = candidate_configs(4096, 4096, 4096, 99 * 1024, H100_SMS)
    assert len(small) < len(candidate_configs(4096, 4096, 4096, H100_SHARED, H100_SMS))


def test_split_k_only_where_the_tiles_leave_sms_idle():
    for M, N, K in [(1, 4096, 14336), (16, 2560, 9728), (4096, 4096, 4096), (64, 40, 50)]:
        for c in candidate_configs(M, N, K, H100_SHARED, H100_SMS):
            tiles = triton.cdiv(M, c.block_m) * triton.cdiv(N, c.block_n)
            if c.split_k > 1:
                assert tiles < H100_SMS and tiles * c.split_k <= 2 * H100_SMS
                k_steps = triton.cdiv(K, c.block_k)
                assert k_steps >= 2 * c.split_k
                assert triton.cdiv(k_steps, c.split_k) * (c.split_k - 1) < k_steps, "a split without K steps"
    assert any(c.split_k > 1 for c in candidate_configs(1, 2560, 9728, H100_SHARED, H100_SMS))
    assert all(c.split_k == 1 for c in candidate_configs(4096, 4096, 4096, H100_SHARED, H100_SMS))


def test_no_split_is_left_without_k_steps():
    assert fills_every_split(9, 3) and not fills_every_split(9, 4)  # 3, 3, 3, 0
    assert fills_every_split(56, 8) and not fills_every_split(56, 16)  # 4 each: the 15th ends at 60
    # 7168 / 128 = 56 K blocks at M = 1 on 2112 weight rows (33 tiles): split 16 was a candidate before.
    splits = {c.split_k for c in block_candidate_configs(1, 2112, 7168, 128, H100_SHARED, H100_SMS)}
    assert 8 in splits and 16 not in splits


def test_group_variants_only_where_there_are_several_tile_rows():
    config = candidate_configs(256, 4096, 4096, H100_SHARED, H100_SMS)[0]
    assert group_variants(config, config.block_m) == []
    assert {v.group_m for v in group_variants(config, 4 * config.block_m)} == {1, 4, 16}


def test_jobs_are_shared_once_each_and_evenly():
    jobs = [
        Job(n, k, d, m) for n, k in [(6144, 4096), (28672, 4096)] for d in ("int8", "fp8") for m in (1, 16, 256, 4096)
    ]
    for world in (1, 2, 3, 4):
        shares = split_jobs(jobs, world)
        assert sorted(j for s in shares for j in s) == sorted(jobs)
        loads = [sum(j.cost for j in s) for s in shares]
        assert max(loads) <= 1.5 * sum(loads) / world or world > len(jobs) // 2
        assert shares == split_jobs(list(reversed(jobs)), world)  # the same on every rank


GRID = [Job(n, k, d, m) for n, k in [(6144, 2560), (2560, 4096), (19456, 2560), (2560, 9728)]
        for d in ("int8", "fp8") for m in (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768,
                                           1024, 1536, 2048, 3072, 4096, 6144, 8192)]  # fmt: skip


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_jobs_that_compile_the_same_kernels_stay_on_one_rank_and_run_together(world):
    shares = split_jobs(GRID, world)
    assert sorted(j for s in shares for j in s) == sorted(GRID)  # every job exactly once
    for share in shares:
        keys = [compile_group(j) for j in share]
        # a group's jobs are consecutive, and no other rank has any of them
        runs = [k for i, k in enumerate(keys) if i == 0 or keys[i - 1] != k]
        assert len(runs) == len(set(runs))
        assert not set(keys) & {compile_group(j) for other in shares if other is not share for j in other}
    loads = [sum(j.cost for j in s) for s in shares]
    largest = max(sum(j.cost for j in GRID if compile_group(j) == key) for key in map(compile_group, GRID))
    assert max(loads) <= sum(loads) / world + largest  # LPT's bound
    assert max(loads) <= 1.1 * sum(loads) / world  # and here, with 46 groups, much closer


def test_ranks_start_in_different_places_of_the_compile_order():
    first = [share[0] for share in split_jobs(GRID, 2)]
    smallest = min(map(compile_group, GRID))
    assert first[0] == min(j for j in GRID if compile_group(j) == smallest)  # rank 0: fp8 at M = 1
    before = sum(j.cost for j in GRID if compile_group(j) < compile_group(first[1]))
    assert before >= sum(j.cost for j in GRID) / 2  # rank 1: past the middle, compiling other kernels


def test_few_groups_are_split_into_runs_of_shapes_so_every_rank_has_work():
    jobs = [Job(n, 4096, "fp8", 4096) for n in (1024, 2048, 3072, 4096, 5120, 6144, 7168, 8192)]  # one group
    for world in (2, 4):
        shares = split_jobs(jobs, world)
        assert sorted(j for s in shares for j in s) == sorted(jobs)
        assert all(len(s) == len(jobs) // world for s in shares)
    # two groups per rank, each a run of consecutive shapes
    pieces = [[j.n for j in s[i : i + 2]] for s in split_jobs(jobs, 2) for i in (0, 2)]
    assert sorted(pieces) == [[1024, 2048], [3072, 4096], [5120, 6144], [7168, 8192]]
    assert split_jobs(jobs[:1], 3) == [jobs[:1], [], []]
    assert split_jobs([], 2) == [[], []]


def test_closing_table_names_the_whole_config():
    from scaledmm.tune.report import closing_table

    config = MatmulConfig(16, 64, 256, num_warps=4, num_stages=4, split_k=4).to_dict()
    result = dict(n=2560, k=9728, dtype="fp8", m=1, backend="triton", config=config, time_us=13.6,
                  baselines_us={"torch": 26.0, "heuristic": 17.3})  # fmt: skip
    assert "16x64x256 g8 w4 s4 k4" in closing_table([result]) and "1.91" in closing_table([result])


def test_tma_candidates_only_at_compute_bound_m_and_sized_for_fp32_outputs():
    assert not any(c.kernel == "tma" for c in candidate_configs(64, 4096, 4096, H100_SHARED, H100_SMS))
    assert not any(c.kernel == "tma" for c in candidate_configs(4096, 40, 50, H100_SHARED, H100_SMS))
    tma = [c for c in candidate_configs(4096, 4096, 4096, H100_SHARED, H100_SMS) if c.kernel == "tma"]
    assert {(c.block_m, c.block_n) for c in tma} == {(64, 128), (64, 256), (128, 128), (128, 256), (256, 128)}
    for c in tma:
        assert c.split_k == 1
        # the pipeline and half an fp32 output tile, staged for its TMA store
        assert c.num_stages * (c.block_m + c.block_n) * c.block_k + c.block_m * c.block_n * 2 <= H100_SHARED - 16 * 1024


def test_no_tma_candidates_for_a_gpu_without_tma():
    assert not any(c.kernel == "tma" for c in candidate_configs(4096, 4096, 4096, H100_SHARED, H100_SMS, tma=False))


def test_swapped_candidates_only_at_small_m_with_one_tile_row_of_tokens():
    for M in (1, 4, 16, 24, 64):
        swapped = [c for c in candidate_configs(M, 2560, 9728, H100_SHARED, H100_SMS) if c.kernel == "swapped"]
        assert swapped and all(c.block_m == max(16, triton.next_power_of_2(M)) for c in swapped)
        assert {c.block_n for c in swapped} <= {64, 128} and {c.num_warps for c in swapped} == {4}
        assert any(c.split_k > 1 for c in swapped)  # 40 or 20 weight tiles leave SMs idle
        assert all(group_variants(c, M) == [] for c in swapped)
    # the winner of the first A/B is a candidate
    assert MatmulConfig(16, 64, 256, num_warps=4, num_stages=5, kernel="swapped") in candidate_configs(
        1, 6144, 4096, H100_SHARED, H100_SMS
    )
    assert not any(c.kernel == "swapped" for c in candidate_configs(96, 2560, 9728, H100_SHARED, H100_SMS))
    assert not any(
        c.kernel == "swapped" and c.split_k > 1 for c in candidate_configs(1, 28672, 4096, H100_SHARED, H100_SMS)
    )


def test_per_channel_and_block_scaled_jobs_of_one_point_share_out():
    # A tuning grid may hold both modes of one point; None and a block shape do not compare as tuples do.
    jobs = [Job(2048, 7168, "fp8", m, block_size=block) for m in (1, 16) for block in (None, (128, 128))]
    for world in (1, 2):
        shares = split_jobs(jobs, world)
        assert sorted(j for s in shares for j in s) == sorted(jobs)
    assert sorted(jobs)[:2] == [jobs[0], jobs[1]]  # per-channel first, then block-scaled


def test_gluon_candidates_only_when_asked_and_from_m_256():
    def gluon(M, N=28672, K=4096, shared=H100_SHARED, asked=True):
        return [c for c in candidate_configs(M, N, K, shared, H100_SMS, gluon=asked) if c.kernel == "gluon"]

    assert gluon(4096, asked=False) == [] and gluon(192) == []  # where they lost (M = 128) or were not timed
    assert gluon(256) == gluon(1024) == gluon(8192) == list(GLUON_CONFIGS)
    assert len(GLUON_CONFIGS) <= 5 and all(unfit_reason(c, 8192, 28672, H100_SHARED) is None for c in GLUON_CONFIGS)
    assert [c.block_n for c in gluon(4096, N=100)] == [128, 128, 128]  # no tile wider than the problem
    assert gluon(4096, shared=99 * 1024) == []  # a GPU with less shared memory holds none of them


@pytest.mark.parametrize("capability,offered", [((9, 0), True), ((8, 0), False), ((10, 0), False), ((0, 0), False)])
def test_the_tuner_offers_gluon_configs_on_hopper_only(monkeypatch, capability, offered):
    from scaledmm.tune import runner

    monkeypatch.setattr(runner, "device_capability", lambda device: capability)
    space = runner.candidates(Job(28672, 4096, "fp8", 2048), torch.device("cpu"), None)
    assert any(c.kernel == "gluon" for c in space) == offered
    if offered:
        assert not any(
            c.kernel == "gluon" for c in runner.candidates(Job(28672, 4096, "int8", 128), torch.device("cpu"), None)
        )
