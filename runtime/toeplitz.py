"""Toeplitz (lag) form of peripheral convolution, in plain PyTorch: the reference of the
tensor-core Triton kernels.

On an (H, W) image an output pixel p only ever sees input pixels q at lags
δ = q - p in [-(H-1), H-1] x [-(W-1), W-1]. The ``lag kernel`` Kc (C, 2H-1, 2W-1)
is the expanded kernel on those lags (zero where the kernel does not reach), and
per channel the conv is one matrix product over the flattened image:

    Y[n, p] = Σ_q X[n, q] · Kc[q - p]          (forward; grad-input is the same product with
                                                the flipped w_θ over the reversed grid, i.e. Kc[p - q])

That is B·C·(HW)² multiply-adds (HW per output, whatever K is), all on tensor
cores, and exact in bf16/fp16: every entry of Kc is one shared weight, so casting
Kc to the input dtype rounds exactly as the dense reference does. It wins where
the image is small against the kernel (PeLK stages 2-4) and at reduced precision.

The **box form** factors the piecewise-constant kernel by kernel-row cell a: with X_a the
vertical box sum of the input over a's row lags (two lookups into a column prefix sum) and R_a
the (W x W) horizontal Toeplitz matrix of w_θ's row a, Y = Σ_a X_a R_a: one GEMM over the image
rows with k'·W multiply-adds per output (``box_conv``), the forward twin of the box products
below. In bf16/fp16 a multi-row cell's X_a is split into two half-precision parts (about 16 bits
kept); a one-row cell's X_a is an input row, exact as it is. It wins in fp32 on the larger planes
(PeLK stages 1-2), where the Toeplitz form's H·W products cost three TF32 products each.

Grad-weight sums the lag correlation dKc[δ] = Σ_{n,p} dY[n, p] · X[n, p + δ] over each
cell. Summing the vertical lags of cell a first gives the box-filtered input
X_a[n, h, w] = Σ_{δh in cell a} X[n, h + δh, w] (two lookups into a column prefix sum), and

    R_a[w, v] = Σ_{n, h} dY[n, h, w] · X_a[n, h, v]      (a (W x W) GEMM over the B·H rows)
    dL/dw_θ[a, b] = Σ_{w, v: v - w in cell b} R_a[w, v]

which is k'·W multiply-adds per input pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.constants import device_constant

def lag_cells(grid: tuple[int, ...], size: int) -> list[int]:
    """Cell of every lag -(size-1)..size-1 along an axis of length ``size``; len(grid) where the
    kernel does not reach (kernel row δ + K//2 outside [0, K))."""
    cells = [cell for cell, width in enumerate(grid) for _ in range(width)]
    radius = sum(grid) // 2
    return [cells[lag + radius] if 0 <= lag + radius < len(cells) else len(grid)
            for lag in range(1 - size, size)]


def lag_reach(grid: tuple[int, ...], size: int) -> tuple[int, int]:
    """(lo, hi): the lags q - p along an axis of length ``size`` where the kernel is non-zero."""
    radius = sum(grid) // 2
    return max(-radius, 1 - size), min(sum(grid) - 1 - radius, size - 1)


def lag_kernel_index(grid: tuple[int, ...], height: int, width: int, device: torch.device) -> torch.Tensor:
    """((2H-1)·(2W-1),) positions in w_θ (C, k'·k') with one zero column appended (index k'·k')
    that make up the lag kernel, cached per device."""
    def build() -> torch.Tensor:
        cells = len(grid)
        rows, cols = torch.tensor(lag_cells(grid, height)), torch.tensor(lag_cells(grid, width))
        inside = (rows[:, None] < cells) & (cols[None, :] < cells)
        return torch.where(inside, rows[:, None] * cells + cols[None, :], cells * cells).flatten()

    return device_constant(("lag kernel index", grid, height, width), device, build)


def gather_shared(weight: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """w_θ (C, 1, k', k') gathered at ``index`` into (C, len(index)) in ``dtype``; index k'·k' is a zero."""
    return F.pad(weight.reshape(weight.shape[0], -1).to(dtype), (0, 1))[:, index]


def lag_kernel(weight: torch.Tensor, grid: tuple[int, ...], height: int, width: int,
               dtype: torch.dtype) -> torch.Tensor:
    """w_θ (C, 1, k', k') -> Kc (C, 2H-1, 2W-1) in ``dtype``; Kc[c, H-1+δh, W-1+δw] = w[c, i, j]
    of the expanded kernel at i = δh + K//2, j = δw + K//2 (0 where that is outside K x K)."""
    index = lag_kernel_index(tuple(grid), height, width, weight.device)
    return gather_shared(weight, index, dtype).view(weight.shape[0], 2 * height - 1, 2 * width - 1)


def _toeplitz_index(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(HW, HW) index of Kc[q - p] in the flattened lag kernel, rows q, columns p."""
    h, w = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    h, w = h.flatten(), w.flatten()
    return (h[:, None] - h[None, :] + height - 1) * (2 * width - 1) + (w[:, None] - w[None, :] + width - 1)


def toeplitz_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Y[n, c, p] = Σ_q X[n, c, q] · Kc[c, q - p].

    x (B, C, H, W), kernel Kc (C, 2H-1, 2W-1) -> (B, C, H, W); accumulates in fp32 (fp64 for fp64).
    Builds every (HW, HW) matrix: a reference for tests, not a fast path.
    """
    batch, channels, height, width = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    index = _toeplitz_index(height, width, x.device)
    matrices = kernel.to(acc).reshape(channels, -1)[:, index]
    y = torch.einsum("ncq,cqp->ncp", x.to(acc).reshape(batch, channels, -1), matrices)
    return y.view(x.shape).to(x.dtype)


def padded_width(width: int) -> int:
    """W padded to a power of two >= 16 (a tensor-core dot's K): the box forms' plane width, at which
    ``op.box_macs`` counts their multiply-adds."""
    return max(16, 1 << (width - 1).bit_length())


def column_block_index(grid: tuple[int, ...], width: int, device: torch.device) -> torch.Tensor:
    """(k'·Wp·Wp,) positions in w_θ (C, k'·k') plus one zero column (index k'·k') that make up the
    column blocks, cached per device; Wp = padded_width(W)."""
    def build() -> torch.Tensor:
        cells, padded = len(grid), padded_width(width)
        column_lags = torch.tensor(lag_cells(grid, width))
        q, p = torch.arange(padded)[:, None], torch.arange(padded)[None, :]
        columns = torch.where((q < width) & (p < width), column_lags[(q - p + width - 1).clamp(0, 2 * width - 2)],
                              cells)
        rows = torch.arange(cells)[:, None, None]
        return torch.where(columns[None] < cells, rows * cells + columns[None], cells * cells).flatten()

    return device_constant(("column block index", grid, width), device, build)


def column_blocks(weight: torch.Tensor, grid: tuple[int, ...], width: int, dtype: torch.dtype) -> torch.Tensor:
    """w_θ (C, 1, k', k') -> R (C, k', Wp, Wp) in ``dtype``: the horizontal Toeplitz matrix of
    kernel-row cell a, R[c, a, wq, wp] = w_θ[c, a, cell of wq - wp] (0 beyond the kernel and in the
    padding wq or wp >= W)."""
    index = column_block_index(tuple(grid), width, weight.device)
    padded = padded_width(width)
    return gather_shared(weight, index, dtype).view(weight.shape[0], len(grid), padded, padded)


HALF_SCALE_BITS = 14
"""Scaled into fp16, a channel's largest weight (or a plane's largest box sum) lands in
[2^14, 2^15): below fp16's 65504 with a factor of two to spare, and 28 binades above its
smallest normal number, so every entry that matters keeps fp16's 11 bits."""


def float_exponent(value: torch.Tensor) -> torch.Tensor:
    """floor(log2 |value|) of fp32 values from their exponent bits, int32: -127 for 0 and subnormals,
    128 for inf and NaN (the Triton kernels compute the same from the same bits)."""
    return ((value.float().abs().view(torch.int32) >> 23) & 0xFF) - 127


def clamp_exponent(exponent: torch.Tensor) -> torch.Tensor:
    """Exponents e with 2^e and 2^-e normal fp32 numbers: clamped to [-126, 126]."""
    return exponent.clamp(-126, 126)


def half_block_exponents(weight: torch.Tensor) -> torch.Tensor:
    """w_θ (C, 1, k', k') or R (C, k', Wp, Wp) -> (C,) int32 e_c that scale channel c's largest
    |weight| into [2^14, 2^15) (HALF_SCALE_BITS); 126 for an all-zero channel."""
    amax = weight.abs().flatten(1).amax(1)
    return clamp_exponent(HALF_SCALE_BITS - float_exponent(amax)).to(torch.int32)


def half_blocks(blocks: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """R (C, k', Wp, Wp) in bf16/fp16 -> R·2^e_c in fp16 (exact where a weight is normal there: bf16's 8
    and fp16's 11 significant bits fit), the plane box's operand for its wide cells' box sums in fp16."""
    scale = torch.ldexp(torch.ones((), dtype=torch.float32, device=blocks.device), exponents.float())
    return (blocks.float() * scale[:, None, None, None]).to(torch.float16)


def box_conv(x: torch.Tensor, blocks: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Y = Σ_a X_a R_a: per kernel-row cell a, the vertical box sum X_a of x over a's row lags
    (from a column prefix sum) times the horizontal Toeplitz block R_a.

    x (B, C, H, W), blocks R (C, k', Wp, Wp) -> (B, C, H, W); accumulates in fp32 (fp64 for fp64).
    """
    width = x.shape[-1]
    prefix = F.pad(column_prefix(x), (0, blocks.shape[-1] - width))
    y = sum(torch.einsum("nchq,cqp->nchp", vertical_box(prefix, lags), blocks[:, cell].to(prefix.dtype))
            for cell, lags in enumerate(cell_lag_ranges(tuple(grid))))
    return y[..., :width].to(x.dtype)


def peripheral_conv2d_box(x: torch.Tensor, weight: torch.Tensor, grid: tuple[int, ...], conv=box_conv,
                          blocks=column_blocks) -> torch.Tensor:
    """Peripheral conv in the box form through ``conv(x, R, grid)`` with R = ``blocks(w_θ, grid, W, dtype)``:
    (B, C, H, W) -> (B, C, H, W)."""
    return conv(x, blocks(weight, grid, x.shape[-1], x.dtype), grid)


def cell_lag_ranges(grid: tuple[int, ...]) -> list[tuple[int, int]]:
    """Per cell, the half-open range [lo, hi) of lags δ = kernel index - K//2 it covers."""
    radius, start, ranges = sum(grid) // 2, 0, []
    for width in grid:
        ranges.append((start - radius, start + width - radius))
        start += width
    return ranges


def cells_within_reach(grid: tuple[int, ...], size: int) -> tuple[int, ...]:
    """The cells whose lags reach into an image of ``size`` rows (some lag in [-(size-1), size-1])."""
    return tuple(cell for cell, (lo, hi) in enumerate(cell_lag_ranges(grid)) if lo < size and hi > 1 - size)


def column_prefix(x: torch.Tensor) -> torch.Tensor:
    """Exclusive prefix sum along H in fp32 (fp64 for fp64): (B, C, H, W) -> (B, C, H+1, W)."""
    return F.pad(x.to(torch.promote_types(x.dtype, torch.float32)), (0, 0, 1, 0)).cumsum(-2)


def vertical_box(prefix: torch.Tensor, lags: tuple[int, int]) -> torch.Tensor:
    """Σ_{δ in [lo, hi)} x[..., h + δ, :] (rows outside the image are zero) from the column prefix of x:
    prefix (..., H+1, W) -> (..., H, W)."""
    height = prefix.shape[-2] - 1
    rows = torch.arange(height, device=prefix.device)
    lo, hi = lags
    return prefix[..., (rows + hi).clamp(0, height), :] - prefix[..., (rows + lo).clamp(0, height), :]


def box_products(dy: torch.Tensor, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """R[c, a, w, v] = Σ_{n,h} dY[n, c, h, w] · X_a[n, c, h, v], X_a the vertical box sum of x over
    cell a's lags: dy, x (B, C, H, W) -> (C, k', W, W) in fp32 (fp64 for fp64)."""
    prefix = column_prefix(x)
    boxes = torch.stack([vertical_box(prefix, lags) for lags in cell_lag_ranges(tuple(grid))], dim=2)
    return torch.einsum("nchw,ncahv->cawv", dy.to(prefix.dtype), boxes)


def _column_cells(grid: tuple[int, ...], width: int, device: torch.device) -> torch.Tensor:
    """(W, W, k') one-hot: [v - w in cell b] in fp32 (the dtype of the products), cached per device."""
    def build() -> torch.Tensor:
        lags = torch.tensor(lag_cells(grid, width))  # lag v - w = index - (W-1)
        columns = torch.arange(width)
        cells = lags[columns[None, :] - columns[:, None] + width - 1]
        return F.one_hot(cells, len(grid) + 1)[..., :len(grid)].float()  # 0/1: exact in fp32

    return device_constant(("box column cells", grid, width), device, build)


def box_products_to_weight(products: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """R (C, k', W, W) -> dL/dw_θ (C, 1, k', k'): R_a[w, v] goes to cell (a, cell of v - w)."""
    channels, cells, width, _ = products.shape
    one_hot = _column_cells(tuple(grid), width, products.device).to(products)
    return (products.reshape(channels * cells, -1) @ one_hot.view(-1, cells)).view(channels, 1, cells, cells)


def peripheral_conv2d_lags(x: torch.Tensor, weight: torch.Tensor, grid: tuple[int, ...],
                           conv=toeplitz_conv) -> torch.Tensor:
    """Peripheral conv in the Toeplitz form through ``conv(x, Kc)``: (B, C, H, W) -> (B, C, H, W)."""
    height, width = x.shape[-2:]
    return conv(x, lag_kernel(weight, grid, height, width, x.dtype))


def peripheral_grad_weight_boxes(dy: torch.Tensor, x: torch.Tensor, grid: tuple[int, ...],
                                 products=box_products) -> torch.Tensor:
    """dL/dw_θ (C, 1, k', k') from dY and x (B, C, H, W) through ``products(dy, x, grid)``."""
    return box_products_to_weight(products(dy, x, grid), grid)
