"""Search spaces: which knobs of a base spec `pelk search` may turn, as a YAML file.

A space names a base spec and, for each knob, either a fixed value, a list of
choices or a range ``{low, high, step}``. Knobs: per-stage kernel size and
central fine size (or whole kernel configurations, ``kernel_sets``, as the
paper's Table 7 lists them), the sharing base m, the partial ratio and the
width factor. A knob left out keeps the base spec's value. Loading reports
every problem as ``FILE:LINE: field: message`` (the spec loader's machinery).
Nothing here imports torch.

Example (``specs/spaces/pelk_t_kernels.yaml``)::

    name: pelk_t_kernels
    base: pelk_t
    stages:
      - kernel_size: {low: 31, high: 151, step: 10}
      - kernel_size: [29, 49, 69, 89]
      - kernel_size: [27, 47, 67, 87]
      - kernel_size: 13
    center: [5, 7]
    partial_ratio: [0.25, 0.375, 0.5]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Union

from pydantic import Field, model_validator

from archspec.loader import Problem, SpecError, error_message, loads_model, read_text
from archspec.spec import SpecModel


class IntRange(SpecModel):
    """Integers ``low, low + step, ..., high``."""

    low: int
    """Smallest value."""
    high: int
    """Largest value (included when ``high - low`` is a multiple of ``step``)."""
    step: int = Field(1, ge=1)
    """Distance between neighbouring values."""

    @model_validator(mode="after")
    def _ordered(self) -> "IntRange":
        if self.high < self.low:
            raise ValueError(f"high {self.high} is below low {self.low}")
        return self

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))


class FloatRange(SpecModel):
    """Floats from ``low`` to ``high`` (continuous, or on a grid of ``step``)."""

    low: float
    """Smallest value."""
    high: float
    """Largest value."""
    step: float | None = Field(None, gt=0.0)
    """Grid spacing; null for a continuous range."""

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.high < self.low:
            raise ValueError(f"high {self.high} is below low {self.low}")
        return self


IntKnob = Union[int, list[int], IntRange]
FloatKnob = Union[float, list[float], FloatRange]


def knob_values(knob: IntKnob | FloatKnob | None) -> list | None:
    """The discrete values a knob can take (None for a continuous float range or an absent knob)."""
    if knob is None or (isinstance(knob, FloatRange) and knob.step is None):
        return None
    if isinstance(knob, (int, float)):
        return [knob]
    if isinstance(knob, IntRange):
        return knob.values()
    if isinstance(knob, FloatRange):
        count = int(round((knob.high - knob.low) / knob.step)) + 1
        return [round(knob.low + index * knob.step, 10) for index in range(count)]
    return list(knob)


def _check_nonempty(knob: Any, what: str) -> None:
    if isinstance(knob, list) and not knob:
        raise ValueError(f"{what}: an empty list of choices")


class StageKnobs(SpecModel):
    """The knobs of one stage (same order as the base spec's stages)."""

    kernel_size: IntKnob | None = None
    """Kernel side K: a value, a list of choices or a range (odd values only)."""
    center: IntKnob | None = None
    """Central fine-grained size of this stage (peripheral mixers); overrides the space-wide ``center``."""

    @model_validator(mode="after")
    def _odd(self) -> "StageKnobs":
        for what in ("kernel_size", "center"):
            knob = getattr(self, what)
            _check_nonempty(knob, what)
            even = [value for value in knob_values(knob) or [] if value % 2 == 0]
            if even:
                raise ValueError(f"{what}: every choice must be odd (same padding needs a centre), got {even}")
        return self


class SearchSpace(SpecModel):
    """What `pelk search` varies, starting from a base spec."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    """Space name (letters, digits, ``_ . -``): the default study name starts with it."""
    description: str = ""
    """Free text."""
    base: str = "pelk_t"
    """Base spec: a preset name or a YAML path (relative paths are relative to the space file)."""
    stages: list[StageKnobs] | None = None
    """Per-stage knobs, one entry per stage of the base spec; null keeps every stage's kernel."""
    kernel_sets: list[list[int]] | None = None
    """Whole kernel configurations to choose from (e.g. Table 7: [51, 49, 47, 13], [101, 69, 67, 13]);
    excludes per-stage ``kernel_size``."""
    center: IntKnob | None = None
    """Central fine-grained size of every peripheral stage (odd)."""
    base_m: IntKnob | None = None
    """Base m of the sharing grid's exponential cells (>= 2)."""
    partial_ratio: FloatKnob | None = None
    """Share of channels through the large kernel, in (0, 1]."""
    width_factor: FloatKnob | None = None
    """Width multiplier applied to the base dims, > 0."""
    coverage_stages: list[int] = Field(default_factory=lambda: [1], min_length=1)
    """Stages (1-based) whose kernel-to-map ratio the ``coverage`` objective measures. The default,
    the first stage (right after the stem), is where the paper's Table 7 argument is made."""

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        for what in ("center", "base_m", "partial_ratio", "width_factor", "kernel_sets"):
            _check_nonempty(getattr(self, what), what)
        even = [value for value in knob_values(self.center) or [] if value % 2 == 0]
        if even:
            raise ValueError(f"center: every choice must be odd, got {even}")
        if any(value < 2 for value in knob_values(self.base_m) or []):
            raise ValueError(f"base_m: every choice must be at least 2, got {knob_values(self.base_m)}")
        for what in ("partial_ratio", "width_factor"):
            knob = getattr(self, what)
            values = knob_values(knob) or ([knob.low, knob.high] if knob is not None else [])
            upper = 1.0 if what == "partial_ratio" else 16.0
            if any(not 0.0 < value <= upper for value in values):
                raise ValueError(f"{what}: every value must lie in (0, {upper:g}], got {values}")
        if self.kernel_sets is not None:
            if self.stages and any(stage.kernel_size is not None for stage in self.stages):
                raise ValueError("give kernel sizes either as kernel_sets or per stage (stages[i].kernel_size), "
                                 "not both")
            lengths = {len(kernels) for kernels in self.kernel_sets}
            if len(lengths) != 1:
                raise ValueError(f"kernel_sets: every set needs one kernel per stage, got lengths {sorted(lengths)}")
            if self.stages is not None and len(self.stages) not in lengths:
                raise ValueError(f"stages: {len(self.stages)} entries, but the kernel_sets describe "
                                 f"{lengths.pop()} stages")
            even = [kernels for kernels in self.kernel_sets if any(k % 2 == 0 or k < 1 for k in kernels)]
            if even:
                raise ValueError(f"kernel_sets: kernels must be positive and odd, got {even}")
        if any(stage < 1 for stage in self.coverage_stages):
            raise ValueError(f"coverage_stages are 1-based stage numbers, got {self.coverage_stages}")
        return self

    def stage_count(self) -> int | None:
        """Stages the space describes (None when it does not constrain the count)."""
        if self.kernel_sets is not None:
            return len(self.kernel_sets[0])
        return len(self.stages) if self.stages is not None else None

    def digest(self) -> str:
        """A short hash of the space's content (stored with a study: a resumed study must use the same space)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]


_KNOB_MEMBERS = ("int", "list[int]", "IntRange", "float", "list[float]", "FloatRange")


def loads_space(text: str, file: str = "<string>") -> SearchSpace:
    """Parse and validate search-space YAML; raises SpecError listing every problem as FILE:LINE: field: message."""
    return loads_model(text, file, SearchSpace, "search space", _knob_message)


def _knob_message(item: dict) -> str:
    if any(part in _KNOB_MEMBERS for part in item["loc"]):
        return (f"{error_message(item)}; a knob is a value, a list of choices or a range {{low, high, step}} "
                f"(got {item.get('input')!r})")
    return error_message(item)


def load_space(path: str | Path) -> SearchSpace:
    """Read a search-space file; the base spec path, if relative, is resolved against the file's folder."""
    path = Path(path)
    space = loads_space(read_text(path, "search-space"), str(path))
    base = Path(space.base)
    if base.suffix in (".yaml", ".yml") and not base.is_absolute():
        space.base = str(path.parent / base)
    return space


SPACES_DIR = Path(__file__).resolve().parent.parent / "specs" / "spaces"


def resolve_space(source: str | Path | SearchSpace) -> SearchSpace:
    """A space from an object, a YAML path, or the name of a shipped space (``specs/spaces/NAME.yaml``)."""
    if isinstance(source, SearchSpace):
        return source
    path = Path(source)
    if path.suffix not in (".yaml", ".yml") and not path.exists():
        shipped = SPACES_DIR / f"{source}.yaml"
        if not shipped.is_file():
            names = ", ".join(sorted(file.stem for file in SPACES_DIR.glob("*.yaml")))
            raise SpecError([Problem(str(source), 0, "", f"no search-space file or shipped space of that name "
                                                         f"(shipped: {names})")])
        path = shipped
    return load_space(path)
