"""timm: importing the plugin registers the presets and spec folders; the models honour timm's contract
(create_model overrides, features_only / out_indices, feature_info, forward_head(pre_logits),
reset_classifier, pretrained_cfg, forward_intermediates, prune_intermediate_layers).

Where no usable torchvision is installed (CI: PyPI's torchvision wheels need a CUDA torch, CI has the
CPU build of torch 2.13), ``import timm`` would fail on timm's module-level torchvision imports (frozen
batch norm, data transforms and datasets), none of which the code under test uses. This module then
puts an *unavailable* stand-in for torchvision on the import path first: importing it works, and using
anything from it raises ImportError, so no test can pass on a fake torchvision feature.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import uuid

import pytest
import torch


def _unavailable_attribute(owner, prefix: str, name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    value = _Unavailable(name, (), {"__qualname__": f"{prefix}.{name}"})
    setattr(owner, name, value)
    return value


class _Unavailable(type):
    """A torchvision name: attributes are further unavailable names, calling one raises ImportError."""

    def __getattr__(cls, name):
        return _unavailable_attribute(cls, cls.__qualname__, name)

    def __call__(cls, *args, **kwargs):
        raise ImportError(f"torchvision is not installed: {cls.__qualname__} is unavailable")


class _UnavailableModule(types.ModuleType):
    def __getattr__(self, name):
        return _unavailable_attribute(self, self.__name__, name)


class _UnavailableTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _UnavailableModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _import_timm():
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError):  # absent, or a build for another torch ("torchvision::nms does not exist")
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _UnavailableTorchvision())
    return pytest.importorskip("timm", reason="timm is not installed (.ci/run installs it without torchvision)")


timm = _import_timm()
from archspec import SpecError, dump_spec, preset_names, resolve_spec, save_spec  # noqa: E402
from compiler import build_model, compile_spec, write_build  # noqa: E402
from compiler import timm_plugin  # noqa: E402
from tests.conftest import tiny_spec  # noqa: E402


@pytest.fixture
def tiny_names(tmp_path) -> dict[str, str]:
    """A folder of two tiny specs registered under a fresh prefix: {preset: timm name}."""
    prefix = f"t{uuid.uuid4().hex[:6]}_"
    for preset in ("pelk_t", "convnext_t"):
        save_spec(tiny_spec(preset, resolution=64), tmp_path / f"{preset}.yaml")
    names = timm_plugin.register_spec_folder(tmp_path, prefix=prefix)
    return {"pelk_t": f"{prefix}pelk_t_tiny", "convnext_t": f"{prefix}convnext_t_tiny", "_all": names}


def test_every_preset_is_registered_without_shadowing_timm_models():
    for preset in preset_names():
        expected = preset if preset.startswith("pelk") else f"pelk_spec_{preset}"
        assert timm.is_model(expected), expected
        resolution = resolve_spec(preset).input.resolution  # 384 for the PeLK-101 presets
        assert timm.get_pretrained_cfg(expected).input_size == (3, resolution, resolution)
    assert timm.list_models("pelk_t") == ["pelk_t"] and "pelk_spec_convnext_t" in timm.list_models("pelk_spec_*")


def test_a_spec_folder_registers_every_spec(tiny_names):
    assert sorted(tiny_names["_all"]) == sorted([tiny_names["pelk_t"], tiny_names["convnext_t"]])


@pytest.mark.parametrize("preset", ["pelk_t", "convnext_t"])
def test_create_model_builds_the_spec_with_timm_overrides(tiny_names, preset):
    model = timm.create_model(tiny_names[preset], num_classes=7, drop_path_rate=0.2).eval()
    spec = tiny_spec(preset, resolution=64)
    assert model.fingerprint == build_model(spec, num_classes=7).fingerprint
    assert model.spec.drop_path_rate == 0.2
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert model.pretrained_cfg is model.default_cfg and model.pretrained_cfg["input_size"] == (3, 64, 64)
    assert model.pretrained_cfg["classifier"] == "head.fc" and model.get_classifier() is model.head.fc


def test_features_only_returns_the_requested_stages(tiny_names):
    spec = tiny_spec("pelk_t", resolution=64)
    backbone = timm.create_model(tiny_names["pelk_t"], features_only=True, out_indices=(1, 3)).eval()
    features = backbone(torch.randn(2, 3, 64, 64))
    dims = spec.stage_dims()
    assert [tuple(feature.shape) for feature in features] == [(2, dims[1], 8, 8), (2, dims[3], 2, 2)]
    assert backbone.feature_info.channels() == [dims[1], dims[3]] == timm_plugin.backbone_channels(spec, (1, 3))
    assert backbone.feature_info.reduction() == [8, 32]
    everything = timm.create_model(tiny_names["pelk_t"], features_only=True)
    assert everything.feature_info.channels() == dims and everything.feature_info.reduction() == [4, 8, 16, 32]


def test_head_classifier_and_features_follow_timms_contract(tiny_names):
    model = timm.create_model(tiny_names["pelk_t"], num_classes=5).eval()
    image = torch.randn(2, 3, 64, 64)
    features = model.forward_features(image)
    assert features.shape == (2, model.num_features, 2, 2)
    assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(features), model(image))
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(image).shape == (2, 3)
    model.reset_classifier(0, "avg")
    assert model(image).shape == (2, model.num_features)
    with pytest.raises(ValueError, match="only average-pools"):
        model.reset_classifier(3, "max")
    assert [info["num_chs"] for info in model.feature_info] == tiny_spec("pelk_t", resolution=64).stage_dims()


@pytest.mark.parametrize("indices, taken", [(None, [0, 1, 2, 3]), (2, [2, 3]), ([0, -1], [0, 3]), ([1], [1])])
def test_forward_intermediates_selects_stages_like_timm(tiny_names, indices, taken):
    model = timm.create_model(tiny_names["pelk_t"]).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        stages = model.forward_stages(image)
        final, intermediates = model.forward_intermediates(image, indices=indices)
        only = model.forward_intermediates(image, indices=indices, intermediates_only=True)
        _, early = model.forward_intermediates(image, indices=indices, stop_early=True)
    torch.testing.assert_close(final, stages[-1])
    for result in (intermediates, only, early):
        assert len(result) == len(taken)
        for got, index in zip(result, taken):
            torch.testing.assert_close(got, stages[index])
    with pytest.raises(ValueError):
        model.forward_intermediates(image, indices=[4])
    with pytest.raises(ValueError, match="only 'NCHW'"):
        model.forward_intermediates(image, output_fmt="NHWC")


def test_prune_intermediate_layers_keeps_what_is_needed(tiny_names):
    model = timm.create_model(tiny_names["pelk_t"]).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_stages(image)[1]
    assert model.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(model.stages) == 2 and model.num_features == model.dims[1] and model.num_classes == 0
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(image), expected)
        assert model(image).shape == (1, model.dims[1])


def test_timm_loads_a_pelk_build_directory_as_pretrained_weights(tiny_names, tmp_path):
    spec = tiny_spec("pelk_t", resolution=64)
    trained = build_model(spec).eval()
    write_build(compile_spec(spec), tmp_path / "build", trained)
    loaded = timm.create_model(tiny_names["pelk_t"], pretrained=True,
                               pretrained_cfg_overlay={"file": str(tmp_path / "build" / "model.pt")}).eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(image), trained(image))
    with pytest.raises(ValueError, match="no hosted weights"):
        timm.create_model(tiny_names["pelk_t"], pretrained=True)


def test_unsupported_arguments_are_type_errors(tiny_names):
    with pytest.raises(TypeError, match=r"unsupported model argument\(s\) \['act_layer'\]"):
        timm.create_model(tiny_names["pelk_t"], act_layer="relu")


def test_names_are_timm_safe_and_never_clash(tmp_path):
    spec = tiny_spec("pelk_t", resolution=64)
    odd = spec.model_copy(update={"name": f"my.pelk-{uuid.uuid4().hex[:6]}"})
    name = timm_plugin.register_spec(odd)
    assert "." not in name and "-" not in name and timm.is_model(name)
    assert timm_plugin.register_spec(odd) == name  # same architecture: a no-op
    other = tiny_spec("convnext_t", resolution=64)
    with pytest.raises(ValueError, match="already registered by pelk for another architecture"):
        timm_plugin.register_spec(other, name)
    with pytest.raises(ValueError, match="timm already has a model called 'resnet18'"):
        timm_plugin.register_spec(other, "resnet18")


def test_an_invalid_spec_in_a_folder_is_reported_with_its_line(tmp_path):
    (tmp_path / "good.yaml").write_text(dump_spec(tiny_spec("pelk_t", resolution=64)))
    (tmp_path / "bad.yaml").write_text("name: bad\nstages: []\n")
    with pytest.raises(SpecError, match=r"bad.yaml:2: stages"):
        timm_plugin.register_spec_folder(tmp_path, prefix="never_")
    assert not timm.is_model("never_pelk_t_tiny")
    with pytest.raises(NotADirectoryError):
        timm_plugin.register_spec_folder(tmp_path / "absent")


def test_backbone_channels_and_the_mm_config_match_the_spec():
    assert timm_plugin.backbone_channels("pelk_t") == [124, 249, 499, 998]
    assert timm_plugin.backbone_channels("pelk_b") == [166, 332, 665, 1331]
    seg = timm_plugin.mm_backbone_config("pelk_t")
    assert "model_name='pelk_t'" in seg and "out_indices=(0, 1, 2, 3)" in seg
    assert "decode_head=dict(in_channels=[124, 249, 499, 998])" in seg and "in_channels=499" in seg
    assert "type='TIMMBackbone'" in seg and "pretrained=False" in seg
    det = timm_plugin.mm_backbone_config("pelk_spec_convnext_t", out_indices=(1, 2, 3), task="detection")
    assert "neck=dict(in_channels=[192, 384, 768])" in det and "out_indices=(1, 2, 3)" in det
    assert "type='mmpretrain.TIMMBackbone'" in det and "'mmpretrain.models'" in det
    namespace: dict = {}
    exec(compile(seg, "config", "exec"), {"dict": dict}, namespace)  # the fragment is valid Python config
    assert namespace["model"]["backbone"]["model_name"] == "pelk_t"
    with pytest.raises(ValueError, match="not a preset's timm name"):
        timm_plugin.mm_backbone_config("my_model")
