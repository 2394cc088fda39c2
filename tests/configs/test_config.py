"""MatmulConfig: the kernel it names, and the round trips through the op boundary, files and str."""

import dataclasses

import pytest

from scaledmm import MatmulConfig
from scaledmm.configs.config import KERNELS
from scaledmm.kernels.matmul import KERNEL_FUNCTIONS, REVISIONS

CONFIGS = [
    MatmulConfig(16, 32, 64),
    MatmulConfig(16, 64, 256, group_m=8, num_warps=4, num_stages=5, split_k=2, kernel="swapped"),
    MatmulConfig(128, 256, 128, group_m=16, num_warps=8, num_stages=3, kernel="tma"),
    MatmulConfig(128, 128, 128, num_warps=4, num_stages=5, kernel="gluon", pingpong=True, store_n=64),
    MatmulConfig(128, 256, 128, num_warps=8, num_stages=4, kernel="gluon"),
]


def test_every_kernel_name_has_a_kernel_and_a_revision():
    assert KERNELS[0] == "pointer" == MatmulConfig(16, 16, 32).kernel  # the default
    assert tuple(KERNEL_FUNCTIONS) == KERNELS and tuple(REVISIONS) == KERNELS


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_as_list_and_from_list_round_trip_in_ints(config):
    values = config.as_list()
    assert all(type(v) is int for v in values) and values[7:] == [
        KERNELS.index(config.kernel),
        int(config.pingpong),
        config.store_n,
    ]
    assert MatmulConfig.from_list(values) == config
    assert MatmulConfig.from_dict(config.to_dict()) == config
    assert hash(MatmulConfig.from_list(values)) == hash(config)


def test_the_gluon_fields_stay_out_of_the_other_kernels_lists_and_files():
    # A list of the versions before the Gluon kernel (an exported graph's) and a file's config still read.
    assert MatmulConfig.from_list([16, 64, 256, 8, 4, 5, 2, 1]) == CONFIGS[1]
    assert set(CONFIGS[2].to_dict()) == {"block_m", "block_n", "block_k", "group_m", "num_warps", "num_stages",
                                         "split_k", "kernel"}  # fmt: skip
    assert CONFIGS[3].to_dict()["pingpong"] is True and CONFIGS[3].to_dict()["store_n"] == 64
    assert "pingpong" not in CONFIGS[4].to_dict() and "store_n" not in CONFIGS[4].to_dict()  # the defaults


GLUON = dict(block_m=128, block_n=128, block_k=128, num_warps=4, num_stages=5, kernel="gluon")


@pytest.mark.parametrize(
    "fields,error,words",
    [
        (dict(kernel="tma", pingpong=True), ValueError, "Gluon kernel's"),
        (dict(kernel="pointer", store_n=64), ValueError, "Gluon kernel's"),
        (dict(pingpong=1), TypeError, "pingpong must be a bool"),
        (dict(store_n=64.0), TypeError, "store_n must be an int"),
        (dict(block_n=32), ValueError, "block_n must be one of"),
        (dict(block_k=512), ValueError, "block_k must be one of"),
        (dict(split_k=2), ValueError, "split_k must be 1"),
        (dict(num_warps=8, pingpong=True), ValueError, "num_warps must be 4"),  # ping-pong: a warpgroup a tile
        (dict(num_warps=16), ValueError, "num_warps must be 4"),
        (dict(block_m=64, num_warps=8), ValueError, "64 rows or more per warpgroup"),
        (dict(block_n=256), ValueError, "accumulators per thread"),  # 128 x 256 on one warpgroup
        (dict(num_stages=1), ValueError, "num_stages must be 2"),
        (dict(store_n=96), ValueError, "store_n must be 0 or divide"),
        (dict(store_n=16, block_n=64), ValueError, "store_n must be 0 or divide"),  # 16-column chunks
        (dict(store_n=32, block_n=256, block_m=64), ValueError, "store_n must be 0 or divide"),  # 8 chunks
    ],
)
def test_gluon_configs_are_what_the_gluon_kernel_runs(fields, error, words):
    with pytest.raises(error, match=f"MatmulConfig.*{words}"):
        MatmulConfig(**{**GLUON, **fields})


@pytest.mark.parametrize(
    "values,error,words",
    [
        ([16, 32, 64, 8, 4, 3, 1], ValueError, "takes 10 ints"),
        ([16, 32, 64, 8, 4, 3, 1, 0, 0], ValueError, "takes 10 ints"),
        ([128, 128, 128, 8, 4, 5, 1, KERNELS.index("gluon"), 2, 0], ValueError, "pingpong must be 0 or 1"),
        ([16, 32, 64, 8, 4, 3, 1, len(KERNELS)], ValueError, "kernel's index"),
        ([16, 32, 64, 8, 4, 3, 1, -1], ValueError, "kernel's index"),
        ([16, 32, 64, 8, 4, 3, 2, KERNELS.index("tma")], ValueError, "split_k must be 1"),
        ([16.0, 32, 64, 8, 4, 3, 1, 0], TypeError, "block_m must be an int"),
    ],
)
def test_from_list_refuses_what_as_list_never_makes(values, error, words):
    with pytest.raises(error, match=f"MatmulConfig.*{words}"):
        MatmulConfig.from_list(values)


@pytest.mark.parametrize(
    "config,text",
    [
        (CONFIGS[0], "16x32x64 g8 w4 s3"),
        (CONFIGS[1], "16x64x256 g8 w4 s5 k2 swap"),
        (CONFIGS[2], "128x256x128 g16 w8 s3 tma"),
        (CONFIGS[3], "128x128x128 g8 w4 s5 st64 pp gluon"),
    ],
)
def test_str_names_the_kernel_after_the_schedule(config, text):
    assert str(config) == text


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIGS[0].kernel = "tma"
