"""The spec language of pelk: pydantic models, YAML loading and sharing-grid math.

Knows nothing of torch.
"""

from archspec.grid import GridError, SharingGrid, full_grid, half_grid
from archspec.loader import Problem, SpecError, dump_spec, load_spec, loads_spec, save_spec
from archspec.presets import PRESETS_DIR, preset_names, resolve_spec
from archspec.spec import (DenseMixer, ModelSpec, PeripheralMixer, SparsitySpec, StageSpec,
                           StripeMixer)

__all__ = [
    "DenseMixer", "GridError", "ModelSpec", "PRESETS_DIR", "PeripheralMixer", "Problem",
    "SharingGrid", "SparsitySpec", "SpecError", "StageSpec", "StripeMixer", "dump_spec",
    "full_grid", "half_grid", "load_spec", "loads_spec", "preset_names", "resolve_spec", "save_spec",
]
