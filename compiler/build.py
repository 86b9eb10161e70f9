"""Spec -> compiled model, and build directories on disk.

``compile_spec`` runs the whole pipeline (lower, passes, lint, fingerprint);
``build_model`` returns the nn.Module; ``write_build`` writes a build
directory atomically; ``load_model`` restores one.

A build directory holds:
  spec.yaml      the spec, as validated
  model.pt       {"state_dict", "spec_yaml", "fingerprint", "format"}
  ir.json        the IR (networkx node-link data, metadata included)
  ir.graphml     the IR for graph tools (config/meta as JSON strings)
  summary.json   params (dense, nonzero, pos_embed), macs, resolution, fingerprint, stages
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import torch

from archspec import ModelSpec, SpecError, dump_spec, loads_spec, resolve_spec
from archspec.files import atomic_directory, atomic_write_bytes
from compiler.ir import Graph, lower
from compiler.network import LargeKernelNet, lower_to_module
from compiler.passes import fingerprint, run_passes, stage_table, totals

WEIGHTS_FORMAT = "pelk-weights-v1"


class BuildError(Exception):
    """A build directory or weights file cannot be used; the message says why."""


@dataclass
class CompiledSpec:
    """A validated spec with its analysed IR."""

    spec: ModelSpec
    graph: Graph
    fingerprint: str
    totals: dict
    stages: list[dict]

    def summary(self) -> dict:
        return {"name": self.spec.name, "fingerprint": self.fingerprint, "resolution": self.totals["resolution"],
                "params": self.totals["params"], "macs": self.totals["macs"]["at_density"],
                "macs_dense": self.totals["macs"]["total"], "macs_by_kind": self.totals["macs"]["by_kind"],
                "density": self.totals["density"], "stages": self.stages}


def compile_spec(source: str | Path | ModelSpec, resolution: int | None = None) -> CompiledSpec:
    """Validate and analyse a spec (path, preset name or object) at a resolution (the spec's by default)."""
    spec = resolve_spec(source)
    graph = run_passes(lower(spec), resolution)
    return CompiledSpec(spec, graph, fingerprint(graph), totals(graph), stage_table(graph))


def build_model(source: str | Path | ModelSpec, backend: str = "auto", num_classes: int | None = None,
                in_chans: int | None = None) -> LargeKernelNet:
    """The nn.Module of a spec (path, preset name or ModelSpec), freshly initialised.

    ``num_classes`` / ``in_chans`` override the spec's head and input channels.
    """
    spec = resolve_spec(source)
    updates: dict[str, Any] = {}
    if num_classes is not None:
        updates["head"] = spec.head.model_copy(update={"num_classes": num_classes})
    if in_chans is not None:
        updates["input"] = spec.input.model_copy(update={"channels": in_chans})
    if updates:
        spec = ModelSpec.model_validate(spec.model_copy(update=updates).model_dump())
    compiled = compile_spec(spec)
    model = lower_to_module(compiled.graph, backend=backend, spec=spec)
    model.fingerprint = compiled.fingerprint
    return model


def _graphml_ready(graph: Graph) -> nx.DiGraph:
    flat = nx.DiGraph()
    flat.graph.update({key: json.dumps(value) if isinstance(value, (list, dict)) else value
                       for key, value in graph.graph.items()})
    for node, data in graph.nodes(data=True):
        flat.add_node(node, **{key: json.dumps(value) if isinstance(value, (list, dict)) or value is None else value
                               for key, value in data.items()})
    flat.add_edges_from(graph.edges)
    return flat


def graph_to_json(graph: Graph) -> str:
    return json.dumps(nx.node_link_data(graph, edges="edges"), indent=1)


def weights_payload(model: LargeKernelNet) -> dict:
    """What model.pt holds: the state dict with the spec and fingerprint it belongs to.

    ``deployed`` is None for the training form, else the options of ``compiler.deploy.deploy``.
    """
    return {"format": WEIGHTS_FORMAT, "state_dict": model.state_dict(), "spec_yaml": dump_spec(model.spec),
            "fingerprint": model.fingerprint, "deployed": getattr(model, "deploy_form", None)}


def save_weights(model: LargeKernelNet, path: str | Path) -> Path:
    buffer = io.BytesIO()
    torch.save(weights_payload(model), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_model_directory(out_dir: str | Path, model: LargeKernelNet, files: dict[str, str]) -> Path:
    """Write spec.yaml (the model's spec), model.pt and ``files`` (name -> text) as one directory, atomically
    (assembled aside, then swapped in): the directory layout shared by build and deploy directories."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, marker="model.pt") as temp:
        (temp / "spec.yaml").write_text(dump_spec(model.spec), encoding="utf-8")
        torch.save(weights_payload(model), temp / "model.pt")
        for name, text in files.items():
            (temp / name).write_text(text, encoding="utf-8")
    return out_dir


def write_build(compiled: CompiledSpec, out_dir: str | Path, model: LargeKernelNet | None = None) -> Path:
    """Write a build directory atomically; ``model`` (default: a fresh one) must be the compiled architecture."""
    if model is None:
        model = build_model(compiled.spec)
    elif model.fingerprint != compiled.fingerprint:
        raise BuildError(f"{out_dir}: the model ({model.spec.name}, fingerprint {model.fingerprint}) is not the "
                         f"compiled spec ({compiled.spec.name}, fingerprint {compiled.fingerprint})")
    graphml = "\n".join(["<?xml version='1.0' encoding='utf-8'?>",
                         *nx.generate_graphml(_graphml_ready(compiled.graph))])
    return write_model_directory(out_dir, model, {"ir.json": graph_to_json(compiled.graph), "ir.graphml": graphml,
                                                  "summary.json": json.dumps(compiled.summary(), indent=2)})


def _read_payload(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BuildError(f"{path}: no such weights file") from None
    except Exception as error:  # torch raises many types (with pages of advice) for corrupt or foreign files
        raise BuildError(f"{path}: not a pelk weights file (torch.load: {type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise BuildError(f"{path}: not a pelk weights file (expected format {WEIGHTS_FORMAT!r})")
    return payload


def load_weights(model: LargeKernelNet, path: str | Path) -> LargeKernelNet:
    """Load weights into ``model``; refused when they were built for another architecture."""
    path = Path(path)
    payload = _read_payload(path)
    if payload["fingerprint"] != model.fingerprint:
        saved = loads_spec(payload["spec_yaml"], f"{path}:spec")
        raise BuildError(f"{path}: weights are for {saved.name!r} (fingerprint {payload['fingerprint']}), "
                         f"not for {model.spec.name!r} (fingerprint {model.fingerprint}): the architectures differ")
    return _load_state(model, payload, path)


def _load_state(model: LargeKernelNet, payload: dict, path: Path) -> LargeKernelNet:
    """The payload's state dict into ``model``: same form (training or deploy), every name and shape."""
    saved_form, model_form = payload.get("deployed"), getattr(model, "deploy_form", None)
    if saved_form != model_form:
        describe = lambda form: f"deploy form {form}" if form else "training form"  # noqa: E731
        raise BuildError(f"{path}: the weights are in {describe(saved_form)}, the model in {describe(model_form)}")
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise BuildError(f"{path}: the weights do not fit the model: {error}") from None
    return model


def build_directory(path: str | Path) -> Path:
    """The build directory a build path names: the path itself, or the folder of its model.pt."""
    path = Path(path)
    directory = path if path.is_dir() or path.suffix != ".pt" else path.parent
    return directory.resolve() if directory.name in ("", "..") else directory  # "." and ".." have no name


def refuse_to_replace_source(out: str | Path, source: str | Path) -> None:
    """A command that reads a build directory must not write its output over it (the weights would be lost)."""
    directory = build_directory(source)
    if directory.is_dir() and Path(out).resolve() == directory.resolve():
        raise BuildError(f"{out}: is the build directory being read; write the result to another directory")


def load_model(path: str | Path, backend: str = "auto") -> LargeKernelNet:
    """Restore a model from a build directory (or its model.pt)."""
    path = Path(path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        raise BuildError(f"{path}: a spec, not a build directory (make one with `pelk build {path} --out DIR`)")
    weights = path / "model.pt" if path.is_dir() else path
    if not weights.exists():
        raise BuildError(f"{path}: not a build directory (no model.pt; make one with `pelk build SPEC --out DIR`)")
    payload = _read_payload(weights)
    try:
        spec = loads_spec(payload["spec_yaml"], f"{weights}:spec")
    except SpecError as error:
        raise BuildError(f"{weights}: embedded spec is invalid:\n{error}") from None
    model = build_model(spec, backend=backend)
    if payload.get("deployed"):
        from compiler.deploy import deploy
        deploy(model, **payload["deployed"])
    # The architecture is the embedded spec's, so the weights need no fingerprint check: they must fit
    # name by name and shape by shape (a model.pt from a pelk with another fingerprint rule still loads).
    return _load_state(model, payload, weights)


def resolve_model(source: str | Path, backend: str = "auto") -> LargeKernelNet:
    """A model from a build directory (trained weights) or a spec / preset (fresh weights)."""
    path = Path(source)
    if path.is_dir() or path.suffix == ".pt":
        return load_model(path, backend=backend)
    return build_model(source, backend=backend)


__all__ = ["BuildError", "CompiledSpec", "build_directory", "build_model", "compile_spec", "graph_to_json",
           "load_model", "load_weights", "refuse_to_replace_source", "resolve_model", "save_weights",
           "write_build", "write_model_directory"]
