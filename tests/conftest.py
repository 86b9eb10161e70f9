"""Shared test set-up: hypothesis profiles and tiny versions of the shipped presets.

Profiles: ``ci`` (default; bounded examples, no deadline: CI has 2 slow cores)
and ``thorough`` (HYPOTHESIS_PROFILE=thorough, for local runs).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def tiny_spec(name: str = "pelk_t", resolution: int = 64, dim: int = 16, depth: int = 1,
              num_classes: int = 10):
    """A shipped preset shrunk for CPU tests: same mixers, kernels, grids and sparsity,
    ``depth`` blocks per stage, base dims ``dim * 2**i`` (width factor kept), small input."""
    from archspec import ModelSpec, resolve_spec
    spec = resolve_spec(name)
    data = spec.model_dump()
    data["input"]["resolution"] = resolution
    data["head"]["num_classes"] = num_classes
    for index, stage in enumerate(data["stages"]):
        stage["depth"] = depth
        stage["dim"] = dim * 2 ** index
    data["name"] = f"{name}_tiny"
    return ModelSpec.model_validate(data)


@pytest.fixture
def tiny():
    """The tiny_spec factory as a fixture."""
    return tiny_spec
