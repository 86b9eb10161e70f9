"""Width variants by structured channel pruning, with torch-pruning.

A stage's channels are one coupled group: the stem or downsample conv that
makes them, every block's mixer, norm, MLP (fc1 input, fc2 output), layer
scale, the next downsample (norm, conv input) or the head. torch-pruning's
``DependencyGraph`` finds that group by tracing the model; two extensions
make it understand pelk's blocks:

* ``MixerPruner`` (a ``tp.pruner.BasePruningFunc`` registered for the
  mixer classes) treats a partial mixer as one channel-preserving layer.
  During the trace each mixer's internals are hidden (its output is made to
  depend on its input only), because torch-pruning maps the slice/concat of
  a partial mixer's channels wrongly. Pruning channel set I removes I from
  the mixer and I ∩ [0, g) from its kernels: peripheral shared weights (and
  bias), small/dense/stripe depthwise kernels and BNs (through
  torch-pruning's own layer pruners), and the stage's positional embedding
  (pruned by the block that owns it).
* ``ChannelImportance`` extends torch-pruning's group magnitude importance
  (which skips depthwise and custom layers) with the mixers: the energy of
  the expanded peripheral kernel (shared weights weighted by cell area),
  the small kernels, the BN scales, the positional embedding, and layer
  scales.

Widths stay spec-level: ``--ratio r`` scales each stage's base dim,
``d' = round(d (1 - r))``, and the pruned model is the model of that spec:
C' = width.apply(d') channels per stage of which g' = int(C' partial_ratio)
go through the kernels, and int(C' mlp_ratio) hidden units per block. Per
stage the g' most important of the g kernel channels and the C' - g' most
important identity channels are kept (kernel channels first, as the rebuilt
mixer expects), per block the most important hidden units. The pruned
weights are loaded into ``build_model(new spec)``, so it rebuilds to the same
shapes by construction. Parameters shrink by about 1 - (1 - r)^2 (MLPs and
convs are quadratic in width, the positional embedding linear).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch_pruning as tp
from pydantic import ValidationError
from torch import nn

import runtime
from archspec import ModelSpec
from compiler import modules
from compiler.build import (BuildError, build_model, compile_spec, refuse_to_replace_source, resolve_model,
                            write_build)
from compiler.sparsity import weight_targets


class PruneError(BuildError):
    """The model cannot be pruned as asked; the message says why."""


def _owned_pos_embeds(model: nn.Module) -> dict[nn.Module, modules.Stage]:
    """Mixer -> its stage, for the mixer that owns the stage's positional embedding (the first block's)."""
    return {stage.blocks[0].mixer: stage for stage in model.stages if stage.pos_embed is not None}


class MixerPruner(tp.pruner.BasePruningFunc):
    """torch-pruning handler for a partial mixer (peripheral, dense or stripe) as one layer, channel i -> i."""

    TARGET_MODULES = (modules.PartialMixer,)

    def __init__(self, pos_embed_owners: dict[nn.Module, modules.Stage]):
        super().__init__(pruning_dim=0)
        self.pos_embed_owners = pos_embed_owners

    def prune_out_channels(self, mixer: modules.PartialMixer, idxs) -> modules.PartialMixer:
        removed = set(idxs)
        kernel_removed = sorted(index for index in removed if index < mixer.channels)
        kernel_kept = [index for index in range(mixer.channels) if index not in removed]
        for module in mixer.modules():
            if isinstance(module, runtime.PeripheralConv2d):
                module.weight = self._prune_parameter_and_grad(module.weight, kernel_kept, 0)
                if module.bias is not None:
                    module.bias = self._prune_parameter_and_grad(module.bias, kernel_kept, 0)
                module.channels = len(kernel_kept)
            elif isinstance(module, nn.Conv2d):
                tp.pruner.function.prune_depthwise_conv_out_channels(module, kernel_removed)
            elif isinstance(module, nn.BatchNorm2d):
                tp.pruner.function.prune_batchnorm_out_channels(module, kernel_removed)
        stage = self.pos_embed_owners.get(mixer)
        if stage is not None:
            stage.pos_embed = self._prune_parameter_and_grad(stage.pos_embed, kernel_kept, 0)
        mixer.dim, mixer.channels = mixer.dim - len(removed), len(kernel_kept)
        return mixer

    prune_in_channels = prune_out_channels  # channel-preserving: input and output prune together

    def get_out_channels(self, mixer: modules.PartialMixer) -> int:
        return mixer.dim

    get_in_channels = get_out_channels


def mixer_channel_importance(mixer: modules.PartialMixer, pos_embed: torch.Tensor | None, p: int = 2) -> torch.Tensor:
    """(dim,) magnitude of everything in a mixer per channel; identity channels score 0.

    Peripheral shared weights count through the expanded kernel (each weight
    times the area of its cell), so a channel is scored like its dense kernel.
    """
    score = torch.zeros(mixer.dim)
    kernel = score[:mixer.channels]
    for module in mixer.modules():
        if isinstance(module, runtime.PeripheralConv2d):
            kernel += module.expanded_weight().detach().abs().pow(p).flatten(1).sum(1).float().cpu()
        elif isinstance(module, nn.Conv2d):
            kernel += module.weight.detach().abs().pow(p).flatten(1).sum(1).float().cpu()
        elif isinstance(module, nn.BatchNorm2d) and module.weight is not None:
            kernel += module.weight.detach().abs().pow(p).float().cpu()
    if pos_embed is not None:
        kernel += pos_embed.detach().abs().pow(p).flatten(1).sum(1).float().cpu()
    return score


class ChannelImportance(tp.importance.GroupMagnitudeImportance):
    """Group L_p magnitude importance over every layer of a group, mixers and layer scales included.

    torch-pruning's own importance scores convs, linears and norms and skips
    depthwise and customised layers; here the mixers (``mixer_channel_importance``)
    and unwrapped 1-D parameters (layer scales) are added before normalising.
    """

    def __init__(self, pos_embed_owners: dict[nn.Module, modules.Stage], p: int = 2, normalizer: str = "mean"):
        super().__init__(p=p, group_reduction="sum", normalizer=None)
        self.pos_embed_owners, self.final_normalizer = pos_embed_owners, normalizer

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        standard = super().__call__(group)
        extra, extra_idxs = [], []
        for item in group:
            target, idxs = item.dep.target.module, item.idxs
            if isinstance(target, modules.PartialMixer):
                stage = self.pos_embed_owners.get(target)
                scores = mixer_channel_importance(target, None if stage is None else stage.pos_embed, self.p)
                extra.append(scores[idxs])
            elif isinstance(target, nn.Parameter) and target.dim() == 1:
                extra.append(target.detach().abs().pow(self.p).float().cpu()[idxs])
            else:
                continue
            extra_idxs.append(item.root_idxs)
        total = standard.float().cpu() if standard is not None else None
        if extra:
            added = self._reduce(extra, extra_idxs)
            total = added if total is None else total + added
        return self._normalize(total, self.final_normalizer)


def _hide_mixer_internals(mixer: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook for tracing: same value, but autograd sees the output depend on the input only."""
    return args[0] + (output - args[0]).detach()


def dependency_graph(model: nn.Module, resolution: int) -> tuple[tp.DependencyGraph, dict]:
    """torch-pruning's DependencyGraph of a LargeKernelNet, mixers handled by ``MixerPruner``."""
    owners = _owned_pos_embeds(model)
    pruner = MixerPruner(owners)
    mixer_types = (modules.PeripheralMixer, modules.DenseMixer, modules.StripeMixer)
    hooks = [module.register_forward_hook(_hide_mixer_internals) for module in model.modules()
             if isinstance(module, mixer_types)]
    layer_scales = [(block.gamma, 0) for stage in model.stages for block in stage.blocks if block.gamma is not None]
    image = torch.randn(1, model.in_channels, resolution, resolution, device=next(model.parameters()).device)
    try:
        graph = tp.DependencyGraph().build_dependency(
            model, image, customized_pruners={kind: pruner for kind in mixer_types},
            unwrapped_parameters=layer_scales, verbose=False)
    finally:
        for hook in hooks:
            hook.remove()
    return graph, owners


@dataclass
class StagePlan:
    """What pruning keeps of one stage (indices into the unpruned model)."""

    index: int
    dim: int
    channels: int
    keep: list[int]
    new_channels: int
    hidden_keep: list[list[int]] = field(default_factory=list)

    @property
    def new_dim(self) -> int:
        return len(self.keep)


def _describe_problem(problem: dict) -> str:
    where = ".".join(map(str, problem["loc"]))
    message = problem["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def slim_spec(spec: ModelSpec, ratio: float) -> ModelSpec:
    """The spec with every stage's base dim scaled by (1 - ratio), rounded (at least 1)."""
    data = spec.model_dump()
    for stage in data["stages"]:
        stage["dim"] = max(1, round(stage["dim"] * (1.0 - ratio)))
    data["name"] = f"{spec.name}_pruned{round(ratio * 100)}"
    data["description"] = (f"{spec.description} | pruned with pelk prune --ratio {ratio:g} "
                           f"(from {spec.name}, stage dims {[stage.dim for stage in spec.stages]})").lstrip(" |")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(_describe_problem(problem) for problem in error.errors())
        raise PruneError(f"--ratio {ratio:g} leaves {spec.name} too narrow: {problems}") from None


def _top(scores: torch.Tensor, count: int, offset: int = 0) -> list[int]:
    return [offset + int(index) for index in torch.topk(scores, count).indices]


@dataclass
class PruneResult:
    """The pruned model (built from ``spec``), its spec and what was kept."""

    model: nn.Module
    spec: ModelSpec
    plans: list[StagePlan]


def prune_model(model: nn.Module, ratio: float, trace_resolution: int | None = None) -> PruneResult:
    """Prune a training-form LargeKernelNet's stage widths by ``ratio`` (0 < ratio < 1); ``model`` is not changed."""
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"--ratio must be between 0 and 1 (exclusive), got {ratio:g}")
    if getattr(model, "deploy_form", None) is not None:
        raise PruneError(f"{model.spec.name}: the model is in deploy form; prune the training form (the build "
                         f"directory), then deploy")
    spec = model.spec
    new_spec = slim_spec(spec, ratio)
    # Traced on a CPU copy: on CUDA a misaligned MLP runs padded GEMMs (modules.aligned_mlp),
    # which torch-pruning's tracer could not attribute to fc1 and fc2.
    work = copy.deepcopy(model).cpu().eval()
    reduction = spec.total_reduction()
    graph, owners = dependency_graph(work, trace_resolution or max(reduction, min(spec.input.resolution, 64)))
    importance = ChannelImportance(owners)
    roots = [work.get_submodule(name.removesuffix(".weight"))
             for name, target in weight_targets(work).items() if target in ("stem", "downsample")]

    plans = []
    for index, (root, dim, channels, new_dim, new_channels) in enumerate(zip(
            roots, spec.stage_dims(), spec.mixer_channels(), new_spec.stage_dims(), new_spec.mixer_channels())):
        scores = importance(graph.get_pruning_group(root, tp.prune_conv_out_channels, list(range(dim))))
        keep = sorted(_top(scores[:channels], new_channels) + _top(scores[channels:], new_dim - new_channels,
                                                                   offset=channels))
        plan = StagePlan(index, dim, channels, keep, new_channels)
        hidden = int(new_dim * new_spec.stages[index].mlp_ratio)
        for block in work.stages[index].blocks:
            fc1 = block.mlp.fc1
            group = graph.get_pruning_group(fc1, tp.prune_linear_out_channels, list(range(fc1.out_features)))
            plan.hidden_keep.append(sorted(_top(importance(group), hidden)))
        plans.append(plan)

    for plan, root in zip(plans, roots):
        _prune(graph, root, tp.prune_conv_out_channels, plan.dim, plan.keep)
        for block, keep in zip(work.stages[plan.index].blocks, plan.hidden_keep):
            _prune(graph, block.mlp.fc1, tp.prune_linear_out_channels, block.mlp.fc1.out_features, keep)

    slim = build_model(new_spec, backend=getattr(model, "backend", "auto")).to(next(model.parameters()).device)
    _load_exactly(slim, work)
    return PruneResult(slim.train(model.training), new_spec, plans)


def _prune(graph: tp.DependencyGraph, root: nn.Module, pruning_fn, size: int, keep: list[int]) -> None:
    removed = sorted(set(range(size)) - set(keep))
    if removed:
        graph.get_pruning_group(root, pruning_fn, removed).prune()


def _load_exactly(slim: nn.Module, pruned: nn.Module) -> None:
    """Copy the pruned tensors into the model rebuilt from the new spec; every name and shape must agree."""
    expected = {name: tuple(tensor.shape) for name, tensor in slim.state_dict().items()}
    actual = {name: tuple(tensor.shape) for name, tensor in pruned.state_dict().items()}
    if expected != actual:
        differences = sorted((name, expected.get(name), actual.get(name)) for name in expected.keys() | actual.keys()
                             if expected.get(name) != actual.get(name))
        raise PruneError(f"pruned model does not match its spec (name, spec shape, pruned shape): {differences[:5]}")
    slim.load_state_dict(pruned.state_dict())


def prune_build(source: str | Path, ratio: float, out: str | Path | None = None) -> dict:
    """Prune a build directory's model (or a fresh model of a spec / preset) and write a build directory.

    Default ``out``: the pruned spec's name in the current directory. Returns a summary: stages before
    and after, parameter counts (dense and non-zero, as ``compiler.passes`` counts them) and ``out``.
    """
    model = resolve_model(source)
    result = prune_model(model, ratio)
    out = Path(out) if out is not None else Path(result.spec.name)
    refuse_to_replace_source(out, source)
    before, after = compile_spec(model.spec), compile_spec(result.spec)
    write_build(after, out, result.model)
    stages = [{"stage": plan.index + 1, "dim": f"{plan.dim} -> {plan.new_dim}",
               "channels": f"{plan.channels} -> {plan.new_channels}",
               "hidden": f"{int(plan.dim * model.spec.stages[plan.index].mlp_ratio)} -> {len(plan.hidden_keep[0])}"}
              for plan in result.plans]
    return {"name": result.spec.name, "source": str(source), "ratio": ratio, "out": str(out), "stages": stages,
            "params_before": before.totals["params"], "params_after": after.totals["params"]}


__all__ = ["ChannelImportance", "MixerPruner", "PruneError", "PruneResult", "StagePlan", "dependency_graph",
           "mixer_channel_importance", "prune_build", "prune_model", "slim_spec"]
