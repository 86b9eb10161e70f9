"""Spectral box form of peripheral convolution, in plain PyTorch: the reference of its Triton kernel.

The box form (toeplitz.py) writes the conv as Y = Σ_a X_a R_a: per kernel-row cell a, the vertical
box sum X_a of the input (two rows of the column prefix P) times the horizontal Toeplitz matrix R_a
of w_θ's row a. Grouped by cell boundary instead of by cell, with r_a[l] = w_θ[a, cell of lag l]
the 1-D kernel of row a:

    Y[h] = Σ_j (r_{j-1} - r_j) ⋆ P[clamp(h + p_j, 0, H)]        (p_j the k'+1 cell boundaries,
                                                                r_{-1} = r_{k'} = 0, ⋆ correlation
                                                                along W)

Every term is a horizontal correlation of a prefix row, and a discrete Fourier transform along W of
length N >= W + reach (no wrap-around) turns all of them into products per frequency at once:

    P̂ = P @ F,    Ŷ[h] = Σ_j Ŝ_j ⊙ P̂[clamp(h + p_j, 0, H)],    Y = Ŷ @ G

with F (W, N//2+1) the real DFT, G its inverse and Ŝ_j the spectrum of boundary j's kernel
difference (``boundary_spectra``). That is 4·Nf real multiply-adds per output for the transforms
(four real products a plane: P̂'s real and imaginary part, and back) plus 4 per boundary and frequency
per row, whatever K is; the box form does k'·W. Padded as the kernel runs it at PeLK stage 1 (56²,
Wp = Fp = 64) that is 256 against the box form's 832 (K=51) and 1088 (K=101) per output.
Boundaries that clamp to the same prefix row for every output merge (sat.clamp_boundaries).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from runtime import sat, toeplitz
from runtime.constants import device_constant


def transform_length(grid: tuple[int, ...], width: int) -> int:
    """N: the DFT length along W with no wrap-around, W plus the kernel's reach min(K//2, W-1)."""
    return width + min(sum(grid) // 2, width - 1)


def frequency_count(grid: tuple[int, ...], width: int) -> int:
    """Nf = N//2 + 1: the real DFT's frequencies, the rest of a length-N spectrum their conjugates."""
    return transform_length(grid, width) // 2 + 1


def padded_frequencies(grid: tuple[int, ...], width: int) -> int:
    """Nf padded to a power of two >= 16 (a tensor-core dot's N/K)."""
    return toeplitz.padded_width(frequency_count(grid, width))


def stored_frequencies(grid: tuple[int, ...], width: int) -> int:
    """Nf rounded up to a multiple of 8 (a 32-byte sector of fp32): the frequencies the kernel parks and
    reads back, of the padded ones (a mask that trims no sector only costs instructions)."""
    return min(padded_frequencies(grid, width), -(-frequency_count(grid, width) // 8) * 8)


def _dft_phases(positions: torch.Tensor, grid: tuple[int, ...], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of 2π·p·f/N for positions p (n,) and the padded frequencies f < Fp, zero at
    f >= Nf: two (n, Fp) fp64. The one place of the transform's sign and length convention."""
    length = transform_length(grid, width)
    f = torch.arange(padded_frequencies(grid, width), dtype=torch.float64)
    angle = 2 * math.pi * torch.remainder(positions.double()[:, None] * f[None, :], length) / length
    valid = (f < frequency_count(grid, width)).double()
    return torch.cos(angle) * valid, torch.sin(angle) * valid


class DftBases(NamedTuple):
    """The real DFT along W as the kernel reads it, zero in the padding, each matrix transposed (its
    contracted index contiguous, as a tensor-core product's B operand sits in shared memory):
    forward (2, Fp, Wp) the cos and -sin of P̂ = P @ forwardᵀ; inverse (2, Wp, Fp) with its 1/N and the
    doubled weight of the frequencies that stand for two, Y = Ŷ_re @ inverse[0]ᵀ + Ŷ_im @ inverse[1]ᵀ."""

    forward: torch.Tensor
    inverse: torch.Tensor


def dft_bases(grid: tuple[int, ...], width: int, dtype: torch.dtype, device: torch.device) -> DftBases:
    """``DftBases`` in ``dtype`` on ``device``, cached (built in fp64, rounded once)."""
    def build(inverse: bool) -> torch.Tensor:
        cos, sin = _dft_phases(torch.arange(width), grid, width)
        if inverse:
            length = transform_length(grid, width)
            f = torch.arange(cos.shape[1])
            weight = torch.where((f == 0) | (2 * f == length), 1.0, 2.0).double() / length
            cos, sin = cos * weight, sin * weight
        bases = torch.zeros(2, toeplitz.padded_width(width), cos.shape[1], dtype=torch.float64)
        bases[0, :width], bases[1, :width] = cos, -sin
        return (bases if inverse else bases.transpose(1, 2)).to(dtype).contiguous()

    return DftBases(*(device_constant(("dft bases", grid, width, dtype, inverse), device, lambda: build(inverse))
                      for inverse in (False, True)))


class BoundarySpectra(NamedTuple):
    """Ŝ (C, n, 2, Fp) fp32/fp64: real and imaginary spectrum of each merged boundary's kernel
    difference; offsets (n,): the prefix-row offset p_j each one reads."""

    spectra: torch.Tensor
    offsets: tuple[int, ...]


def _boundary_spectra_fp64(weight: torch.Tensor, grid: tuple[int, ...], height: int, width: int) -> torch.Tensor:
    """w_θ (C, 1, k', k') fp64 on the CPU -> Ŝ (C, n, 2, Fp) fp64, step by step (``spectrum_map``)."""
    cells = len(grid)
    lag_cell = torch.tensor(toeplitz.lag_cells(grid, width))             # lags 1-W..W-1, k' beyond reach
    index = torch.where(lag_cell < cells, torch.arange(cells)[:, None] * cells + lag_cell, cells * cells)
    row_kernels = toeplitz.gather_shared(weight, index.flatten(), torch.float64).view(-1, cells, lag_cell.numel())
    padded = torch.nn.functional.pad(row_kernels, (0, 0, 1, 1))          # r_{-1} = r_{k'} = 0
    differences = padded[:, :-1] - padded[:, 1:]                         # (C, k'+1, 2W-1)
    _, merge = sat.clamp_boundaries(grid, height)
    merged = torch.einsum("ij,cjl->cil", merge.double(), differences)
    cos, sin = _dft_phases(torch.arange(1 - width, width), grid, width)
    return torch.stack([merged @ cos, merged @ sin], dim=2)


class SpectrumFactors(NamedTuple):
    """The map from w_θ[c] (k', k') to Ŝ[c] (n, 2·Fp) in two factors, Ŝ[c] = rows @ w_θ[c] @ cells
    (the same numbers as ``spectrum_map`` from k'·(n + 2·Fp) entries instead of k'²·n·2·Fp), with
    rows (n, k') the merged boundaries' row differences: a merged boundary m is a run first..last of
    boundaries and its Σ_j (r_{j-1} - r_j) telescopes to r_{first-1} - r_{last}, so row m is +1 at
    plus[m] = first - 1 and -1 at minus[m] = last, where those are rows of w_θ (0 <= · < k'; the
    kernel rows r_{-1} and r_{k'} are zero). plus, minus (n,) int32; cells (k', 2·Fp) fp64, each
    kernel cell's lags' phases summed, cos then sin."""

    plus: torch.Tensor
    minus: torch.Tensor
    cells: torch.Tensor


def merged_row_ends(grid: tuple[int, ...], height: int) -> tuple[list[int], list[int]]:
    """(plus, minus) of ``SpectrumFactors``: the run first..last of boundaries that each merged one of
    ``sat.clamp_boundaries`` sums, as first - 1 and last."""
    plus, minus = [], []
    for merged in sat.clamp_boundaries(grid, height)[1]:
        run = merged.nonzero().flatten().tolist()
        if run != list(range(run[0], run[-1] + 1)):
            raise AssertionError(f"boundaries {run} merge but are not consecutive")
        plus.append(run[0] - 1)
        minus.append(run[-1])
    return plus, minus


def spectrum_factors(grid: tuple[int, ...], height: int, width: int, device: torch.device) -> SpectrumFactors:
    """``SpectrumFactors``, cached per device."""
    def cells() -> torch.Tensor:
        lag_cell = torch.tensor(toeplitz.lag_cells(grid, width))             # k' where the kernel does not reach
        cell_of_lag = torch.nn.functional.one_hot(lag_cell, len(grid) + 1)[:, :-1].double()
        cos, sin = _dft_phases(torch.arange(1 - width, width), grid, width)
        return torch.cat([cell_of_lag.T @ cos, cell_of_lag.T @ sin], dim=1)

    plus, minus = device_constant(("merged row ends", grid, height), device,
                                  lambda: torch.tensor(merged_row_ends(grid, height), dtype=torch.int32))
    return SpectrumFactors(plus, minus, device_constant(("spectrum cells", grid, width), device, cells))


def spectrum_map(grid: tuple[int, ...], height: int, width: int, device: torch.device) -> torch.Tensor:
    """(k'·k', n·2·Fp) fp64, cached per device: the linear map from w_θ to its boundary spectra
    (``_boundary_spectra_fp64`` of every unit weight), so that building Ŝ is one matrix product."""
    def build() -> torch.Tensor:
        cells = len(grid)
        units = torch.eye(cells * cells, dtype=torch.float64).view(-1, 1, cells, cells)
        return _boundary_spectra_fp64(units, grid, height, width).flatten(1)

    return device_constant(("spectrum map", grid, height, width), device, build)


def boundary_spectra(weight: torch.Tensor, grid: tuple[int, ...], height: int, width: int) -> BoundarySpectra:
    """w_θ (C, 1, k', k') -> the spectra Ŝ_j of r_{j-1} - r_j along W (r_a[l] = w_θ[a, cell of lag
    l]), merged by clamped boundary: Ŝ_j[f] = Σ_l d_j[l] e^{+2πi f l / N} (the conjugate of d_j's
    DFT: correlation, not convolution), in fp64 and rounded once to w_θ's accumulation dtype."""
    grid = tuple(grid)
    offsets = tuple(sat.clamped_offsets(grid, height))
    spectra = weight.reshape(weight.shape[0], -1).double() @ spectrum_map(grid, height, width, weight.device)
    return BoundarySpectra(spectra.view(weight.shape[0], len(offsets), 2, -1).to(sat.accumulate_dtype(weight.dtype)),
                           offsets)


def spectral_conv(x: torch.Tensor, spectra: BoundarySpectra, grid: tuple[int, ...]) -> torch.Tensor:
    """Y = (Σ_j Ŝ_j ⊙ (P @ F)[clamp(h + p_j)]) @ G: x (B, C, H, W) -> (B, C, H, W), in fp32 (fp64 for fp64)."""
    height, width = x.shape[-2:]
    bases = dft_bases(tuple(grid), width, sat.accumulate_dtype(x.dtype), x.device)
    forward, inverse = bases.forward[:, :, :width].transpose(1, 2), bases.inverse[:, :width].transpose(1, 2)
    prefix = toeplitz.column_prefix(x)                                   # (B, C, H+1, W)
    real, imag = prefix @ forward[0], prefix @ forward[1]                # (B, C, H+1, Fp)
    rows = torch.arange(height, device=x.device)
    out_real = out_imag = 0
    for index, offset in enumerate(spectra.offsets):
        source = (rows + offset).clamp(0, height)
        s_real, s_imag = spectra.spectra[:, index, 0, None, :], spectra.spectra[:, index, 1, None, :]
        out_real = out_real + s_real * real[:, :, source] - s_imag * imag[:, :, source]
        out_imag = out_imag + s_real * imag[:, :, source] + s_imag * real[:, :, source]
    y = out_real @ inverse[0] + out_imag @ inverse[1]
    return y.to(x.dtype)


def peripheral_conv2d_spectral(x: torch.Tensor, weight: torch.Tensor, grid: tuple[int, ...],
                               conv=spectral_conv, spectra=boundary_spectra) -> torch.Tensor:
    """Peripheral conv in the spectral box form through ``conv(x, spectra(w_θ, grid, H, W), grid)``:
    (B, C, H, W) -> (B, C, H, W)."""
    return conv(x, spectra(weight, tuple(grid), x.shape[-2], x.shape[-1]), tuple(grid))
