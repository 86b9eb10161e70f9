"""Search spaces: shipped files load and fit their base; mistakes are reported as FILE:LINE: field: message;
knobs become valid specs at the requested resolution."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archspec import SpecError, resolve_spec
from compiler.build import compile_spec
from compiler.search import SearchError, apply_choices, check_space_fits, parse_budget, parse_quantity
from compiler.space import SPACES_DIR, FloatRange, IntRange, knob_values, load_space, loads_space


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_shipped_space_loads_and_fits_its_base(path):
    space = load_space(path)
    check_space_fits(space, resolve_spec(space.base))


def _problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        loads_space(text, "space.yaml")
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("text, expected", [
    ("name: s\nstages:\n  - kernel_size: [51, 50]\n", "space.yaml:3: stages[0]: kernel_size: every choice must be odd"),
    ("name: s\ncenter: {low: 3, high: 9, step: 2}\nbase_m: [1, 2]\n", "space.yaml:1: base_m: every choice must be at least 2"),
    ("name: s\npartial_ratio: [0.5, 1.5]\n", "partial_ratio: every value must lie in (0, 1]"),
    ("name: s\nkernel_sets: [[51, 49], [101, 69, 67]]\n", "every set needs one kernel per stage"),
    ("name: s\nkernel_sets: [[51]]\nstages:\n  - kernel_size: 31\n", "either as kernel_sets or per stage"),
    ("name: s\nkernel_sets: [[51, 13]]\nstages:\n  - center: 5\n", "stages: 1 entries, but the kernel_sets "
                                                                   "describe 2 stages"),
    ("name: s\nstages:\n  - kernel_size: {low: 9, high: 3}\n", "space.yaml:3: stages[0].kernel_size"),
    ("name: s\nwidth_factor: 'wide'\n", "space.yaml:2: width_factor:"),
    ("name: s\nkernels: [51]\n", "space.yaml:2: kernels: unknown key"),
    ("name: s\nname: t\n", "space.yaml:2: name: duplicate key"),
    ("[1, 2]\n", "a search space is a mapping"),
    ("name: s\nstages: [\n", "invalid YAML"),
    ("name: s\nbase: !!python/name:os.system\n", "space.yaml:2: base: invalid YAML: tag"),
    ("", "space.yaml:1: the search space is empty"),
])
def test_mistakes_name_file_line_and_field(text, expected):
    assert any(expected in problem for problem in _problems(text)), _problems(text)


def test_missing_space_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="no such file \\(a search-space was expected here\\)"):
        load_space(tmp_path / "absent.yaml")


def test_a_relative_base_is_resolved_against_the_space_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "space.yaml").write_text("name: s\nbase: ../base.yaml\n")
    assert load_space(tmp_path / "sub" / "space.yaml").base == str(tmp_path / "sub" / ".." / "base.yaml")


def test_a_space_for_another_stage_count_is_refused():
    space = loads_space("name: s\nkernel_sets: [[51, 49, 47]]\n")
    with pytest.raises(SearchError, match="describes 3 stages but base spec 'pelk_t' has 4"):
        check_space_fits(space, resolve_spec("pelk_t"))


def test_knob_values_of_each_form():
    assert knob_values(7) == [7]
    assert knob_values([5, 7]) == [5, 7]
    assert knob_values(IntRange(low=31, high=61, step=10)) == [31, 41, 51, 61]
    assert knob_values(FloatRange(low=0.25, high=0.5, step=0.125)) == [0.25, 0.375, 0.5]
    assert knob_values(FloatRange(low=0.25, high=0.5)) is None


@given(kernels=st.lists(st.sampled_from([13, 31, 51, 101]), min_size=4, max_size=4),
       center=st.sampled_from([None, 5, 7]), resolution=st.sampled_from([160, 224, 384]))
def test_choices_become_a_spec_with_those_kernels_at_that_resolution(kernels, center, resolution):
    base = resolve_spec("pelk_t")
    choices = {"kernels": kernels, "centers": [center] * 4, "base_m": None, "partial_ratio": None,
               "width_factor": None}
    spec = apply_choices(base, choices, resolution, "probe")
    assert spec.kernel_sizes() == kernels and spec.input.resolution == resolution
    assert all(stage.mixer.sharing.center == (center or 5) for stage in spec.stages)
    compiled = compile_spec(spec)
    assert [stage["feature_map"] for stage in compiled.stages] == [resolution // 4 // 2 ** i for i in range(4)]
    # Knobs left at None keep the base: same widths and partial ratio.
    assert spec.stage_dims() == base.stage_dims() and spec.mixer_channels() == base.mixer_channels()


def test_an_impossible_combination_is_a_validation_error():
    choices = {"kernels": [13, 13, 13, 13], "centers": [15] * 4, "base_m": None, "partial_ratio": None,
               "width_factor": None}
    with pytest.raises(ValueError, match="sharing.center 15 must be smaller than kernel_size 13"):
        apply_choices(resolve_spec("pelk_t"), choices, 224, "probe")


@pytest.mark.parametrize("text, value", [("30M", 30e6), ("6g", 6e9), ("1.5K", 1500), ("42", 42), ("2e3", 2000),
                                         ("1E9", 1e9), ("2.5e-3G", 2.5e6)])
def test_quantities_take_k_m_g_t_suffixes(text, value):
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text, message", [
    ("params", "is not KEY=VALUE"), ("latency=3", "is not KEY=VALUE"), ("params=lots", "not a number"),
    ("params=0", "must be positive"), ("params=1M,params=2M", "given twice"),
    ("params=1e400", "too large to be a limit")])
def test_bad_budgets_say_what_is_wrong(text, message):
    with pytest.raises(SearchError, match=message):
        parse_budget(text)


def test_budget_of_both_keys():
    assert parse_budget("params=30M, macs=6G") == {"params": 30e6, "macs": 6e9}
