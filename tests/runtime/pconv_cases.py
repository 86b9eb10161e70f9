"""Shared cases for the runtime tests: grids, random inputs, the error rule."""
from __future__ import annotations

import torch
from hypothesis import strategies as st

from runtime.reference import peripheral_conv2d_reference


def mirror(outer: list[int]) -> list[int]:
    """Full grid from the cells outside the centre, outermost first: outer + [1] + reversed(outer)."""
    return list(outer) + [1] + list(reversed(outer))


# Grids the paper's rules give (archspec.grid.full_grid), incl. the asymmetric-leftover K=69.
PAPER_GRIDS = {
    13: mirror([2, 2, 1, 1]),                    # 5x5 centre
    51: mirror([9, 8, 4, 2, 1, 1]),              # 5x5 centre
    69: mirror([1, 16, 8, 4, 2, 1, 1, 1]),       # 7x7 centre, greedy leftover 1
    101: mirror([17, 16, 8, 4, 2, 1, 1, 1]),     # 7x7 centre
}


@st.composite
def grids(draw, max_cells: int = 6, max_cell: int = 5) -> tuple[int, ...]:
    """Random positive grids (not necessarily symmetric) with an odd sum."""
    cells = draw(st.lists(st.integers(1, max_cell), min_size=1, max_size=max_cells))
    if sum(cells) % 2 == 0:
        cells[draw(st.integers(0, len(cells) - 1))] += 1
    return tuple(cells)


def random_inputs(batch, channels, height, width, grid, dtype, seed):
    """x (B, C, H, W) and weight (C, 1, k', k') scaled like a trained kernel, in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    cells = len(grid)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    weight = torch.randn(channels, 1, cells, cells, generator=gen, dtype=torch.float64) / sum(grid)
    return x.to(dtype), weight.to(dtype)


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    return ((value.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# Absolute slack, relative to the magnitude ||conv(|x|, |w|)|| of the terms summed: fp32 SAT
# prefix sums carry eps·|S| with |S| up to Σ|x| over the image, about 1e-6 of that magnitude
# beyond what F.conv2d loses; in reduced precision the output rounding dominates.
SAT_SLACK = {torch.float64: 1e-12, torch.float32: 4e-6, torch.bfloat16: 1e-4, torch.float16: 1e-5}


def assert_matches_reference(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, grid) -> None:
    """Error against the float64 reference is at most 2x plain PyTorch's in the same dtype, plus slack."""
    ref = peripheral_conv2d_reference(x.double(), weight.double(), grid)
    magnitude = peripheral_conv2d_reference(x.double().abs(), weight.double().abs(), grid).norm().item()
    torch_error = (peripheral_conv2d_reference(x, weight, grid).double() - ref).norm().item()
    error = (out.double() - ref).norm().item()
    assert out.dtype == x.dtype and out.shape == x.shape
    assert error <= 2 * torch_error + SAT_SLACK[x.dtype] * magnitude, (error, torch_error, magnitude)
