"""The sliding-box form (plain torch) computes the reference op; its plan covers every lag once."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .pconv_cases import PAPER_GRIDS, grids, random_inputs
from runtime import slide, toeplitz
from runtime.reference import peripheral_conv2d_reference


def covered_lags(plan: slide.SlidePlan) -> list[tuple[int, int]]:
    """(lag, cell) for every lag the plan's products reach, in lag order."""
    lags = list(plan.direct)
    for lo, hi, cell in plan.upper + plan.lower:
        lags += [(lag, cell) for lag in range(lo, hi)]
    return sorted(lags)


@settings(max_examples=60, deadline=None)
@given(grid=grids(max_cells=8, max_cell=9), height=st.integers(1, 40))
def test_the_plan_covers_each_lag_the_image_sees_once_with_its_cell(grid, height):
    plan = slide.slide_plan(grid, height)
    cells = toeplitz.lag_cells(grid, height)  # lags -(H-1)..H-1
    expected = [(lag, cell) for lag, cell in zip(range(1 - height, height), cells) if cell < len(grid)]
    assert covered_lags(plan) == expected
    for groups in (plan.upper, plan.lower):  # contiguous: each group starts where the previous ends
        assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert all(hi <= min(lag for lag, _ in plan.direct) for _, hi, _ in plan.upper)
    assert all(lo > max(lag for lag, _ in plan.direct) for lo, _, _ in plan.lower)


def test_paper_grids_take_one_product_per_one_row_cell_and_two_per_wider_cell():
    plan = slide.slide_plan(tuple(PAPER_GRIDS[51]), 56)  # 9 8 4 2 1 1 [1] 1 1 2 4 8 9
    assert [lag for lag, _ in plan.direct] == [-2, -1, 0, 1, 2]
    assert plan.upper == ((-25, -16, 0), (-16, -8, 1), (-8, -4, 2), (-4, -2, 3))
    assert plan.lower == ((3, 5, 9), (5, 9, 10), (9, 17, 11), (17, 26, 12))
    assert plan.products() == 21  # against 29 products of the plane box
    assert slide.slide_plan(tuple(PAPER_GRIDS[101]), 56).products() == 27


def test_a_wide_centre_cell_is_split_around_lag_zero():
    plan = slide.slide_plan((2, 5, 2), 10)  # centre cell lags -2..2
    assert plan.direct == ((0, 1),)
    assert plan.upper == ((-4, -2, 0), (-2, 0, 1))
    assert plan.lower == ((1, 3, 1), (3, 5, 2))


def test_lags_beyond_the_image_are_clipped():
    plan = slide.slide_plan(tuple(PAPER_GRIDS[101]), 7)  # reach -50..50 on 7 rows: lags -6..6 matter
    assert plan.upper[0][0] == -6 and plan.lower[-1][1] == 7


@settings(max_examples=40, deadline=None)
@given(grid=grids(), batch=st.integers(1, 2), channels=st.integers(1, 3), height=st.integers(1, 9),
       width=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_sliding_boxes_match_the_reference_in_fp64(grid, batch, channels, height, width, seed):
    x, weight = random_inputs(batch, channels, height, width, grid, torch.float64, seed)
    blocks = toeplitz.column_blocks(weight, grid, width, torch.float64)
    torch.testing.assert_close(slide.slide_conv(x, blocks, grid), peripheral_conv2d_reference(x, weight, grid))
