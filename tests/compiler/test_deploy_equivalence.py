"""Deploy form: the folded model computes what the training form computes in eval mode."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import runtime
from archspec import ModelSpec, SharingGrid, full_grid
from compiler import build_model
from compiler.deploy import DeployedMixer, DeployError, mixer_and_model_outputs
from compiler.modules import PeripheralMixer
from tests.conftest import tiny_spec

RESOLUTION = 32


@st.composite
def mixers(draw) -> dict:
    """A random mixer of any type with every option that deploy folds."""
    kind = draw(st.sampled_from(["peripheral", "dense", "stripe"]))
    kernel = draw(st.sampled_from([5, 7, 9, 13, 17, 23]))
    common = {"type": kind, "kernel_size": kernel, "partial_ratio": draw(st.sampled_from([0.375, 0.5, 1.0])),
              "norm": draw(st.sampled_from(["batchnorm", "none"]))}
    if kind == "peripheral":
        center = draw(st.sampled_from([c for c in (1, 3, 5) if c < kernel]))
        remainder = draw(st.sampled_from(["greedy", "merge"]))
        unshared = SharingGrid(tuple(full_grid(kernel, center, 2, remainder))).unshared_center
        pos_mode = draw(st.sampled_from([None, "padded", "valid"]))
        return dict(common, sharing={"center": center, "remainder": remainder},
                    pos_embed={"enabled": pos_mode is not None, "mode": pos_mode or "padded"},
                    small_kernel=draw(st.sampled_from([None] + [s for s in (1, 3, 5) if s <= unshared])))
    small = draw(st.sampled_from([None] + [s for s in (3, 5) if s <= kernel]))
    if kind == "dense":
        return dict(common, small_kernel=small)
    return dict(common, short_side=draw(st.sampled_from([s for s in (1, 3, 5) if s < kernel])), small_kernel=small)


@st.composite
def specs(draw) -> ModelSpec:
    stages = [{"depth": draw(st.integers(1, 2)), "dim": dim, "mixer": draw(mixers()), "layer_scale_init": 1.0}
              for dim in (8, 16)]
    return ModelSpec.model_validate({"name": "random", "input": {"resolution": RESOLUTION}, "stages": stages,
                                     "head": {"num_classes": 5}})


def randomise_statistics(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affines, and a large positional embedding, so every fold matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator))
        for stage in model.stages:
            if stage.pos_embed is not None:
                stage.pos_embed.copy_(torch.randn(stage.pos_embed.shape, generator=generator))


def assert_same_outputs(reference, deployed):
    for expected, actual in zip(reference, deployed):
        scale = expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@given(spec=specs(), expand=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_deploy_form_matches_training_form_in_eval(spec, expand, seed):
    torch.manual_seed(seed)
    model = build_model(spec, backend="torch")
    randomise_statistics(model, seed)
    image = torch.randn(2, 3, RESOLUTION, RESOLUTION)
    expected = mixer_and_model_outputs(model, image)
    model.deploy(expand=expand)
    assert_same_outputs(expected, mixer_and_model_outputs(model, image))
    assert not any(stage.pos_embed is not None for stage in model.stages)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())


@pytest.mark.parametrize("name", ["pelk_t", "pelk101_t"])
def test_peripheral_structure_is_kept_unless_expanded(name):
    spec = tiny_spec(name, resolution=RESOLUTION)
    model = build_model(spec, backend="torch")
    grids = [stage.mixer.resolved_grid() for stage in spec.stages]
    dense_params = sum(parameter.numel() for parameter in model.parameters())
    model.deploy()
    for stage, grid, channels in zip(model.stages, grids, spec.mixer_channels()):
        mixer = stage.blocks[0].mixer
        assert isinstance(mixer, DeployedMixer) and len(mixer.branches) == 1
        conv = mixer.branches[0]
        assert isinstance(conv, runtime.PeripheralConv2d)
        assert conv.weight.shape == (channels, 1, grid.k_prime, grid.k_prime)
        assert conv.bias is not None
    assert sum(parameter.numel() for parameter in model.parameters()) < dense_params

    expanded = build_model(spec, backend="torch").deploy(expand=True)
    assert not any(isinstance(module, runtime.PeripheralConv2d) for module in expanded.modules())
    kernels = [stage.blocks[0].mixer.branches[0].weight.shape[-1] for stage in expanded.stages]
    assert kernels == spec.kernel_sizes()


@pytest.mark.parametrize("pos_mode", ["padded", "valid"])
def test_expanded_model_exports_with_plain_aten_ops(pos_mode):
    data = tiny_spec("pelk_t", resolution=RESOLUTION).model_dump()
    for stage in data["stages"]:
        stage["mixer"]["pos_embed"]["mode"] = pos_mode
    model = build_model(ModelSpec.model_validate(data), backend="sat").deploy(expand=True)
    image = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    exported = torch.export.export(model, (image,))
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not [target for target in targets if "pelk" in target]
    torch.testing.assert_close(exported.module()(image), model(image))


def test_small_kernel_that_misses_the_unshared_centre_is_refused_and_nothing_changes():
    model = build_model(tiny_spec("pelk_t", resolution=RESOLUTION), backend="torch").eval()
    block = model.stages[0].blocks[0]
    block.mixer = PeripheralMixer(block.mixer.dim, block.mixer.channels, (3, 1, 3), small_kernel=3,
                                  norm="batchnorm", pos_mode="padded", backend="torch")
    model.stages[0].pos_embed = None
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(DeployError, match=r"stages\.0\.blocks\.0\.mixer: the 3x3 small kernel .* grid \[3, 1, 3\] "
                                          r"has an unshared centre of 1x1"):
        model.deploy()
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], before[name]) for name in before)
    image = torch.randn(1, 3, RESOLUTION, RESOLUTION)
    with torch.no_grad():
        expected = model(image)
        assert_same_outputs([expected], [model.deploy(expand=True)(image)])


def test_deploying_twice_is_refused():
    model = build_model(tiny_spec("pelk_t", resolution=RESOLUTION)).deploy()
    with pytest.raises(DeployError, match="already in deploy form"):
        model.deploy()
