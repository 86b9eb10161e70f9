"""`pelk search`: the Pareto front over IR objectives, budgets, de-duplication, front specs that build,
Table 7's finding, and user mistakes through the CLI."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from click.testing import CliRunner

from archspec import load_spec, save_spec
from cli import main
from compiler.build import build_model
from compiler.search import SearchConfig, empty_front_reason, make_config, parse_objectives, run_search
from compiler.space import loads_space
from tests.conftest import tiny_spec


def _dominates(a: dict, b: dict, objectives) -> bool:
    signs = [1 if objective.direction == "minimize" else -1 for objective in objectives]
    pairs = [(sign * a[o.name], sign * b[o.name]) for sign, o in zip(signs, objectives)]
    return all(x <= y for x, y in pairs) and any(x < y for x, y in pairs)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


@pytest.mark.parametrize("resolution, expected", [(224, [51, 49, 47, 13]), (384, [101, 69, 67, 13])])
def test_coverage_reproduces_table_7(resolution, expected):
    """Paper Table 7: 51-49-47-13 is right at 224 (56x56 after the stem), 101-69-67-13 at 384 (96x96)."""
    result = run_search(make_config(resolution, space="table7", objectives="coverage", trials=9, seed=0))
    assert [row["kernels"] for row in result.front] == [expected]


def test_front_is_feasible_non_dominated_and_complete():
    config = make_config(224, space="pelk_t_kernels", budget="params=28.7M,macs=6G", trials=120, seed=1)
    result = run_search(config)
    assert result.front, "some architecture fits 28.7M / 6G"
    for row in result.front:
        assert row["params"] <= 28.7e6 and row["macs"] <= 6e9
    metrics = [trial.user_attrs["metrics"] for trial in _complete(result.study)
               if trial.user_attrs["metrics"]["params"] <= 28.7e6 and trial.user_attrs["metrics"]["macs"] <= 6e9]
    members = [row["objectives"] for row in result.front]
    for member in members:  # nothing feasible dominates a front member ...
        assert not any(_dominates(other, member, config.objectives) for other in metrics)
    for other in metrics:  # ... and every feasible trial is dominated by or equal to a member
        values = {o.name: other[o.name] for o in config.objectives}
        assert any(_dominates(member, values, config.objectives) or member == values for member in members)


def test_no_two_complete_trials_share_an_architecture():
    space = loads_space("name: small\nkernel_sets: [[51, 49, 47, 13], [31, 29, 27, 7], [71, 49, 47, 13]]\n"
                        "partial_ratio: [0.25, 0.5]\n")
    config = make_config(224, space=space, trials=40, seed=0, sampler="random")
    result = run_search(config)
    complete = _complete(result.study)
    fingerprints = [trial.user_attrs["fingerprint"] for trial in complete]
    assert len(fingerprints) == len(set(fingerprints)) == 6  # 3 kernel sets x 2 ratios, each once
    pruned = result.study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert len(pruned) == 34 and all("duplicate_of" in trial.user_attrs for trial in pruned)


def test_a_budget_nobody_meets_gives_an_empty_front_and_says_why():
    result = run_search(make_config(224, space="table7", budget="params=1M", trials=9, seed=0))
    assert result.front == [] and result.counts.get("complete", 0) >= 1
    assert empty_front_reason(result) == "no complete trial meets the budget params<=1.00M (smallest seen 28.79M)"
    cli = CliRunner().invoke(main, ["search", "--resolution", "224", "--space", "table7", "--trials", "9",
                                    "--seed", "0", "--budget", "macs=1G"])
    assert cli.exit_code == 0 and "no complete trial meets the budget macs<=1.00G (smallest seen 5.87G)" in cli.output


def test_front_specs_validate_and_build(tmp_path):
    base = tmp_path / "tiny.yaml"
    save_spec(tiny_spec("pelk_t", resolution=64), base)
    space = tmp_path / "space.yaml"
    space.write_text("name: tiny_kernels\nbase: tiny.yaml\nstages:\n  - kernel_size: [13, 17]\n"
                     "  - kernel_size: [9, 13]\n  - kernel_size: 7\n  - kernel_size: 7\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["search", "--resolution", "96", "--space", str(space), "--trials", "12",
                                       "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "front.json").read_text())
    assert document["resolution"] == 96 and document["front"]
    for row in document["front"]:
        spec = load_spec(row["spec"])
        assert spec.input.resolution == 96 and spec.kernel_sizes() == row["kernels"]
        model = build_model(spec).eval()
        assert model.fingerprint == row["fingerprint"]
        with torch.no_grad():
            assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)
    assert sorted(path.name for path in (out / "front").iterdir()) == sorted(
        f"{row['name']}.yaml" for row in document["front"])


def test_latency_and_erf_objectives_build_the_model():
    spec = tiny_spec("pelk_t", resolution=64)
    space = loads_space("name: one\nkernel_sets: [[13, 9, 7, 7]]\n")
    config = SearchConfig(resolution=64, space=space, base=spec, trials=1,
                          objectives=parse_objectives("params,latency,erf"))
    [row] = run_search(config).front
    assert row["objectives"]["latency"] > 0 and 0 < row["objectives"]["erf"] <= 1


def test_json_output_and_table(tmp_path):
    runner = CliRunner()
    as_json = runner.invoke(main, ["search", "--resolution", "384", "--space", "table7", "--trials", "9",
                                   "--seed", "0", "--objectives", "coverage,params", "--json"])
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    assert [o["name"] for o in document["objectives"]] == ["coverage", "params"]
    assert document["front"][0]["kernels"] == [101, 69, 67, 13]
    table = runner.invoke(main, ["search", "--resolution", "384", "--space", "table7", "--trials", "9",
                                 "--seed", "0", "--objectives", "coverage,params"])
    assert "101-69-67-13" in table.output and "K/H" in table.output


def test_a_study_resumes_from_its_journal_and_refuses_another_search(tmp_path):
    runner = CliRunner()
    args = ["search", "--resolution", "224", "--space", "table7", "--out", str(tmp_path), "--seed", "0"]
    assert runner.invoke(main, args + ["--trials", "4"]).exit_code == 0
    resumed = runner.invoke(main, args + ["--trials", "3", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert sum(json.loads(resumed.output)["trials"].values()) == 7
    other = runner.invoke(main, args + ["--trials", "1", "--budget", "params=20M"])
    assert other.exit_code == 1 and "made for another search (different budget)" in other.output
    assert "Traceback" not in other.output


@pytest.mark.parametrize("args, message", [
    (["--objectives", "params,speed"], "--objectives: unknown objective(s) ['speed']"),
    (["--objectives", "params,params"], "names an objective twice"),
    (["--budget", "flops=3G"], "--budget: 'flops=3G' is not KEY=VALUE"),
    (["--space", "no_such_space"], "no_such_space: no search-space file or shipped space"),
    (["--base", "no_such_spec"], "no_such_spec: no spec file or preset"),
    (["--base", "convnext_t", "--space", "table7", "--objectives", "coverage"], None),
    (["--storage", "postgresql://nobody@127.0.0.1:9/none"], "cannot open the study storage"),
])
def test_user_mistakes_exit_1_with_a_message(args, message):
    result = CliRunner().invoke(main, ["search", "--resolution", "224", "--trials", "2", *args])
    if message is None:  # a dense base is fine: kernels change, sharing knobs do not apply
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_storage_file_that_is_not_a_journal_is_refused_and_left_untouched(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    result = CliRunner().invoke(main, ["search", "--resolution", "224", "--space", "table7", "--trials", "1",
                                       "--storage", str(notes)])
    assert result.exit_code == 1, result.output
    assert "exists and is not an Optuna journal file" in result.output and "Traceback" not in result.output
    assert notes.read_text() == "my notes\n"
