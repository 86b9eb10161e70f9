"""Passes over the IR: each reads the graph and writes into ``node["meta"]``.

Counting follows the paper (design.md, "Counting"):

* parameters: ``dense`` counts every learnable tensor (what the built module
  holds, kernel-wise positional embedding included); ``nonzero`` is the
  paper's figure: the positional embedding left out, and every 2-D/4-D
  weight of a sparsity target scaled by the spec's density (SLaK's
  convention), rounded per layer. ``pos_embed`` is reported apart.
* MACs (multiply-adds, fvcore's convention): convolutions as
  out_elements x in_channels/groups x kh x kw, the peripheral kernel as a
  dense K x K depthwise conv over its g channels; linears as tokens x in x
  out; LayerNorm 5 and eval BatchNorm 2 per element; average pooling 1 per
  element; the positional-embedding term g x K x K per mixer. ``macs`` is
  dense; ``macs_at_density`` scales the MACs of sparse weights by density
  (the paper's figure).
"""

from __future__ import annotations

import hashlib
import json

import networkx as nx

from archspec.grid import SharingGrid
from compiler.ir import Graph

Shape = tuple[int, int, int]


class LintError(ValueError):
    """The graph is malformed; the message names the node, its op and attrs."""


def _describe(graph: Graph, node: str) -> str:
    data = graph.nodes[node]
    return f"node {node!r} (op={data.get('op')!r}, config={data.get('config')})"


def lint(graph: Graph) -> None:
    """Check structure: acyclic, one input, one output, every node reachable, shapes chain."""
    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise LintError(f"graph has a cycle through {_describe(graph, cycle[0][0])}")
    sources = [node for node in graph if graph.in_degree(node) == 0]
    sinks = [node for node in graph if graph.out_degree(node) == 0]
    if [graph.nodes[node]["op"] for node in sources] != ["input"]:
        raise LintError(f"graph must have exactly one input, found sources "
                        f"{[_describe(graph, node) for node in sources]}")
    if [graph.nodes[node]["op"] for node in sinks] != ["output"]:
        raise LintError(f"graph must have exactly one output, found sinks "
                        f"{[_describe(graph, node) for node in sinks]}")
    for node in graph:
        data = graph.nodes[node]
        expected = 2 if data["op"] == "add" else (0 if data["op"] == "input" else 1)
        if graph.in_degree(node) != expected:
            raise LintError(f"{_describe(graph, node)} has {graph.in_degree(node)} inputs, expected {expected}")
        shapes = [graph.nodes[source]["meta"].get("out_shape") for source in graph.predecessors(node)]
        if "in_shape" in data["meta"] and any(shape is not None and tuple(shape) != tuple(data["meta"]["in_shape"])
                                              for shape in shapes):
            raise LintError(f"{_describe(graph, node)} expects input {data['meta']['in_shape']} "
                            f"but receives {shapes}")


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def shape_pass(graph: Graph, resolution: int) -> None:
    """Write ``in_shape`` and ``out_shape`` (C, H, W) of every node at a square input resolution."""
    graph.graph["shape_resolution"] = resolution
    for node in nx.topological_sort(graph):
        data = graph.nodes[node]
        op, config, meta = data["op"], data["config"], data["meta"]
        predecessors = list(graph.predecessors(node))
        in_shape: Shape = (config["channels"], resolution, resolution) if op == "input" else \
            tuple(graph.nodes[predecessors[0]]["meta"]["out_shape"])
        channels, height, width = in_shape
        if op in ("stem", "downsample"):
            if op == "downsample" and channels != config["in_channels"]:
                raise LintError(f"{_describe(graph, node)} gets {channels} channels")
            height = _conv_out(height, config["kernel_size"], config["stride"])
            width = _conv_out(width, config["kernel_size"], config["stride"])
            if height < 1 or width < 1:
                raise LintError(f"{_describe(graph, node)}: resolution {resolution} leaves an empty feature map")
            out_shape: tuple = (config["out_channels"], height, width)
        elif op == "head":
            out_shape = (config["num_classes"] or channels, 1, 1)
        else:
            out_shape = in_shape
        meta["in_shape"], meta["out_shape"] = list(in_shape), list(out_shape)


def _norm_params(kind: str, channels: int) -> int:
    return 0 if kind == "none" else 2 * channels


def _node_weights(op: str, config: dict) -> list[tuple[str, int]]:
    """(target, numel) of every 2-D/4-D weight of a node; the sparsity targets of design.md."""
    if op == "stem" or op == "downsample":
        return [(op, config["in_channels"] * config["out_channels"] * config["kernel_size"] ** 2)]
    if op == "mlp":
        return [("mlp", config["dim"] * config["hidden"]), ("mlp", config["hidden"] * config["dim"])]
    if op == "head":
        return [("head", config["in_channels"] * config["num_classes"])] if config["num_classes"] else []
    if op == "mixer":
        channels, kernel = config["channels"], config["kernel_size"]
        weights = {
            "peripheral": lambda: [("large_kernel", channels * config["k_prime"] ** 2)],
            "dense": lambda: [("large_kernel", channels * kernel ** 2)],
            "stripe": lambda: [("large_kernel", channels * kernel * config["short_side"])] * 2,
        }[config["type"]]()
        if config["small_kernel"]:
            weights.append(("small_kernel", channels * config["small_kernel"] ** 2))
        return weights
    return []


def _node_other_params(op: str, config: dict) -> int:
    """Biases, norm affines and layer scales of a node (never sparse)."""
    if op == "stem":
        return config["out_channels"] + _norm_params(config["norm"], config["out_channels"])
    if op == "downsample":
        return config["out_channels"] + _norm_params(config["norm"], config["in_channels"])
    if op == "norm":
        return 2 * config["channels"]
    if op == "mlp":
        return config["hidden"] + config["dim"]
    if op == "layer_scale":
        return config["channels"]
    if op == "head":
        return _norm_params(config["norm"], config["in_channels"]) + config["num_classes"]
    if op == "mixer":
        channels = config["channels"]
        branches = {"peripheral": 1, "dense": 1, "stripe": 2}[config["type"]] + bool(config["small_kernel"])
        per_branch = channels if config["norm"] == "none" else 2 * channels  # bias, or BN weight + bias
        return branches * per_branch
    return 0


def param_pass(graph: Graph) -> None:
    """Write ``params`` = {dense, nonzero, sparse_weights, pos_embed} into every node's meta."""
    density, targets = graph.graph["density"], set(graph.graph["sparsity_targets"])
    for node in graph:
        data = graph.nodes[node]
        op, config = data["op"], data["config"]
        weights = _node_weights(op, config)
        other = _node_other_params(op, config)
        sparse = sum(numel for target, numel in weights if target in targets)
        nonzero = other + sum(numel if target not in targets else round(numel * density)
                              for target, numel in weights)
        pos_embed = 0
        if op == "mixer" and config.get("pos_embed") and config.get("owns_pos_embed"):
            pos_embed = config["channels"] * config["kernel_size"] ** 2
        data["meta"]["params"] = {"dense": other + pos_embed + sum(numel for _, numel in weights),
                                  "nonzero": nonzero,
                                  "sparse_weights": sparse, "pos_embed": pos_embed}


def _node_macs(op: str, config: dict, in_shape: Shape, out_shape: Shape) -> dict[str, int]:
    """MACs by kind (conv, linear, norm, other) of one node for one image."""
    channels, height, width = in_shape
    out_c, out_h, out_w = out_shape
    pixels = height * width
    if op == "stem":
        return {"conv": out_c * out_h * out_w * channels * config["kernel_size"] ** 2,
                "norm": _norm_macs(config["norm"], out_c * out_h * out_w)}
    if op == "downsample":
        return {"conv": out_c * out_h * out_w * channels * config["kernel_size"] ** 2,
                "norm": _norm_macs(config["norm"], channels * pixels)}
    if op == "norm":
        return {"norm": _norm_macs("layernorm", channels * pixels)}
    if op == "mlp":
        return {"linear": 2 * pixels * config["dim"] * config["hidden"]}
    if op == "head":
        macs = {"other": channels * pixels, "norm": _norm_macs(config["norm"], channels)}
        if config["num_classes"]:
            macs["linear"] = channels * config["num_classes"]
        return macs
    if op == "mixer":
        g, kernel = config["channels"], config["kernel_size"]
        taps = {"peripheral": kernel ** 2, "dense": kernel ** 2,
                "stripe": 2 * kernel * config.get("short_side", 0)}[config["type"]]
        small_taps = (config["small_kernel"] or 0) ** 2
        branches = {"peripheral": 1, "dense": 1, "stripe": 2}[config["type"]] + bool(small_taps)
        norm = _norm_macs(config["norm"], g * pixels) * branches if config["norm"] == "batchnorm" else 0
        return {"conv": g * pixels * taps, "small_conv": g * pixels * small_taps, "norm": norm,
                "other": g * kernel ** 2 if config.get("pos_embed") else 0}
    return {}


def _norm_macs(kind: str, elements: int) -> int:
    return {"layernorm": 5 * elements, "batchnorm": 2 * elements}.get(kind, 0)


_SPARSE_MAC_KIND = {"stem": ("conv", "stem"), "downsample": ("conv", "downsample"),
                    "mlp": ("linear", "mlp"), "head": ("linear", "head")}


def macs_pass(graph: Graph) -> None:
    """Write ``macs`` (by kind and total) and ``macs_at_density`` per node; needs shape_pass."""
    density, targets = graph.graph["density"], set(graph.graph["sparsity_targets"])
    for node in graph:
        data = graph.nodes[node]
        meta = data["meta"]
        if "in_shape" not in meta:
            raise LintError(f"{_describe(graph, node)} has no shapes: run shape_pass first")
        by_kind = {kind: value for kind, value in
                   _node_macs(data["op"], data["config"], meta["in_shape"], meta["out_shape"]).items() if value}
        total = sum(by_kind.values())
        scaled = 0.0
        for kind, value in by_kind.items():
            target = _sparse_target(data["op"], kind)
            scaled += value * (density if target in targets else 1.0)
        meta["macs"] = {"total": total, "at_density": round(scaled), "by_kind": by_kind}


def _sparse_target(op: str, kind: str) -> str | None:
    if op == "mixer":
        return {"conv": "large_kernel", "small_conv": "small_kernel"}.get(kind)
    mac_kind, target = _SPARSE_MAC_KIND.get(op, (None, None))
    return target if kind == mac_kind else None


def receptive_field_pass(graph: Graph) -> None:
    """Theoretical receptive field (input pixels, one side) after every node, written as ``receptive_field``."""
    for node in nx.topological_sort(graph):
        data = graph.nodes[node]
        op, config, meta = data["op"], data["config"], data["meta"]
        predecessors = list(graph.predecessors(node))
        field, jump = (1, 1) if op == "input" else max(
            tuple(graph.nodes[p]["meta"]["receptive_field"]) for p in predecessors)
        if op in ("stem", "downsample"):
            field, jump = field + (config["kernel_size"] - 1) * jump, jump * config["stride"]
        elif op == "mixer":
            field = field + (config["kernel_size"] - 1) * jump
        meta["receptive_field"] = [field, jump]


def run_passes(graph: Graph, resolution: int | None = None) -> Graph:
    """Shapes at ``resolution`` (the spec's by default), parameters, MACs, receptive field, lint."""
    shape_pass(graph, resolution or graph.graph["resolution"])
    param_pass(graph)
    macs_pass(graph)
    receptive_field_pass(graph)
    lint(graph)
    return graph


# Config keys that only matter while training or initialising (stochastic depth, head dropout, the
# positional embedding's and layer scale's initial values): the same weights fit either way.
_TRAINING_ONLY = {"drop_path", "drop_rate", "pos_embed_std", "init"}


def _signature(graph: Graph, node: str) -> str:
    data = graph.nodes[node]
    config = {key: value for key, value in data["config"].items() if key not in _TRAINING_ONLY}
    return json.dumps([data["op"], config], sort_keys=True)


def fingerprint(graph: Graph) -> str:
    """A 16-hex-digit identity of the architecture, independent of node names.

    Nodes are ordered by a topological sort that breaks ties by node signature
    (op + config, training-only settings excluded: drop path, dropout, initial values), and the
    hash covers every signature with the positions of its inputs.
    """
    signatures = {node: _signature(graph, node) for node in graph}
    order = list(nx.lexicographical_topological_sort(graph, key=lambda node: signatures[node]))
    position = {node: index for index, node in enumerate(order)}
    canonical = [[signatures[node], sorted(position[p] for p in graph.predecessors(node))] for node in order]
    canonical.append(["in_channels", graph.graph["in_channels"]])
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:16]


def totals(graph: Graph) -> dict:
    """Whole-model parameters and MACs from the node metadata."""
    metas = [graph.nodes[node]["meta"] for node in graph]
    params = {key: sum(meta["params"][key] for meta in metas) for key in ("dense", "nonzero", "pos_embed")}
    by_kind: dict[str, int] = {}
    for meta in metas:
        for kind, value in meta["macs"]["by_kind"].items():
            by_kind[kind] = by_kind.get(kind, 0) + value
    return {"params": params,
            "macs": {"total": sum(meta["macs"]["total"] for meta in metas),
                     "at_density": sum(meta["macs"]["at_density"] for meta in metas), "by_kind": by_kind},
            "resolution": graph.graph["shape_resolution"], "density": graph.graph["density"]}


def stage_table(graph: Graph) -> list[dict]:
    """One row per stage: kernel, grid, k', channels through the kernel, map size, coverage, params, MACs."""
    rows: dict[int, dict] = {}
    for node in nx.topological_sort(graph):
        data = graph.nodes[node]
        stage = data["stage"]
        if stage < 0:
            continue
        row = rows.setdefault(stage, {"stage": stage + 1, "depth": 0, "params_dense": 0, "params_nonzero": 0,
                                      "macs": 0, "macs_at_density": 0})
        meta = data["meta"]
        row["params_dense"] += meta["params"]["dense"]
        row["params_nonzero"] += meta["params"]["nonzero"]
        row["macs"] += meta["macs"]["total"]
        row["macs_at_density"] += meta["macs"]["at_density"]
        if data["op"] == "mixer":
            config = data["config"]
            row["depth"] += 1
            height = meta["in_shape"][1]
            row.update(mixer=config["type"], kernel=config["kernel_size"], grid=config.get("grid"),
                       k_prime=config.get("k_prime"), dim=config["dim"], channels=config["channels"],
                       feature_map=height, covers=config["kernel_size"] >= height,
                       coverage=round(config["kernel_size"] / height, 3), pos_embed=config.get("pos_embed"))
    return [rows[stage] for stage in sorted(rows)]


STAGE_HEADERS = ["stage", "depth", "mixer", "kernel", "grid (half)", "k'", "dim", "channels g",
                 "feature map", "covers map", "params dense", "params non-zero", "MACs at density"]


def stage_table_text(stages: list[dict], exact_params: bool = False) -> list[list[str]]:
    """``stage_table`` rows as text cells under STAGE_HEADERS (parameters exact with separators, or human)."""
    def params(count: int) -> str:
        return f"{count:,}" if exact_params else human(count)

    rows = []
    for stage in stages:
        grid = str(SharingGrid(tuple(stage["grid"])).half) if stage.get("grid") else "-"
        rows.append([str(stage["stage"]), str(stage["depth"]), stage["mixer"], f"{stage['kernel']}x{stage['kernel']}", grid,
                     str(stage.get("k_prime") or "-"), str(stage["dim"]), str(stage["channels"]),
                     f"{stage['feature_map']}x{stage['feature_map']}",
                     f"{'yes' if stage['covers'] else 'no'} ({stage['coverage']:.2f})",
                     params(stage["params_dense"]), params(stage["params_nonzero"]), human(stage["macs_at_density"])])
    return rows


def human(number: float, unit: str = "") -> str:
    """1234567 -> '1.23M'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{suffix}{unit}"
    return f"{number:.0f}{unit}"


__all__ = ["STAGE_HEADERS", "LintError", "fingerprint", "human", "lint", "macs_pass", "param_pass", "receptive_field_pass",
           "run_passes", "shape_pass", "stage_table", "stage_table_text", "totals"]
