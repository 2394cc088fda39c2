"""The launch parameters of the matmul kernel, as one small, typed, hashable value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The kernels a config can run (kernels/matmul.py maps each to its @triton.jit function); a config
# crosses the torch.library op boundary with its kernel as an index into this tuple, so new kinds go
# at the end. A kind's short name in str(config), where it is not the name itself:
KERNELS = ("pointer", "swapped", "tma")
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
    """

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    split_k: int = 1
    kernel: str = "pointer"

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
        if self.kernel == "tma" and self.split_k > 1:
            raise ValueError("MatmulConfig.split_k must be 1 with kernel='tma': the TMA kernel does not split K")

    def as_list(self) -> list[int]:
        """The fields in declaration order, the kernel as its index in KERNELS: how the config crosses
        the torch.library op boundary (which takes list[int]). `from_list` reads it back."""
        return [*(getattr(self, name) for name, *_ in _FIELD_RULES), KERNELS.index(self.kernel)]

    @classmethod
    def from_list(cls, values: list[int]) -> MatmulConfig:
        """The config whose `as_list()` is `values`."""
        if len(values) != len(_FIELD_RULES) + 1:
            raise ValueError(f"MatmulConfig.from_list takes {len(_FIELD_RULES) + 1} ints, got {len(values)}")
        *fields, kernel = values
        if type(kernel) is not int or not 0 <= kernel < len(KERNELS):
            raise ValueError(f"MatmulConfig.kernel's index must be in [0, {len(KERNELS) - 1}], got {kernel!r}")
        return cls(*fields, kernel=KERNELS[kernel])

    def to_dict(self) -> dict[str, int | str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, int | str]) -> MatmulConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown MatmulConfig keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**values)

    def __str__(self) -> str:
        text = f"{self.block_m}x{self.block_n}x{self.block_k} g{self.group_m} w{self.num_warps} s{self.num_stages}"
        if self.split_k > 1:
            text += f" k{self.split_k}"
        if self.kernel != "pointer":
            text += f" {_SHORT_NAMES.get(self.kernel, self.kernel)}"
        return text
