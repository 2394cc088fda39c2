"""The run-time state has one owner: every cache a call fills is registered, and clear_cache()
empties them all and moves the generation that layers' prepared forwards compare."""

import torch
from helpers import DEVICE

import scaledmm
from scaledmm import runtime
from scaledmm.configs import lookup
from scaledmm.state import RuntimeState, state
from scaledmm.testing import make_operands


def test_every_cache_of_a_call_is_registered_and_cleared():
    expected = {
        "scaledmm.configs.lookup.plan",
        "scaledmm.configs.lookup._file_index",
        "scaledmm.configs.lookup._table",
        "scaledmm.checks.check_device_supports",
        "scaledmm.kernels.matmul_tma.device_has_tma",
        "scaledmm.runtime.prepared",
    }
    assert expected <= set(state.names())
    ops = make_operands(8, 32, 64, torch.int8, DEVICE)
    scaledmm.scaled_mm(*ops.args())
    assert runtime.prepared and lookup.plan.cache_info().currsize
    generation = state.generation
    scaledmm.clear_cache()
    assert not runtime.prepared and lookup.plan.cache_info().currsize == 0
    assert state.generation == generation + 1


def test_a_registry_of_its_own():
    registry = RuntimeState()
    calls = []

    @registry.cached
    def square(x):
        calls.append(x)
        return x * x

    assert square(3) == square(3) == 9 and calls == [3]
    registry.clear()
    assert square(3) == 9 and calls == [3, 3]
    assert registry.names() == [f"{__name__}.test_a_registry_of_its_own.<locals>.square"]
