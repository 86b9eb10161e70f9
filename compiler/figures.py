"""Figures drawn with matplotlib (Agg, offline), written atomically as PNG.

`draw_grid`: the K x K partition of a sharing grid, like the paper's Fig. 1b.
`kernel_axes`: the K x K footprint of any mixer (peripheral grid, dense square, stripe cross).
`draw_erf`: ERF heatmaps, like the paper's Fig. 4.
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
from archspec.grid import SharingGrid, cell_boundaries  # noqa: E402


def figure_png(figure: plt.Figure, dpi: int = 150) -> bytes:
    """Render ``figure`` to PNG bytes and close it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 150) -> Path:
    """Render ``figure`` to PNG at ``path`` atomically and close it."""
    return atomic_write_bytes(path, figure_png(figure, dpi))


def grid_axes(axes: plt.Axes, grid: Sequence[int], title: str | None = None) -> None:
    """Draw the partition of a grid on ``axes``: cells shaded by their size, unshared centre highlighted."""
    grid = list(grid)
    size = sum(grid)
    cell = np.array(grid)
    area = np.log2(np.outer(cell, cell))  # one value per shared weight (k' x k'), not per kernel position
    boundaries = cell_boundaries(grid)
    axes.pcolormesh(boundaries, boundaries, area, cmap="Blues", vmin=0, vmax=max(1.0, area.max()),
                    edgecolors="#1f3b73", linewidth=0.6)
    axes.set_xlim(0, size)
    axes.set_ylim(size, 0)
    axes.set_aspect("equal")
    shared = SharingGrid(tuple(grid))
    center = shared.unshared_center
    low = (size - center) / 2
    axes.add_patch(plt.Rectangle((low, low), center, center, fill=False, edgecolor="#d62728", linewidth=1.5))
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title or f"K={size}, k'={len(grid)} ({len(grid) ** 2} params/channel, "
                            f"{shared.param_ratio:.1%} of dense)", fontsize=8)


def draw_grid(grid: Sequence[int], path: str | Path, title: str | None = None) -> Path:
    """Write the partition of one sharing grid as a PNG (paper Fig. 1b)."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    grid_axes(axes, grid, title)
    return save_figure(figure, path)


def kernel_axes(axes: plt.Axes, mixer: str, kernel: int, grid: Sequence[int] | None = None,
                short_side: int | None = None, title: str | None = None) -> None:
    """The K x K footprint of a stage's large kernel: the sharing grid of a peripheral kernel, every
    position its own weight for a dense one, the K x N + N x K cross of a stripe one."""
    if mixer == "peripheral":
        grid_axes(axes, grid, title)
        return
    footprint = np.ones((kernel, kernel))
    if mixer == "stripe":
        footprint = np.zeros((kernel, kernel))
        low = (kernel - short_side) // 2
        footprint[:, low:low + short_side] = 1
        footprint[low:low + short_side, :] = 1
    axes.imshow(footprint, cmap="Blues", vmin=0, vmax=2.5, extent=(0, kernel, kernel, 0), interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    weights = int(footprint.sum())
    axes.set_title(title or f"{mixer} K={kernel}: {weights} weights/channel, no sharing", fontsize=8)


def erf_colormap() -> matplotlib.colors.Colormap:
    """RepLKNet's heatmap colours: the upper half of RdYlGn (seaborn centres it at 0 on data in [0, 1])."""
    colors = plt.get_cmap("RdYlGn")(np.linspace(0.5, 1.0, 256))
    return matplotlib.colors.LinearSegmentedColormap.from_list("erf", colors)


def erf_axes(axes: plt.Axes, display: np.ndarray, title: str | None = None):
    """One ERF heatmap (values in [0, 1]) on ``axes``; returns the image for a colour bar."""
    image = axes.imshow(display, cmap=erf_colormap(), vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=9)
    return image


def erf_figure(panels: Sequence[tuple[str, np.ndarray]]) -> plt.Figure:
    """ERF heatmaps side by side (paper Fig. 4), one colour bar on top."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    image = None
    for panel, (title, display) in zip(axes[0], panels):
        image = erf_axes(panel, display, title)
    bar = figure.colorbar(image, ax=list(axes[0]), location="top", fraction=0.05, pad=0.08)
    bar.set_label("log10(contribution + 1), max-normalised", fontsize=8)
    return figure


def draw_erf(panels: Sequence[tuple[str, np.ndarray]], path: str | Path) -> Path:
    """Write (title, display map) heatmaps side by side as one PNG (paper Fig. 4 when several)."""
    return save_figure(erf_figure(panels), path)
