"""Sharing-grid math of peripheral convolution (paper Eq. 1 and 2).

A sharing grid partitions the K positions of one kernel axis into k' cells;
every position of a cell shares one parameter. Peripheral grids are
symmetric: ``r_c`` unit cells on each side of the centre, then cells that
grow as ``m**1, m**2, ...`` while they fit in the radius ``K // 2``. What is
left of the radius (the remainder) is handled by a policy:

* ``greedy`` (the paper's): the remainder becomes the outermost cell.
  Reproduces every grid the paper prints, e.g. K=51, 5x5 centre ->
  half grid [9, 8, 4, 2, 1, 1, 1].
* ``merge``: a remainder smaller than the cell inside it joins that cell,
  e.g. K=69, 7x7 centre -> [17, 8, 4, 2, 1, 1, 1, 1] instead of
  [1, 16, 8, 4, 2, 1, 1, 1, 1].

Conventions: a *full* grid lists all k' cells from one edge to the other and
sums to K. A *half* grid is printed the paper's way: outermost cell first,
ending with the centre cell, so ``full = half + reversed(half[:-1])``.
This module is pure Python + numpy; it knows nothing of torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

RemainderPolicy = Literal["greedy", "merge"]
REMAINDER_POLICIES: tuple[str, ...] = ("greedy", "merge")


class GridError(ValueError):
    """A sharing grid cannot be built from the given arguments."""


def _check_kernel_args(kernel_size: int, center: int, base: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise GridError(f"kernel size must be a positive odd integer, got {kernel_size}")
    if center < 1 or center % 2 == 0:
        raise GridError(f"central fine-grained size must be a positive odd integer, got {center}")
    if center > kernel_size:
        raise GridError(f"central size {center} is larger than the kernel size {kernel_size}")
    if base < 2:
        raise GridError(f"exponential base m must be at least 2, got {base}")


def outward_cells(kernel_size: int, center: int = 5, base: int = 2,
                  policy: RemainderPolicy = "greedy") -> list[int]:
    """Cells of one side of the kernel, from the centre outwards, centre cell excluded.

    Eq. 2: the first ``r_c = center // 2`` cells have size 1, the next ones
    ``m**1, m**2, ...`` while their running sum fits in ``r = K // 2``.
    """
    _check_kernel_args(kernel_size, center, base)
    if policy not in REMAINDER_POLICIES:
        raise GridError(f"remainder policy must be one of {REMAINDER_POLICIES}, got {policy!r}")
    radius, central_radius = kernel_size // 2, center // 2
    cells = [1] * central_radius
    exponent = 1
    while sum(cells) + base**exponent <= radius:
        cells.append(base**exponent)
        exponent += 1
    remainder = radius - sum(cells)
    if remainder > 0:
        if policy == "merge" and cells and remainder < cells[-1]:
            cells[-1] += remainder
        else:
            cells.append(remainder)
    return cells


def half_grid(kernel_size: int, center: int = 5, base: int = 2,
              policy: RemainderPolicy = "greedy") -> list[int]:
    """The paper's half grid: outermost cell first, ending with the centre cell (Table 5, 6)."""
    return list(reversed(outward_cells(kernel_size, center, base, policy))) + [1]


def full_grid(kernel_size: int, center: int = 5, base: int = 2,
              policy: RemainderPolicy = "greedy") -> list[int]:
    """All k' cells across one axis; symmetric and summing to K."""
    return full_from_half(half_grid(kernel_size, center, base, policy))


def full_from_half(half: Sequence[int]) -> list[int]:
    """Mirror a half grid (outermost first, centre last) into the full grid."""
    half = list(half)
    return half + half[-2::-1]


def validate_grid(grid: Sequence[int], kernel_size: int | None = None) -> list[int]:
    """Check an explicit full grid: positive integers with an odd sum (== ``kernel_size`` if given)."""
    grid = list(grid)
    if not grid:
        raise GridError("a sharing grid needs at least one cell")
    bad = [cell for cell in grid if not isinstance(cell, (int, np.integer)) or cell < 1]
    if bad:
        raise GridError(f"grid cells must be positive integers, got {bad}")
    total = sum(grid)
    if kernel_size is not None and total != kernel_size:
        raise GridError(f"grid {grid} sums to {total}, not to the kernel size {kernel_size}")
    if total % 2 == 0:
        raise GridError(f"grid {grid} sums to {total}, an even kernel size")
    return [int(cell) for cell in grid]


def cell_boundaries(grid: Sequence[int]) -> list[int]:
    """Eq. 1 boundaries: ``[0, s0, s0+s1, ..., K]`` (k'+1 values, kernel coordinates)."""
    return [0, *np.cumsum(grid).tolist()]


def cell_index(grid: Sequence[int]) -> np.ndarray:
    """Cell of every kernel position along one axis: shape (K,), values in [0, k')."""
    return np.repeat(np.arange(len(grid)), grid)


def region_map(grid: Sequence[int]) -> np.ndarray:
    """Eq. 1 region of every kernel position: shape (K, K), value ``a * k' + b``."""
    index = cell_index(grid)
    return index[:, None] * len(grid) + index[None, :]


def expand_shared(shared: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Expand shared weights (..., k', k') to the full kernel (..., K, K)."""
    index = cell_index(grid)
    return shared[..., index[:, None], index[None, :]]


def param_ratio(grid: Sequence[int]) -> float:
    """Parameters of the shared kernel over those of a dense K x K kernel: (k'/K)^2."""
    return (len(grid) / sum(grid)) ** 2


def k_prime_bound(kernel_size: int, center: int, base: int) -> int:
    """Upper bound on k' for a peripheral grid: 2 (r_c + ceil(log_m K)) + 1."""
    return 2 * (center // 2 + math.ceil(math.log(kernel_size, base))) + 1


@dataclass(frozen=True)
class SharingGrid:
    """A resolved full grid with the quantities every layer of pelk needs."""

    grid: tuple[int, ...]

    @property
    def kernel_size(self) -> int:
        return sum(self.grid)

    @property
    def k_prime(self) -> int:
        return len(self.grid)

    @property
    def half(self) -> list[int]:
        """The half grid as the paper prints it (only meaningful for symmetric grids)."""
        return list(self.grid[: self.k_prime // 2 + 1])

    @property
    def param_ratio(self) -> float:
        return param_ratio(self.grid)

    @property
    def unshared_center(self) -> int:
        """Side of the largest centred square whose positions each own one parameter (0: the centre
        position shares its cell, e.g. grid [3, 3, 3])."""
        index, centre, radius = cell_index(self.grid), self.kernel_size // 2, 0
        while radius <= centre and self.grid[index[centre - radius]] == 1 == self.grid[index[centre + radius]]:
            radius += 1
        return 2 * radius - 1 if radius else 0

    def as_dict(self) -> dict:
        return {"grid": list(self.grid), "half_grid": self.half, "kernel_size": self.kernel_size,
                "k_prime": self.k_prime, "param_ratio": self.param_ratio,
                "unshared_center": self.unshared_center, "boundaries": cell_boundaries(self.grid)}
