"""Lowering a ModelSpec to the graph IR (a networkx DiGraph).

Every node is one op of the network with the attributes needed to build and
count it:

* ``op``: input, stem, downsample, mixer, norm, mlp, layer_scale, add, head, output
* ``module``: dotted path of the nn.Module that implements it ("" for none)
* ``stage`` / ``block``: position in the network (-1 where not applicable)
* ``config``: op-specific attributes (JSON-able: ints, floats, strings, lists)
* ``meta``: filled by passes (`compiler.passes`): shapes, parameters, MACs

Edges carry data from producer to consumer. Node ids are the module paths
(or ``input``/``output``/``...add``) and carry no meaning: the fingerprint
ignores them.
"""

from __future__ import annotations

import networkx as nx

from archspec.spec import DenseMixer, ModelSpec, PeripheralMixer, StripeMixer

Graph = nx.DiGraph


def _mixer_config(mixer, dim: int, channels: int) -> dict:
    config = {"type": mixer.type, "dim": dim, "channels": channels, "kernel_size": mixer.kernel_size,
              "small_kernel": mixer.small_kernel, "norm": mixer.norm}
    if isinstance(mixer, PeripheralMixer):
        grid = mixer.resolved_grid()
        config.update(grid=list(grid.grid), k_prime=grid.k_prime,
                      pos_embed=mixer.pos_embed.mode if mixer.pos_embed.enabled else None,
                      pos_embed_std=mixer.pos_embed.init_std)
    elif isinstance(mixer, StripeMixer):
        config.update(short_side=mixer.short_side)
    else:
        assert isinstance(mixer, DenseMixer)
    return config


def lower(spec: ModelSpec) -> Graph:
    """The IR of a spec: one node per op, edges for data flow, graph attrs for the whole model."""
    graph = Graph(name=spec.name, spec_name=spec.name, in_channels=spec.input.channels,
                  resolution=spec.input.resolution, density=spec.sparsity.effective_density,
                  sparsity_targets=list(spec.sparsity.targets) if spec.sparsity.enabled else [])

    def add(node: str, op: str, module: str, config: dict, stage: int = -1, block: int = -1,
            inputs: tuple[str, ...] = ()) -> str:
        graph.add_node(node, op=op, module=module, config=config, stage=stage, block=block, meta={})
        for source in inputs:
            graph.add_edge(source, node)
        return node

    dims = spec.stage_dims()
    channels = spec.mixer_channels()
    drop_paths = spec.drop_path_rates()
    last = add("input", "input", "", {"channels": spec.input.channels})
    last = add("stem", "stem", "stem", {"in_channels": spec.input.channels, "out_channels": dims[0],
                                        "kernel_size": spec.stem.kernel_size, "stride": spec.stem.stride,
                                        "norm": spec.stem.norm}, inputs=(last,))
    for index, stage in enumerate(spec.stages):
        prefix = f"stages.{index}"
        if index > 0:
            last = add(f"{prefix}.downsample", "downsample", f"{prefix}.downsample",
                       {"in_channels": dims[index - 1], "out_channels": dims[index],
                        "kernel_size": spec.downsample.kernel_size, "stride": spec.downsample.stride,
                        "norm": spec.downsample.norm}, stage=index, inputs=(last,))
        mixer_config = _mixer_config(stage.mixer, dims[index], channels[index])
        for block in range(stage.depth):
            path = f"{prefix}.blocks.{block}"
            block_input = last
            node = add(f"{path}.mixer", "mixer", f"{path}.mixer",
                       dict(mixer_config, owns_pos_embed=block == 0), index, block, (last,))
            node = add(f"{path}.norm", "norm", f"{path}.norm", {"kind": "layernorm", "channels": dims[index]},
                       index, block, (node,))
            node = add(f"{path}.mlp", "mlp", f"{path}.mlp",
                       {"dim": dims[index], "hidden": int(dims[index] * stage.mlp_ratio)}, index, block, (node,))
            if stage.layer_scale_init:
                node = add(f"{path}.gamma", "layer_scale", f"{path}.gamma",
                           {"channels": dims[index], "init": stage.layer_scale_init}, index, block, (node,))
            last = add(f"{path}.add", "add", "", {"drop_path": drop_paths[index][block]},
                       index, block, (block_input, node))
    last = add("head", "head", "head", {"in_channels": dims[-1], "num_classes": spec.head.num_classes,
                                        "norm": spec.head.norm, "drop_rate": spec.head.drop_rate},
               inputs=(last,))
    add("output", "output", "", {}, inputs=(last,))
    return graph


def nodes_of(graph: Graph, op: str) -> list[str]:
    """Nodes of one op, in topological order."""
    return [node for node in nx.topological_sort(graph) if graph.nodes[node]["op"] == op]
