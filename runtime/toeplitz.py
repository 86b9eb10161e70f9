"""Toeplitz (lag) form of peripheral convolution, in plain PyTorch: the reference of the
tensor-core Triton kernels.

On an (H, W) image an output pixel p only ever sees input pixels q at lags
δ = q - p in [-(H-1), H-1] x [-(W-1), W-1]. The ``lag kernel`` Kc (C, 2H-1, 2W-1)
is the expanded kernel on those lags (zero where the kernel does not reach), and
per channel the conv is one matrix product over the flattened image:

    Y[n, p] = Σ_q X[n, q] · Kc[q - p]          (forward; grad-input is the same product with
                                                the flipped w_θ over the reversed grid, i.e. Kc[p - q])
    dKc[δ]  = Σ_{n, p} dY[n, p] · X[n, p + δ]   (grad-weight, then summed per cell)

That is B·C·(HW)² multiply-adds (HW per output, whatever K is), all on tensor
cores, and exact in bf16/fp16: every entry of Kc is one shared weight, so casting
Kc to the input dtype rounds exactly as the dense reference does. It wins where
the image is small against the kernel (PeLK stages 2-4) and at reduced precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_LAG_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


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


def lag_tables(grid: tuple[int, ...], height: int, width: int,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(gather index ((2H-1)·(2W-1),), cell one-hots (E_h (2H-1, k'), E_w (2W-1, k'))) cached per device.

    The index picks Kc from w_θ (C, k'·k') with one zero column appended (index k'·k');
    E maps lag gradients back to cells: dL/dw_θ = E_hᵀ dKc E_w.
    """
    key = (grid, height, width, torch.device(device))
    if key not in _LAG_TABLES:
        cells = len(grid)
        rows, cols = torch.tensor(lag_cells(grid, height)), torch.tensor(lag_cells(grid, width))
        inside = (rows[:, None] < cells) & (cols[None, :] < cells)
        index = torch.where(inside, rows[:, None] * cells + cols[None, :], cells * cells).flatten()
        one_hots = tuple(F.one_hot(lags, cells + 1)[:, :cells].double() for lags in (rows, cols))
        _LAG_TABLES[key] = index.to(key[3]), tuple(t.to(key[3]) for t in one_hots)
    return _LAG_TABLES[key]


def lag_kernel(weight: torch.Tensor, grid: tuple[int, ...], height: int, width: int,
               dtype: torch.dtype) -> torch.Tensor:
    """w_θ (C, 1, k', k') -> Kc (C, 2H-1, 2W-1) in ``dtype``; Kc[c, H-1+δh, W-1+δw] = w[c, i, j]
    of the expanded kernel at i = δh + K//2, j = δw + K//2 (0 where that is outside K x K)."""
    index, _ = lag_tables(tuple(grid), height, width, weight.device)
    channels = weight.shape[0]
    flat = F.pad(weight.reshape(channels, -1).to(dtype), (0, 1))
    return flat[:, index].view(channels, 2 * height - 1, 2 * width - 1)


def lag_grad_to_weight(lag_grad: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """dKc (C, 2H-1, 2W-1) -> dL/dw_θ (C, 1, k', k') in dKc's dtype: each lag's gradient goes to its cell."""
    channels, lags_h, lags_w = lag_grad.shape
    _, (rows, cols) = lag_tables(tuple(grid), (lags_h + 1) // 2, (lags_w + 1) // 2, lag_grad.device)
    cells = len(grid)
    return torch.einsum("cij,ia,jb->cab", lag_grad, rows.to(lag_grad), cols.to(lag_grad)).view(
        channels, 1, cells, cells)


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


def lag_correlation(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dKc[c, H-1+δh, W-1+δw] = Σ_{n,h,w} dY[n, c, h, w] · X[n, c, h+δh, w+δw] (zero outside).

    dy, x (B, C, H, W) -> (C, 2H-1, 2W-1) in fp32 (fp64 for fp64): a grouped conv of x with dY.
    """
    batch, channels, height, width = x.shape
    acc = torch.promote_types(x.dtype, torch.float32)
    images = x.to(acc).transpose(0, 1).reshape(1, channels * batch, height, width)
    kernels = dy.to(acc).transpose(0, 1)  # (C, B, H, W): out-channel c sees its B images
    return F.conv2d(images, kernels, padding=(height - 1, width - 1), groups=channels)[0]


def peripheral_conv2d_lags(x: torch.Tensor, weight: torch.Tensor, grid: tuple[int, ...],
                           conv=toeplitz_conv) -> torch.Tensor:
    """Peripheral conv in the Toeplitz form through ``conv(x, Kc)``: (B, C, H, W) -> (B, C, H, W)."""
    height, width = x.shape[-2:]
    return conv(x, lag_kernel(weight, grid, height, width, x.dtype))


def peripheral_grad_weight_lags(dy: torch.Tensor, x: torch.Tensor, grid: tuple[int, ...],
                                correlation=lag_correlation) -> torch.Tensor:
    """dL/dw_θ (C, 1, k', k') from dY and x (B, C, H, W) through ``correlation(dy, x)``."""
    return lag_grad_to_weight(correlation(dy, x), grid)
