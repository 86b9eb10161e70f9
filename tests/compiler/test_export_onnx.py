"""ONNX export: every mixer family exports in any form, runs in onnxruntime on CPU with PyTorch's outputs,
uses standard ONNX ops only, leaves the model untouched; `pelk export` through the CLI."""

from __future__ import annotations

import onnx
import pytest
import torch
from click.testing import CliRunner

from archspec import ModelSpec, save_spec
from cli import main
from compiler import build_model, compile_spec, write_build
from compiler.export import ExportError, export_onnx, verify_onnx
from tests.conftest import tiny_spec


def _trained_looking(spec: ModelSpec, seed: int = 0):
    """A tiny model whose BatchNorms have non-trivial statistics, so that folding them is tested."""
    torch.manual_seed(seed)
    model = build_model(spec).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    return model


def _valid_pos_embed_spec() -> ModelSpec:
    data = tiny_spec("pelk_t", resolution=64).model_dump()
    for stage in data["stages"]:
        stage["mixer"]["pos_embed"]["mode"] = "valid"
    data["name"] = "pelk_t_valid"
    return ModelSpec.model_validate(data)


FORMS = [(preset, form) for preset in ("pelk_t", "valid") for form in ("training", "deploy", "deploy-expanded")]
OTHER_MIXERS = [(preset, "training") for preset in ("slak_t", "replknet_31b", "convnext_t")]


@pytest.mark.parametrize("preset, form", FORMS + OTHER_MIXERS)
def test_export_matches_pytorch_in_onnxruntime(tmp_path, preset, form):
    spec = _valid_pos_embed_spec() if preset == "valid" else tiny_spec(preset, resolution=64)
    model = _trained_looking(spec)
    if form != "training":
        model.deploy(expand=form == "deploy-expanded")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    path = export_onnx(model, tmp_path / "model.onnx")
    check = verify_onnx(model, path)
    assert check["ok"], check
    assert check["input"] == [2, 3, 64, 64]  # exported at batch 1: the batch axis is dynamic
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}, "standard ONNX operators only"
    assert [value.name for value in graph.output] == ["logits"]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[key], after[key]) for key in before)


def test_a_model_without_classifier_exports_its_features_at_another_resolution(tmp_path):
    model = _trained_looking(tiny_spec("pelk_t", resolution=64, num_classes=0))
    path = export_onnx(model, tmp_path / "backbone.onnx", resolution=96)
    graph = onnx.load(path).graph
    assert [value.name for value in graph.output] == ["features"]
    assert [dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim][1:] == [3, 96, 96]
    assert verify_onnx(model, path)["ok"]


def test_verification_catches_a_file_of_another_model(tmp_path):
    spec = tiny_spec("pelk_t", resolution=64)
    path = export_onnx(_trained_looking(spec, seed=0), tmp_path / "a.onnx")
    other = _trained_looking(spec, seed=1).train()
    check = verify_onnx(other, path)
    assert not check["ok"] and check["max_abs_diff"] > check["tolerance"]
    assert other.training, "the model is left in the mode it was in"


def test_pelk_export_of_build_and_deploy_directories(tmp_path):
    spec = tiny_spec("pelk_t", resolution=64)
    write_build(compile_spec(spec), tmp_path / "build", _trained_looking(spec))
    runner = CliRunner()
    assert runner.invoke(main, ["deploy", str(tmp_path / "build")]).exit_code == 0
    for source in ("build", "build-deploy"):
        result = runner.invoke(main, ["export", str(tmp_path / source), "--out", str(tmp_path / f"{source}.onnx")])
        assert result.exit_code == 0, result.output
        assert "onnxruntime (CPU) vs PyTorch on (2, 3, 64, 64): max |diff|" in result.output
        assert (tmp_path / f"{source}.onnx").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["no_such_spec"], "no_such_spec: no spec file or preset"),
    (["SPEC", "--resolution", "16"], "resolution 16 is smaller than the model's total stride 32"),
])
def test_export_mistakes_exit_1_and_write_nothing(tmp_path, args, message):
    save_spec(tiny_spec("pelk_t", resolution=64), tmp_path / "tiny.yaml")
    args = [str(tmp_path / "tiny.yaml") if arg == "SPEC" else arg for arg in args]
    result = CliRunner().invoke(main, ["export", *args, "--out", str(tmp_path / "out.onnx")])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_an_export_failure_names_the_model(tmp_path, monkeypatch):
    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")
    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(ExportError, match=r"pelk_t_tiny: ONNX export \(opset 17\) failed: RuntimeError: "
                                          r"unsupported operator$"):
        export_onnx(build_model(tiny_spec("pelk_t", resolution=64)), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
