"""The IR: structure, lint, shapes, receptive field and fingerprint."""

from __future__ import annotations

import networkx as nx
import pytest

from archspec import ModelSpec, preset_names, resolve_spec
from compiler.ir import lower, nodes_of
from compiler.passes import LintError, fingerprint, lint, run_passes


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_lowers_to_a_linted_graph(name):
    graph = run_passes(lower(resolve_spec(name)))
    assert nx.is_directed_acyclic_graph(graph)
    ops = {graph.nodes[node]["op"] for node in graph}
    assert {"input", "stem", "downsample", "mixer", "norm", "mlp", "add", "head", "output"} <= ops
    assert all("params" in graph.nodes[node]["meta"] and "macs" in graph.nodes[node]["meta"] for node in graph)


def test_pelk_t_shapes_at_224():
    graph = run_passes(lower(resolve_spec("pelk_t")))
    mixers = nodes_of(graph, "mixer")
    assert len(mixers) == 18
    first = graph.nodes[mixers[0]]
    assert first["meta"]["in_shape"] == [124, 56, 56]
    assert first["config"]["channels"] == 46 and first["config"]["k_prime"] == 13
    last = graph.nodes[mixers[-1]]
    assert last["meta"]["in_shape"] == [998, 7, 7]
    assert graph.nodes["head"]["meta"]["out_shape"] == [1000, 1, 1]


def test_shapes_follow_the_resolution_asked_for():
    graph = run_passes(lower(resolve_spec("pelk_t")), resolution=384)
    assert graph.nodes[nodes_of(graph, "mixer")[0]]["meta"]["in_shape"] == [124, 96, 96]


def test_receptive_field_grows_with_every_kernel():
    graph = run_passes(lower(resolve_spec("convnext_t")))
    field, jump = graph.nodes["head"]["meta"]["receptive_field"]
    # stem 4 (jump 4) + 3 blocks of 7x7 at jump 4 + ... a closed form for ConvNeXt-T:
    expected, step = 4, 4
    for index, depth in enumerate([3, 3, 9, 3]):
        if index:
            expected += (2 - 1) * step
            step *= 2
        expected += depth * 6 * step
    assert (field, jump) == (expected, 32)


def test_lint_rejects_a_cycle_and_a_dangling_node():
    graph = run_passes(lower(resolve_spec("convnext_t")))
    broken = graph.copy()
    broken.add_edge("head", "stem")
    with pytest.raises(LintError, match="cycle"):
        lint(broken)
    dangling = graph.copy()
    dangling.add_node("orphan", op="mlp", module="orphan", config={"dim": 4, "hidden": 8}, stage=0, block=0,
                      meta={})
    with pytest.raises(LintError, match="orphan"):
        lint(dangling)


def test_lint_names_the_node_whose_shapes_do_not_chain():
    graph = run_passes(lower(resolve_spec("convnext_t")))
    graph.nodes["stages.1.blocks.0.mixer"]["meta"]["in_shape"] = [7, 7, 7]
    with pytest.raises(LintError, match=r"stages\.1\.blocks\.0\.mixer.*op='mixer'"):
        lint(graph)


def _renamed(spec: ModelSpec, **updates) -> ModelSpec:
    return ModelSpec.model_validate(dict(spec.model_dump(), **updates))


def test_fingerprint_ignores_names_and_training_settings():
    spec = resolve_spec("pelk_t")
    same = _renamed(spec, name="another_name", description="", drop_path_rate=0.3)
    assert fingerprint(lower(spec)) == fingerprint(lower(same))
    data = spec.model_dump()
    data["head"]["drop_rate"] = 0.5
    for stage in data["stages"]:
        stage["layer_scale_init"] = 0.1
        stage["drop_path"] = 0.2
        stage["mixer"]["pos_embed"]["init_std"] = 1.0
    assert fingerprint(lower(ModelSpec.model_validate(data))) == fingerprint(lower(spec))
    data["stages"][0]["layer_scale_init"] = None  # no layer scale: one parameter fewer per block
    assert fingerprint(lower(ModelSpec.model_validate(data))) != fingerprint(lower(spec))


def test_fingerprint_sees_the_architecture():
    spec = resolve_spec("pelk_t")
    data = spec.model_dump()
    data["stages"][0]["mixer"]["kernel_size"] = 53
    other_kernel = ModelSpec.model_validate(data)
    data = spec.model_dump()
    data["stages"][2]["mixer"]["sharing"]["remainder"] = "merge"  # K=47: [7, 8, ...] -> [15, 4, ...]
    merge_grid = ModelSpec.model_validate(data)
    prints = {fingerprint(lower(s)) for s in (spec, other_kernel, merge_grid, resolve_spec("pelk_s"))}
    assert len(prints) == 4


def test_explicit_grid_equal_to_the_rule_gives_the_same_fingerprint():
    spec = resolve_spec("pelk_t")
    data = spec.model_dump()
    data["stages"][0]["mixer"]["sharing"]["grid"] = [9, 8, 4, 2, 1, 1, 1, 1, 1, 2, 4, 8, 9]
    assert fingerprint(lower(ModelSpec.model_validate(data))) == fingerprint(lower(spec))


def test_a_policy_that_yields_the_same_grid_is_the_same_architecture():
    data = resolve_spec("pelk_t").model_dump()
    data["stages"][0]["mixer"]["sharing"]["remainder"] = "merge"  # K=51: the remainder 9 >= 8, nothing merges
    assert fingerprint(lower(ModelSpec.model_validate(data))) == fingerprint(lower(resolve_spec("pelk_t")))
