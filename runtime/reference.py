"""Pure-PyTorch reference for peripheral convolution (PeLK, CVPR 2024).

Every fast path in this package is tested against these functions. They are
exact, differentiable and slow (K x K taps per output).

Shapes: x (B, C, H, W); shared weights (C, 1, k', k'); grid a sequence of k'
positive ints summing to the odd kernel size K; positional embedding (C, K, K).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from runtime.constants import device_constant

POS_MODES = ("padded", "valid")


def check_grid(grid: Sequence[int]) -> tuple[int, ...]:
    """Return ``grid`` as a tuple after checking: positive ints with an odd sum."""
    grid = tuple(int(g) for g in grid)
    if not grid or any(g < 1 for g in grid):
        raise ValueError(f"grid must be a non-empty sequence of positive ints, got {list(grid)}")
    if sum(grid) % 2 == 0:
        raise ValueError(f"grid must sum to an odd kernel size, got sum {sum(grid)} for {list(grid)}")
    return grid


def cell_index(grid: Sequence[int], device=None) -> torch.Tensor:
    """Cell of every kernel row: (K,) int64, ``repeat_interleave(arange(k'), grid)``.

    Eager: a cached device constant (no host-to-device copy per call). Under torch.compile:
    computed from an arange inside the graph, so no tensor outlives a CUDA-graph replay."""
    grid = tuple(grid)
    if torch.compiler.is_compiling():
        rows = torch.arange(sum(grid), device=device)
        index = torch.zeros_like(rows)
        start = 0
        for size in grid[:-1]:
            start += size
            index = index + (rows >= start).long()
        return index
    return device_constant(("cell index", grid), device or "cpu", lambda: torch.tensor(
        [cell for cell, size in enumerate(grid) for _ in range(size)]))


def expand_kernel(weight: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Shared weights (C, 1, k', k') -> dense kernel (C, 1, K, K), w[c, i, j] = w_θ[c, a(i), a(j)]."""
    index = cell_index(grid, weight.device)
    return weight[:, :, index][:, :, :, index]


def peripheral_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int],
                                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise, stride 1, same padding conv with the expanded kernel: (B, C, H, W) -> (B, C, H, W)."""
    kernel = expand_kernel(weight, grid).to(x.dtype)
    return F.conv2d(x, kernel, None if bias is None else bias.to(x.dtype),
                    padding=sum(grid) // 2, groups=x.shape[1])


def pos_embed_padded(weight: torch.Tensor, grid: Sequence[int], pos_embed: torch.Tensor) -> torch.Tensor:
    """``padded`` Eq. 3 term: h is added at every tap, so it is a bias Σ_ij w⊙h: (C,) -> view (1, C, 1, 1)."""
    kernel = expand_kernel(weight, grid)[:, 0]
    return (kernel * pos_embed).sum((-2, -1)).view(1, -1, 1, 1)


def pos_embed_valid(weight: torch.Tensor, grid: Sequence[int], pos_embed: torch.Tensor,
                    height: int, width: int) -> torch.Tensor:
    """``valid`` Eq. 3 term: h added only at taps inside the image, conv(ones, w⊙h): (1, C, H, W).

    For output (y, x) the taps inside the image form one rectangle of the kernel,
    so the term is 4 lookups into the inclusive 2-D prefix sum of w⊙h (C, K+1, K+1).
    """
    kernel = expand_kernel(weight, grid)[:, 0] * pos_embed
    size = kernel.shape[-1]
    prefix = F.pad(kernel, (1, 0, 1, 0)).cumsum(-2).cumsum(-1)
    radius = size // 2
    rows = torch.arange(height, device=kernel.device)
    cols = torch.arange(width, device=kernel.device)
    # Kernel rows i with 0 <= y + i - r < H: i in [r - y, r - y + H), cut to [0, K].
    r0, r1 = (radius - rows).clamp(0, size), (radius - rows + height).clamp(0, size)
    c0, c1 = (radius - cols).clamp(0, size), (radius - cols + width).clamp(0, size)
    term = (prefix[:, r1][:, :, c1] - prefix[:, r0][:, :, c1]
            - prefix[:, r1][:, :, c0] + prefix[:, r0][:, :, c0])
    return term.unsqueeze(0)


def pos_embed_term(weight: torch.Tensor, grid: Sequence[int], pos_embed: torch.Tensor, mode: str,
                   height: int, width: int) -> torch.Tensor:
    """The Eq. 3 positional-embedding term to add to the conv output, broadcastable to (B, C, H, W)."""
    if mode == "padded":
        return pos_embed_padded(weight, grid, pos_embed)
    if mode == "valid":
        return pos_embed_valid(weight, grid, pos_embed, height, width)
    raise ValueError(f"pos_mode must be one of {POS_MODES}, got {mode!r}")
