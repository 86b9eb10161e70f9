"""Sharing grids (paper Eq. 1, 2): every grid the paper prints, and the properties of the rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from archspec.grid import (GridError, SharingGrid, cell_boundaries, expand_shared, full_from_half, full_grid,
                           half_grid, k_prime_bound, param_ratio, region_map, validate_grid)


@pytest.mark.parametrize("kernel, center, half", [
    (51, 5, [9, 8, 4, 2, 1, 1, 1]),      # Table 6, 5x5 centre (PeLK's default)
    (51, 1, [11, 8, 4, 2, 1]),           # Table 6, 1x1
    (51, 3, [10, 8, 4, 2, 1, 1]),        # Table 6, 3x3
    (51, 7, [8, 8, 4, 2, 1, 1, 1, 1]),   # Table 6, 7x7
    (33, 5, [8, 4, 2, 1, 1, 1]),         # Table 5, #5
    (31, 5, [7, 4, 2, 1, 1, 1]),         # Fig. 1b
    (5, 1, [2, 1]),                      # Fig. 1a: 5x5 parameterised by 3x3
])
def test_paper_grids_follow_the_greedy_rule(kernel, center, half):
    assert half_grid(kernel, center) == half
    assert sum(full_grid(kernel, center)) == kernel


def test_fig1_grids_in_full():
    assert full_grid(5, 1) == [2, 1, 2]
    assert full_grid(31, 5) == [7, 4, 2, 1, 1, 1, 1, 1, 2, 4, 7]


@pytest.mark.parametrize("half, ratio", [
    ([1] * 17, 1.00), ([2] * 8 + [1], 0.27),
    # Printed as [2]*8 + [1, 1, 1], which sums to K=37; the K=33 grid with a 5x5 centre
    # has seven 2-cells, and that one gives the printed 0.33x.
    ([2] * 7 + [1, 1, 1], 0.33),
    ([4, 4, 4, 2, 1, 1, 1], 0.16), ([8, 4, 2, 1, 1, 1], 0.11), ([1, 1, 2, 4, 8, 1], 0.11),
])
def test_table5_grids_and_their_param_ratios(half, ratio):
    """Table 5's 'Param' column is k'^2 / K^2 of each explicit K=33 grid (33x33 dense = 1.00x)."""
    grid = validate_grid(full_from_half(half), 33)
    assert round(param_ratio(grid), 2) == ratio


@pytest.mark.parametrize("center, share", [(1, 0.0004), (3, 0.0035), (5, 0.0096), (7, 0.0188)])
def test_table6_central_area_ratio(center, share):
    grid = SharingGrid(tuple(full_grid(51, center)))
    assert grid.unshared_center == center
    assert round(grid.unshared_center ** 2 / 51 ** 2, 4) == share


@pytest.mark.parametrize("grid, unshared", [
    ((3, 3, 3), 0), ((3, 1, 1), 0), ((2, 1, 2), 1), ((1, 1, 1), 3), ((5, 1, 1, 1, 5), 3), ((4, 1, 1, 1, 2), 1),
])
def test_unshared_centre_of_explicit_grids(grid, unshared):
    """The centred square whose every position owns a parameter: none when the centre position shares its cell."""
    assert SharingGrid(grid).unshared_center == unshared


def test_merge_policy_folds_a_small_remainder_inward():
    assert half_grid(69, 7, policy="greedy") == [1, 16, 8, 4, 2, 1, 1, 1, 1]
    assert half_grid(69, 7, policy="merge") == [17, 8, 4, 2, 1, 1, 1, 1]
    assert half_grid(51, 5, policy="merge") == half_grid(51, 5, policy="greedy")


def test_perf_baseline_k_primes():
    """The k' of every PeLK-T / PeLK-101-T layer (perf-baseline.md)."""
    for kernel, center, k_prime in [(51, 5, 13), (101, 7, 17), (49, 5, 13), (69, 7, 17), (47, 5, 13),
                                    (67, 7, 15), (13, 5, 9)]:
        assert len(full_grid(kernel, center)) == k_prime


@pytest.mark.parametrize("args, message", [
    ((50, 5), "odd"), ((51, 4), "odd"), ((5, 7), "larger than the kernel"), ((51, 5, 1), "at least 2"),
])
def test_invalid_arguments_are_refused(args, message):
    with pytest.raises(GridError, match=message):
        full_grid(*args)


def test_explicit_grid_validation():
    assert validate_grid([2, 1, 2], 5) == [2, 1, 2]
    with pytest.raises(GridError, match="sums to 6, not to the kernel size 31"):
        validate_grid([1, 2, 3], 31)
    with pytest.raises(GridError, match="positive"):
        validate_grid([2, 0, 3])


def test_region_map_of_fig1a():
    regions = region_map([2, 1, 2])
    assert regions.tolist() == [[0, 0, 1, 2, 2], [0, 0, 1, 2, 2], [3, 3, 4, 5, 5],
                                [6, 6, 7, 8, 8], [6, 6, 7, 8, 8]]
    assert cell_boundaries([2, 1, 2]) == [0, 2, 3, 5]


@st.composite
def grid_rules(draw):
    kernel = draw(st.integers(1, 200)) * 2 + 1  # odd K from 3 to 401
    center = draw(st.integers(0, (kernel - 3) // 2)) * 2 + 1
    base = draw(st.sampled_from([2, 3, 4]))
    policy = draw(st.sampled_from(["greedy", "merge"]))
    return kernel, center, base, policy


@given(grid_rules())
def test_grid_rule_properties(rule):
    kernel, center, base, policy = rule
    grid = full_grid(kernel, center, base, policy)
    assert sum(grid) == kernel
    assert grid == grid[::-1]
    assert SharingGrid(tuple(grid)).unshared_center >= center
    middle = len(grid) // 2
    assert grid[middle - center // 2: middle + center // 2 + 1] == [1] * center
    if kernel // 2 >= center // 2 + base:  # room for the first exponential cell: the centre is exactly as asked
        assert SharingGrid(tuple(grid)).unshared_center == center
        first_shared = grid[middle + center // 2 + 1]
        assert first_shared == base if policy == "greedy" else first_shared >= base  # merge may add a remainder
    assert len(grid) <= k_prime_bound(kernel, center, base)
    assert k_prime_bound(kernel, center, base) == 2 * (center // 2 + math.ceil(math.log(kernel, base))) + 1


@given(grid_rules(), st.integers(0, 2**31 - 1))
def test_expanding_shared_weights_is_constant_per_region(rule, seed):
    grid = full_grid(*rule)
    k_prime = len(grid)
    shared = np.random.default_rng(seed).standard_normal((k_prime, k_prime))
    kernel = expand_shared(shared, grid)
    regions = region_map(grid)
    assert kernel.shape == (sum(grid), sum(grid))
    assert np.array_equal(kernel, shared.ravel()[regions])  # each position holds its region's weight
    counts = np.bincount(regions.ravel(), minlength=k_prime * k_prime).reshape(k_prime, k_prime)
    assert np.array_equal(counts, np.outer(grid, grid))
