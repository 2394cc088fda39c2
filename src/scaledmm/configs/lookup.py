"""`select_config` and the backend choice: the one place where a launch is planned.

Planning runs inside every `scaled_mm` call, so it is a cached pure function: no benchmarking, no
device synchronisation. Sources, first match wins:

1. the directory named by SCALEDMM_CONFIG_DIR (files a user tuned), then
2. the files shipped in scaledmm/configs/data,

each first for the card's exact name, then for another card of its family (H100 or H200 variants),
and for the call's fp8 accumulation mode; then a file tuned on the card (or its family) for the
nearest other shape, N and K each within a factor of TRANSFER_MAX_RATIO (`nearby_files`: a bucket
tuned for a neighbour is a better guess than a rule, benchmarks/ab/transfer.py), for fp8 above
M = TRANSFER_FP8_MAX_M only a neighbour of the same N (the same tile then makes the same tile grid,
so the same waves, as where it was tuned; another N's grid can cross a wave boundary the
neighbour's did not), and at or below it one of any N unless its tile grid fits one wave of the
SMs at its N but not at the call's (`crosses_first_wave`); then the heuristic, whose config runs
where `auto` keeps ours and whose backend rule (`heuristic.untuned_backend`) gives fp8 from M = 65
to the vendor on Hopper, unless the nearest neighbour of any N timed the heuristic well ahead of
the vendor at that M (`heuristic_beat_vendor`). Within a file the bucket is the smallest tuned
M >= M, else the largest up to twice its M; further out (a file tuned for decode only, asked for a
prefill) the next file or the heuristic serves. SCALEDMM_DISABLED_BACKENDS (comma-separated:
torch, triton) keeps backends out of the automatic choice (runtime.auto_backend applies it), as
vLLM's VLLM_DISABLED_KERNELS does.

Block-scaled fp8 (`block_size`) is planned the same way from its own files (named with
`block_shape=[block_n,block_k]`; files.py), in the same order, a bucket whose config does not fit the
block (`block_unfit_reason`) skipped with a warning; without one (no neighbour's bucket is lent) the
block kernel's heuristic tile (`heuristic.block_heuristic_config`), on the backend
`heuristic.untuned_backend` gives per-channel fp8 (the vendor from M = 65 on Hopper). At an M the
vendor's block mode must pad (not a multiple of 4), a bucket the vendor won runs ours where the
padding costs the vendor its lead in the bucket's times, and untuned calls run ours below M = 256
(`heuristic.padded_block_vendor_loses`).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from scaledmm.configs.config import MatmulConfig
from scaledmm.configs.files import (
    ACCUMULATIONS,
    BACKENDS,
    DTYPE_NAMES,
    ConfigFileError,
    TunedTable,
    device_family,
    load_table,
    normalize_device_name,
    parse_file_name,
)
from scaledmm.configs.heuristic import (
    block_heuristic_config,
    grid_waves,
    heuristic_config,
    padded_block_vendor_loses,
    untuned_backend,
)
from scaledmm.state import state

CONFIG_DIR_ENV = "SCALEDMM_CONFIG_DIR"
DISABLED_BACKENDS_ENV = "SCALEDMM_DISABLED_BACKENDS"
SHIPPED_DIR = Path(__file__).parent / "data"

# What the heuristic assumes where no CUDA device is queried (the interpreter, or planning off-GPU):
# an H100 SXM, the card the project is developed on.
_DEFAULT_NUM_SMS = 132
_DEFAULT_SHARED_MEMORY = 227 * 1024
SPLIT_K_SCRATCH_LIMIT = 256 * 2**20  # bytes of split-K partial sums one call may allocate
TRANSFER_MAX_RATIO = 2.0  # a tuned shape lends its buckets to shapes whose N and K are within this factor
# Above this M, fp8 buckets are lent by neighbours of the same N only. There our tiles and cuBLAS's
# fast kernel are close, and a tile grid borrowed from another N can cross a wave boundary the
# neighbour's did not: on an H200, qwen2.5-7b qkv (4608 x 3584) at M = 256 ran 0.76x the vendor with
# the bucket of 4096 x 4096 (144 tiles of 64 x 128 on 132 SMs, against 128), while the heuristic's rule
# (the vendor) gives 1.00x (benchmarks/results/h200-2026-12-01/transfer_ab.log). With the same N the
# same tile makes the same grid at a given M (K changes only the loop's length), so the waves the
# neighbour was tuned for are the call's. Without a same-N neighbour the heuristic's rule serves. At
# and below it (decode: a few tiles, most often within one wave) the nearest neighbour of any N lends,
# unless its grid fits one wave at its N and not at the call's (`crosses_first_wave`): on an H200,
# phi-3-mini qkv (9216 x 3072) at M = 64 ran 0.90x the vendor with the 64 x 64 tile of 8192 x 3584
# (128 tiles on 132 SMs, 144 at N = 9216), the heuristic 1.13x. Left out, the shipped H200 files
# lose nothing to the check; one that refused any grid of more waves than the lender's (large N,
# already several waves) cost 37888 x 3584 at M = 24 1.28x -> 1.13x (benchmarks/ab/transfer_gate.py,
# "wave1" and "wave"). int8, with no vendor kernel near ours, borrows from any N at every M.
TRANSFER_FP8_MAX_M = 64
# Without such a lender an fp8 call above it goes to the vendor (heuristic.untuned_backend), except
# where the nearest neighbour of any N timed, for that M, our heuristic config faster than the vendor
# by more than this factor: then the heuristic's config runs on ours (its tile fitted to the call's
# N, so no borrowed grid). On an H200 this turned 3072 x 3072 and 3072 x 8192 at M = 128 and 256
# from 1.00x the vendor to 1.30-1.81x, and left out as untuned each tuned shape it changed ran
# 0.99-2.04x the vendor (12 buckets); at 1.2, 4096 x 4096 at M = 192 ran 0.94x
# (benchmarks/ab/transfer_gate.py).
UNTUNED_OURS_MIN_GAIN = 1.3
# The Gluon kernel stages output chunks in shared memory, per MMA warpgroup that takes whole tiles;
# its estimate counts them at bf16's 2 bytes, the output the tuner times: its configs fill shared
# memory with stages, and a call with an fp32 output whose kernel does not fit runs the TMA kernel
# with the same tiles (matmul.py, matmul_gluon.fits_in_shared_memory).
GLUON_OUT_BYTES_BUDGETED = 2


@dataclass(frozen=True)
class Plan:
    """How one (M, N, K, dtype, device) is computed: the backend `auto` picks, and the Triton config
    (used when the backend is triton, or when triton is forced)."""

    backend: str
    config: MatmulConfig
    source: Path | None  # the tuned file (for this shape, or a neighbour's: see its name), or None for the heuristic


def config_dirs() -> list[Path]:
    """Where config files are looked for, in order."""
    user = os.environ.get(CONFIG_DIR_ENV)
    return [Path(user), SHIPPED_DIR] if user else [SHIPPED_DIR]


@state.cached
def disabled_backends() -> frozenset[str]:
    names = {n.strip() for n in os.environ.get(DISABLED_BACKENDS_ENV, "").split(",") if n.strip()}
    unknown = names - set(BACKENDS)
    if unknown:
        warnings.warn(
            f"{DISABLED_BACKENDS_ENV} names unknown backends {sorted(unknown)}; known: {', '.join(BACKENDS)}",
            stacklevel=2,
        )
    return frozenset(names & set(BACKENDS))


@state.cached
def device_limits(device: torch.device) -> tuple[int, int]:
    """(multiprocessor count, opt-in shared memory per block in bytes) of a device."""
    if device.type != "cuda":
        return _DEFAULT_NUM_SMS, _DEFAULT_SHARED_MEMORY
    props = torch.cuda.get_device_properties(device)
    shared = getattr(props, "shared_memory_per_block_optin", _DEFAULT_SHARED_MEMORY)
    return props.multi_processor_count, shared


@state.cached
def device_capability(device: torch.device) -> tuple[int, int]:
    """The CUDA compute capability, or (0, 0) off CUDA (the interpreter)."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)


@state.cached
def device_name(device: torch.device) -> str:
    """The name tuned files are keyed by: the CUDA device name, or 'cpu'."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


@state.cached
def _file_index() -> tuple[tuple[str, int, int, str, str, tuple[int, int] | None, Path], ...]:
    """(normalized device, N, K, dtype, accumulation, block shape, path) of every config file, in
    search order."""
    index = []
    for directory in config_dirs():
        try:
            paths = sorted(directory.glob("*.json")) if directory.is_dir() else None
        except OSError as err:  # is_dir() and glob() raise for some errors (a folder without permission)
            warnings.warn(f"{directory}: not readable ({err.strerror}); ignored", stacklevel=2)
            continue
        if paths is None:
            if directory != SHIPPED_DIR:
                warnings.warn(f"{CONFIG_DIR_ENV}={directory} is not a directory; ignored", stacklevel=2)
            continue
        for path in paths:  # a FIFO, device or folder named like a config file is refused when read
            key = parse_file_name(path.name)
            if key is None:
                warnings.warn(
                    f"{path}: not a config file name (N=..,K=..,device_name=..,dtype=int8|fp8_w8a8.json, or "
                    "with ,block_shape=[block_n,block_k] before .json); skipped",
                    stacklevel=2,
                )
                continue
            index.append((*key, path))
    return tuple(index)


@state.cached
def _candidate_files(
    name: str, n: int, k: int, dtype: str, accumulation: str, block_shape: tuple[int, int] | None = None
) -> tuple[Path, ...]:
    """The files for this card (then its family), N, K, dtype, accumulation mode and block shape, in
    search order."""
    exact = normalize_device_name(name)
    family = device_family(name)
    wanted = (n, k, dtype, accumulation, block_shape)
    matches = [p for d, *key, p in _file_index() if d == exact and tuple(key) == wanted]
    if family is not None:
        matches += [
            p for d, *key, p in _file_index() if d != exact and device_family(d) == family and tuple(key) == wanted
        ]
    return tuple(matches)


@state.cached
def nearby_files(name: str, n: int, k: int, dtype: str, accumulation: str, same_n: bool = False) -> tuple[Path, ...]:
    """Files of this card (or its family), dtype and accumulation mode tuned for other shapes whose N
    and K are each within a factor of TRANSFER_MAX_RATIO of the call's (with `same_n`, whose N is the
    call's): nearest first (the sum of |log2| ratios of N and K), then this card's before its
    family's, then the nearer K (K sets the pipeline's length, which the tile choice follows most)."""
    exact = normalize_device_name(name)
    family = device_family(name)
    reach = math.log2(TRANSFER_MAX_RATIO)
    ranked = []
    for d, fn, fk, fdtype, facc, block_shape, path in _file_index():
        if (fdtype, facc, block_shape) != (dtype, accumulation, None) or (fn, fk) == (n, k):
            continue
        if same_n and fn != n:
            continue
        if d != exact and (family is None or device_family(d) != family):
            continue
        n_off, k_off = abs(math.log2(fn / n)), abs(math.log2(fk / k))
        if max(n_off, k_off) <= reach:
            ranked.append((n_off + k_off, d != exact, k_off, str(path), path))
    return tuple(entry[-1] for entry in sorted(ranked))


@state.cached
def _table(path: Path) -> TunedTable | None:
    """The file's table, read when the lookup first reaches it; None (and one warning) if it does not
    validate."""
    try:
        return load_table(path)
    except ConfigFileError as err:
        warnings.warn(f"{err}; skipped (the next file, or the heuristic, serves)", stacklevel=3)
        return None


def _resolve_device(device: torch.device | str | int | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device, got {device!r} ({err})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for, but this torch build or machine has no CUDA device")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
    return device


def split_k_scratch_bytes(M: int, N: int, config: MatmulConfig) -> int:
    """Bytes of partial sums a split-K launch allocates (4-byte int32 or float32 accumulators)."""
    tiles = (-(-M // config.block_m)) * (-(-N // config.block_n))  # ceil divisions, cheaper than triton.cdiv
    return config.split_k * tiles * config.block_m * config.block_n * 4


# The weight's K block and the activation's group size that the block-scaled kernel takes: its K step
# is the block (kernels/matmul_block.py), and 8-bit dots need K steps of 32 to 256.
BLOCK_K_CHOICES = (32, 64, 128, 256)
# The kernels take block_n as a 32-bit constant (their SCALE_N); a block of N or more columns is one
# scale column, however wide.
BLOCK_N_MAX = 2**31 - 1


def check_block_size(block_size: object) -> tuple[int, int]:
    """scaled_mm's (and every other entry point's) `block_size`: a pair (block_n, block_k) the
    block-scaled kernel takes, returned as a tuple. Here, below scaledmm.checks, so that
    select_config checks it as scaled_mm does."""
    if not (isinstance(block_size, (tuple, list)) and len(block_size) == 2):
        raise TypeError(f"block_size must be a pair (block_n, block_k) of ints, got {block_size!r}")
    block_n, block_k = block_size
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (block_n, block_k)):
        raise TypeError(f"block_size must be a pair (block_n, block_k) of ints, got {block_size!r}")
    if not 1 <= block_n <= BLOCK_N_MAX or block_k not in BLOCK_K_CHOICES:
        raise ValueError(
            f"block_size (block_n, block_k) needs block_n in [1, 2**31 - 1] and block_k in {BLOCK_K_CHOICES}, "
            f"got {block_size!r}"
        )
    return block_n, block_k


# The kernels a block-scaled config may name (kernels/matmul_block.py has a pointer and a swapped form).
BLOCK_KERNELS = ("pointer", "swapped")


def block_unfit_reason(config: MatmulConfig, block_size: tuple[int, int]) -> str | None:
    """Why a config cannot run the block-scaled kernels (kernels/matmul_block.py) for scale blocks of
    `block_size` = (block_n, block_k), or None. Their K step is the scale block, and they have a
    pointer and a swapped form (BLOCK_KERNELS), no TMA or Gluon form; they split K as the pointer
    kernel does (the scratch limit is unfit_reason's and the checks'). BLOCK_N is free: the weight's
    scale is gathered per column."""
    if config.block_k != block_size[1]:
        return f"its K step {config.block_k} is not the scale block's block_k = {block_size[1]}"
    if config.kernel not in BLOCK_KERNELS:
        return f"the block-scaled kernels run pointer or swapped configs only, not kernel={config.kernel!r}"
    return None


def unfit_reason(
    config: MatmulConfig, M: int, N: int, shared_memory: int, block_size: tuple[int, int] | None = None
) -> str | None:
    """Why a config cannot run this call on a device with `shared_memory` bytes per block, or None.

    The estimate is the pipeline's A and B tiles, as Triton's own pruning counts them (plus half an
    fp32 output tile staged for the TMA kernel's store, or the Gluon kernel's staging buffers at 2
    bytes an element, GLUON_OUT_BYTES_BUDGETED): a config over it fails to launch. A split-K
    config must not need more scratch than an explicit `config=` may allocate. With `block_size`, the
    config must fit the block too (`block_unfit_reason`).
    """
    if block_size is not None and (reason := block_unfit_reason(config, block_size)):
        return reason
    pipeline = (config.block_m + config.block_n) * config.block_k * config.num_stages
    if config.kernel == "tma":
        pipeline += config.block_m * config.block_n // 2 * 4
    elif config.kernel == "gluon":
        pipeline += gluon_staging_bytes(config)
    if pipeline > shared_memory:
        return f"it needs about {pipeline // 1024} KiB of shared memory, the device has {shared_memory // 1024} KiB"
    if config.split_k > 1 and split_k_scratch_bytes(M, N, config) > SPLIT_K_SCRATCH_LIMIT:
        return f"its split-K scratch for M = {M} exceeds {SPLIT_K_SCRATCH_LIMIT // 2**20} MiB"
    return None


def gluon_staging_bytes(config: MatmulConfig) -> int:
    """The Gluon kernel's output staging in shared memory at GLUON_OUT_BYTES_BUDGETED bytes an element:
    a buffer of the tile (or two of a store_n chunk) for each MMA warpgroup that takes whole tiles
    (two in ping-pong, else one)."""
    partitions = 2 if config.pingpong else 1
    buffers, chunk_n = (2, config.store_n) if config.store_n else (1, config.block_n)
    return partitions * buffers * config.block_m * chunk_n * GLUON_OUT_BYTES_BUDGETED


@state.cached(maxsize=8192)
def plan(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    device: torch.device,
    accumulation: str = "fast",
    block_size: tuple[int, int] | None = None,
) -> Plan:
    """The cached plan for one call shape (device must be resolved: cuda with an index, or cpu) in an
    fp8 accumulation mode, from the files tuned in that mode (int8, exact in either, from its files):
    this shape's, else a neighbour's (`nearby_files`; for fp8 above TRANSFER_FP8_MAX_M one of the same
    N; at or below it not one whose grid `crosses_first_wave`), else the heuristic (on the vendor for
    fp8 above it on Hopper, unless `heuristic_beat_vendor`). With block scales of `block_size` =
    (block_n, block_k), from the block-scaled files of that block shape (any accumulation mode), else
    the block heuristic (a block bucket the vendor won runs ours at an M the vendor must pad for
    where that costs its lead, `padded_block_vendor_loses`). A bucket tuned for this shape whose
    config cannot run here (unfit_reason) is skipped with a warning."""
    num_sms, shared_memory = device_limits(device)
    dtype_name = DTYPE_NAMES[dtype]
    mode = accumulation if dtype_name == "fp8" and block_size is None else "fast"
    for path in _candidate_files(device_name(device), N, K, dtype_name, mode, block_size):
        table = _table(path)
        bucket = table.bucket_for(M) if table is not None else None
        if bucket is None:
            continue
        reason = unfit_reason(bucket.config, M, N, shared_memory, block_size)
        if reason is None:
            backend = bucket.backend
            if (
                block_size is not None
                and backend == "torch"
                and padded_block_vendor_loses(M, K, bucket.vendor_us, bucket.triton_us)
            ):
                backend = "triton"
            return Plan(backend, bucket.config, table.path)
        warnings.warn(
            f"{table.path}: bucket {bucket.m} ({bucket.config}) cannot run on this device at M = {M}: {reason}; "
            "skipped (the next file, or the heuristic, serves)",
            stacklevel=2,
        )
    if block_size is not None:  # untuned block-scaled calls: the vendor's rule of per-channel fp8
        config = block_heuristic_config(M, N, K, block_size[1], num_sms, shared_memory)
        return Plan(untuned_backend(M, dtype, device_capability(device), block=True), config, None)
    # A neighbour's bucket that cannot run here is not lent (no warning: nothing the user chose failed).
    same_n = dtype_name == "fp8" and M > TRANSFER_FP8_MAX_M  # a grid of the neighbour's waves only
    for path in nearby_files(device_name(device), N, K, dtype_name, mode, same_n):
        table = _table(path)
        bucket = table.bucket_for(M) if table is not None else None
        if bucket is not None and unfit_reason(bucket.config, M, N, shared_memory) is None:
            if dtype_name == "fp8" and crosses_first_wave(M, N, table.n, bucket.config, num_sms):
                break  # the heuristic's tile, fitted to the call's N
            return Plan(bucket.backend, bucket.config, table.path)
    backend = untuned_backend(M, dtype, device_capability(device))
    if backend == "torch" and heuristic_beat_vendor(device_name(device), M, N, K, dtype_name, mode):
        backend = "triton"
    return Plan(backend, heuristic_config(M, N, K, dtype, num_sms, shared_memory), None)


def crosses_first_wave(M: int, N: int, lender_n: int, config: MatmulConfig, num_sms: int) -> bool:
    """Whether a config's tile grid fits one wave of `num_sms` at the lender's N but not at the
    call's: the one grid change at decode that cost fp8 against the vendor (TRANSFER_FP8_MAX_M)."""
    return grid_waves(M, lender_n, config, num_sms) == 1 < grid_waves(M, N, config, num_sms)


def heuristic_beat_vendor(name: str, M: int, N: int, K: int, dtype: str, accumulation: str) -> bool:
    """Whether the nearest tuned neighbour of any N with a bucket for M timed the heuristic's config
    faster than the vendor by more than UNTUNED_OURS_MIN_GAIN (False without one, or without both
    times)."""
    for path in nearby_files(name, N, K, dtype, accumulation):
        table = _table(path)
        bucket = table.bucket_for(M) if table is not None else None
        if bucket is not None:
            if bucket.heuristic_us is None or bucket.vendor_us is None:
                return False
            return bucket.vendor_us > UNTUNED_OURS_MIN_GAIN * bucket.heuristic_us
    return False


def _check_dimension(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def select_config(
    M: int,
    N: int,
    K: int,
    dtype: torch.dtype,
    device: torch.device | str | int | None = None,
    accumulation: str = "fast",
    block_size: tuple[int, int] | None = None,
) -> MatmulConfig:
    """The Triton launch config for an [M, K] x [K, N] product of 8-bit operands of `dtype`, in an fp8
    accumulation mode ("fast" or "precise"; scaled_mm's argument of that name), or with block scales
    of `block_size` = (block_n, block_k) (scaled_mm's argument of that name; fp8 only).

    `device=None` means the current CUDA device, or the CPU (Triton's interpreter) without one.
    """
    M, N, K = (_check_dimension(name, value) for name, value in (("M", M), ("N", N), ("K", K)))
    if dtype not in DTYPE_NAMES:
        raise TypeError(f"dtype must be one of {', '.join(map(str, DTYPE_NAMES))}, got {dtype}")
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be 'fast' or 'precise', got {accumulation!r}")
    if block_size is not None:
        if dtype == torch.int8:
            raise TypeError("block_size is for fp8 operands (DeepSeek-style block scales), not int8")
        block_size = check_block_size(block_size)
    return plan(M, N, K, dtype, _resolve_device(device), accumulation, block_size).config


def list_config_files() -> list[tuple[Path, TunedTable | ConfigFileError]]:
    """Every config file in the search directories, in search order, with its content or its error."""
    found = []
    for *_, path in _file_index():
        try:
            found.append((path, load_table(path)))
        except ConfigFileError as err:
            found.append((path, err))
    return found


def clear_cache() -> None:
    """Forget every file, plan, environment variable and prepared call read or made so far (after
    changing them at run time): scaledmm.state's registry, cleared."""
    state.clear()
