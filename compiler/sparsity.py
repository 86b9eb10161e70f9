"""SLaK's dynamic sparsity for compiled models: masks, prune-and-regrow, checkpoints.

Masks cover the 2-D/4-D weights of the spec's ``sparsity.targets``
(``weight_targets`` maps every weight of a LargeKernelNet to its target). A
peripheral kernel's mask sits on its k' x k' shared weight, so a shared
weight counts once, as ``compiler.passes`` counts it.

* Initial per-layer densities: ``snip`` (|w * dL/dw| on one batch, global
  top-k), ``erk`` (Erdős-Rényi-Kernel, RigL) or ``uniform``. Masks start
  random at exactly those densities.
* After every optimizer step the weights are multiplied by their masks: an
  optimizer step post-hook does it, so it also happens under
  ``torch.amp.GradScaler`` (SLaK skipped masking under AMP; pelk does not).
* ``step()`` after each optimizer step advances the schedule; every
  ``update_interval`` steps each layer prunes ``ceil(rate * active)`` of its
  smallest-magnitude active weights and regrows as many (random, or largest
  gradient), zero-initialised; ``rate`` decays from ``prune_rate`` to 0 on a
  cosine over ``total_steps``. Optimizer state of pruned and regrown weights
  is reset, so a regrown weight starts from zero with no momentum.
* Distributed: random choices come from a private generator seeded alike on
  every rank, and rank 0's masks are broadcast after every change, so all
  ranks hold identical masks.

Usage::

    sparsity = DynamicSparsity(model, optimizer, spec.sparsity, total_steps, batch=(images, labels))
    for images, labels in loader:
        loss_fn(model(images), labels).backward()
        optimizer.step()
        sparsity.step()
        optimizer.zero_grad()
    checkpoint = {"model": model.state_dict(), "sparsity": sparsity.state_dict()}
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from archspec.spec import SparsitySpec
from compiler import modules

Batch = tuple[torch.Tensor, torch.Tensor]


def _mixer_weights(mixer: modules.PartialMixer) -> list[tuple[str, str]]:
    """(module path inside the mixer, target) of a mixer's kernels."""
    if isinstance(mixer, modules.PeripheralMixer):
        large = ["conv"]
    elif isinstance(mixer, modules.DenseMixer):
        large = ["large.0"]
    elif isinstance(mixer, modules.StripeMixer):
        large = ["vertical.0", "horizontal.0"]
    else:
        raise TypeError(f"{type(mixer).__name__} is not a training-form mixer (was the model deployed?)")
    small = ["small.0"] if mixer.small is not None else []
    return [(path, "large_kernel") for path in large] + [(path, "small_kernel") for path in small]


def weight_targets(model: nn.Module) -> dict[str, str]:
    """Parameter name -> sparsity target of every 2-D/4-D weight of a LargeKernelNet, in model order.

    The same weights ``compiler.passes`` counts: stem conv, downsample convs,
    mixer large kernels (the peripheral shared weight) and small kernels, both
    MLP linears, the classifier.
    """
    paths = [("stem.0", "stem")]
    for index, stage in enumerate(model.stages):
        if isinstance(stage.downsample, nn.Sequential):
            paths.append((f"stages.{index}.downsample.1", "downsample"))
        for number, block in enumerate(stage.blocks):
            prefix = f"stages.{index}.blocks.{number}"
            paths += [(f"{prefix}.mixer.{path}", target) for path, target in _mixer_weights(block.mixer)]
            paths += [(f"{prefix}.mlp.fc1", "mlp"), (f"{prefix}.mlp.fc2", "mlp")]
    if isinstance(model.head.fc, nn.Linear):
        paths.append(("head.fc", "head"))
    return {f"{path}.weight": target for path, target in paths}


def _exact_counts(numels: dict[str, int], densities: dict[str, float]) -> dict[str, int]:
    return {name: min(numels[name], max(0, round(numels[name] * densities[name]))) for name in numels}


def uniform_densities(weights: dict[str, torch.Tensor], density: float) -> dict[str, float]:
    """Every layer at the target density."""
    return {name: density for name in weights}


def erk_densities(weights: dict[str, torch.Tensor], density: float) -> dict[str, float]:
    """Erdős-Rényi-Kernel (RigL): density ∝ sum(shape) / prod(shape), layers that would exceed 1 kept dense."""
    dense: set[str] = set()
    while True:
        budget, divisor, raw = 0.0, 0.0, {}
        for name, weight in weights.items():
            if name in dense:
                budget -= weight.numel() * (1.0 - density)
            else:
                budget += weight.numel() * density
                raw[name] = sum(weight.shape) / weight.numel()
                divisor += raw[name] * weight.numel()
        scale = budget / divisor
        too_dense = [name for name in raw if raw[name] * scale > 1.0]
        if not too_dense:
            break
        dense.update(too_dense)
    return {name: 1.0 if name in dense else raw[name] * scale for name in weights}


def snip_densities(model: nn.Module, weights: dict[str, nn.Parameter], density: float, batch: Batch,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """SNIP: score |w * dL/dw| on one batch; the global top ``density`` share sets each layer's density.

    Buffers (BN running statistics) are restored afterwards: the batch leaves no trace.
    """
    inputs, labels = batch
    saved = {name: buffer.clone() for name, buffer in model.named_buffers()}
    loss = loss_fn(model(inputs), labels)
    grads = torch.autograd.grad(loss, list(weights.values()))
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(saved[name])
    scores = [(weight.detach() * grad).abs().flatten() for weight, grad in zip(weights.values(), grads)]
    everything = torch.cat(scores)
    keep = round(everything.numel() * density)
    chosen = torch.zeros_like(everything, dtype=torch.bool)
    chosen[torch.topk(everything, keep, sorted=False).indices] = True
    densities, start = {}, 0
    for name, score in zip(weights, scores):
        densities[name] = chosen[start:start + score.numel()].sum().item() / score.numel()
        start += score.numel()
    return densities


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class DynamicSparsity:
    """Masks on a compiled model's targeted weights, kept through training (see the module docstring).

    ``model`` is a LargeKernelNet (or a DistributedDataParallel around one);
    ``settings`` the spec's ``sparsity``; ``total_steps`` the optimizer steps
    of the whole run (the prune-rate decay reaches 0 there); ``batch`` one
    (inputs, labels) batch, needed by SNIP; ``seed`` seeds the random choices
    (keep it equal on every rank).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, settings: SparsitySpec,
                 total_steps: int, batch: Batch | None = None,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy, seed: int = 0):
        if not settings.enabled:
            raise ValueError("sparsity.enabled is false in the spec: nothing to train sparse")
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        if settings.init == "snip" and batch is None:
            raise ValueError("sparsity.init 'snip' scores weights on one batch: pass batch=(inputs, labels)")
        self.model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        self.optimizer, self.settings, self.total_steps = optimizer, settings, total_steps
        self.density = settings.effective_density
        parameters = dict(self.model.named_parameters())
        self.targets = {name: target for name, target in weight_targets(self.model).items()
                        if target in settings.targets}
        self.weights = {name: parameters[name] for name in self.targets}
        if not self.weights:
            raise ValueError(f"sparsity.targets {settings.targets} selects no weight of this model: nothing to mask")
        self.steps = 0
        self._optimizer_stepped = False
        self.generator = torch.Generator().manual_seed(seed)
        self.masks = self._initial_masks(batch, loss_fn)
        self._broadcast_masks()
        self.apply_masks()
        self._hook = optimizer.register_step_post_hook(lambda *_: self._after_optimizer_step())

    # ----------------------------------------------------------------- masks
    def _initial_masks(self, batch: Batch | None, loss_fn) -> dict[str, torch.Tensor]:
        if self.settings.init == "snip":
            densities = snip_densities(self.model, self.weights, self.density, batch, loss_fn)
        elif self.settings.init == "erk":
            densities = erk_densities(self.weights, self.density)
        else:
            densities = uniform_densities(self.weights, self.density)
        counts = _exact_counts({name: weight.numel() for name, weight in self.weights.items()}, densities)
        masks = {}
        for name, weight in self.weights.items():
            chosen = torch.randperm(weight.numel(), generator=self.generator)[:counts[name]]
            mask = torch.zeros(weight.numel(), dtype=torch.bool)
            mask[chosen] = True
            masks[name] = mask.view(weight.shape).to(weight.device)
        return masks

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked-out weight (runs after each optimizer step)."""
        for name, weight in self.weights.items():
            weight.mul_(self.masks[name])

    def _broadcast_masks(self) -> None:
        """Make every rank hold rank 0's masks."""
        if not _distributed():
            return
        for name, mask in self.masks.items():
            buffer = mask.to(torch.uint8)
            dist.broadcast(buffer, src=0)
            self.masks[name] = buffer.bool()

    # -------------------------------------------------------------- schedule
    def prune_rate(self, step: int | None = None) -> float:
        """Share of active weights pruned at an update at ``step`` (now by default)."""
        step = self.steps if step is None else step
        if self.settings.schedule == "constant":
            return self.settings.prune_rate
        progress = min(step, self.total_steps) / self.total_steps
        return self.settings.prune_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _after_optimizer_step(self) -> None:
        self._optimizer_stepped = True
        self.apply_masks()

    def step(self) -> bool:
        """Call after every optimizer step; prunes and regrows when an update is due. True if it did.

        A step the optimizer did not take (GradScaler skips it on inf/NaN gradients) does not count.
        """
        if not self._optimizer_stepped:
            return False
        self._optimizer_stepped = False
        self.steps += 1
        if self.steps % self.settings.update_interval or self.steps >= self.total_steps:
            return False
        self.prune_and_regrow(self.prune_rate())
        return True

    @torch.no_grad()
    def prune_and_regrow(self, rate: float) -> None:
        """Each layer drops its ``ceil(rate * active)`` smallest active weights and regrows as many at zero."""
        for name, weight in self.weights.items():
            mask = self.masks[name].flatten()
            active = int(mask.sum())
            count = math.ceil(rate * active)
            if count == 0 or active == mask.numel():
                continue
            magnitude = weight.detach().abs().flatten().masked_fill(~mask, math.inf)
            survivors = mask.clone()
            survivors[torch.topk(magnitude, count, largest=False, sorted=False).indices] = False
            regrown = self._regrow(name, weight, survivors, count)
            weight.view(-1)[regrown] = 0.0
            self._reset_optimizer_state(weight, survivors.view(weight.shape))
            updated = survivors.clone()
            updated[regrown] = True
            self.masks[name] = updated.view(weight.shape)
        self._broadcast_masks()
        self.apply_masks()

    def _regrow(self, name: str, weight: nn.Parameter, mask: torch.Tensor, count: int) -> torch.Tensor:
        """Flat indices of ``count`` inactive positions to regrow."""
        candidates = (~mask).nonzero().squeeze(1)
        if self.settings.growth == "random":
            order = torch.randperm(candidates.numel(), generator=self.generator)[:count]
            return candidates[order.to(candidates.device)]
        if weight.grad is None:
            raise RuntimeError(f"gradient growth needs the gradient of {name}: call step() after "
                               f"optimizer.step() and before zero_grad()")
        scores = weight.grad.detach().abs().flatten()[candidates]
        return candidates[torch.topk(scores, count, sorted=False).indices]

    def _reset_optimizer_state(self, weight: nn.Parameter, survivors: torch.Tensor) -> None:
        """Zero the optimizer state (momentum, Adam moments) of every weight but the survivors of pruning:
        pruned and regrown weights (a pruned weight may be regrown in place) start from nothing."""
        for value in self.optimizer.state.get(weight, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == weight.shape:
                value.mul_(survivors)

    # ------------------------------------------------------------ reporting
    def density_report(self) -> dict:
        """Per-layer and overall densities, and the model's parameter counts at the current masks.

        ``nonzero_params`` counts as ``compiler.passes`` does: the positional
        embedding left out, a masked weight by its active entries, everything
        else whole.
        """
        layers = {name: {"target": self.targets[name], "numel": mask.numel(), "active": int(mask.sum()),
                         "density": mask.sum().item() / mask.numel()} for name, mask in self.masks.items()}
        dense = nonzero = 0
        for name, parameter in self.model.named_parameters():
            if name.endswith("pos_embed"):
                continue
            dense += parameter.numel()
            nonzero += layers[name]["active"] if name in layers else parameter.numel()
        masked = sum(layer["numel"] for layer in layers.values())
        return {"step": self.steps, "prune_rate": self.prune_rate(), "target_density": self.density,
                "density": sum(layer["active"] for layer in layers.values()) / masked,
                "dense_params": dense, "nonzero_params": nonzero, "layers": layers}

    # ---------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Masks, step and random state: save it beside the model and optimizer state."""
        return {"steps": self.steps, "masks": {name: mask.cpu() for name, mask in self.masks.items()},
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore masks, step and random state saved by ``state_dict`` and apply the masks."""
        missing = sorted(set(self.masks) - set(state["masks"]))
        unexpected = sorted(set(state["masks"]) - set(self.masks))
        if missing or unexpected:
            raise ValueError(f"sparsity state does not fit this model: missing masks {missing}, "
                             f"unexpected masks {unexpected}")
        for name, mask in state["masks"].items():
            if mask.shape != self.masks[name].shape:
                raise ValueError(f"sparsity state: mask {name} has shape {tuple(mask.shape)}, "
                                 f"the weight has {tuple(self.masks[name].shape)}")
            self.masks[name] = mask.to(device=self.weights[name].device, dtype=torch.bool)
        self.steps = int(state["steps"])
        self.generator.set_state(state["generator"])
        self.apply_masks()

    def remove(self) -> None:
        """Detach from the optimizer (masks are no longer applied after its steps)."""
        self._hook.remove()


__all__ = ["DynamicSparsity", "erk_densities", "snip_densities", "uniform_densities",
           "weight_targets"]
