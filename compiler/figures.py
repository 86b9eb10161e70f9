"""Figures drawn with matplotlib (Agg, offline), written atomically as PNG.

`draw_grid`: the K x K partition of a sharing grid, like the paper's Fig. 1b.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from archspec.files import atomic_write_bytes  # noqa: E402
from archspec.grid import SharingGrid, cell_boundaries, region_map  # noqa: E402


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 150) -> Path:
    """Render ``figure`` to PNG at ``path`` atomically and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def grid_axes(axes: plt.Axes, grid: Sequence[int], title: str | None = None) -> None:
    """Draw the partition of a grid on ``axes``: cells shaded by their size, unshared centre highlighted."""
    grid = list(grid)
    size = sum(grid)
    cell = np.array(grid)
    index = np.repeat(np.arange(len(grid)), grid)
    area = cell[index][:, None] * cell[index][None, :]
    regions = region_map(grid)
    axes.imshow(np.log2(area), cmap="Blues", vmin=0, vmax=max(1.0, np.log2(area.max())),
                extent=(0, size, size, 0), interpolation="nearest")
    for boundary in cell_boundaries(grid):
        axes.axhline(boundary, color="#1f3b73", linewidth=0.6)
        axes.axvline(boundary, color="#1f3b73", linewidth=0.6)
    shared = SharingGrid(tuple(grid))
    center = shared.unshared_center
    low = (size - center) / 2
    axes.add_patch(plt.Rectangle((low, low), center, center, fill=False, edgecolor="#d62728", linewidth=1.5))
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title or f"K={size}, k'={len(grid)} ({regions.max() + 1} params/channel, "
                            f"{shared.param_ratio:.1%} of dense)", fontsize=8)


def draw_grid(grid: Sequence[int], path: str | Path, title: str | None = None) -> Path:
    """Write the partition of one sharing grid as a PNG (paper Fig. 1b)."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    grid_axes(axes, grid, title)
    return save_figure(figure, path)
