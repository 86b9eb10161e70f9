"""`pelk deploy` and deployed weights on disk: written atomically, reloaded in deploy form, mistakes refused."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from archspec import save_spec
from cli import main
from compiler import BuildError, build_model, compile_spec, load_model, load_weights, save_weights, write_build
from tests.compiler.test_deploy_equivalence import randomise_statistics
from tests.conftest import tiny_spec

runner = CliRunner()


@pytest.fixture
def build_dir(tmp_path):
    """A build directory of a tiny PeLK-T whose BN statistics are not the identity."""
    spec = tiny_spec("pelk_t", resolution=32)
    model = build_model(spec)
    randomise_statistics(model, 3)
    return write_build(compile_spec(spec), tmp_path / "built", model)


def outputs(model, image):
    with torch.no_grad():
        return model.eval()(image)


@pytest.mark.parametrize("expand", [False, True])
def test_deploy_writes_a_directory_that_reloads_in_deploy_form(build_dir, tmp_path, expand):
    out = tmp_path / "deployed"
    result = runner.invoke(main, ["deploy", str(build_dir), "--out", str(out)] + (["--expand"] if expand else []))
    assert result.exit_code == 0, result.output
    assert "max |training - deploy|" in result.output
    assert sorted(path.name for path in out.iterdir()) == ["deploy.json", "model.pt", "spec.yaml"]
    summary = json.loads((out / "deploy.json").read_text())
    assert summary["deployed"] is True and summary["expand"] is expand
    assert summary["check"]["max_abs_diff"] <= 1e-5 * max(summary["check"]["max_abs_output"], 1.0)

    deployed = load_model(out)
    assert deployed.deploy_form == {"expand": expand}
    image = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(outputs(deployed, image), outputs(load_model(build_dir), image),
                               rtol=1e-4, atol=1e-5)


def test_default_output_is_beside_the_build(build_dir):
    result = runner.invoke(main, ["deploy", str(build_dir)])
    assert result.exit_code == 0, result.output
    assert (build_dir.parent / "built-deploy" / "deploy.json").is_file()


def test_deploying_a_deployed_directory_is_a_clean_error(build_dir, tmp_path):
    out = tmp_path / "deployed"
    assert runner.invoke(main, ["deploy", str(build_dir), "--out", str(out)]).exit_code == 0
    result = runner.invoke(main, ["deploy", str(out), "--out", str(tmp_path / "again")])
    assert result.exit_code == 1
    assert "error:" in result.output and "already in deploy form" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "again").exists()


def test_missing_build_directory_is_a_clean_error(tmp_path):
    result = runner.invoke(main, ["deploy", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "not a build directory" in result.output and "Traceback" not in result.output


def test_weights_and_model_must_be_in_the_same_form(tmp_path):
    spec = tiny_spec("pelk_t", resolution=32)
    deployed_weights = save_weights(build_model(spec).deploy(), tmp_path / "deployed.pt")
    with pytest.raises(BuildError, match="weights are in deploy form .*the model in training form"):
        load_weights(build_model(spec), deployed_weights)
    training_weights = save_weights(build_model(spec), tmp_path / "training.pt")
    with pytest.raises(BuildError, match="weights are in training form, the model in deploy form"):
        load_weights(build_model(spec).deploy(), training_weights)


def test_a_spec_or_a_foreign_file_is_a_clean_error(tmp_path):
    spec_file = save_spec(tiny_spec("pelk_t", resolution=32), tmp_path / "tiny.yaml")
    result = runner.invoke(main, ["deploy", str(spec_file)])
    assert result.exit_code == 1
    assert f"error: {spec_file}: a spec, not a build directory (make one with `pelk build" in result.output
    foreign = tmp_path / "foreign.pt"
    torch.save({"something": torch.zeros(1)}, foreign)
    result = runner.invoke(main, ["deploy", str(foreign)])
    assert result.exit_code == 1
    assert f"error: {foreign}: not a pelk weights file" in result.output
    assert not [path for path in tmp_path.iterdir() if path.name.endswith("-deploy")]


@pytest.mark.parametrize("source", ["built", "built/model.pt"])
def test_deploy_never_writes_over_the_build_it_reads(build_dir, source):
    before = sorted(path.name for path in build_dir.iterdir())
    result = runner.invoke(main, ["deploy", str(build_dir.parent / source), "--out", str(build_dir)])
    assert result.exit_code == 1
    assert "is the build directory being read" in result.output
    assert sorted(path.name for path in build_dir.iterdir()) == before


@pytest.mark.parametrize("source", ["model.pt", "."])
def test_deploying_from_inside_a_build_directory_writes_beside_it(build_dir, monkeypatch, source):
    monkeypatch.chdir(build_dir)
    result = runner.invoke(main, ["deploy", source])
    assert result.exit_code == 0, result.output
    assert (build_dir.parent / "built-deploy" / "deploy.json").is_file()
    assert sorted(path.name for path in build_dir.iterdir()) == ["ir.graphml", "ir.json", "model.pt", "spec.yaml",
                                                                 "summary.json"]
