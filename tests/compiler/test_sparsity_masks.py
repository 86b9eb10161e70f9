"""Dynamic sparsity (SLaK's method) on compiled models: allocation, prune-and-regrow, AMP, checkpoints."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from archspec import ModelSpec
from compiler import build_model, compile_spec
from compiler.sparsity import DynamicSparsity, erk_densities, weight_targets
from tests.conftest import tiny_spec


def sparse_spec(name: str = "pelk_t", init: str = "uniform", interval: int = 3, **sparsity) -> ModelSpec:
    """A tiny sparse preset with 13x13 kernels (the method does not care about kernel size; CPU time does)."""
    data = tiny_spec(name, resolution=32, dim=8).model_dump()
    for stage in data["stages"]:
        stage["mixer"]["kernel_size"] = 13
    data["sparsity"].update(enabled=True, sparsity=0.4, density=None, init=init, update_interval=interval,
                            prune_rate=0.5, **sparsity)
    return ModelSpec.model_validate(data)


def batch(seed: int = 0, size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 32, 32, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def train(model, optimizer, sparsity, steps: int, after_step=None) -> None:
    for number in range(steps):
        images, labels = batch(number)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        sparsity.step()
        if after_step is not None:
            after_step(number)
        optimizer.zero_grad()


def setup(spec: ModelSpec, total_steps: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(spec, backend="torch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, DynamicSparsity(model, optimizer, spec.sparsity, total_steps, batch=batch())


def test_targets_are_the_weights_the_compiler_counts():
    spec = sparse_spec("pelk_t")
    model = build_model(spec, backend="torch")
    graph = compile_spec(spec).graph
    parameters = dict(model.named_parameters())
    masked = sum(parameters[name].numel() for name in weight_targets(model))
    assert masked == sum(graph.nodes[node]["meta"]["params"]["sparse_weights"] for node in graph)
    peripheral = parameters["stages.0.blocks.0.mixer.conv.weight"]
    assert weight_targets(model)["stages.0.blocks.0.mixer.conv.weight"] == "large_kernel"
    assert peripheral.shape[-2:] == (len(spec.stages[0].mixer.resolved_grid().grid),) * 2  # shared k' x k'


@pytest.mark.parametrize("name", ["pelk_t", "slak_t", "replknet_31b"])
def test_uniform_masks_give_the_compilers_nonzero_count(name):
    spec = sparse_spec(name)
    model, _, sparsity = setup(spec)
    report = sparsity.density_report()
    assert report["nonzero_params"] == compile_spec(spec).totals["params"]["nonzero"]
    assert all(layer["active"] == round(layer["numel"] * 0.6) for layer in report["layers"].values())
    assert report["dense_params"] == compile_spec(spec).totals["params"]["dense"] - \
        compile_spec(spec).totals["params"]["pos_embed"]


@pytest.mark.parametrize("init", ["snip", "erk"])
def test_non_uniform_allocation_keeps_the_global_count(init):
    spec = sparse_spec(init=init)
    _, _, sparsity = setup(spec)
    report = sparsity.density_report()
    layers = report["layers"]
    assert abs(report["nonzero_params"] - compile_spec(spec).totals["params"]["nonzero"]) <= len(layers)
    densities = {layer["density"] for layer in layers.values()}
    assert len(densities) > 1, "SNIP and ERK give layers different densities"


def test_erk_gives_small_layers_more_density_and_clips_at_one():
    weights = {"wide": torch.empty(512, 512), "narrow": torch.empty(4, 3, 1, 1), "dw": torch.empty(64, 1, 7, 7)}
    densities = erk_densities(weights, 0.3)
    assert densities["narrow"] == 1.0
    assert densities["dw"] > densities["wide"]
    kept = sum(densities[name] * weight.numel() for name, weight in weights.items())
    assert kept == pytest.approx(0.3 * sum(weight.numel() for weight in weights.values()))


def test_density_holds_and_masks_move_over_many_steps():
    spec = sparse_spec(interval=3)
    model, optimizer, sparsity = setup(spec, total_steps=40)
    start = {name: mask.clone() for name, mask in sparsity.masks.items()}
    counts = {name: int(mask.sum()) for name, mask in start.items()}
    parameters = dict(model.named_parameters())

    def check(number):
        for name, mask in sparsity.masks.items():
            assert int(mask.sum()) == counts[name], f"step {number}: {name} changed density"
            assert not parameters[name].detach()[~mask].any(), f"step {number}: {name} has weights off the mask"

    train(model, optimizer, sparsity, 9, check)
    moved = [name for name in start if not torch.equal(start[name], sparsity.masks[name])]
    assert len(moved) == len(start), "every layer pruned and regrew at the updates"
    assert sparsity.density_report()["nonzero_params"] == compile_spec(spec).totals["params"]["nonzero"]


def test_regrown_weights_start_at_zero_with_no_optimizer_state():
    spec = sparse_spec(interval=1000)
    model, optimizer, sparsity = setup(spec)
    train(model, optimizer, sparsity, 2)
    name = "stages.0.blocks.0.mlp.fc1.weight"
    weight = dict(model.named_parameters())[name]
    mask_before, weight_before = sparsity.masks[name].clone(), weight.detach().clone()
    sparsity.prune_and_regrow(0.5)
    mask = sparsity.masks[name]
    moved = mask & ~mask_before
    in_place = mask & mask_before & (weight.detach() != weight_before)  # pruned, then regrown where it was
    restarted = moved | in_place
    assert moved.any()
    assert not weight.detach()[restarted].any()
    assert not optimizer.state[weight]["exp_avg"][restarted].any()
    assert not optimizer.state[weight]["exp_avg_sq"][restarted].any()
    survivors = mask & mask_before & ~in_place
    assert optimizer.state[weight]["exp_avg_sq"][survivors].all(), "survivors keep their optimizer state"


def test_prune_rate_decays_on_a_cosine_to_zero():
    spec = sparse_spec()
    _, _, sparsity = setup(spec, total_steps=100)
    assert sparsity.prune_rate(0) == pytest.approx(0.5)
    assert sparsity.prune_rate(50) == pytest.approx(0.25)
    assert sparsity.prune_rate(100) == pytest.approx(0.0, abs=1e-12)
    constant = sparse_spec(schedule="constant")
    _, _, sparsity = setup(constant, total_steps=100)
    assert sparsity.prune_rate(70) == 0.5


def test_gradient_growth_regrows_where_the_gradient_is_largest():
    spec = sparse_spec(interval=1000, growth="gradient")
    model, optimizer, sparsity = setup(spec)
    images, labels = batch(1)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()
    name = "head.fc.weight"
    weight = dict(model.named_parameters())[name]
    before = sparsity.masks[name].clone()
    sparsity.prune_and_regrow(0.2)
    regrown = sparsity.masks[name] & ~before
    still_off = ~sparsity.masks[name]
    assert weight.grad.abs()[regrown].min() >= weight.grad.abs()[still_off].max()


def test_masks_hold_under_grad_scaler_and_bf16_autocast():
    spec = sparse_spec(interval=2)
    model, optimizer, sparsity = setup(spec)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    parameters = dict(model.named_parameters())
    counts = {name: int(mask.sum()) for name, mask in sparsity.masks.items()}
    for number in range(5):
        images, labels = batch(number)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sparsity.step()
        optimizer.zero_grad()
        for name, mask in sparsity.masks.items():
            assert int(mask.sum()) == counts[name]
            assert not parameters[name].detach()[~mask].any()


def test_checkpoint_round_trip_resumes_identically():
    spec = sparse_spec(interval=2)
    model, optimizer, sparsity = setup(spec, total_steps=40)
    train(model, optimizer, sparsity, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "sparsity": sparsity.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    restored, restored_optimizer, restored_sparsity = setup(spec, total_steps=40, seed=1)
    restored.load_state_dict(checkpoint["model"])
    restored_optimizer.load_state_dict(checkpoint["optimizer"])
    restored_sparsity.load_state_dict(checkpoint["sparsity"])
    assert restored_sparsity.steps == sparsity.steps
    for copy in ((model, optimizer, sparsity), (restored, restored_optimizer, restored_sparsity)):
        torch.manual_seed(2)  # drop path draws from the global generator
        train(*copy, 4)
    for name in sparsity.masks:
        assert torch.equal(sparsity.masks[name], restored_sparsity.masks[name])


def test_mismatched_checkpoint_and_bad_settings_are_refused():
    model, optimizer, sparsity = setup(sparse_spec())
    state = sparsity.state_dict()
    del state["masks"]["head.fc.weight"]
    with pytest.raises(ValueError, match="missing masks .*head.fc.weight"):
        sparsity.load_state_dict(state)
    with pytest.raises(ValueError, match="snip.*batch"):
        DynamicSparsity(model, optimizer, sparse_spec(init="snip").sparsity, 10)
    dense = tiny_spec("convnext_t")
    with pytest.raises(ValueError, match="sparsity.enabled is false"):
        DynamicSparsity(model, optimizer, dense.sparsity, 10)
    with pytest.raises(ValueError, match=r"targets \[\] selects no weight"):
        DynamicSparsity(model, optimizer, sparse_spec(targets=[]).sparsity, 10)


def test_targets_limit_which_weights_carry_masks():
    spec = sparse_spec(targets=["mlp", "large_kernel"])
    _, _, sparsity = setup(spec)
    assert {layer["target"] for layer in sparsity.density_report()["layers"].values()} == {"mlp", "large_kernel"}
    assert sparsity.density_report()["nonzero_params"] == compile_spec(spec).totals["params"]["nonzero"]


def test_a_step_the_grad_scaler_skips_does_not_count():
    model, optimizer, sparsity = setup(sparse_spec())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    images, labels = batch()
    scaler.scale(F.cross_entropy(model(images), labels)).backward()
    next(model.parameters()).grad.fill_(float("inf"))  # the scaler finds an inf and skips optimizer.step
    scaler.step(optimizer)
    scaler.update()
    assert sparsity.step() is False and sparsity.steps == 0
    optimizer.zero_grad()
    scaler.scale(F.cross_entropy(model(images), labels)).backward()
    scaler.step(optimizer)
    scaler.update()
    sparsity.step()
    assert sparsity.steps == 1


def test_a_compiled_forward_trains_under_dynamic_sparsity():
    """torch.compile(model) sees the masks the optimizer-side updates write in place: masked weights
    stay zero through prune-and-regrow, and the compiled model matches the eager one afterwards."""
    model, optimizer, sparsity = setup(sparse_spec(interval=2), total_steps=6)
    compiled = torch.compile(model, backend="aot_eager")
    train(compiled, optimizer, sparsity, steps=6)
    parameters = dict(model.named_parameters())
    assert sparsity.masks and all(parameters[name][mask == 0].abs().sum() == 0
                                  for name, mask in sparsity.masks.items())
    model.eval()
    images, _ = batch(99)
    torch.testing.assert_close(compiled(images), model(images))
