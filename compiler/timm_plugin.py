"""timm integration: ``import compiler.timm_plugin`` registers every shipped preset with timm.

    import timm
    import compiler.timm_plugin                      # registers pelk_t, pelk_s, ..., pelk_spec_convnext_t
    model = timm.create_model("pelk_t", num_classes=10)
    backbone = timm.create_model("pelk_t", features_only=True, out_indices=(0, 1, 2, 3))
    compiler.timm_plugin.register_spec_folder("my_specs/")   # every *.yaml there, under its spec name

Presets whose name starts with ``pelk`` keep it; the others get the prefix ``pelk_spec_`` so that they
never shadow timm's own models (``pelk_spec_convnext_t``, not ``convnext_t``). Names are made timm-safe
(characters other than letters, digits and ``_`` become ``_``: a ``.`` would read as a pretrained tag).

The models are `LargeKernelNet`s built through timm's ``build_model_with_cfg``, so they carry timm's
``pretrained_cfg`` / ``default_cfg`` and honour its contract: ``forward_features``, ``forward_head(x,
pre_logits)``, ``reset_classifier``, ``feature_info``, ``forward_intermediates`` and
``prune_intermediate_layers``. ``features_only=True`` wraps them in timm's ``FeatureGetterNet`` (the
stages are a ModuleList, which timm's sequential feature wrappers cannot walk). Arguments beyond timm's
usual ``num_classes``, ``in_chans``, ``drop_rate``, ``drop_path_rate`` are ``backend`` (peripheral-conv
backend); anything else is a TypeError. There are no hosted weights: ``pretrained=True`` needs
``pretrained_cfg_overlay=dict(file="BUILD_DIR/model.pt")`` (a pelk build directory's weights).

timm imports torchvision; install a torchvision that matches your torch (see docs/ecosystem.md).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, register_model

from archspec import ModelSpec, load_spec, preset_names, resolve_spec
from compiler.build import build_model
from compiler.network import LargeKernelNet

PRESET_PREFIX = "pelk_spec_"
# Read by timm's register_model: the pretrained cfg of every entrypoint registered from this module.
default_cfgs: dict[str, dict] = {}
_registered: dict[str, str] = {}  # timm name -> fingerprint of the spec registered under it


def timm_name(spec_name: str, prefix: str = "") -> str:
    """The timm model name of a spec: ``prefix + name`` with every character outside [A-Za-z0-9_] as ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", prefix + spec_name)


def pretrained_cfg(spec: ModelSpec) -> dict:
    """timm's pretrained cfg of a spec: input size and pool size at the spec's resolution, ImageNet stats."""
    resolution = spec.input.resolution
    return {"url": "", "num_classes": spec.head.num_classes, "input_size": (spec.input.channels, resolution, resolution),
            "pool_size": (max(1, resolution // spec.total_reduction()),) * 2,
            "crop_pct": 0.875 if resolution <= 224 else 1.0, "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.0",
            "classifier": "head.fc", "description": spec.description or spec.name,
            "paper_name": "PeLK: Parameter-efficient Large Kernel ConvNets with Peripheral Convolution",
            "paper_ids": "arXiv:2403.07589"}


def _model_from_spec(spec: ModelSpec, num_classes: int | None = None, in_chans: int | None = None,
                     drop_rate: float | None = None, drop_path_rate: float | None = None, backend: str = "auto",
                     **unsupported: Any) -> LargeKernelNet:
    """What timm's builder instantiates: the spec's model with timm's usual overrides."""
    if unsupported:
        raise TypeError(f"{spec.name}: unsupported model argument(s) {sorted(unsupported)} (supported: num_classes, "
                        f"in_chans, drop_rate, drop_path_rate, backend)")
    data = spec.model_dump()
    if drop_rate is not None:
        data["head"]["drop_rate"] = drop_rate
    if drop_path_rate is not None:
        data["drop_path_rate"] = drop_path_rate
    return build_model(ModelSpec.model_validate(data), backend=backend, num_classes=num_classes, in_chans=in_chans)


def _create(spec: ModelSpec, variant: str, pretrained: bool = False, **kwargs: Any) -> LargeKernelNet:
    if pretrained and "file" not in (kwargs.get("pretrained_cfg_overlay") or {}):
        raise ValueError(f"{variant}: pelk models have no hosted weights; pass "
                         f"pretrained_cfg_overlay=dict(file='BUILD_DIR/model.pt') to load a build directory's")
    feature_cfg = {"feature_cls": "getter", "out_indices": tuple(range(len(spec.stages)))}
    return build_model_with_cfg(functools.partial(_model_from_spec, spec), variant, pretrained,
                                feature_cfg=feature_cfg, **kwargs)


def register_spec(source: str | Path | ModelSpec, name: str | None = None) -> str:
    """Register one spec (object, YAML path or preset name) with timm; returns its timm name.

    Re-registering a name with the same architecture is a no-op; a name that timm already knows
    from elsewhere, or that this plugin registered for another architecture, is a ValueError.
    """
    spec = resolve_spec(source)
    name = name or timm_name(spec.name)
    from compiler.build import compile_spec
    fingerprint = compile_spec(spec).fingerprint
    if name in _registered:
        if _registered[name] != fingerprint:
            raise ValueError(f"timm model {name!r} is already registered by pelk for another architecture "
                             f"(fingerprint {_registered[name]}, not {fingerprint})")
        return name
    if timm.is_model(name):
        raise ValueError(f"timm already has a model called {name!r}; register the spec under another name")

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> LargeKernelNet:
        return _create(spec, name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"{spec.name}: {spec.description or 'a pelk spec'} (fingerprint {fingerprint})"
    default_cfgs[name] = pretrained_cfg(spec)
    register_model(entrypoint)
    _registered[name] = fingerprint
    return name


def register_presets() -> list[str]:
    """Register every shipped preset: ``pelk*`` under its name, the others as ``pelk_spec_NAME``."""
    return [register_spec(preset, timm_name(preset, "" if preset.startswith("pelk") else PRESET_PREFIX))
            for preset in preset_names()]


def register_spec_folder(folder: str | Path, prefix: str = "") -> list[str]:
    """Register every ``*.yaml`` spec of a folder (sorted) as ``prefix + spec name``; returns the timm names.

    An invalid spec raises SpecError (FILE:LINE: field: message) before anything is registered.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of spec files")
    specs = [load_spec(path) for path in sorted(folder.glob("*.yaml"))]
    return [register_spec(spec, timm_name(spec.name, prefix)) for spec in specs]


def backbone_channels(source: str | Path | ModelSpec, out_indices: tuple[int, ...] | None = None) -> list[int]:
    """Channels of the stages a ``features_only`` backbone returns: what a decoder's ``in_channels`` must be.

    >>> backbone_channels("pelk_t")
    [124, 249, 499, 998]
    """
    dims = resolve_spec(source).stage_dims()
    return [dims[index] for index in (out_indices if out_indices is not None else range(len(dims)))]


def mm_backbone_config(model_name: str, source: str | Path | ModelSpec | None = None,
                       out_indices: tuple[int, ...] | None = None, task: str = "segmentation") -> str:
    """An mmsegmentation (UperNet: mmseg's own TIMMBackbone) or mmdetection (FPN neck: mmpretrain's
    TIMMBackbone) config fragment, with the ``in_channels`` that match the stages the backbone returns.
    ``pretrained=False`` is spelled out: mmseg's wrapper defaults to True and pelk has no hosted weights."""
    if task not in ("segmentation", "detection"):
        raise ValueError(f"task {task!r}: 'segmentation' or 'detection'")
    spec = resolve_spec(source if source is not None else _preset_of(model_name))
    indices = tuple(out_indices if out_indices is not None else range(len(spec.stages)))
    channels = backbone_channels(spec, indices)
    if task == "segmentation":
        imports, backbone_type = "['compiler.timm_plugin']", "TIMMBackbone"
        consumers = (f"    decode_head=dict(in_channels={channels!r}),\n"
                     f"    auxiliary_head=dict(in_channels={channels[-2] if len(channels) > 1 else channels[0]}))\n")
    else:
        imports, backbone_type = "['mmpretrain.models', 'compiler.timm_plugin']", "mmpretrain.TIMMBackbone"
        consumers = f"    neck=dict(in_channels={channels!r}))\n"
    return (f"custom_imports = dict(imports={imports}, allow_failed_imports=False)\n"
            f"model = dict(\n"
            f"    backbone=dict(\n"
            f"        _delete_=True,\n"
            f"        type='{backbone_type}',\n"
            f"        model_name='{model_name}',\n"
            f"        features_only=True,\n"
            f"        pretrained=False,\n"
            f"        out_indices={indices!r}),\n" + consumers)


def _preset_of(model_name: str) -> str:
    for preset in preset_names():
        if model_name in (preset, timm_name(preset, PRESET_PREFIX)):
            return preset
    raise ValueError(f"{model_name!r} is not a preset's timm name; pass the spec it was registered from")


PRESET_MODELS = register_presets()
