"""Split-K: SPLIT_K programs share the K loop of one output tile (program_id(1) numbers them), and the
last of them to finish adds their partial sums up and runs the epilogue.

Device side, the K steps of one split (`split_range`) and the ending (`split_k_finish`), used by the
pointer and swapped kernels. Host side, their scratch: every program's partial sums, new per call,
and the arrival counts that tell a program whether it is the last of its tile, kept per (device,
stream) between calls (`split_k_buffers`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from scaledmm.configs import MatmulConfig
from scaledmm.kernels.common import scale_and_store, tile_count


@triton.jit
def split_range(k_steps, SPLIT_K: tl.constexpr):
    # The K steps [k_first, k_last) of this program's split: the program_id(1)-th of SPLIT_K near-equal
    # shares of the k_steps (the last ones may be short or empty). Kernels call it with SPLIT_K > 1
    # only, and take (0, k_steps) themselves without split: a 0 returned from a helper lands
    # elsewhere in the generated code than a literal one, which would change the unsplit kernels'
    # code (benchmarks/ab/codegen_compare.py).
    steps_per_split = tl.cdiv(k_steps, SPLIT_K)
    k_first = tl.program_id(1) * steps_per_split
    k_last = min(k_first + steps_per_split, k_steps)
    return k_first, k_last


@triton.jit
def split_k_finish(
    acc, tile, tiles, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on,
    partials_ptr, arrivals_ptr, HAS_BIAS: tl.constexpr, ACC_DTYPE: tl.constexpr, SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # Each program leaves its partial sum in `partials` ([SPLIT_K, tiles, BLOCK_M * BLOCK_N]) and
    # counts itself in `arrivals[tile]`; the last to arrive adds the partials up in split order (the
    # same order whichever program is last, so results repeat bitwise), writes the tile and resets
    # the count.
    offs_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tile_partials = partials_ptr + tile.to(tl.int64) * (BLOCK_M * BLOCK_N) + offs_tile
    split_stride = tiles.to(tl.int64) * (BLOCK_M * BLOCK_N)
    tl.store(tile_partials + tl.program_id(1) * split_stride, acc)
    tl.debug_barrier()  # every thread's partial is written before the arrival is counted
    arrived = tl.atomic_add(arrivals_ptr + tile, 1, sem="acq_rel")
    if arrived == SPLIT_K - 1:
        total = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
        for split in range(SPLIT_K):
            # .cg reads L2, where the other programs' stores are, never a stale L1 line.
            total += tl.load(tile_partials + split * split_stride, cache_modifier=".cg")
        scale_and_store(total, scale_a, scale_b, bias, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, HAS_BIAS)
        tl.store(arrivals_ptr + tile, 0)  # leaves the counts zeroed for the next launch


# Arrival counts, one buffer per (device, stream). The kernels leave every count they used at zero, so
# a buffer is zeroed once, when it is made, and launches on one stream (which run one after another)
# share it without a memset per call: that memset cost about 1.1 us, most of what split-K gains at
# decode (docs/performance.md). Launches on other streams, which may run at the same time, get their
# own buffer. Buffers are made only outside CUDA-graph capture and are never freed (a captured graph
# keeps their address), so a buffer that grows, or that `clear` drops, is kept for the graphs that
# use it. A capture on a stream without a large enough buffer zeroes counts of its own per call (the
# memset is then part of the graph); warming up on the capture stream before capturing, as
# PyTorch's CUDA-graph docs do, makes the buffer first. One hazard is left to the user: graphs
# captured on one stream and then replayed concurrently on several streams share its counts.
_arrival_counts: dict[tuple[torch.device, int], torch.Tensor] = {}
_retired_counts: list[torch.Tensor] = []
_MIN_ARRIVAL_SLOTS = 4096


def _arrivals(device: torch.device, tiles: int) -> torch.Tensor:
    if device.type != "cuda":
        key = (device, 0)
    else:
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (device, torch._C._cuda_getCurrentRawStream(device.index))
    counts = _arrival_counts.get(key)
    if counts is not None and counts.numel() >= tiles:
        return counts
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return torch.zeros(tiles, dtype=torch.int32, device=device)
    if counts is not None:
        _retired_counts.append(counts)
    counts = torch.zeros(max(tiles, _MIN_ARRIVAL_SLOTS), dtype=torch.int32, device=device)
    _arrival_counts[key] = counts
    return counts


def split_k_buffers(
    M: int, N: int, config: MatmulConfig, operand_dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The split-K kernel's scratch: every program's partial sums (int32 for int8 operands, else
    float32), new per call, and the arrival counts of this device and stream (zero between launches);
    (None, None) without split-K."""
    if config.split_k == 1:
        return None, None
    tiles = tile_count(M, N, config)
    acc_dtype = torch.int32 if operand_dtype == torch.int8 else torch.float32
    partials = torch.empty((config.split_k, tiles, config.block_m * config.block_n), dtype=acc_dtype, device=device)
    return partials, _arrivals(device, tiles)
