"""`pelk plot scaling`: the paper's Fig. 6 from the compiler's own parameter counts."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from archspec import SharingGrid, full_grid
from cli import main
from compiler.plots import KernelRangeError, parse_kernels, scaled_spec, scaling_study

CONVNEXT_T_CHANNELS = 3 * 96 + 3 * 192 + 9 * 384 + 3 * 768  # depthwise channels over all 18 blocks
CONVNEXT_T_PARAMS = 28_589_128  # timm's convnext_tiny, 7 x 7 kernels


def test_seven_by_seven_dense_is_convnext_t():
    assert scaling_study([7])[0].params["dense"] == CONVNEXT_T_PARAMS


@pytest.mark.parametrize("kernel", [7, 31, 51, 101, 151])
def test_each_form_costs_its_weights_per_channel_over_convnext_t(kernel):
    k_prime = SharingGrid(tuple(full_grid(kernel, 5))).k_prime
    per_channel = {"dense": kernel ** 2 + 1, "stripe": 2 * (5 * kernel + 1), "peripheral": k_prime ** 2 + 1}
    params = scaling_study([kernel])[0].params
    for form, weights in per_channel.items():  # weights + bias, against ConvNeXt's 7 x 7 + bias
        assert params[form] == CONVNEXT_T_PARAMS + CONVNEXT_T_CHANNELS * (weights - 50), form


def test_peripheral_stays_within_six_percent_of_convnext_t_up_to_151():
    rows = scaling_study(parse_kernels("7..151:8"))
    assert max(row.params["peripheral"] for row in rows) < 1.06 * CONVNEXT_T_PARAMS
    assert rows[-1].params["dense"] > 6 * CONVNEXT_T_PARAMS
    assert all(row.params["peripheral"] <= row.params["stripe"] for row in rows if row.kernel >= 9)


def test_every_stage_gets_the_kernel_and_nothing_else_changes():
    base = scaled_spec("dense", 7).model_dump()
    for form in ("stripe", "peripheral"):
        spec = scaled_spec(form, 51)
        assert {stage.mixer.type for stage in spec.stages} == {form}
        assert {stage.mixer.kernel_size for stage in spec.stages} == {51}
        changed = spec.model_dump()
        assert [(stage["depth"], stage["dim"]) for stage in changed["stages"]] == \
            [(stage["depth"], stage["dim"]) for stage in base["stages"]]
        assert changed["sparsity"] == base["sparsity"] and changed["width"] == base["width"]


@given(st.integers(3, 80).map(lambda n: 2 * n + 1), st.integers(0, 40), st.integers(1, 10).map(lambda n: 2 * n))
def test_ranges_give_odd_kernels_from_start_to_stop(start, length, step):
    stop = start + length
    kernels = parse_kernels(f"{start}..{stop}:{step}")
    assert kernels == list(range(start, stop + 1, step))
    assert parse_kernels(f"{start}..{stop}") == list(range(start, stop + 1, 2))


def test_lists_and_ranges_mix_sorted_without_repeats():
    assert parse_kernels("51, 7..11, 9,101") == [7, 9, 11, 51, 101]
    assert len(parse_kernels("7..2005,7..2005")) == 1000  # the limit counts distinct sizes


@pytest.mark.parametrize("text, message", [
    ("8..20", "must be odd and at least 7"), ("3,5,7", "must be odd and at least 7"),
    ("51..7", "ends (7) before it starts (51)"), ("7..21:3", "positive even number"),
    ("7..21:0", "positive even number"), ("seven", "expected a kernel size"), (" , ", "no kernel sizes"),
    ("7..2007", "more than 1000 kernel sizes"), ("7..99999999999999999999", "more than 1000 kernel sizes"),
])
def test_bad_kernel_lists_are_explained(text, message):
    with pytest.raises(KernelRangeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_kernels(text)


def test_cli_writes_the_figure_and_its_table(tmp_path):
    out = tmp_path / "figs" / "scaling.png"
    result = CliRunner().invoke(main, ["plot", "scaling", "--kernels", "7,51,151", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    with open(out.with_suffix(".csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["kernel"]) for row in rows] == [7, 51, 151]
    assert int(rows[0]["dense_params"]) == CONVNEXT_T_PARAMS
    assert "179,298,376" in result.output  # dense at 151, printed in the table
    assert sorted(path.name for path in out.parent.iterdir()) == ["scaling.csv", "scaling.png"]  # no temp files


def test_cli_refuses_a_bad_range_without_traceback(tmp_path):
    result = CliRunner().invoke(main, ["plot", "scaling", "--kernels", "6..150:4", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1
    assert "error: --kernels '6..150:4'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("name", ["scaling.csv", "scaling"])
def test_cli_wants_a_png_path_so_the_table_cannot_overwrite_the_figure(tmp_path, name):
    result = CliRunner().invoke(main, ["plot", "scaling", "--kernels", "7", "--out", str(tmp_path / name)])
    assert result.exit_code == 1
    assert "give a .png path" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
