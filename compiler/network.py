"""Lowering the IR to an nn.Module: `LargeKernelNet`.

The network is assembled node by node from the graph (op -> module), in
topological order, so the module tree mirrors the IR: ``stem``,
``stages.{i}.downsample``, ``stages.{i}.blocks.{j}.{mixer,norm,mlp,gamma}``,
``head``. The spec the graph came from is kept on the model.
"""

from __future__ import annotations

from typing import Any

import networkx as nx
import torch
from torch import nn

import runtime

from compiler import modules
from compiler.ir import Graph


def _stem(config: dict) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(config["in_channels"], config["out_channels"], config["kernel_size"], stride=config["stride"]),
        modules.make_norm2d(config["norm"], config["out_channels"]))


def _downsample(config: dict) -> nn.Module:
    return nn.Sequential(
        modules.make_norm2d(config["norm"], config["in_channels"]),
        nn.Conv2d(config["in_channels"], config["out_channels"], config["kernel_size"], stride=config["stride"]))


def _mixer(config: dict, backend: str) -> nn.Module:
    kind = config["type"]
    if kind == "peripheral":
        return modules.PeripheralMixer(config["dim"], config["channels"], tuple(config["grid"]),
                                       config["small_kernel"], config["norm"], config["pos_embed"] or "padded",
                                       backend=backend)
    if kind == "dense":
        return modules.DenseMixer(config["dim"], config["channels"], config["kernel_size"],
                                  config["small_kernel"], config["norm"])
    return modules.StripeMixer(config["dim"], config["channels"], config["kernel_size"], config["short_side"],
                               config["small_kernel"], config["norm"])


class LargeKernelNet(nn.Module):
    """A ConvNeXt-style large-kernel network compiled from a spec.

    forward: (B, in_channels, R, R) -> (B, num_classes). ``forward_features``
    gives the last stage map (B, C4, R/32, R/32); ``forward_stages`` all four.
    """

    def __init__(self, graph: Graph, backend: str = "auto", spec: Any = None):
        super().__init__()
        self.spec = spec
        self.in_channels = graph.graph["in_channels"]
        self.backend = backend
        stage_parts: dict[int, dict] = {}
        self.stem: nn.Module = nn.Identity()
        self.head: modules.Head | None = None
        for node in nx.topological_sort(graph):
            data = graph.nodes[node]
            op, config, stage = data["op"], data["config"], data["stage"]
            parts = stage_parts.setdefault(stage, {"downsample": nn.Identity(), "blocks": [], "pos_embed": None})
            if op == "stem":
                self.stem = _stem(config)
            elif op == "downsample":
                parts["downsample"] = _downsample(config)
            elif op == "mixer":
                parts["blocks"].append({"mixer": _mixer(config, backend), "dim": config["dim"]})
                if config.get("pos_embed") and config.get("owns_pos_embed"):
                    parts["pos_embed"] = ((config["channels"], config["kernel_size"], config["kernel_size"]),
                                          config["pos_embed_std"])
            elif op == "mlp":
                parts["blocks"][-1]["hidden"] = config["hidden"]
            elif op == "layer_scale":
                parts["blocks"][-1]["layer_scale"] = config["init"]
            elif op == "add":
                parts["blocks"][-1]["drop_path"] = config["drop_path"]
            elif op == "head":
                self.head = modules.Head(config["in_channels"], config["num_classes"], config["norm"],
                                         config["drop_rate"])
        stages = []
        for index in sorted(key for key in stage_parts if key >= 0):
            parts = stage_parts[index]
            blocks = [modules.Block(block["dim"], block["mixer"], block["hidden"], block.get("layer_scale"),
                                    block["drop_path"]) for block in parts["blocks"]]
            shape, std = parts["pos_embed"] or (None, 0.02)
            stages.append(modules.Stage(parts["downsample"], blocks, shape, std))
        self.stages = nn.ModuleList(stages)
        self.dims = [stage.blocks[0].mixer.dim for stage in self.stages]
        self.num_features = self.dims[-1]
        self.num_classes = self.head.fc.out_features if isinstance(self.head.fc, nn.Linear) else 0
        self.feature_info = self._feature_info(graph)
        self.apply(modules.init_weights)

    def _feature_info(self, graph: Graph) -> list[dict]:
        stem = next(graph.nodes[node]["config"] for node in graph if graph.nodes[node]["op"] == "stem")
        downsample = [graph.nodes[node]["config"] for node in graph if graph.nodes[node]["op"] == "downsample"]
        reduction, info = stem["stride"], []
        for index, dim in enumerate(self.dims):
            if index > 0:
                reduction *= downsample[index - 1]["stride"]
            info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{index}"})
        return info

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature map of every stage: [(B, C_i, R/r_i, R/r_i)]."""
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, R, R) -> last stage map (B, C_last, R/32, R/32)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's contract: stage outputs at ``indices`` (None: all; n: the last n; list: those, negatives
        from the end), with the last stage map unless ``intermediates_only``. ``norm`` changes nothing: no
        norm sits between the stages and the head's pooling."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: only 'NCHW' is supported")
        take, last_index = take_indices(len(self.stages), indices)
        stages = self.stages[:last_index + 1] if stop_early or intermediates_only else self.stages
        intermediates = []
        x = self.stem(x)
        for index, stage in enumerate(stages):
            x = stage(x)
            if index in take:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's contract: drop the stages after the last of ``indices`` (and the classifier); the kept indices."""
        take, last_index = take_indices(len(self.stages), indices)
        if last_index < len(self.stages) - 1:  # the head's norm is sized for the last stage
            self.stages = self.stages[:last_index + 1]
            self.feature_info = self.feature_info[:last_index + 1]
            self.num_features = self.dims[last_index]
            self.head.norm = nn.Identity()
            prune_head = True
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Last stage map -> logits (B, num_classes), or pooled features (B, C_last) with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a fresh one of ``num_classes`` outputs (0 removes it).

        ``global_pool`` is timm's argument: only average pooling exists here (None or 'avg')."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool {global_pool!r}: the head only average-pools ('avg')")
        self.num_classes = num_classes
        if num_classes > 0:
            self.head.fc = nn.Linear(self.num_features, num_classes)
            modules.init_weights(self.head.fc)
        else:
            self.head.fc = nn.Identity()

    def deploy(self, expand: bool = False) -> "LargeKernelNet":
        """Fold BNs, small kernels and the positional embedding into the kernels, in place (compiler.deploy)."""
        from compiler.deploy import deploy
        return deploy(self, expand=expand)

    def set_backend(self, backend: str) -> None:
        """Switch the peripheral-conv backend of every layer (auto, torch, sat, triton), deploy form included."""
        self.backend = backend
        for module in self.modules():
            if isinstance(module, runtime.PeripheralConv2d):
                module.set_backend(backend)


def take_indices(count: int, indices: int | list[int] | None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: None -> all ``count``; n -> the last n; a list -> those (negatives
    count from the end). Returns the sorted indices and the largest."""
    if indices is None:
        indices = count
    if isinstance(indices, int):
        if not 0 < indices <= count:
            raise ValueError(f"indices {indices}: take between 1 and {count} of the last stages")
        taken = list(range(count - indices, count))
    else:
        taken = [index + count if index < 0 else index for index in indices]
        if any(not 0 <= index < count for index in taken):
            raise ValueError(f"indices {list(indices)}: out of range for {count} stages")
    return sorted(taken), max(taken)


def lower_to_module(graph: Graph, backend: str = "auto", spec: Any = None) -> LargeKernelNet:
    """Build the nn.Module of an IR graph."""
    return LargeKernelNet(graph, backend=backend, spec=spec)
