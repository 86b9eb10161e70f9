"""Summed-area-table (SAT) form of peripheral convolution, in plain PyTorch.

The expanded kernel is constant on k' x k' rectangles, so (design.md)

    Y(h, w) = Σ_{a,b=0..k'} D[a, b] · S(h + p_a, w + p_b)

with S the exclusive 2-D prefix sum of x (indices clamped to [0, H] x [0, W],
which is zero padding), p the cell boundaries relative to the centre and D the
2-D difference of w_θ padded with zeros: (k'+1)² taps instead of K².

Clamping makes taps redundant once K is large against the image: a boundary
p <= -(H-1) always reads the zero row and is dropped; boundaries >= H all read
row H and are merged. ``clamp_boundaries`` does this per axis, so the kernels
below work on a compressed tap set (offsets, coefficients) that is exact;
``tap_map`` turns w_θ into those coefficients with one cached linear map (one
small matmul per call: the host, not the GPU, limits small layers).

Gradients: grad-input is the same op with the grid reversed and w_θ flipped;
grad-weight is G[a, b] = Σ dY(h, w) · S(h + p_a, w + p_b) followed by the
transposed difference. Everything accumulates in fp32 (fp64 for fp64 input).

The two primitives ``sat_taps`` and ``sat_tap_sums`` have Triton twins in
``triton_kernels.py`` with the same signatures.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from runtime.constants import device_constant


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16, fp64 for fp64."""
    return torch.promote_types(dtype, torch.float32)


def cell_boundaries(grid: Sequence[int]) -> list[int]:
    """k'+1 cell edges relative to the centre tap: p_0 = -r, ..., p_k' = r + 1."""
    radius = sum(grid) // 2
    edges = [-radius]
    for size in grid:
        edges.append(edges[-1] + size)
    return edges


def difference_matrix(cells: int) -> torch.Tensor:
    """Δ (k'+1, k') with Δ[a, i] = [i = a-1] - [i = a]: D = Δ w_θ Δᵀ is the 2-D difference
    of w_θ padded with zeros, D[a, b] = w[a-1, b-1] - w[a-1, b] - w[a, b-1] + w[a, b]."""
    eye = torch.eye(cells)
    return torch.cat([torch.zeros(1, cells), eye]) - torch.cat([eye, torch.zeros(1, cells)])


def clamped_offsets(grid: Sequence[int], size: int) -> list[int]:
    """Distinct effective boundaries along an axis of length ``size``: boundaries p <= -(size-1)
    always read the zero row/column (dropped), all p >= size read the last one (merged)."""
    return sorted({min(p, size) for p in cell_boundaries(grid) if p > 1 - size})


def clamp_boundaries(grid: Sequence[int], size: int) -> tuple[list[int], torch.Tensor]:
    """(offsets (n,), merge (n, k'+1)): ``clamped_offsets`` and merge[i, a] = 1 when boundary a
    reads the same clamped SAT index as offsets[i] for every output position."""
    offsets = clamped_offsets(grid, size)
    merge = torch.zeros(len(offsets), len(grid) + 1)
    for a, p in enumerate(cell_boundaries(grid)):
        if p > 1 - size:
            merge[offsets.index(min(p, size)), a] = 1.0
    return offsets, merge


def tap_map(grid: tuple[int, ...], height: int, width: int,
            device: torch.device) -> tuple[tuple[int, ...], tuple[int, ...], torch.Tensor]:
    """(row offsets, col offsets, L) for an (H, W) image, cached per device.

    L (n_rows·n_cols, k'·k') is the whole weight -> tap-coefficient step as one
    linear map: coeffs[c].flatten() = L @ w_θ[c].flatten(), the 2-D difference D
    merged over clamped boundaries, i.e. kron(merge_r Δ, merge_c Δ). Its transpose
    maps tap sums back to dL/dw_θ. Entries are small integers, exact in any dtype.
    """
    rows, cols = _tap_offsets(grid, height, width)

    def build() -> torch.Tensor:
        diff = difference_matrix(len(grid))
        row_merge, col_merge = clamp_boundaries(grid, height)[1], clamp_boundaries(grid, width)[1]
        return torch.kron(row_merge @ diff, col_merge @ diff)

    return rows, cols, device_constant(("sat tap map", grid, height, width), device, build)


@functools.lru_cache(maxsize=1024)
def _tap_offsets(grid: tuple[int, ...], height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(clamped_offsets(grid, height)), tuple(clamped_offsets(grid, width))


def prefix_sum_2d(x: torch.Tensor) -> torch.Tensor:
    """Exclusive 2-D prefix sum: (..., H, W) -> (..., H+1, W+1), S[u, v] = Σ_{h<u, w<v} x[h, w]."""
    return F.pad(x, (1, 0, 1, 0)).cumsum(-2).cumsum(-1)


def _clamped_index(offsets: tuple[int, ...], size: int, device: torch.device) -> torch.Tensor:
    """(n, size) SAT indices clamp(i + offset, 0, size), cached per device."""
    return device_constant(("sat clamped index", offsets, size), device, lambda: (
        torch.arange(size) + torch.tensor(offsets)[:, None]).clamp(0, size))


def _row_gathered_sat(x: torch.Tensor, row_offsets: Sequence[int],
                      col_offsets: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The SAT of x at every row offset, (B, C, n_rows, H, W+1), and the clamped SAT column of
    every output for every column offset, (B, C, n_cols, H, W) (an expanded index view)."""
    batch, channels, height, width = x.shape
    sat = prefix_sum_2d(x.to(accumulate_dtype(x.dtype)))
    rows = _clamped_index(tuple(row_offsets), height, x.device)
    cols = _clamped_index(tuple(col_offsets), width, x.device)
    return sat[:, :, rows], cols[None, None, :, None, :].expand(batch, channels, -1, height, -1)


def sat_taps(x: torch.Tensor, row_offsets: Sequence[int], col_offsets: Sequence[int],
             coeffs: torch.Tensor) -> torch.Tensor:
    """Y[n, c, h, w] = Σ_{i,j} coeffs[c, i, j] · S[n, c, h + row_i, w + col_j] (clamped).

    x (B, C, H, W), coeffs (C, n_rows, n_cols) -> Y (B, C, H, W) in x.dtype.
    """
    row_gathered, index = _row_gathered_sat(x, row_offsets, col_offsets)
    per_col = torch.einsum("ncihv,cij->ncjhv", row_gathered, coeffs.to(row_gathered.dtype))
    return per_col.gather(-1, index).sum(2).to(x.dtype)


def sat_tap_sums(dy: torch.Tensor, x: torch.Tensor, row_offsets: Sequence[int],
                 col_offsets: Sequence[int]) -> torch.Tensor:
    """G[c, i, j] = Σ_{n,h,w} dY[n, c, h, w] · S[n, c, h + row_i, w + col_j] (clamped): (C, n_rows, n_cols).

    dy, x (B, C, H, W); result in the accumulation dtype.
    """
    batch, channels, height, width = x.shape
    row_gathered, index = _row_gathered_sat(x, row_offsets, col_offsets)
    # Scatter dY onto the SAT column each output reads: Q[n, c, j, h, v] = Σ_{w: col(w)=v} dY[n, c, h, w].
    source = dy.to(row_gathered.dtype)[:, :, None].expand(-1, -1, len(col_offsets), -1, -1)
    scattered = row_gathered.new_zeros(batch, channels, len(col_offsets), height, width + 1)
    scattered.scatter_add_(-1, index, source)
    return torch.einsum("ncihv,ncjhv->cij", row_gathered, scattered)


TapsFn = Callable[[torch.Tensor, Sequence[int], Sequence[int], torch.Tensor], torch.Tensor]
TapSumsFn = Callable[[torch.Tensor, torch.Tensor, Sequence[int], Sequence[int]], torch.Tensor]


def peripheral_conv2d_taps(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int],
                           taps: TapsFn = sat_taps) -> torch.Tensor:
    """Peripheral conv through a SAT-taps primitive: (B, C, H, W) -> (B, C, H, W) in x.dtype."""
    rows, cols, linear = tap_map(tuple(grid), x.shape[-2], x.shape[-1], x.device)
    acc = accumulate_dtype(x.dtype)
    channels = weight.shape[0]
    coeffs = (weight.reshape(channels, -1).to(acc) @ linear.to(acc).mT).view(channels, len(rows), len(cols))
    return taps(x, rows, cols, coeffs)


def peripheral_grad_weight_taps(dy: torch.Tensor, x: torch.Tensor, grid: Sequence[int],
                                tap_sums: TapSumsFn = sat_tap_sums) -> torch.Tensor:
    """dL/dw_θ from dY and x (B, C, H, W): (C, 1, k', k') in the accumulation dtype."""
    rows, cols, linear = tap_map(tuple(grid), x.shape[-2], x.shape[-1], x.device)
    sums = tap_sums(dy, x, rows, cols)
    channels, cells = x.shape[1], len(grid)
    return (sums.reshape(channels, -1) @ linear.to(sums)).view(channels, 1, cells, cells)


def peripheral_grad_input_taps(dy: torch.Tensor, weight: torch.Tensor, grid: Sequence[int],
                               taps: TapsFn = sat_taps) -> torch.Tensor:
    """dL/dx: the same op on dY with the grid reversed and w_θ flipped."""
    return peripheral_conv2d_taps(dy, weight.flip(-2, -1), tuple(reversed(grid)), taps)
