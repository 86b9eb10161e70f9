"""Variant families (`pelk family`): the cartesian product of sizes, kernels, centres and widths of a spec.

Every variant is validated and compiled; variants with the same architecture
(fingerprint) are kept once, the first in generation order; combinations the
spec language rejects are reported with the reason, not written. The family
folder holds one YAML spec per variant and a manifest, ``manifest.csv`` and
``manifest.json`` (name, file, fingerprint, params, MACs, per-stage kernels
and coverage K/H at the resolution), and is written atomically.

Axes (each optional; an absent axis keeps the spec's value):

* sizes: ConvNeXt's depth/dim presets (``atto`` ... ``xl``, ``t``/``s``/``b``/``l``);
  the spec's width factor still applies (PeLK widens by 1.3);
* kernels: whole per-stage configurations, ``51-49-47-13``;
* centres: central fine-grained size of every peripheral stage;
* widths: width factors.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from archspec import ModelSpec, dump_spec, resolve_spec
from archspec.files import atomic_directory
from compiler.build import compile_spec
from compiler.search import apply_choices, validation_message

# ConvNeXt's sizes (Liu et al. 2022 and timm's convnext_* variants): depths and base dims of the 4 stages.
SIZES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "s": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "b": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "xl": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
MANIFEST_FIELDS = ("name", "file", "fingerprint", "size", "kernels", "center", "width", "resolution",
                   "params", "params_dense", "macs", "coverage")


class FamilyError(ValueError):
    """A family cannot be generated as asked; the message names the option and the value."""


@dataclass(frozen=True)
class Variant:
    """One point of the product: None on an axis means "as in the spec"."""

    size: str | None
    kernels: tuple[int, ...] | None
    center: int | None
    width: float | None

    def suffix(self) -> str:
        parts = [self.size or "",
                 f"k{'-'.join(map(str, self.kernels))}" if self.kernels else "",
                 f"c{self.center}" if self.center is not None else "",
                 f"w{self.width:g}" if self.width is not None else ""]
        return "_".join(part for part in parts if part)


def _split(text: str | None, option: str) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if text is not None and not items:
        raise FamilyError(f"{option}: empty list")
    return items


def parse_sizes(text: str | None) -> list[str | None]:
    sizes = _split(text, "--sizes")
    unknown = [size for size in sizes if size not in SIZES]
    if unknown:
        raise FamilyError(f"--sizes: unknown size(s) {unknown}; choose from {', '.join(SIZES)}")
    return sizes or [None]


def parse_kernels(text: str | None) -> list[tuple[int, ...] | None]:
    """``"51-49-47-13,101-69-67-13"`` -> [(51, 49, 47, 13), (101, 69, 67, 13)]."""
    sets = []
    for item in _split(text, "--kernels"):
        try:
            sets.append(tuple(int(kernel) for kernel in item.split("-")))
        except ValueError:
            raise FamilyError(f"--kernels: {item!r} is not kernel sizes joined by '-' (e.g. 51-49-47-13)") from None
    return sets or [None]


def _parse_numbers(text: str | None, option: str, kind: type) -> list:
    values = []
    for item in _split(text, option):
        try:
            values.append(kind(item))
        except ValueError:
            raise FamilyError(f"{option}: {item!r} is not a{'n integer' if kind is int else ' number'}") from None
    return values or [None]


def variants(sizes: str | None = None, kernels: str | None = None, centers: str | None = None,
             widths: str | None = None) -> list[Variant]:
    """The product of the axes, in order (sizes outermost, widths innermost)."""
    product = itertools.product(parse_sizes(sizes), parse_kernels(kernels), _parse_numbers(centers, "--centers", int),
                                _parse_numbers(widths, "--widths", float))
    return [Variant(*point) for point in product]


def variant_spec(base: ModelSpec, variant: Variant, resolution: int) -> ModelSpec:
    """The base spec with the variant's size, kernels, centre and width (raises ValueError when invalid)."""
    data = base.model_dump()
    if variant.size is not None:
        depths, dims = SIZES[variant.size]
        if len(data["stages"]) != len(depths):
            raise FamilyError(f"--sizes {variant.size}: sizes describe {len(depths)} stages, "
                              f"{base.name!r} has {len(data['stages'])}")
        for stage, depth, dim in zip(data["stages"], depths, dims):
            stage["depth"], stage["dim"] = depth, dim
    if variant.kernels is not None and len(variant.kernels) != len(data["stages"]):
        raise FamilyError(f"--kernels {'-'.join(map(str, variant.kernels))}: {len(variant.kernels)} kernels "
                          f"for the {len(data['stages'])} stages of {base.name!r}")
    name = f"{base.name}_{variant.suffix()}" if variant.suffix() else base.name
    choices = {"kernels": list(variant.kernels or []), "centers": [variant.center] * len(data["stages"]),
               "base_m": None, "partial_ratio": None, "width_factor": variant.width}
    return apply_choices(ModelSpec.model_validate(data), choices, resolution, name)


@dataclass
class Family:
    members: list[dict]
    duplicates: list[dict]
    invalid: list[dict]


def generate(source: str | Path | ModelSpec, sizes: str | None = None, kernels: str | None = None,
             centers: str | None = None, widths: str | None = None, resolution: int | None = None) -> Family:
    """Validate and compile every variant; keep the first of each fingerprint."""
    base = resolve_spec(source)
    resolution = resolution or base.input.resolution
    family = Family([], [], [])
    seen: dict[str, str] = {}
    for variant in variants(sizes, kernels, centers, widths):
        try:
            spec = variant_spec(base, variant, resolution)
        except ValidationError as error:
            family.invalid.append({"variant": variant.suffix(), "reason": validation_message(error)})
            continue
        compiled = compile_spec(spec)
        if compiled.fingerprint in seen:
            family.duplicates.append({"name": spec.name, "same_as": seen[compiled.fingerprint]})
            continue
        seen[compiled.fingerprint] = spec.name
        family.members.append(_manifest_row(spec, variant, compiled))
    return family


def _manifest_row(spec: ModelSpec, variant: Variant, compiled) -> dict:
    return {"name": spec.name, "file": f"{spec.name}.yaml", "fingerprint": compiled.fingerprint,
            "size": variant.size, "kernels": [stage["kernel"] for stage in compiled.stages],
            "center": variant.center, "width": spec.width.factor, "resolution": compiled.totals["resolution"],
            "params": compiled.totals["params"]["nonzero"], "params_dense": compiled.totals["params"]["dense"],
            "macs": compiled.totals["macs"]["at_density"],
            "coverage": [stage["coverage"] for stage in compiled.stages], "spec": dump_spec(spec)}


def manifest_csv(members: list[dict]) -> str:
    """One row per member; per-stage lists joined with '-' (kernels) and ' ' (coverage)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for member in members:
        row = {key: member[key] for key in MANIFEST_FIELDS}
        row["kernels"] = "-".join(map(str, member["kernels"]))
        row["coverage"] = " ".join(f"{value:g}" for value in member["coverage"])
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def write_family(family: Family, out_dir: str | Path) -> Path:
    """The folder (replaced whole, atomically; a non-empty folder without manifest.json is refused):
    NAME.yaml per member, manifest.csv, manifest.json."""
    if not family.members:
        raise FamilyError("no valid variant to write: " + "; ".join(
            f"{item['variant']}: {item['reason']}" for item in family.invalid))
    manifest = [{key: member[key] for key in MANIFEST_FIELDS} for member in family.members]
    with atomic_directory(out_dir, marker="manifest.json") as temp:
        for member in family.members:
            (temp / member["file"]).write_text(member["spec"], encoding="utf-8")
        (temp / "manifest.csv").write_text(manifest_csv(family.members), encoding="utf-8")
        (temp / "manifest.json").write_text(json.dumps(
            {"members": manifest, "duplicates": family.duplicates, "invalid": family.invalid}, indent=2) + "\n",
            encoding="utf-8")
    return out_dir
