"""`select_config`: the one place where a launch config is chosen.

It is called on every `scaled_mm`, so it is a cached pure function: no benchmarking, no device
synchronisation. Today it serves the heuristic; tuned files (issue 4) slot in here.
"""

from __future__ import annotations

import functools

import torch

from scaledmm.configs.config import MatmulConfig
from scaledmm.configs.heuristic import heuristic_config

# What the heuristic assumes where no CUDA device is queried (the interpreter, or planning off-GPU):
# an H100 SXM, the card the project is developed on.
_DEFAULT_NUM_SMS = 132
_DEFAULT_SHARED_MEMORY = 227 * 1024


@functools.cache
def device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessor count, opt-in shared memory per block in bytes) of a device."""
    if device.type != "cuda":
        return _DEFAULT_NUM_SMS, _DEFAULT_SHARED_MEMORY
    props = torch.cuda.get_device_properties(device)
    shared = getattr(props, "shared_memory_per_block_optin", _DEFAULT_SHARED_MEMORY)
    return props.multi_processor_count, shared


def _resolve_device(device: torch.device | str | int | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def select_config(
    M: int, N: int, K: int, dtype: torch.dtype, device: torch.device | str | int | None = None
) -> MatmulConfig:
    """The launch config for an [M, K] x [K, N] product of 8-bit operands of `dtype` on `device`.

    `device=None` means the current CUDA device, or the CPU (Triton's interpreter) without one.
    """
    return _select(M, N, K, dtype, _resolve_device(device))


@functools.lru_cache(maxsize=8192)
def _select(M: int, N: int, K: int, dtype: torch.dtype, device: torch.device) -> MatmulConfig:
    num_sms, shared_memory = device_limits(device)
    return heuristic_config(M, N, K, num_sms, shared_memory)
