"""The sliding-box form of peripheral convolution, in plain PyTorch: the twin of the
``_slide_kernel`` Triton kernel.

The box form (toeplitz.py) writes the conv as Y = Σ_a X_a R_a, with X_a[h] = Σ_{δ in cell a}
X[h + δ] the vertical box sum of the input over kernel-row cell a and R_a the (W x W) horizontal
Toeplitz matrix of w_θ's row a. A box sum of bf16 rows is not a bf16 number, so on tensor cores
each multi-row cell costs a hi/lo pair of products. The sliding-box form keeps every product
exact instead, with plain shifted input rows as operands, by sliding the boxes:

* cells next to the centre that are one row tall (``direct``): X[h + δ] R_a, one product each;
* lags above that window (``upper``, δ < 0): the box slides down by one row at a time,
  X_a[h] - X_a[h-1] = X[h + hi - 1] - X[h + lo - 1], and X_a[0] = 0 because all its rows lie above
  the image, so Σ_a X_a R_a = cumsum over h of Σ_a (X[h + hi - 1] - X[h + lo - 1]) R_a;
* lags below it (``lower``, δ > 0): the same from the bottom up,
  Σ_a X_a R_a = reverse cumsum over h of Σ_a (X[h + lo] - X[h + hi]) R_a.

Every operand is an input row (exact in any dtype) times one block of shared weights (exact too),
summed in fp32: two products per multi-row cell, one per one-row cell, no hi/lo split, no box
sums through memory. Lags beyond the image are clipped first (their rows are zero), so groups
whose rows all miss the image vanish. A wide centre cell is split into its part above lag 0,
lag 0 itself (direct) and its part below.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from runtime.toeplitz import cell_lag_ranges


class SlidePlan(NamedTuple):
    """Which products the sliding-box form runs on an image of ``height`` rows.

    ``direct``: (lag, cell) pairs, one product X[h + lag] R_cell each. ``upper``: (lo, hi, cell) lag
    ranges above the direct window, contiguous, outermost first (each ends where the next begins);
    ``lower``: the same below it, innermost first."""

    direct: tuple[tuple[int, int], ...]
    upper: tuple[tuple[int, int, int], ...]
    lower: tuple[tuple[int, int, int], ...]

    def products(self) -> int:
        """Tensor-core products per plane: one per direct lag, two per sliding group."""
        return len(self.direct) + 2 * (len(self.upper) + len(self.lower))


def slide_plan(grid: tuple[int, ...], height: int) -> SlidePlan:
    """The plan for ``grid`` on an image of ``height`` rows: the direct window is the run of one-row
    cells around the centre cell (just lag 0 if the centre cell is wider)."""
    ranges = cell_lag_ranges(tuple(grid))
    centre = next(cell for cell, (lo, hi) in enumerate(ranges) if lo <= 0 < hi)

    def one_row(cell: int) -> bool:
        return ranges[cell][1] - ranges[cell][0] == 1

    if one_row(centre):
        first, last = centre, centre
        while first > 0 and one_row(first - 1):
            first -= 1
        while last < len(ranges) - 1 and one_row(last + 1):
            last += 1
        window = ranges[first][0], ranges[last][1]
    else:
        window = 0, 1
    reach_lo, reach_hi = 1 - height, height  # lags outside [1-H, H) only ever read zero rows
    direct, upper, lower = [], [], []
    for cell, (lo, hi) in enumerate(ranges):
        direct += [(lag, cell) for lag in range(max(lo, window[0], reach_lo), min(hi, window[1], reach_hi))]
        above = max(lo, reach_lo), min(hi, window[0])
        below = max(lo, window[1]), min(hi, reach_hi)
        if above[0] < above[1]:
            upper.append((*above, cell))
        if below[0] < below[1]:
            lower.append((*below, cell))
    return SlidePlan(tuple(direct), tuple(upper), tuple(lower))


def slide_conv(x: torch.Tensor, blocks: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Y = Σ_a X_a R_a by sliding boxes (module docstring).

    x (B, C, H, W), blocks R (C, k', Wp, Wp) -> (B, C, H, W); accumulates in fp32 (fp64 for fp64).
    """
    height, width = x.shape[-2:]
    acc = torch.promote_types(x.dtype, torch.float32)
    padded = F.pad(x.to(acc), (0, blocks.shape[-1] - width, height, height))  # zero rows above and below
    blocks = blocks.to(acc)

    def rows(shift: int) -> torch.Tensor:
        return padded[..., height + shift:2 * height + shift, :]

    def times(operand: torch.Tensor, cell: int) -> torch.Tensor:
        return torch.einsum("nchq,cqp->nchp", operand, blocks[:, cell])

    plan = slide_plan(tuple(grid), height)
    y = torch.zeros_like(rows(0))
    for lag, cell in plan.direct:
        y = y + times(rows(lag), cell)
    if plan.upper:
        y = y + sum(times(rows(hi - 1), cell) - times(rows(lo - 1), cell) for lo, hi, cell in plan.upper).cumsum(-2)
    if plan.lower:
        slides = sum(times(rows(lo), cell) - times(rows(hi), cell) for lo, hi, cell in plan.lower)
        y = y + slides.flip(-2).cumsum(-2).flip(-2)
    return y[..., :width].to(x.dtype)
