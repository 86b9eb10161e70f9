"""`pelk validate`, `pelk schema`, `pelk grid`: exit codes, messages, files."""

from __future__ import annotations

import json

from click.testing import CliRunner

from archspec import PRESETS_DIR
from cli import main

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(main, list(args))


def test_validate_accepts_every_shipped_spec():
    result = invoke("validate", *map(str, sorted(PRESETS_DIR.glob("*.yaml"))))
    assert result.exit_code == 0, result.output
    assert result.output.count("ok  ") == len(list(PRESETS_DIR.glob("*.yaml")))


def test_validate_reports_each_problem_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages:\n  - depth: 1\n    dim: 8\n    mixer: {type: peripheral, kernel_size: 8}\n")
    good = PRESETS_DIR / "pelk_t.yaml"
    result = invoke("validate", str(good), str(bad))
    assert result.exit_code == 1
    assert f"{bad}:5: stages[0].mixer.kernel_size: kernel_size must be odd" in result.output
    assert "1 of 2 spec(s) invalid" in result.output
    assert "Traceback" not in result.output


def test_validate_names_a_spec_whose_graph_fails_lint_and_checks_the_rest(tmp_path):
    """A 7x7 stride-4 stem at 32 px leaves a 7x7 map that three 2x2 downsamplings empty: a lint error."""
    bad = tmp_path / "empty_map.yaml"
    stage = "  - {depth: 1, dim: 8, mixer: {type: dense, kernel_size: 3}}\n"
    bad.write_text("name: empty_map\ninput: {resolution: 32}\nstem: {kernel_size: 7, stride: 4}\nstages:\n"
                   + stage * 4)
    good = PRESETS_DIR / "convnext_t.yaml"
    result = invoke("validate", str(bad), str(good))
    assert result.exit_code == 1
    assert f"{bad}: node 'stages.3.downsample'" in result.output and "empty feature map" in result.output
    assert f"ok  {good}" in result.output and "1 of 2 spec(s) invalid" in result.output


def test_validate_missing_file_is_a_clean_error(tmp_path):
    result = invoke("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code != 0
    assert "no such file" in result.output and "Traceback" not in result.output


def test_schema_is_json_with_descriptions(tmp_path):
    result = invoke("schema")
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "ModelSpec" and "stages" in schema["properties"]
    out = tmp_path / "schema.json"
    assert invoke("schema", "--out", str(out)).exit_code == 0
    assert json.loads(out.read_text()) == schema


def test_an_output_path_under_a_file_is_a_clean_error(tmp_path):
    (tmp_path / "plain").write_text("x")
    for command in (["schema", "--out"], ["grid", "51", "--png"]):
        target = tmp_path / "plain" / "out"
        result = invoke(*command, str(target))
        assert result.exit_code == 1, command
        assert f"error: {target}: cannot write here: a parent of it is a file" in result.output, command


def test_grid_json_and_text():
    result = invoke("grid", "51", "--json")
    info = json.loads(result.output)
    assert info["grid"] == [9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9]
    assert info["k_prime"] == 13 and abs(info["param_ratio"] - 169 / 2601) < 1e-12
    text = invoke("grid", "101", "--center", "7").output
    assert "[17, 16, 8, 4, 2, 1, 1, 1, 1]" in text and "k'          17" in text
    merged = json.loads(invoke("grid", "69", "--center", "7", "--policy", "merge", "--json").output)
    assert merged["half_grid"] == [17, 8, 4, 2, 1, 1, 1, 1]


def test_grid_png_is_written(tmp_path):
    png = tmp_path / "k51.png"
    result = invoke("grid", "51", "--png", str(png))
    assert result.exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in tmp_path.iterdir()] == ["k51.png"]  # no temp files left


def test_grid_of_an_even_kernel_says_the_kernel_is_even():
    result = invoke("grid", "4")
    assert result.exit_code == 1
    assert "kernel size must be a positive odd integer, got 4" in result.output


def test_grid_bad_arguments_are_clean_errors():
    for args in (["50"], ["51", "--center", "4"], ["51", "--center", "51"], ["51", "--base", "1"],
                 ["x"], ["51", "--policy", "other"]):
        result = invoke("grid", *args)
        assert result.exit_code != 0, args
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), args
