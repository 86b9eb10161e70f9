"""``PeripheralConv2d``: a thin nn.Module over ``runtime.op.peripheral_conv2d``."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from runtime import reference
from runtime.op import BACKENDS, peripheral_conv2d


class PeripheralConv2d(nn.Module):
    """Depthwise K x K peripheral conv with shared weights ``weight`` (C, 1, k', k').

    Init: like ``nn.Conv2d(C, C, K, groups=C)`` (kaiming-uniform, a=sqrt(5)),
    i.e. U(-1/K, 1/K) with fan-in K·K, for the weight and the optional bias, so
    every expanded tap has the distribution a dense depthwise conv's tap has.
    """

    def __init__(self, channels: int, grid: Sequence[int], bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.channels = channels
        self.grid = reference.check_grid(grid)
        self.kernel_size = sum(self.grid)
        cells = len(self.grid)
        self.weight = nn.Parameter(torch.empty(channels, 1, cells, cells))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.set_backend(backend)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.kernel_size * self.kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def set_backend(self, backend: str) -> None:
        """Pick the backend used by later forwards: one of BACKENDS."""
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend

    def expanded_weight(self) -> torch.Tensor:
        """The dense kernel (C, 1, K, K)."""
        return reference.expand_kernel(self.weight, self.grid)

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor | None = None,
                pos_mode: str = "padded") -> torch.Tensor:
        """x (B, C, H, W) -> (B, C, H, W); pos_embed (C, K, K) per Eq. 3."""
        return peripheral_conv2d(x, self.weight, self.grid, self.bias, pos_embed, pos_mode, self.backend)

    def extra_repr(self) -> str:
        return (f"{self.channels}, grid={list(self.grid)}, kernel_size={self.kernel_size}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")
