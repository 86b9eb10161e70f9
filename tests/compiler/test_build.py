"""`pelk build` and the build directory: contents, atomicity, reload, refusal of foreign weights."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner

from archspec import save_spec
from cli import main
from compiler import BuildError, build_model, compile_spec, load_model, load_weights, save_weights, write_build
from tests.conftest import tiny_spec

runner = CliRunner()


@pytest.fixture
def tiny_spec_file(tmp_path):
    return save_spec(tiny_spec("pelk_t"), tmp_path / "tiny.yaml")


def test_build_prints_the_stage_table(tiny_spec_file):
    result = runner.invoke(main, ["build", str(tiny_spec_file)])
    assert result.exit_code == 0, result.output
    from compiler.passes import STAGE_HEADERS
    assert all(header in result.output for header in STAGE_HEADERS)
    assert "[9, 8, 4, 2, 1, 1, 1]" in result.output


def test_build_writes_a_complete_directory(tiny_spec_file, tmp_path):
    out = tmp_path / "built"
    result = runner.invoke(main, ["build", str(tiny_spec_file), "--out", str(out), "--resolution", "96"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ir.graphml", "ir.json", "model.pt", "spec.yaml",
                                                     "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert {"dense", "nonzero"} <= set(summary["params"]) and summary["resolution"] == 96
    assert summary["macs"] > 0 and len(summary["fingerprint"]) == 16
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_built_model_reloads_identically(tmp_path, tiny_spec_file):
    out = tmp_path / "built"
    assert runner.invoke(main, ["build", str(tiny_spec_file), "--out", str(out)]).exit_code == 0
    model = load_model(out).eval()
    again = load_model(out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_a_build_keeps_loading_when_the_fingerprint_rule_changes(tmp_path):
    """load_model builds the spec stored with the weights; only names and shapes must fit."""
    spec = tiny_spec("pelk_t")
    model = build_model(spec).eval()
    out = write_build(compile_spec(spec), tmp_path / "built", model)
    payload = torch.load(out / "model.pt", weights_only=True)
    torch.save(dict(payload, fingerprint="0123456789abcdef"), out / "model.pt")  # an older pelk's fingerprint
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(load_model(out).eval()(x), model(x))
    state = dict(payload["state_dict"])
    state["head.fc.weight"] = state["head.fc.weight"][:5]
    torch.save(dict(payload, state_dict=state), out / "model.pt")
    with pytest.raises(BuildError, match=r"(?s)the weights do not fit the model: .*head.fc.weight"):
        load_model(out)


def test_weights_for_another_architecture_are_refused(tmp_path):
    weights = save_weights(build_model(tiny_spec("pelk_t")), tmp_path / "pelk.pt")
    other = build_model(tiny_spec("convnext_t"))
    with pytest.raises(BuildError, match="weights are for 'pelk_t_tiny'.*not for 'convnext_t_tiny'"):
        load_weights(other, weights)


def test_bad_inputs_are_clean_errors(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BuildError, match="not a pelk weights file"):
        load_model(garbage)
    with pytest.raises(BuildError, match="not a build directory"):
        load_model(tmp_path)
    for args in (["build", "no_such_preset"], ["build", str(tmp_path / "x.yaml")],
                 ["build", "pelk_t", "--resolution", "3"], ["build", "pelk_t", "--backend", "cuda"]):
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and "Traceback" not in result.output, args


def test_a_failed_build_leaves_the_old_directory_untouched(tmp_path, tiny_spec_file, monkeypatch):
    out = tmp_path / "built"
    assert runner.invoke(main, ["build", str(tiny_spec_file), "--out", str(out)]).exit_code == 0
    before = (out / "summary.json").read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("compiler.build.torch.save", explode)  # fails inside the half-written directory
    result = runner.invoke(main, ["build", str(tiny_spec_file), "--out", str(out), "--resolution", "128"])
    assert result.exit_code != 0
    assert (out / "summary.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["built", "tiny.yaml"]


def test_a_directory_holding_other_files_is_not_replaced_by_a_build(tmp_path, tiny_spec_file):
    """--out replaces a build directory whole; a folder of other files (here the spec itself) is refused."""
    result = runner.invoke(main, ["build", str(tiny_spec_file), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "a directory with other files in it (no model.pt" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert runner.invoke(main, ["build", str(tiny_spec_file), "--out", str(empty)]).exit_code == 0
    assert (empty / "model.pt").is_file()


def test_a_model_of_another_architecture_is_not_written_as_the_build(tmp_path):
    with pytest.raises(BuildError, match="is not the compiled spec"):
        write_build(compile_spec(tiny_spec("pelk_t")), tmp_path / "built", build_model(tiny_spec("convnext_t")))
    assert not (tmp_path / "built").exists()


def test_building_pelk_t_takes_seconds(tmp_path):
    started = time.perf_counter()
    result = runner.invoke(main, ["build", "pelk_t", "--out", str(tmp_path / "pelk_t")])
    assert result.exit_code == 0
    assert time.perf_counter() - started < 30


def test_backends_reports_the_auto_choice_and_reason_per_stage():
    pytest.importorskip("triton")
    result = runner.invoke(main, ["backends", "pelk_t", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "triton" in lines[3] and "spectral box form" in lines[3] and "box: 832" in lines[3]  # stage 1
    assert "triton" in lines[4] and "spectral box form" in lines[4] and "box: 416" in lines[4]  # stage 2
    assert "instead of K²=2601" in lines[3]
    assert "triton" in lines[6] and "Toeplitz GEMM" in lines[6]  # stage 4: K=13 on 7x7
    bf16 = runner.invoke(main, ["backends", "pelk_t", "--device", "cuda", "--dtype", "bf16"]).output.splitlines()
    assert "plane-box GEMMs" in bf16[3] and "bf16" in bf16[0]  # stage 1: 56x56 fills a 64x64 tile
    assert "Toeplitz GEMM by image rows" in bf16[4]  # stage 2: 28x28
    cpu = runner.invoke(main, ["backends", "pelk_b101", "--device", "cpu"]).output
    assert "sat" in cpu and "the measured crossover" in cpu
    assert runner.invoke(main, ["backends", "no_such_spec"]).exit_code != 0
