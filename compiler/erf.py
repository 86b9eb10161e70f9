"""Effective receptive fields (paper Sec. 6.1, Fig. 4), measured as RepLKNet and SLaK do.

The method (RepLKNet's ``erf/visualize_erf.py`` and ``erf/analyze_erf.py``,
reused unchanged by SLaK and PeLK):

1. each image is resized to size x size (bicubic) and normalised with the
   ImageNet mean and std; the model is in eval mode;
2. y = last stage's feature map (B, C, h, w); the scalar
   s = sum_c ReLU(y[0, c, h // 2, w // 2]) is the central point;
3. the contribution of every input pixel is ReLU(ds/dx) summed over the
   colour channels: a (size, size) map;
4. the maps are averaged over the images (RepLKNet's ``AverageMeter``; an
   image whose map holds a NaN is skipped);
5. for display and analysis: ``log10(m + 1)``, then divided by its maximum;
6. the high-contribution area ratio at threshold t is that of the smallest
   centred square of side 2i + 1 (i >= 1) whose share of the (log-scaled)
   total exceeds t: ratio = (2i + 1)^2 / (H W); ``None`` when no square up
   to side 2 (H // 2 - 1) + 1 reaches t (RepLKNet's ``get_rectangle``).

Images: ``--images DIR`` (every image file under it, sorted, the first N),
or the real photographs shipped inside scikit-image (offline).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import io
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
PAPER_NUM_IMAGES = 50  # the paper samples 50 validation images
# Natural photographs inside scikit-image's wheel (skimage/data/), readable without network.
SHIPPED_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg")


class ErfError(ValueError):
    """ERF inputs that cannot be used (no images, unreadable image, bad size); the message says why."""


def shipped_photos() -> list[Path]:
    """Paths of the photographs bundled with scikit-image (astronaut, cameraman, cat, coffee, ...)."""
    try:
        folder = importlib.resources.files("skimage.data")
    except ModuleNotFoundError:
        raise ErfError("no --images given and scikit-image (which ships the default photographs) is not "
                       "installed: `pip install scikit-image` or pass --images DIR") from None
    paths = [Path(str(folder / name)) for name in SHIPPED_PHOTOS]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise ErfError(f"scikit-image at {folder} lacks the photographs {missing}: pass --images DIR")
    return paths


def find_images(directory: str | Path | None, num_images: int | None) -> list[Path]:
    """The images to use: the first ``num_images`` image files under ``directory`` (sorted, recursive;
    the paper's 50 by default), or the shipped photographs (all of them by default)."""
    if num_images is not None and num_images < 1:
        raise ErfError(f"--num-images must be at least 1, got {num_images}")
    if directory is None:
        paths, where = shipped_photos(), "the photographs shipped with scikit-image"
        wanted = num_images or len(paths)
    else:
        directory = Path(directory)
        if not directory.is_dir():
            raise ErfError(f"{directory}: not a directory of images")
        paths = sorted(path for path in directory.rglob("*")
                       if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
        where = str(directory)
        if not paths:
            raise ErfError(f"{directory}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
        wanted = num_images or min(PAPER_NUM_IMAGES, len(paths))
    if wanted > len(paths):
        raise ErfError(f"--num-images {wanted}: only {len(paths)} images in {where}")
    return paths[:wanted]


def check_output(path: str | Path) -> None:
    """Refuse, before minutes of measuring, an output ``path`` (file or folder) that cannot be written:
    a parent of it is a file, or the folder that would hold it is not writable."""
    path = Path(path).absolute()
    existing = next(candidate for candidate in (path, *path.parents) if candidate.exists())
    if existing != path and not existing.is_dir():
        raise ErfError(f"{path}: cannot write here: {existing} is a file, not a directory")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ErfError(f"{path}: cannot write here: {folder} is not writable")


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """An image as the ERF scripts feed it: RGB, resized to size x size (bicubic), ImageNet-normalised;
    (3, size, size) float32."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError) as error:
        raise ErfError(f"{path}: cannot read as an image ({error})") from None
    pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pixels - mean) / std


@contextlib.contextmanager
def _frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the model's state is restored after."""
    was_training = model.training
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    model.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(was_training)


def input_gradient(model: torch.nn.Module, image: torch.Tensor) -> np.ndarray:
    """Contribution map of one image (3, H, W) -> (H, W): ReLU(d centre / d input) summed over channels.

    centre = sum_c ReLU(last_stage[0, c, h // 2, w // 2]) (RepLKNet's ``get_input_grad``).
    """
    device = next(model.parameters()).device
    sample = image.unsqueeze(0).to(device).requires_grad_(True)
    features = model.forward_stages(sample)[-1]
    height, width = features.shape[-2:]
    central_point = torch.relu(features[:, :, height // 2, width // 2]).sum()
    (gradient,) = torch.autograd.grad(central_point, sample)
    return torch.relu(gradient).sum((0, 1)).double().cpu().numpy()


def mean_contribution(model: torch.nn.Module, images: Sequence[str | Path], size: int,
                      progress: bool = True, label: str = "ERF") -> tuple[np.ndarray, list[Path]]:
    """Average contribution map (size, size) over ``images``, and the images used (NaN maps are skipped).

    Shows a tqdm progress bar over the images on stderr when ``progress``.
    """
    from tqdm.auto import tqdm
    total, used = np.zeros((size, size), dtype=np.float64), []
    with _frozen_eval(model):
        for path in tqdm(images, desc=label, unit="image", disable=not progress, leave=True):
            scores = input_gradient(model, load_image(path, size))
            if np.isnan(scores).any():
                continue
            total += scores
            used.append(Path(path))
    if not used:
        raise ErfError(f"{label}: every image gave a NaN gradient; the model's weights are broken")
    return total / len(used), used


def display_map(scores: np.ndarray) -> np.ndarray:
    """log10(m + 1) rescaled to [0, 1] by its maximum (all zeros stay zeros); what the heatmaps show."""
    scaled = np.log10(scores + 1.0)
    peak = scaled.max()
    return scaled / peak if peak > 0 else scaled


def area_ratio(display: np.ndarray, threshold: float) -> tuple[int, float] | None:
    """(side, area ratio) of the smallest centred square holding more than ``threshold`` of the total,
    or None (RepLKNet's ``get_rectangle``: sides 3, 5, ... up to 2 (H // 2 - 1) + 1)."""
    size = display.shape[0]
    if display.shape != (size, size):
        raise ValueError(f"the ERF map must be square, got {display.shape}")
    total = display.sum()
    if total <= 0:
        return None
    # Sums of the centred squares of half-side i, for every i at once, from a 2-D prefix sum.
    prefix = np.pad(display, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    half = np.arange(1, size // 2)
    low, high = size // 2 - half, size // 2 + 1 + half
    inside = prefix[high, high] - prefix[low, high] - prefix[high, low] + prefix[low, low]
    reached = np.nonzero(inside / total > threshold)[0]
    if reached.size == 0:
        return None
    side = int(2 * half[reached[0]] + 1)
    return side, (side / size) ** 2


def area_ratios(display: np.ndarray, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, dict | None]:
    """{"20%": {"threshold", "side", "ratio"} or None, ...} for each threshold."""
    ratios: dict[str, dict | None] = {}
    for threshold in thresholds:
        found = area_ratio(display, threshold)
        ratios[f"{threshold:.0%}"] = None if found is None else {
            "threshold": threshold, "side": found[0], "ratio": found[1]}
    return ratios


@dataclass
class ErfResult:
    """The ERF of one model: raw mean contributions (size, size), the display map and the area ratios."""

    label: str
    source: str
    name: str
    fingerprint: str
    size: int
    images: list[str]
    scores: np.ndarray = field(repr=False)

    @cached_property
    def display(self) -> np.ndarray:
        return display_map(self.scores)

    @cached_property
    def ratios(self) -> dict[str, dict | None]:
        return area_ratios(self.display)

    def summary(self) -> dict:
        return {"label": self.label, "source": self.source, "model": self.name, "fingerprint": self.fingerprint,
                "size": self.size, "num_images": len(self.images), "images": self.images,
                "max_contribution": float(self.scores.max()), "area_ratios": self.ratios}


def check_size(model: torch.nn.Module, size: int) -> None:
    """The input must leave a last-stage map of at least 1 x 1."""
    reduction = model.feature_info[-1]["reduction"]
    if size < reduction:
        raise ErfError(f"--size {size} is smaller than the model's total stride {reduction}: "
                       f"the last stage would have no pixels")


def resolve_device(device: str = "auto", backend: str = "auto") -> torch.device:
    """The device to measure on (``auto``: CUDA when available, else CPU), checked against the backend."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ErfError("--device cuda: no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise ErfError(f"--device must be auto, cpu or cuda, got {device!r}")
    from runtime.op import resolve_backend
    try:  # the runtime's own rule, on a probe tensor of that device
        resolve_backend(backend, torch.zeros(1, 1, 1, 1, device=device), (1,))
    except (RuntimeError, ValueError) as error:
        raise ErfError(f"--backend {backend} on {device}: {error}") from None
    return torch.device(device)


def measure_erfs(sources: Sequence[str | Path], images: Sequence[str | Path], size: int = 1024,
                 backend: str = "auto", progress: bool = True, device: str = "cpu") -> list[ErfResult]:
    """ERFs of build directories (their trained weights) or specs / presets (fresh weights), on ``device``,
    labelled by `unique_labels`. Every source is loaded before any is measured: a mistake in the last one
    fails at once, not after the others' minutes of measuring."""
    from compiler.build import resolve_model
    models = [resolve_model(source, backend=backend) for source in sources]
    for model in models:
        check_size(model, size)
    target = resolve_device(device, backend)
    return [model_erf(model.to(target), str(source), images, size, label, progress)
            for model, source, label in zip(models, sources, unique_labels(sources))]


def model_erf(model: torch.nn.Module, source: str, images: Sequence[str | Path], size: int, label: str,
              progress: bool = True) -> ErfResult:
    """ERF of a built LargeKernelNet at input size x size over ``images``."""
    check_size(model, size)
    scores, used = mean_contribution(model, images, size, progress=progress, label=label)
    return ErfResult(label, source, model.spec.name, model.fingerprint, size, [str(path) for path in used], scores)


def model_label(source: str | Path) -> str:
    """A short name for a model argument: the file or directory name without suffix, or the preset name."""
    path = Path(source)
    if path.name in ("", ".."):
        path = path.resolve()
    stem = path.stem if path.suffix in (".yaml", ".yml", ".pt") else path.name
    if path.suffix == ".pt":
        stem = path.parent.name or stem
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", stem) or "model"


def unique_labels(sources: Sequence[str | Path]) -> list[str]:
    """One distinct label per source, with -2, -3, ... added where two would collide."""
    labels: list[str] = []
    for source in sources:
        label = name = model_label(source)
        number = 1
        while label in labels:
            number += 1
            label = f"{name}-{number}"
        labels.append(label)
    return labels


def write_erf(results: Sequence[ErfResult], out_dir: str | Path) -> list[Path]:
    """Write, atomically, per model ``erf_<label>.png`` (heatmap) and ``erf_<label>.npy`` (mean contribution,
    RepLKNet's saved matrix), ``erf_comparison.png`` when several, and ``erf.json`` with the area ratios."""
    from archspec.files import atomic_write_bytes, atomic_write_text
    from compiler.figures import draw_erf
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ErfError(f"{out_dir}: exists and is not a directory")
    written = []
    for result in results:
        written.append(draw_erf([(erf_title(result), result.display)], out_dir / f"erf_{result.label}.png"))
        written.append(atomic_write_bytes(out_dir / f"erf_{result.label}.npy", _npy_bytes(result.scores)))
    if len(results) > 1:
        written.append(draw_erf([(erf_title(result), result.display) for result in results],
                                out_dir / "erf_comparison.png"))
    report = {"method": "RepLKNet/SLaK: ReLU(d sum_c ReLU(last_stage[centre]) / d input), summed over colour "
                        "channels, averaged over images; log10(x + 1), max-normalised; area ratio = smallest "
                        "centred square holding more than t of the total",
              "thresholds": list(THRESHOLDS), "models": [result.summary() for result in results]}
    written.append(atomic_write_text(out_dir / "erf.json", json.dumps(report, indent=2) + "\n"))
    return written


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def erf_title(result: ErfResult) -> str:
    """Heatmap title: label, then the area ratio at 20 % and 99 % (RepLKNet reports these)."""
    def percent(key: str) -> str:
        found = result.ratios[key]
        return "n/a" if found is None else f"{found['ratio']:.1%}"
    return f"{result.label}  (t=20%: {percent('20%')}, t=99%: {percent('99%')})"


def ratio_rows(results: Sequence[ErfResult]) -> list[dict]:
    """A printable row per model: the area ratio (and square side) at every threshold."""
    rows = []
    for result in results:
        row = {"model": result.label, "images": len(result.images), "size": result.size}
        for key, found in result.ratios.items():
            row[f"t={key}"] = "n/a" if found is None else f"{found['ratio']:.4f} ({found['side']}px)"
        rows.append(row)
    return rows


__all__ = ["ErfError", "ErfResult", "IMAGENET_MEAN", "IMAGENET_STD", "SHIPPED_PHOTOS", "THRESHOLDS", "area_ratio",
           "area_ratios", "check_output", "display_map", "erf_title", "find_images", "input_gradient", "load_image",
           "mean_contribution", "measure_erfs", "model_erf", "model_label", "ratio_rows", "resolve_device",
           "shipped_photos", "unique_labels", "write_erf"]
