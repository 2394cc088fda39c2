"""The launch parameters of the matmul kernel, as one small, typed, hashable value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The kernels a config can run (kernels/matmul.py maps each to its @triton.jit function); a config
# crosses the torch.library op boundary with its kernel as an index into this tuple, so new kinds go
# at the end. A kind's short name in str(config), where it is not the name itself:
KERNELS = ("pointer", "swapped", "tma", "gluon")
_SHORT_NAMES = {"swapped": "swap"}

# (field, smallest, largest, must be a power of two). tl.dot needs every tile side >= 16, and the 8-bit
# tensor-core instructions (mma/wgmma with int8 or fp8) consume K in steps of 32.
_FIELD_RULES: tuple[tuple[str, int, int, bool], ...] = (
    ("block_m", 16, 256, True),
    ("block_n", 16, 256, True),
    ("block_k", 32, 512, True),
    ("group_m", 1, 64, False),
    ("num_warps", 1, 16, True),
    ("num_stages", 1, 8, False),
    ("split_k", 1, 16, False),
)

# What the Gluon kernel (kernels/matmul_gluon.py) takes, beyond the field rules: 64, 128 or 256 rows,
# columns and K per tile, 64 rows or more per warpgroup that shares a tile, at most 128 accumulators per
# thread (more spill), two ring slots or more, and epilogue chunks of 32 columns or more, at most 4 per tile.
_GLUON_SIDES = (64, 128, 256)
_GLUON_MAX_ACCUMULATORS_PER_THREAD = 128
_GLUON_MAX_CHUNKS = 4
# The fields only the Gluon kernel reads, and their values in every other config (to_dict leaves them
# out there, so files of the other kernels read as before the fields existed).
_GLUON_FIELDS = {"pingpong": False, "store_n": 0}


@dataclass(frozen=True)
class MatmulConfig:
    """Tile shape and schedule of one kernel launch.

    block_m/block_n/block_k: the output tile and the K step of one program.
    group_m: how many tile rows share a column sweep in the grouped (L2-friendly) program order.
    num_warps/num_stages: warps per program and software-pipeline depth, passed to Triton.
    split_k: how many programs share the K loop of one output tile (1: one program does it all).
        More programs stream a small-M weight with more SMs; their partial sums are added in a fixed
        order, so results repeat bitwise, but they differ from split_k=1 by fp32 rounding (fp8).
    kernel: the kernel that runs the config, one of KERNELS:
        "pointer": the pointer kernel (kernels/matmul.py), for every shape and GPU.
        "swapped": the operand-swapped pointer kernel, out^T = B^T A^T, for small M: the weight tile
            (block_n rows; Hopper's wgmma wants 64 or more) is the tall operand of the MMA and the
            tokens (block_m) its narrow side. group_m has no effect there (programs sharing a weight
            tile are always neighbours).
        "tma": the persistent TMA kernel (kernels/matmul_tma.py), for compute-bound shapes on Hopper
            and newer; calls it cannot serve (GPUs without TMA, misaligned strides) run the pointer
            kernel with the same tiles. It does not split K.
        "gluon": the warp-specialised persistent kernel written in Gluon (kernels/matmul_gluon.py), for
            compute-bound shapes on Hopper (sm_90) only: a load warp fills a ring of num_stages slots
            by TMA while MMA warpgroups issue wgmma. Calls it cannot serve (other GPUs, misaligned
            strides, an output whose staging does not fit shared memory) run the TMA kernel with the
            same tiles, or the pointer kernel where TMA cannot serve either. It does not split K.
            There num_warps is the warps that share one tile, 4 per MMA warpgroup: 4 or 8 (one or
            two warpgroups, 64 rows or more each) in the cooperative schedule, 4 in ping-pong.
    pingpong: (gluon only) the ping-pong schedule (CUTLASS's name): two MMA warpgroups of num_warps = 4
        each compute whole tiles, taking the program's tiles in turn, so that one's epilogue runs
        while the other's wgmma do. False: the cooperative schedule, the num_warps warps share every
        tile (and every other kernel's, where it must be False).
    store_n: (gluon only) columns per epilogue step: each tile is scaled and stored by TMA in chunks
        this wide (1, 2 or 4 of at least 32 columns) through two staging buffers, so that only one
        chunk's scale and bias values are live beside the accumulator (a whole 128 x 256 tile's
        spill). 0: the whole tile in one step through one buffer (and every other kernel's value).
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1
    kernel: str = "pointer"
    pingpong: bool = False
    store_n: int = 0

    def __post_init__(self) -> None:
        for name, low, high, power_of_two in _FIELD_RULES:
            value = getattr(self, name)
            if type(value) is not int:
                raise TypeError(f"MatmulConfig.{name} must be an int, got {type(value).__name__}")
            if not low <= value <= high:
                raise ValueError(f"MatmulConfig.{name} must be in [{low}, {high}], got {value}")
            if power_of_two and value & (value - 1):
                raise ValueError(f"MatmulConfig.{name} must be a power of two, got {value}")
        if type(self.kernel) is not str:
            raise TypeError(f"MatmulConfig.kernel must be a str, one of {KERNELS}, got {type(self.kernel).__name__}")
        if self.kernel not in KERNELS:
            raise ValueError(f"MatmulConfig.kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.kernel in ("tma", "gluon") and self.split_k > 1:
            raise ValueError(
                f"MatmulConfig.split_k must be 1 with kernel={self.kernel!r}: the {self.kernel} kernel does not split K"
            )
        if type(self.pingpong) is not bool:
            raise TypeError(f"MatmulConfig.pingpong must be a bool, got {type(self.pingpong).__name__}")
        if type(self.store_n) is not int:
            raise TypeError(f"MatmulConfig.store_n must be an int, got {type(self.store_n).__name__}")
        if self.kernel == "gluon":
            self._check_gluon()
        elif self.pingpong or self.store_n:
            raise ValueError(
                f"MatmulConfig.pingpong and store_n are the Gluon kernel's: kernel={self.kernel!r} takes "
                "neither (pingpong=False, store_n=0)"
            )

    def _check_gluon(self) -> None:
        where = f"for the Gluon kernel, got {self}"
        for name in ("block_m", "block_n", "block_k"):
            if getattr(self, name) not in _GLUON_SIDES:
                raise ValueError(f"MatmulConfig.{name} must be one of {_GLUON_SIDES} {where}")
        if self.num_warps not in ((4,) if self.pingpong else (4, 8)):
            raise ValueError(
                f"MatmulConfig.num_warps must be 4 (one MMA warpgroup per tile) or 8 (two); 4 with pingpong; {where}"
            )
        if self.block_m < 16 * self.num_warps:
            raise ValueError(f"MatmulConfig.block_m must be 64 rows or more per warpgroup of a tile {where}")
        if self.block_m * self.block_n // (32 * self.num_warps) > _GLUON_MAX_ACCUMULATORS_PER_THREAD:
            raise ValueError(
                f"MatmulConfig: more than {_GLUON_MAX_ACCUMULATORS_PER_THREAD} accumulators per thread spill {where}"
            )
        if self.num_stages < 2:
            raise ValueError(f"MatmulConfig.num_stages must be 2 or more {where}")
        if self.store_n and (
            self.store_n < 32 or self.block_n % self.store_n or self.block_n // self.store_n > _GLUON_MAX_CHUNKS
        ):
            raise ValueError(
                f"MatmulConfig.store_n must be 0 or divide block_n into at most {_GLUON_MAX_CHUNKS} chunks of 32 "
                f"columns or more {where}"
            )

    def as_list(self) -> list[int]:
        """The fields in declaration order, the kernel as its index in KERNELS and pingpong as 0 or 1:
        how the config crosses the torch.library op boundary (which takes list[int]). `from_list`
        reads it back."""
        fields = (getattr(self, name) for name, *_ in _FIELD_RULES)
        return [*fields, KERNELS.index(self.kernel), int(self.pingpong), self.store_n]

    @classmethod
    def from_list(cls, values: list[int]) -> MatmulConfig:
        """The config whose `as_list()` is `values`; also the shorter list of the versions before the
        Gluon kernel's fields (pingpong and store_n then take their defaults)."""
        lengths = (len(_FIELD_RULES) + 1, len(_FIELD_RULES) + 1 + len(_GLUON_FIELDS))
        if len(values) not in lengths:
            raise ValueError(f"MatmulConfig.from_list takes {lengths[1]} ints (or {lengths[0]}), got {len(values)}")
        fields, (kernel, *gluon) = values[: len(_FIELD_RULES)], values[len(_FIELD_RULES) :]
        if type(kernel) is not int or not 0 <= kernel < len(KERNELS):
            raise ValueError(f"MatmulConfig.kernel's index must be in [0, {len(KERNELS) - 1}], got {kernel!r}")
        pingpong, store_n = gluon or _GLUON_FIELDS.values()
        if pingpong not in (0, 1) or type(pingpong) not in (int, bool):
            raise ValueError(f"MatmulConfig.pingpong must be 0 or 1 in a list, got {pingpong!r}")
        return cls(*fields, kernel=KERNELS[kernel], pingpong=bool(pingpong), store_n=store_n)

    def to_dict(self) -> dict[str, int | str | bool]:
        """The fields by name, for a config file; the Gluon kernel's only where they are set, so that
        the other kernels' configs are written as before those fields existed."""
        values = dataclasses.asdict(self)
        for name, default in _GLUON_FIELDS.items():
            if values[name] == default:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, int | str | bool]) -> MatmulConfig:
        """The config of `to_dict()`'s dict; fields it leaves out take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown MatmulConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def __str__(self) -> str:
        text = f"{self.block_m}x{self.block_n}x{self.block_k} g{self.group_m} w{self.num_warps} s{self.num_stages}"
        if self.split_k > 1:
            text += f" k{self.split_k}"
        if self.store_n:
            text += f" st{self.store_n}"
        if self.pingpong:
            text += " pp"
        if self.kernel != "pointer":
            text += f" {_SHORT_NAMES.get(self.kernel, self.kernel)}"
        return text
