"""`pelk prune`: writes a slimmer build directory whose spec rebuilds it; mistakes are clean errors."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from archspec import load_spec, save_spec
from cli import main
from compiler import build_model, compile_spec, load_model, write_build
from tests.conftest import tiny_spec

runner = CliRunner()


@pytest.fixture
def spec_file(tmp_path):
    return save_spec(tiny_spec("pelk_t", resolution=32), tmp_path / "tiny.yaml")


def test_prune_a_spec_writes_a_build_directory_with_the_new_dims(spec_file, tmp_path):
    out = tmp_path / "slim"
    result = runner.invoke(main, ["prune", str(spec_file), "--ratio", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "20 -> 10" in result.output and "non-zero" in result.output
    spec = load_spec(out / "spec.yaml")
    assert [stage.dim for stage in spec.stages] == [8, 16, 32, 64]
    model = load_model(out)
    assert model.fingerprint == compile_spec(spec).fingerprint
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_prune_a_build_directory_keeps_its_trained_weights(tmp_path):
    spec = tiny_spec("slak_t", resolution=32)
    trained = build_model(spec)
    with torch.no_grad():
        trained.head.fc.bias.fill_(3.0)  # something a fresh model would not have
    source = write_build(compile_spec(spec), tmp_path / "trained", trained)
    result = runner.invoke(main, ["prune", str(source), "--ratio", "0.25", "--out", str(tmp_path / "slim")])
    assert result.exit_code == 0, result.output
    assert torch.equal(load_model(tmp_path / "slim").head.fc.bias, torch.full((10,), 3.0))


def test_default_output_is_named_after_the_pruned_spec(spec_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["prune", str(spec_file), "--ratio", "0.3"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pelk_t_tiny_pruned30" / "model.pt").is_file()


@pytest.mark.parametrize("arguments, code, message", [
    (["--ratio", "1.5"], 2, "Invalid value for '--ratio'"),
    (["--ratio", "0.97"], 1, "error: --ratio 0.97 leaves pelk_t_tiny too narrow"),
])
def test_bad_ratios_are_clean_errors(spec_file, tmp_path, arguments, code, message):
    result = runner.invoke(main, ["prune", str(spec_file), "--out", str(tmp_path / "slim")] + arguments)
    assert result.exit_code == code
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "slim").exists()


def test_missing_source_and_deployed_directories_are_refused(tmp_path):
    result = runner.invoke(main, ["prune", str(tmp_path / "nowhere.yaml"), "--ratio", "0.5"])
    assert result.exit_code == 1 and "error:" in result.output and "Traceback" not in result.output
    spec = tiny_spec("pelk_t", resolution=32)
    deployed = write_build(compile_spec(spec), tmp_path / "deployed", build_model(spec).deploy())
    result = runner.invoke(main, ["prune", str(deployed), "--ratio", "0.5"])
    assert result.exit_code == 1 and "deploy form" in result.output and "Traceback" not in result.output


def test_prune_never_writes_over_the_build_it_reads(spec_file, tmp_path):
    source = write_build(compile_spec(load_spec(spec_file)), tmp_path / "built")
    weights = (source / "model.pt").read_bytes()
    result = runner.invoke(main, ["prune", str(source), "--ratio", "0.5", "--out", str(source)])
    assert result.exit_code == 1
    assert "is the build directory being read" in result.output and "Traceback" not in result.output
    assert (source / "model.pt").read_bytes() == weights
