"""`pelk erf`: heatmaps, a side-by-side figure and JSON ratios from one command, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from archspec import ModelSpec, save_spec
from cli import main
from compiler import compile_spec, write_build
from tests.conftest import tiny_spec


@pytest.fixture
def tiny_specs(tmp_path):
    paths = []
    for name in ("pelk_t", "slak_t"):
        path = tmp_path / f"{name}_tiny.yaml"
        save_spec(tiny_spec(name, dim=8), path)
        paths.append(path)
    return paths


def run(*args: str):
    return CliRunner().invoke(main, ["erf", *args])


def test_two_models_on_shipped_photographs(tmp_path, tiny_specs):
    out = tmp_path / "erf"
    result = run(*map(str, tiny_specs), "--num-images", "2", "--size", "64", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == [
        "erf.json", "erf_comparison.png", "erf_pelk_t_tiny.npy", "erf_pelk_t_tiny.png",
        "erf_slak_t_tiny.npy", "erf_slak_t_tiny.png"]
    assert all((out / name).read_bytes().startswith(b"\x89PNG") for name in
               ("erf_comparison.png", "erf_pelk_t_tiny.png", "erf_slak_t_tiny.png"))
    report = json.loads((out / "erf.json").read_text())
    assert [model["label"] for model in report["models"]] == ["pelk_t_tiny", "slak_t_tiny"]
    for model in report["models"]:
        assert model["num_images"] == 2 and model["size"] == 64
        assert list(model["area_ratios"]) == ["20%", "30%", "50%", "99%"]
        ratios = [found["ratio"] for found in model["area_ratios"].values() if found]
        assert ratios == sorted(ratios) and all(0 < ratio <= 1 for ratio in ratios)
        assert "skimage" in model["images"][0]
    scores = np.load(out / "erf_pelk_t_tiny.npy")
    assert scores.shape == (64, 64) and scores.max() == pytest.approx(report["models"][0]["max_contribution"])
    assert "t=20%" in result.output and "pelk_t_tiny" in result.output


def test_one_build_directory_from_an_image_folder(tmp_path):
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{index}.png")
    build = write_build(compile_spec(tiny_spec("convnext_t", dim=8)), tmp_path / "convnext_run")
    out = tmp_path / "erf"
    result = run(str(build), "--images", str(images), "--size", "64", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "erf.json").read_text())
    assert report["models"][0]["label"] == "convnext_run" and report["models"][0]["num_images"] == 3
    assert not (out / "erf_comparison.png").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--images", "{tmp}/nowhere"], "nowhere: not a directory of images"),
    (["--images", "{tmp}"], "no image files"),
    (["--num-images", "99"], "--num-images 99: only 6 images"),
    (["--size", "16"], "--size 16 is smaller than the model's total stride 32"),
    (["--backend", "triton", "--device", "cpu"], "--backend triton on cpu: "),
])
def test_mistakes_are_explained_without_traceback(tmp_path, tiny_specs, arguments, message):
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    result = run(str(tiny_specs[0]), *arguments, "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_an_unknown_model_is_named(tmp_path):
    result = run("no_such_preset", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "no_such_preset" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_explained(tmp_path, tiny_specs):
    result = run(str(tiny_specs[0]), "--device", "cuda", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "--device cuda: no CUDA device is available" in result.output


@pytest.mark.parametrize("last_source, message", [
    ("no_such_preset", "no_such_preset: no spec file or preset"),
    ("pelk_t", "--size 48 is smaller than the model's total stride 64"),
])
def test_every_source_is_checked_before_any_is_measured(tmp_path, tiny_specs, monkeypatch, last_source, message):
    import compiler.erf
    measured = []
    monkeypatch.setattr(compiler.erf, "mean_contribution", lambda *args, **kwargs: measured.append(args))
    if last_source == "pelk_t":  # a spec whose total stride (64) exceeds the size that suits the first model
        data = tiny_spec("pelk_t", dim=8).model_dump()
        data["stem"]["stride"] = 8
        last_source = str(tmp_path / "stride64.yaml")
        save_spec(ModelSpec.model_validate(data), last_source)
    result = run(str(tiny_specs[0]), last_source, "--num-images", "1", "--size", "48", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert measured == [] and not (tmp_path / "out").exists()


def test_an_output_under_a_file_is_refused_before_measuring(tmp_path, tiny_specs, monkeypatch):
    import compiler.erf
    measured = []
    monkeypatch.setattr(compiler.erf, "mean_contribution", lambda *args, **kwargs: measured.append(args))
    (tmp_path / "notes").write_text("a file")
    result = run(str(tiny_specs[0]), "--num-images", "1", "--size", "64", "--out", str(tmp_path / "notes" / "erf"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"cannot write here: {tmp_path / 'notes'} is a file, not a directory" in result.output
    assert measured == []
