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
]


def test_every_kernel_name_has_a_kernel_and_a_revision():
    assert KERNELS[0] == "pointer" == MatmulConfig(16, 16, 32).kernel  # the default
    assert tuple(KERNEL_FUNCTIONS) == KERNELS and tuple(REVISIONS) == KERNELS


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_as_list_and_from_list_round_trip_in_ints(config):
    values = config.as_list()
    assert all(type(v) is int for v in values) and values[-1] == KERNELS.index(config.kernel)
    assert MatmulConfig.from_list(values) == config
    assert MatmulConfig.from_dict(config.to_dict()) == config
    assert hash(MatmulConfig.from_list(values)) == hash(config)


@pytest.mark.parametrize(
    "values,error,words",
    [
        ([16, 32, 64, 8, 4, 3, 1], ValueError, "takes 8 ints"),
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
    ],
)
def test_str_names_the_kernel_after_the_schedule(config, text):
    assert str(config) == text


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIGS[0].kernel = "tma"
