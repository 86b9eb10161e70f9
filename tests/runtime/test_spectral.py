"""The spectral box form (runtime/spectral.py) computes the peripheral conv."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .pconv_cases import PAPER_GRIDS, assert_matches_reference, grids, random_inputs
from runtime import sat, spectral, toeplitz
from runtime.reference import peripheral_conv2d_reference


@settings(max_examples=30, deadline=None)
@given(grid=grids(), channels=st.integers(1, 3), height=st.integers(1, 12), width=st.integers(1, 12),
       seed=st.integers(0, 2**16))
def test_spectral_form_is_exact_in_fp64(grid, channels, height, width, seed):
    """Any grid, larger or smaller than the image: the DFT length leaves no wrap-around."""
    x, weight = random_inputs(2, channels, height, width, grid, torch.float64, seed)
    torch.testing.assert_close(spectral.peripheral_conv2d_spectral(x, weight, grid),
                               peripheral_conv2d_reference(x, weight, grid), rtol=1e-10, atol=1e-10)


@settings(max_examples=10, deadline=None)
@given(grid=grids(), height=st.integers(1, 16), width=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_spectral_form_is_as_accurate_as_torch_in_fp32(grid, height, width, seed):
    x, weight = random_inputs(2, 2, height, width, grid, torch.float32, seed)
    assert_matches_reference(spectral.peripheral_conv2d_spectral(x, weight, grid), x, weight, grid)


def test_spectral_form_is_as_accurate_as_torch_at_a_stage_one_shape():
    grid = PAPER_GRIDS[101]
    x, weight = random_inputs(1, 2, 56, 56, grid, torch.float32, seed=3)
    assert_matches_reference(spectral.peripheral_conv2d_spectral(x, weight, grid), x, weight, grid)


def test_boundary_spectra_are_the_conjugate_dfts_of_the_row_kernel_differences():
    """Ŝ_j = conj(rfft(d_j)) with d_j = r_{j-1} - r_j laid out circularly (lag l at index l mod N)."""
    grid, width = (3, 1, 1, 1, 3), 6
    height = 40  # no two boundaries clamp together
    weight = random_inputs(1, 2, 1, 1, grid, torch.float64, seed=1)[1]
    spectra = spectral.boundary_spectra(weight, grid, height, width)
    assert spectra.offsets == tuple(sat.cell_boundaries(grid))
    length = spectral.transform_length(grid, width)
    cells = torch.tensor(toeplitz.lag_cells(grid, width))
    rows = torch.cat([weight[:, 0], torch.zeros(2, len(grid), 1, dtype=torch.float64)], 2)[:, :, cells]
    rows = torch.nn.functional.pad(rows, (0, 0, 1, 1))
    for j in range(len(grid) + 1):
        circular = torch.zeros(2, length, dtype=torch.float64)
        for index, lag in enumerate(range(1 - width, width)):
            circular[:, lag % length] += rows[:, j, index] - rows[:, j + 1, index]
        expected = torch.fft.rfft(circular).conj()
        got = torch.complex(spectra.spectra[:, j, 0], spectra.spectra[:, j, 1])[:, :expected.shape[-1]]
        torch.testing.assert_close(got, expected)
        assert spectra.spectra[:, j, :, expected.shape[-1]:].abs().max() == 0


@settings(max_examples=30, deadline=None)
@given(grid=grids(max_cells=6, max_cell=5), height=st.integers(1, 40), width=st.integers(1, 40))
def test_spectrum_factors_are_the_spectrum_map_in_two(grid, height, width):
    """Ŝ[c] = rows @ w_θ[c] @ cells: the map from w_θ's entry (a, b) to Ŝ is rows[:, a] times cells[b],
    rows the merged boundaries' row differences (+1 at plus, -1 at minus)."""
    factors = spectral.spectrum_factors(grid, height, width, torch.device("cpu"))
    rows = torch.zeros(len(factors.plus), len(grid) + 2, dtype=torch.float64)  # rows -1 and k' of w_θ: zero
    rows[torch.arange(len(rows)), factors.plus.long() + 1] += 1.0
    rows[torch.arange(len(rows)), factors.minus.long() + 1] -= 1.0
    rows = rows[:, 1:-1]
    torch.testing.assert_close(rows, (sat.clamp_boundaries(grid, height)[1] @ sat.difference_matrix(len(grid))).double())
    outer = torch.einsum("ma,bs->abms", rows, factors.cells).reshape(len(grid) ** 2, -1)
    torch.testing.assert_close(outer, spectral.spectrum_map(grid, height, width, torch.device("cpu")),
                               rtol=0, atol=1e-12)


def test_boundaries_that_clamp_together_merge():
    """At K=101 on 56 rows the boundaries at +51 and beyond all read the last prefix row."""
    spectra = spectral.boundary_spectra(torch.ones(1, 1, 17, 17), PAPER_GRIDS[101], 56, 56)
    assert spectra.offsets == tuple(sat.clamped_offsets(PAPER_GRIDS[101], 56))
    assert spectra.spectra.shape == (1, len(spectra.offsets), 2, spectral.padded_frequencies(PAPER_GRIDS[101], 56))
