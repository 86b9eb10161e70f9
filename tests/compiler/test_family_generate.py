"""`pelk family`: the product of sizes, kernels, centres and widths as validated specs and a manifest,
one spec per architecture, written atomically; mistakes are clean errors."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from archspec import ModelSpec, load_spec, resolve_spec
from cli import main
from compiler.build import compile_spec
from compiler.family import SIZES, FamilyError, generate, variant_spec, variants, write_family


def test_family_folder_holds_valid_specs_and_a_manifest_that_describes_them(tmp_path):
    out = tmp_path / "family"
    result = CliRunner().invoke(main, ["family", "pelk_t", "--sizes", "t,s", "--kernels",
                                       "51-49-47-13,101-69-67-13", "--centers", "5,7", "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())["members"]
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    assert len(manifest) == len(rows) == 8
    assert sorted(path.name for path in out.glob("*.yaml")) == sorted(member["file"] for member in manifest)
    for member, row in zip(manifest, rows):
        compiled = compile_spec(load_spec(out / member["file"]))
        assert member["fingerprint"] == row["fingerprint"] == compiled.fingerprint
        assert member["params"] == int(row["params"]) == compiled.totals["params"]["nonzero"]
        assert member["macs"] == int(row["macs"]) == compiled.totals["macs"]["at_density"]
        assert member["kernels"] == compiled.spec.kernel_sizes() and row["kernels"] == "-".join(
            map(str, member["kernels"]))
        assert member["coverage"] == [stage["coverage"] for stage in compiled.stages]
    by_name = {member["name"]: member for member in manifest}
    # PeLK-T and PeLK-S at their paper kernels: 29M and 50M non-zero parameters (Table 4).
    assert round(by_name["pelk_t_t_k51-49-47-13_c5"]["params"] / 1e6) == 29
    assert round(by_name["pelk_t_s_k51-49-47-13_c5"]["params"] / 1e6) == 51
    assert by_name["pelk_t_t_k101-69-67-13_c7"]["coverage"][0] == round(101 / 56, 3)


def test_variants_with_one_architecture_are_written_once():
    # ConvNeXt's dense mixers have no centre: --centers changes nothing, so 2 of 4 variants are duplicates.
    family = generate("convnext_t", centers="5,7", widths="1.0,1.3")
    assert [member["name"] for member in family.members] == ["convnext_t_c5_w1", "convnext_t_c5_w1.3"]
    assert family.duplicates == [{"name": "convnext_t_c7_w1", "same_as": "convnext_t_c5_w1"},
                                 {"name": "convnext_t_c7_w1.3", "same_as": "convnext_t_c5_w1.3"}]
    assert len({member["fingerprint"] for member in family.members}) == len(family.members)


def test_invalid_combinations_are_reported_not_written(tmp_path):
    family = generate("pelk_t", kernels="51-49-47-13,13-13-13-7", centers="5,7")
    assert [member["name"] for member in family.members] == [
        "pelk_t_k51-49-47-13_c5", "pelk_t_k51-49-47-13_c7", "pelk_t_k13-13-13-7_c5"]
    assert [item["variant"] for item in family.invalid] == ["k13-13-13-7_c7"]
    assert "sharing.center 7 must be smaller than kernel_size 7" in family.invalid[0]["reason"]
    assert "Value error" not in json.dumps(family.invalid)


@given(sizes=st.lists(st.sampled_from(sorted(SIZES)), min_size=1, max_size=3, unique=True),
       widths=st.lists(st.sampled_from(["1.0", "1.3", "1.5"]), min_size=1, max_size=2, unique=True))
def test_the_product_has_one_variant_per_combination_with_that_size_and_width(sizes, widths):
    points = variants(sizes=",".join(sizes), widths=",".join(widths))
    assert len(points) == len(sizes) * len(widths)
    base = resolve_spec("pelk_t")
    for point in points:
        spec = variant_spec(base, point, 224)
        depths, dims = SIZES[point.size]
        assert [stage.depth for stage in spec.stages] == list(depths)
        assert [stage.dim for stage in spec.stages] == list(dims) and spec.width.factor == point.width


def test_the_resolution_option_sets_the_variants_input():
    [member] = generate("pelk_t", resolution=384).members
    assert member["resolution"] == 384 and member["coverage"][0] == round(51 / 96, 3)


def test_an_existing_family_is_replaced_whole(tmp_path):
    out = tmp_path / "family"
    write_family(generate("pelk_t", centers="5,7"), out)
    write_family(generate("pelk_t", kernels="61-49-47-13"), out)
    assert sorted(path.name for path in out.iterdir()) == ["manifest.csv", "manifest.json",
                                                           "pelk_t_k61-49-47-13.yaml"]


@pytest.mark.parametrize("args, message", [
    (["--sizes", "huge"], "--sizes: unknown size(s) ['huge']"),
    (["--kernels", "51-49"], "--kernels 51-49: 2 kernels for the 4 stages of 'pelk_t'"),
    (["--kernels", "51-x-47-13"], "--kernels: '51-x-47-13' is not kernel sizes joined by '-'"),
    (["--centers", "5.5"], "--centers: '5.5' is not an integer"),
    (["--widths", "wide"], "--widths: 'wide' is not a number"),
    (["--kernels", "5-5-5-5", "--centers", "7"], "no valid variant to write"),
])
def test_user_mistakes_exit_1_with_a_message(tmp_path, args, message):
    result = CliRunner().invoke(main, ["family", "pelk_t", *args, "--out", str(tmp_path / "f")])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "f").exists()


def test_an_unknown_spec_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(main, ["family", "no_such_spec", "--out", str(tmp_path / "f")])
    assert result.exit_code == 1 and "no_such_spec" in result.output and "Traceback" not in result.output


def test_sizes_need_four_stages():
    spec = resolve_spec("pelk_t").model_dump()
    spec["stages"] = spec["stages"][:3]
    with pytest.raises(FamilyError, match="sizes describe 4 stages, 'pelk_t' has 3"):
        generate(ModelSpec.model_validate(spec), sizes="t")


def test_family_refuses_to_replace_a_folder_it_did_not_write(tmp_path):
    from click.testing import CliRunner

    from cli import main
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["family", "pelk_t", "--kernels", "51-49-47-13", "--out", str(mine)])
    assert result.exit_code != 0 and "no manifest.json: not written by pelk" in result.output
    assert (mine / "notes.txt").read_text() == "keep me"
