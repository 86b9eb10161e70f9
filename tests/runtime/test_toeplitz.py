"""The Toeplitz form (plain torch) computes the reference op and its weight gradient."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .pconv_cases import PAPER_GRIDS, grids, random_inputs
from runtime import toeplitz
from runtime.reference import expand_kernel, peripheral_conv2d_reference


def test_lag_cells_cover_the_kernel_and_mark_lags_beyond_it():
    # K=5 grid (2, 1, 2) on a 4-pixel axis: lags -3..3, kernel reaches -2..2.
    assert toeplitz.lag_cells((2, 1, 2), 4) == [3, 0, 0, 1, 2, 2, 3]
    assert toeplitz.lag_reach((2, 1, 2), 4) == (-2, 2)
    assert toeplitz.lag_reach(tuple(PAPER_GRIDS[101]), 14) == (-13, 13)
    assert toeplitz.cell_lag_ranges((2, 1, 2)) == [(-2, 0), (0, 1), (1, 3)]


def test_lag_kernel_is_the_expanded_kernel_cropped_or_zero_padded_to_the_image():
    grid = (2, 1, 3, 1)  # K=7, asymmetric
    weight = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    dense = expand_kernel(weight, grid)[:, 0]
    small = toeplitz.lag_kernel(weight, grid, 3, 3, torch.float64)  # lags -2..2 of a 7x7 kernel
    torch.testing.assert_close(small, dense[:, 1:6, 1:6])
    large = toeplitz.lag_kernel(weight, grid, 5, 6, torch.float64)  # lags -4..4 x -5..5
    torch.testing.assert_close(large[:, 1:8, 2:9], dense)
    assert large[:, 0].abs().sum() == 0 and large[:, :, :2].abs().sum() == 0


@settings(max_examples=40, deadline=None)
@given(grid=grids(), batch=st.integers(1, 2), channels=st.integers(1, 3), height=st.integers(1, 9),
       width=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_toeplitz_form_and_box_products_match_the_reference_in_fp64(grid, batch, channels, height, width, seed):
    x, weight = random_inputs(batch, channels, height, width, grid, torch.float64, seed)
    weight.requires_grad_()
    y = peripheral_conv2d_reference(x, weight, grid)
    torch.testing.assert_close(toeplitz.peripheral_conv2d_lags(x, weight.detach(), grid), y)
    torch.testing.assert_close(toeplitz.peripheral_conv2d_box(x, weight.detach(), grid), y)
    dy = torch.randn_like(y)
    y.backward(dy)
    torch.testing.assert_close(toeplitz.peripheral_grad_weight_boxes(dy, x, grid), weight.grad)
