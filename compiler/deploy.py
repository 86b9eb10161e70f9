"""Deploy form: BatchNorms, small kernels and the positional embedding folded away.

In eval mode a training-form peripheral mixer computes, on its g channels,

    y = BN1(pconv(x; w_θ, h) [+ b]) + BN2(small(x))

and everything in it is linear in the kernels. With BN_i(z) = s_i z + t_i:

* BN1 scales the shared weights per channel: w' = s1 w_θ, bias t1 (+ s1 b);
* the positional-embedding term is linear in w: ``padded`` gives the
  per-channel constant Σ expand(w') ⊙ h (a bias); ``valid`` gives a
  batch-independent map (1, g, H, W) computed from w' and h at each input
  size (``DeployedMixer`` keeps w' and h as buffers);
* BN2 and the s x s small kernel fold into s2 k, bias t2, and the folded small
  kernel is added to the central s x s cells of w' -- possible only when those
  cells have size 1 in both axes (the unshared centre), otherwise ``deploy``
  refuses, naming the layer, grid and small-kernel size.

The result keeps the peripheral structure (k' x k' weights, O(log K)).
``expand=True`` turns every mixer into one plain depthwise ``nn.Conv2d`` with
the K x K kernel (for ONNX and other exporters). Dense mixers always merge
into one K x K conv (RepLKNet); stripe mixers keep their stripes with BNs
folded, or merge into one K x K conv when expanding (SLaK).

``deploy_build`` does the same for a build directory and writes a deploy
directory (weights with a ``deployed`` marker, spec, ``deploy.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import runtime
from archspec import SharingGrid
from compiler import modules
from compiler.build import (BuildError, build_directory, load_model, refuse_to_replace_source,
                            write_model_directory)
from runtime import reference


class DeployError(BuildError):
    """The model cannot be put in deploy form; the message names the layer and why."""


class DeployedMixer(modules.PartialMixer):
    """A mixer in deploy form: y[:, :g] = Σ branch(x[:, :g]) (+ the ``valid`` positional map).

    Each branch is a depthwise conv with bias (a ``runtime.PeripheralConv2d``
    or an ``nn.Conv2d``). For a ``valid`` positional embedding the BN-scaled
    peripheral weights (g, 1, k', k') and h (g, K, K) are kept as buffers and
    the map (1, g, H, W) is computed per input size; the stage's embedding
    passed to ``forward`` is ignored (it is folded in).
    """

    def __init__(self, dim: int, channels: int, branches: list[nn.Module], grid: tuple[int, ...] | None = None,
                 valid_weight: torch.Tensor | None = None, valid_embed: torch.Tensor | None = None):
        super().__init__(dim, channels)
        self.branches = nn.ModuleList(branches)
        self.grid = grid
        self.register_buffer("valid_weight", valid_weight)
        self.register_buffer("valid_embed", valid_embed)

    def mix(self, x: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.Tensor:
        y = self.branches[0](x)
        for branch in self.branches[1:]:
            y = y + branch(x)
        if self.valid_weight is not None:
            height, width = x.shape[-2:]
            y = y + reference.pos_embed_valid(self.valid_weight, self.grid, self.valid_embed,
                                              height, width).to(y.dtype)
        return y


def pad_kernel(kernel: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre a (C, 1, kh, kw) kernel in a zero (C, 1, height, width) one."""
    top, left = (height - kernel.shape[-2]) // 2, (width - kernel.shape[-1]) // 2
    return F.pad(kernel, (left, width - kernel.shape[-1] - left, top, height - kernel.shape[-2] - top))


def depthwise_conv(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """An ``nn.Conv2d`` (groups=C, same padding, with bias) holding a (C, 1, kh, kw) kernel."""
    channels, _, height, width = weight.shape
    conv = nn.Conv2d(channels, channels, (height, width), padding=(height // 2, width // 2), groups=channels,
                     bias=True, device=weight.device, dtype=weight.dtype)
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)
    return conv


def _deploy_peripheral(mixer: modules.PeripheralMixer, pos_embed: torch.Tensor | None, expand: bool,
                       name: str) -> DeployedMixer:
    if not expand and not mixer.folds_small_kernel:
        size, unshared = mixer.small[0].kernel_size[0], SharingGrid(mixer.grid).unshared_center
        raise DeployError(
            f"{name}: the {size}x{size} small kernel cannot be folded into the peripheral weights: "
            f"grid {list(mixer.grid)} has an unshared centre of {unshared}x{unshared} (cells of size 1), "
            f"smaller than {size}x{size}; deploy with expand=True (`pelk deploy --expand`) to get a "
            f"dense K x K kernel instead")
    grid = mixer.grid
    scaled, bias = mixer.folded_branch()  # BN-scaled shared weights: the positional term multiplies these
    valid_weight = valid_embed = None
    if pos_embed is not None and mixer.pos_mode == "padded":
        bias = bias + reference.pos_embed_padded(scaled, grid, pos_embed).flatten()
    elif pos_embed is not None:
        valid_weight, valid_embed = scaled.clone(), pos_embed.detach().clone()
    if expand:
        kernel = reference.expand_kernel(scaled, grid)
        if mixer.small is not None:
            small_weight, small_bias = modules.fold_conv_norm_pair(mixer.small)
            kernel = kernel + pad_kernel(small_weight, mixer.kernel_size, mixer.kernel_size)
            bias = bias + small_bias
        branch: nn.Module = depthwise_conv(kernel, bias)
    else:
        weight, small_bias = mixer.fold_small_kernel(scaled)
        bias = bias + small_bias
        branch = runtime.PeripheralConv2d(mixer.channels, grid, bias=True, backend=mixer.conv.backend).to(weight)
        branch.weight.copy_(weight)
        branch.bias.copy_(bias)
    return DeployedMixer(mixer.dim, mixer.channels, [branch], grid, valid_weight, valid_embed)


def _deploy_dense(mixer: modules.DenseMixer) -> DeployedMixer:
    weight, bias = modules.fold_conv_norm_pair(mixer.large)
    if mixer.small is not None:
        small_weight, small_bias = modules.fold_conv_norm_pair(mixer.small)
        weight = weight + pad_kernel(small_weight, *weight.shape[-2:])
        bias = bias + small_bias
    return DeployedMixer(mixer.dim, mixer.channels, [depthwise_conv(weight, bias)])


def _deploy_stripe(mixer: modules.StripeMixer, expand: bool) -> DeployedMixer:
    parts = [modules.fold_conv_norm_pair(branch) for branch in (mixer.vertical, mixer.horizontal, mixer.small)
             if branch is not None]
    if not expand:
        return DeployedMixer(mixer.dim, mixer.channels, [depthwise_conv(weight, bias) for weight, bias in parts])
    size = mixer.vertical[0].weight.shape[-2]
    kernel = sum(pad_kernel(weight, size, size) for weight, _ in parts)
    return DeployedMixer(mixer.dim, mixer.channels, [depthwise_conv(kernel, sum(bias for _, bias in parts))])


@torch.no_grad()
def deploy_mixer(mixer: nn.Module, pos_embed: torch.Tensor | None, expand: bool = False,
                 name: str = "mixer") -> DeployedMixer:
    """The deploy form of one training-form mixer (eval-mode statistics); ``name`` is used in errors."""
    if isinstance(mixer, modules.PeripheralMixer):
        return _deploy_peripheral(mixer, pos_embed, expand, name)
    if isinstance(mixer, modules.DenseMixer):
        return _deploy_dense(mixer)
    if isinstance(mixer, modules.StripeMixer):
        return _deploy_stripe(mixer, expand)
    raise DeployError(f"{name}: {type(mixer).__name__} has no deploy form")


def deploy(model: nn.Module, expand: bool = False) -> nn.Module:
    """Put a LargeKernelNet in deploy form, in place, and return it (in eval mode).

    All mixers are converted before any is swapped in, so a refusal leaves the
    model untouched. ``model.deploy_form`` records the options (saved with the
    weights, so ``compiler.load_model`` rebuilds the same form).
    """
    if getattr(model, "deploy_form", None) is not None:
        raise DeployError(f"{model.spec.name}: the model is already in deploy form {model.deploy_form}")
    model.eval()
    converted = []
    for index, stage in enumerate(model.stages):
        for number, block in enumerate(stage.blocks):
            name = f"stages.{index}.blocks.{number}.mixer"
            converted.append((block, deploy_mixer(block.mixer, stage.pos_embed, expand, name)))
    for block, mixer in converted:
        block.mixer = mixer
    for stage in model.stages:
        stage.pos_embed = None
    model.deploy_form = {"expand": expand}
    return model


@torch.no_grad()
def mixer_and_model_outputs(model: nn.Module, image: torch.Tensor) -> list[torch.Tensor]:
    """Every block's mixer output (what deploy folds), then the logits; the model runs in eval mode."""
    outputs = []
    hooks = [block.mixer.register_forward_hook(lambda module, args, output: outputs.append(output))
             for stage in model.stages for block in stage.blocks]
    try:
        logits = model.eval()(image)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs + [logits]


@torch.no_grad()
def deploy_build(source: str | Path, out: str | Path | None = None, expand: bool = False,
                 seed: int = 0) -> dict:
    """Deploy the model of build directory ``source`` into ``out`` (default ``SOURCE-deploy``), atomically.

    The training form (eval mode) and the deploy form are run on one random
    input at the spec's resolution; the largest difference of any mixer output
    or the logits is reported and written to ``deploy.json`` with the options
    and parameter counts.
    """
    source = Path(source)
    if out is None:
        directory = build_directory(source)
        out = directory.with_name(f"{directory.name}-deploy")
    out = Path(out)
    refuse_to_replace_source(out, source)
    model = load_model(source).eval()
    spec = model.spec
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, spec.input.channels, spec.input.resolution, spec.input.resolution, generator=generator)
    before, params_before = mixer_and_model_outputs(model, image), modules.count_params(model)
    deploy(model, expand=expand)
    after = mixer_and_model_outputs(model, image)
    difference = max((new - old).abs().max().item() for new, old in zip(after, before))
    summary = {"deployed": True, "expand": expand, "source": str(source), "name": spec.name,
               "fingerprint": model.fingerprint, "params_training_form": params_before,
               "params_deploy_form": modules.count_params(model),
               "check": {"input": list(image.shape), "compared": "every mixer output and the logits",
                         "max_abs_diff": difference,
                         "max_abs_output": max(output.abs().max().item() for output in before)}}
    write_model_directory(out, model, {"deploy.json": json.dumps(summary, indent=2)})
    summary["out"] = str(out)
    return summary


__all__ = ["DeployError", "DeployedMixer", "deploy", "deploy_build", "deploy_mixer", "mixer_and_model_outputs",
           "pad_kernel"]
