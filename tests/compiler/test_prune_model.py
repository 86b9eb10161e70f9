"""Width variants by structured pruning: consistent slices, spec-exact rebuilds, importance that sees mixers."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp

from archspec import dump_spec, loads_spec
from compiler import build_model
from compiler.modules import PartialMixer
from compiler.prune import ChannelImportance, PruneError, dependency_graph, prune_model, slim_spec
from tests.compiler.test_deploy_equivalence import randomise_statistics
from tests.conftest import tiny_spec

RESOLUTION = 32


def tiny_model(name: str = "pelk_t", depth: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(tiny_spec(name, resolution=RESOLUTION, dim=16, depth=depth), backend="torch")
    randomise_statistics(model, seed)
    return model


def shapes(model) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("name", ["pelk_t", "pelk101_t", "slak_t", "replknet_31b", "convnext_t"])
def test_pruned_model_runs_and_its_spec_rebuilds_to_the_same_shapes(name):
    model = tiny_model(name)
    result = prune_model(model, 0.5)
    image = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        assert result.model.eval()(image).shape == (2, 10)
    spec = loads_spec(dump_spec(result.spec), "pruned.yaml")
    assert spec == result.spec
    assert shapes(build_model(spec)) == shapes(result.model)
    assert spec.stage_dims() == [spec.width.apply(round(stage.dim * 0.5)) for stage in model.spec.stages]
    assert [plan.new_dim for plan in result.plans] == spec.stage_dims()
    assert [plan.new_channels for plan in result.plans] == spec.mixer_channels()
    assert all(spec.stages[i].dim == round(model.spec.stages[i].dim * 0.5) for i in range(len(spec.stages)))


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_parameters_shrink_between_linear_and_quadratic_in_the_ratio(ratio):
    model = tiny_model()
    result = prune_model(model, ratio)
    before = sum(parameter.numel() for parameter in model.parameters())
    after = sum(parameter.numel() for parameter in result.model.parameters())
    assert (1 - ratio) ** 2 * 0.9 <= after / before <= (1 - ratio) * 1.05


def test_kept_slices_are_the_planned_channels_in_every_coupled_layer():
    model = tiny_model()
    result = prune_model(model, 0.5)
    plan, next_plan = result.plans[0], result.plans[1]
    keep, hidden = plan.keep, plan.hidden_keep[0]
    kernel_keep = [index for index in keep if index < plan.channels]
    assert len(kernel_keep) == plan.new_channels
    assert keep[:plan.new_channels] == kernel_keep, "kernel channels stay first"
    old, new = model.state_dict(), result.model.state_dict()
    block, stage = "stages.0.blocks.0", "stages.0"
    expected = {
        "stem.0.weight": old["stem.0.weight"][keep],
        "stem.1.weight": old["stem.1.weight"][keep],
        f"{stage}.pos_embed": old[f"{stage}.pos_embed"][kernel_keep],
        f"{block}.mixer.conv.weight": old[f"{block}.mixer.conv.weight"][kernel_keep],
        f"{block}.mixer.norm.running_var": old[f"{block}.mixer.norm.running_var"][kernel_keep],
        f"{block}.mixer.small.0.weight": old[f"{block}.mixer.small.0.weight"][kernel_keep],
        f"{block}.mixer.small.1.weight": old[f"{block}.mixer.small.1.weight"][kernel_keep],
        f"{block}.norm.weight": old[f"{block}.norm.weight"][keep],
        f"{block}.gamma": old[f"{block}.gamma"][keep],
        f"{block}.mlp.fc1.weight": old[f"{block}.mlp.fc1.weight"][hidden][:, keep],
        f"{block}.mlp.fc1.bias": old[f"{block}.mlp.fc1.bias"][hidden],
        f"{block}.mlp.fc2.weight": old[f"{block}.mlp.fc2.weight"][keep][:, hidden],
        "stages.1.downsample.0.weight": old["stages.1.downsample.0.weight"][keep],
        "stages.1.downsample.1.weight": old["stages.1.downsample.1.weight"][next_plan.keep][:, keep],
        "head.fc.weight": old["head.fc.weight"][:, result.plans[-1].keep],
    }
    for name, tensor in expected.items():
        assert torch.equal(new[name], tensor), name


def test_torch_pruning_couples_every_layer_of_a_stage():
    model = tiny_model(depth=2)
    graph, _ = dependency_graph(model, RESOLUTION)
    group = graph.get_pruning_group(model.stages[1].downsample[1], tp.prune_conv_out_channels, [0])
    names = {item.dep.target.name.split(" ")[0] for item in group}
    for number in range(2):
        block = f"stages.1.blocks.{number}"
        assert {f"{block}.mixer", f"{block}.norm", f"{block}.mlp.fc1", f"{block}.mlp.fc2"} <= names
    assert {"stages.2.downsample.0", "stages.2.downsample.1"} <= names
    assert not {name for name in names if name.startswith(("stages.0.", "stages.2.blocks"))}


def _stage0_importance(model) -> torch.Tensor:
    graph, owners = dependency_graph(model, RESOLUTION)
    group = graph.get_pruning_group(model.stem[0], tp.prune_conv_out_channels, list(range(model.dims[0])))
    return ChannelImportance(owners)(group)


def test_importance_depends_on_the_peripheral_weights():
    model = tiny_model(depth=1)
    mixer = model.stages[0].blocks[0].mixer
    assert isinstance(mixer, PartialMixer)
    with torch.no_grad():
        mixer.conv.weight.fill_(0.5)  # every kernel channel equally strong ...
        mixer.conv.weight[2].zero_()  # ... but channel 2's peripheral weights are gone
    scores = _stage0_importance(model)
    kernel_scores = scores[:mixer.channels]
    assert int(kernel_scores.argmin()) == 2
    result = prune_model(model, 0.3)
    assert 2 not in result.plans[0].keep and result.plans[0].new_channels < mixer.channels

    stock = tp.importance.GroupMagnitudeImportance()
    graph, _ = dependency_graph(model, RESOLUTION)
    group = graph.get_pruning_group(model.stem[0], tp.prune_conv_out_channels, list(range(model.dims[0])))
    before = stock(group)
    with torch.no_grad():
        mixer.conv.weight[2].fill_(0.5)
    assert torch.equal(stock(group), before), "stock torch-pruning importance ignores the peripheral weights"
    assert _stage0_importance(model)[2] > scores[2]


def test_unprunable_requests_are_refused_with_the_reason():
    model = tiny_model(depth=1)
    with pytest.raises(PruneError, match="between 0 and 1"):
        prune_model(model, 1.0)
    with pytest.raises(PruneError, match=r"--ratio 0.97 leaves pelk_t_tiny too narrow: stages.*leaves 0 channels"):
        slim_spec(model.spec, 0.97)
    with pytest.raises(PruneError, match="deploy form"):
        prune_model(build_model(model.spec).deploy(), 0.5)
