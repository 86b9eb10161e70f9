"""The SAT form (plain torch) computes the reference op, its input and weight gradients."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .pconv_cases import PAPER_GRIDS, assert_matches_reference, grids, random_inputs, relative_error
from runtime import peripheral_conv2d
from runtime.reference import peripheral_conv2d_reference
import torch.nn.functional as F

from runtime.sat import cell_boundaries, clamp_boundaries, difference_matrix, tap_map


def test_cell_boundaries_run_from_minus_r_to_r_plus_one():
    assert cell_boundaries((2, 1, 3, 1)) == [-3, -1, 0, 3, 4]
    assert cell_boundaries(PAPER_GRIDS[51])[0] == -25 and cell_boundaries(PAPER_GRIDS[51])[-1] == 26


def test_difference_matrix_gives_the_2d_difference_of_the_zero_padded_weights():
    weight = torch.randn(4, 4, dtype=torch.float64)
    diff = difference_matrix(4).double()
    padded = F.pad(weight, (1, 1, 1, 1))
    expected = padded[:-1, :-1] - padded[1:, :-1] - padded[:-1, 1:] + padded[1:, 1:]
    torch.testing.assert_close(diff @ weight @ diff.T, expected)
    torch.testing.assert_close(expected.sum(0), torch.zeros(5, dtype=torch.float64))


def test_tap_map_is_cached_and_integer():
    rows, cols, linear = tap_map((2, 1, 2), 4, 9, torch.device("cpu"))
    assert tap_map((2, 1, 2), 4, 9, torch.device("cpu"))[2] is linear
    assert linear.shape == (len(rows) * len(cols), 9)
    assert torch.equal(linear, linear.round())


def test_clamping_drops_and_merges_boundaries_outside_the_image():
    # K=101 on a 14-pixel axis: -50, -33, -17 always read row 0 (dropped); 18, 34, 51 all read row 14.
    offsets, merge = clamp_boundaries(PAPER_GRIDS[101], 14)
    assert offsets == [-9, -5, -3, -2, -1, 0, 1, 2, 3, 4, 6, 10, 14]
    assert merge.sum(0).tolist() == [0, 0, 0] + [1] * 15
    assert merge[-1].tolist() == [0.0] * 15 + [1.0, 1.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(grid=grids(), batch=st.integers(1, 2), channels=st.integers(1, 3), height=st.integers(1, 12),
       width=st.integers(1, 12), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**16))
def test_sat_matches_the_reference(grid, batch, channels, height, width, dtype, seed):
    x, weight = random_inputs(batch, channels, height, width, grid, dtype, seed)
    assert_matches_reference(peripheral_conv2d(x, weight, grid, backend="sat"), x, weight, grid)


@pytest.mark.parametrize("kernel_size", [13, 51])
def test_sat_matches_the_reference_on_paper_grids(kernel_size):
    grid = PAPER_GRIDS[kernel_size]
    x, weight = random_inputs(2, 3, 16, 20, grid, torch.float32, seed=kernel_size)
    assert_matches_reference(peripheral_conv2d(x, weight, grid, backend="sat"), x, weight, grid)


@pytest.mark.parametrize("grid,height,width", [((2, 1, 3, 1, 2), 4, 5), ((1, 3, 1), 3, 2), ((7,), 2, 3)])
def test_sat_gradcheck(grid, height, width):
    x, weight = random_inputs(2, 2, height, width, grid, torch.float64, seed=3)
    x.requires_grad_(), weight.requires_grad_()
    torch.autograd.gradcheck(lambda a, w: peripheral_conv2d(a, w, grid, backend="sat"), (x, weight))


@settings(max_examples=20, deadline=None)
@given(grid=grids(), height=st.integers(1, 10), width=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_sat_gradients_match_the_reference_in_fp32(grid, height, width, seed):
    x, weight = random_inputs(2, 2, height, width, grid, torch.float32, seed)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    grads = {}
    for name, run in (("sat", lambda a, w: peripheral_conv2d(a, w, grid, backend="sat")),
                      ("ref", lambda a, w: peripheral_conv2d_reference(a.double(), w.double(), grid))):
        a, w = x.clone().requires_grad_(), weight.clone().requires_grad_()
        run(a, w).backward(dy.to(torch.float64) if name == "ref" else dy)
        grads[name] = a.grad, w.grad
    for got, ref in zip(grads["sat"], grads["ref"]):
        assert got.dtype == torch.float32
        assert relative_error(got, ref.double()) < 2e-5
