"""Shipped specs (``specs/*.yaml``) and how a user names a spec.

A spec argument is either a path to a YAML file or the name of a shipped
preset (``pelk_t``, ``convnext_t``, ...).
"""

from __future__ import annotations

from pathlib import Path

from archspec.loader import Problem, SpecError, load_spec
from archspec.spec import ModelSpec

PRESETS_DIR = Path(__file__).resolve().parent.parent / "specs"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise SpecError([Problem(name, 0, "", f"no spec file or preset of that name "
                                               f"(presets: {', '.join(preset_names())})")])
    return path


def resolve_spec(source: str | Path | ModelSpec) -> ModelSpec:
    """A ModelSpec from a spec object, a YAML path or a preset name."""
    if isinstance(source, ModelSpec):
        return source
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_spec(path)
    return load_spec(preset_path(str(source)))
