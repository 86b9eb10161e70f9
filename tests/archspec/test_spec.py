"""The spec language: shipped specs parse, round-trip, and bad specs fail with located messages."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from archspec import PRESETS_DIR, ModelSpec, SpecError, dump_spec, load_spec, loads_spec, preset_names
from archspec.spec import SpecModel

ALL_SHIPPED = sorted(PRESETS_DIR.glob("*.yaml"))

MINIMAL = """\
name: minimal
stages:
  - depth: 1
    dim: 32
    mixer:
      type: peripheral
      kernel_size: 13
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        loads_spec(textwrap.dedent(text), "spec.yaml")
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("path", ALL_SHIPPED, ids=lambda path: path.stem)
def test_every_shipped_spec_validates_and_round_trips(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert loads_spec(dump_spec(spec)) == spec


def test_the_issue_presets_are_shipped():
    assert {"pelk_t", "pelk_s", "pelk_b", "pelk_b101", "convnext_t", "slak_t", "replknet_31b"} <= set(preset_names())


def test_pelk_b101_uses_the_paper_kernels_centre_and_resolution():
    spec = load_spec(PRESETS_DIR / "pelk_b101.yaml")
    assert spec.kernel_sizes() == [101, 69, 67, 13]
    assert [stage.mixer.sharing.center for stage in spec.stages[:3]] == [7, 7, 7]
    assert spec.input.resolution == 384


def test_width_factor_gives_the_paper_dims():
    assert load_spec(PRESETS_DIR / "pelk_t.yaml").stage_dims() == [124, 249, 499, 998]
    assert load_spec(PRESETS_DIR / "pelk_b.yaml").stage_dims() == [166, 332, 665, 1331]
    assert load_spec(PRESETS_DIR / "pelk_t.yaml").mixer_channels() == [46, 93, 187, 374]


def test_defaults_fill_a_minimal_spec():
    spec = loads_spec(MINIMAL)
    mixer = spec.stages[0].mixer
    assert (mixer.partial_ratio, mixer.small_kernel, mixer.sharing.center, mixer.sharing.base) == (0.375, 5, 5, 2)
    assert mixer.sharing.remainder == "greedy" and mixer.pos_embed.mode == "padded"
    assert list(mixer.resolved_grid().grid) == [2, 2, 1, 1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("text, expected", [
    (MINIMAL + "colour: red\n", "spec.yaml:8: colour: unknown key"),
    (MINIMAL.replace("kernel_size: 13", "kernel_size: 12"),
     "spec.yaml:7: stages[0].mixer.kernel_size: kernel_size must be odd (same padding needs a centre), got 12"),
    (MINIMAL.replace("kernel_size: 13", "kernel_size: 13\n      sharing: {center: 13}"),
     "sharing.center 13 must be smaller than kernel_size 13"),
    (MINIMAL.replace("kernel_size: 13", "kernel_size: 13\n      sharing: {grid: [1, 2, 3]}"),
     "spec.yaml:5: stages[0].mixer: sharing.grid: grid [1, 2, 3] sums to 6, not to the kernel size 13"),
    (MINIMAL.replace("kernel_size: 13", "kernel_size: 13\n      small_kernel: 7"),
     "small_kernel 7 is wider than the unshared centre 5x5 of grid [2, 2, 1, 1, 1, 1, 1, 2, 2]"),
    (MINIMAL.replace("kernel_size: 13", "kernel_size: 9\n      small_kernel: 1\n      sharing: {grid: [3, 3, 3]}"),
     "small_kernel 1 is wider than the unshared centre 0x0 of grid [3, 3, 3]"),
    (MINIMAL.replace("kernel_size: 13", "kernel_size: 13\n      partial_ratio: 0.01"),
     "partial_ratio 0.01 of dim 32 leaves 0 channels"),
    (MINIMAL.replace("depth: 1", "depth: many"), "spec.yaml:3: stages[0].depth: Input should be a valid integer"),
    (MINIMAL.replace("type: peripheral", "type: wavelet"), "spec.yaml:5: stages[0].mixer: Input tag 'wavelet'"),
    (MINIMAL + "sparsity: {enabled: true, sparsity: 0.4, density: 0.7}\n",
     "sparsity 0.4 and density 0.7 do not add up to 1"),
    (MINIMAL + "input: {resolution: 32}\nstem: {stride: 64}\n", "smaller than the total reduction 64"),
    (MINIMAL + "name: again\n", "spec.yaml:8: name: duplicate key 'name' (first given on line 1)"),
    ("name: [unclosed\n", "spec.yaml:2: invalid YAML"),
    ("", "spec.yaml:1: the spec is empty"),
    ("- a\n- b\n", "a spec is a mapping of fields, got a list"),
    ("name: x\nstages: !!python/object:os.system {}\n", "invalid YAML"),
    ("? [a, b]\n: 1\nname: x\n", "spec.yaml:1: invalid YAML: a key must be a plain value"),
    ("name: x\nstages: &s [*s]\n", "spec.yaml:2: stages[0]: invalid YAML: an alias refers to the mapping or list"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(  # "billion laughs": 10^9 values from 9 lines
        f"{new}: &{new} [{', '.join([f'*{old}'] * 10)}]\n" for old, new in zip("abcdefgh", "bcdefghi")),
     "invalid YAML: more than 100000 values"),
])
def test_bad_specs_fail_with_file_line_field_and_values(text, expected):
    problems = errors_of(text)
    assert any(expected in problem for problem in problems), problems


def test_every_problem_is_reported_at_once():
    text = MINIMAL.replace("depth: 1", "depth: 0").replace("dim: 32", "dim: -3") + "colour: red\n"
    problems = errors_of(text)
    assert len(problems) == 3
    assert [problem.split(":")[1] for problem in problems] == ["3", "4", "8"]


def test_unreadable_files_are_spec_errors(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(binary)


def test_every_field_has_a_description_in_the_schema():
    schema = ModelSpec.model_json_schema()
    undocumented = []
    for name, definition in [("ModelSpec", schema), *schema["$defs"].items()]:
        for field, info in definition.get("properties", {}).items():
            if not info.get("description"):
                undocumented.append(f"{name}.{field}")
    assert undocumented == []


def test_every_spec_model_forbids_unknown_keys():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)
    assert all(model.model_config["extra"] == "forbid" for model in subclasses(SpecModel))


@given(kernel=st.integers(1, 60).map(lambda k: 2 * k + 5), center=st.sampled_from([1, 3, 5]),
       base=st.integers(2, 4), remainder=st.sampled_from(["greedy", "merge"]),
       ratio=st.floats(0.1, 1.0), width=st.floats(0.5, 2.0), mode=st.sampled_from(["padded", "valid"]))
def test_spec_to_yaml_to_spec_is_the_identity(kernel, center, base, remainder, ratio, width, mode):
    spec = loads_spec(MINIMAL)
    data = spec.model_dump()
    data["width"]["factor"] = width
    data["stages"][0]["mixer"].update(kernel_size=kernel, partial_ratio=ratio, small_kernel=center,
                                      sharing={"center": center, "base": base, "remainder": remainder, "grid": None},
                                      pos_embed={"enabled": True, "mode": mode, "init_std": 0.02})
    spec = ModelSpec.model_validate(data)
    assert loads_spec(dump_spec(spec)) == spec
