"""The reference is the definition: expansion, the conv, the positional-embedding terms."""
import pytest
import torch
import torch.nn.functional as F

from .pconv_cases import PAPER_GRIDS, mirror, random_inputs
from runtime.reference import (cell_index, check_grid, expand_kernel, peripheral_conv2d_reference,
                               pos_embed_term)


def test_paper_grids_have_the_paper_sizes():
    assert {size: sum(grid) for size, grid in PAPER_GRIDS.items()} == {13: 13, 51: 51, 69: 69, 101: 101}
    assert [len(PAPER_GRIDS[k]) for k in (13, 51, 69, 101)] == [9, 13, 17, 17]
    assert mirror([9, 8, 4, 2, 1, 1])[5:8] == [1, 1, 1]


def test_expansion_repeats_each_cell_over_its_rows_and_columns():
    grid = (2, 1, 3)
    weight = torch.arange(9.0).view(1, 1, 3, 3)
    kernel = expand_kernel(weight, grid)[0, 0]
    assert cell_index(grid).tolist() == [0, 0, 1, 2, 2, 2]
    for i in range(6):
        for j in range(6):
            assert kernel[i, j] == weight[0, 0, cell_index(grid)[i], cell_index(grid)[j]]


def test_check_grid_rejects_even_sums_and_non_positive_cells():
    assert check_grid([3, 1, 3]) == (3, 1, 3)
    with pytest.raises(ValueError, match="odd"):
        check_grid([2, 2])
    with pytest.raises(ValueError, match="positive"):
        check_grid([1, 0, 2])


def test_reference_is_a_same_padding_depthwise_correlation():
    grid = (2, 1, 3, 1)  # K = 7, asymmetric
    x, weight = random_inputs(2, 3, 5, 6, grid, torch.float64, seed=0)
    kernel, radius = expand_kernel(weight, grid)[:, 0], 3
    padded = F.pad(x, (radius,) * 4)
    brute = torch.zeros_like(x)
    for i in range(7):
        for j in range(7):
            brute += kernel[:, i, j].view(1, -1, 1, 1) * padded[:, :, i:i + 5, j:j + 6]
    torch.testing.assert_close(peripheral_conv2d_reference(x, weight, grid), brute)


def brute_force_pos_embed(x, weight, grid, pos_embed, mode):
    """Eq. 3 read literally: Y = Σ_ij w(i,j)·(X(y+i, x+j) + h(i,j)), h added at all taps or at valid ones."""
    size = sum(grid)
    radius = size // 2
    kernel = expand_kernel(weight, grid)[:, 0]
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius,) * 4)
    inside = F.pad(torch.ones(height, width, dtype=x.dtype), (radius,) * 4)
    out = torch.zeros_like(x)
    for i in range(size):
        for j in range(size):
            h = pos_embed[:, i, j].view(1, -1, 1, 1)
            where = 1.0 if mode == "padded" else inside[i:i + height, j:j + width]
            out += kernel[:, i, j].view(1, -1, 1, 1) * (padded[:, :, i:i + height, j:j + width] + h * where)
    return out


@pytest.mark.parametrize("mode", ["padded", "valid"])
@pytest.mark.parametrize("grid,height,width", [((2, 1, 2), 4, 6), ((3, 1, 1, 2), 9, 3), ((1,), 2, 2)])
def test_pos_embed_terms_match_eq3(mode, grid, height, width):
    x, weight = random_inputs(2, 3, height, width, grid, torch.float64, seed=1)
    pos_embed = torch.randn(3, sum(grid), sum(grid), dtype=torch.float64)
    out = peripheral_conv2d_reference(x, weight, grid) + pos_embed_term(weight, grid, pos_embed, mode,
                                                                        height, width)
    torch.testing.assert_close(out, brute_force_pos_embed(x, weight, grid, pos_embed, mode))


@pytest.mark.parametrize("mode", ["padded", "valid"])
def test_pos_embed_gradients_reach_weight_and_embedding(mode):
    grid = (2, 1, 2)
    _, weight = random_inputs(1, 2, 3, 3, grid, torch.float64, seed=2)
    weight.requires_grad_()
    pos_embed = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda w, h: pos_embed_term(w, grid, h, mode, 3, 4), (weight, pos_embed))


def test_unknown_pos_mode_is_an_error():
    with pytest.raises(ValueError, match="pos_mode"):
        pos_embed_term(torch.zeros(1, 1, 1, 1), (1,), torch.zeros(1, 1, 1), "sometimes", 2, 2)
