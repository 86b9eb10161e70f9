"""Every preset builds a model that runs forward and backward on CPU (timm's model tests, tiny presets)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from archspec import preset_names
from compiler import build_model
from compiler.modules import Mlp, PeripheralMixer, aligned_mlp
from tests.conftest import tiny_spec


@pytest.fixture(scope="module", params=preset_names())
def tiny_model(request):
    torch.manual_seed(0)
    return request.param, build_model(tiny_spec(request.param), backend="torch")


def test_forward_backward_gives_every_parameter_a_gradient(tiny_model):
    name, model = tiny_model
    model.train()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 10)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    model.zero_grad(set_to_none=True)


def test_stage_features_match_feature_info(tiny_model):
    _, model = tiny_model
    model.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_stages(image)
        assert torch.equal(features[-1], model.forward_features(image))
    assert [f.shape[1] for f in features] == [info["num_chs"] for info in model.feature_info]
    assert [64 // f.shape[-1] for f in features] == [info["reduction"] for info in model.feature_info]


def test_pre_logits_and_reset_classifier(tiny_model):
    _, model = tiny_model
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (2, model.num_features)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(10)


def test_one_positional_embedding_per_stage_shared_by_its_blocks():
    model = build_model(tiny_spec("pelk_t", depth=2))
    for stage in model.stages:
        mixer = stage.blocks[0].mixer
        assert isinstance(mixer, PeripheralMixer)
        assert stage.pos_embed.shape == (mixer.channels, mixer.kernel_size, mixer.kernel_size)
    names = [name for name, _ in model.named_parameters() if "pos_embed" in name]
    assert names == [f"stages.{i}.pos_embed" for i in range(4)]


def test_partial_channels_pass_through_unchanged():
    model = build_model(tiny_spec("pelk_t")).eval()
    mixer = model.stages[0].blocks[0].mixer
    x = torch.randn(1, mixer.dim, 16, 16)
    with torch.no_grad():
        y = mixer(x, model.stages[0].pos_embed)
    assert torch.equal(y[:, mixer.channels:], x[:, mixer.channels:])
    assert not torch.allclose(y[:, :mixer.channels], x[:, :mixer.channels])


def test_build_model_overrides():
    model = build_model(tiny_spec("pelk_t"), num_classes=3, in_chans=1)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3)


def test_set_backend_reaches_deployed_peripheral_convs():
    import runtime
    model = build_model(tiny_spec("pelk_t"), backend="torch")
    model.deploy()
    model.set_backend("sat")
    backends = {m.backend for m in model.modules() if isinstance(m, runtime.PeripheralConv2d)}
    assert backends == {"sat"}


@pytest.mark.parametrize("name", ["pelk_t", "pelk101_t"])
def test_models_trace_into_one_graph_for_torch_compile(name):
    """No graph breaks (e.g. no data-dependent ops such as repeat_interleave with a tensor of counts),
    so `torch.compile` can fuse the glue around the peripheral op."""
    model = build_model(tiny_spec(name), backend="sat").train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]


@pytest.mark.parametrize("train", [True, False])
def test_switching_backend_keeps_outputs_and_gradients_within_fp32_tolerance(train):
    """Compiled models run the runtime op; torch (reference) and sat (summed-area form) agree on the
    whole network, forward and backward, in training and in eval form."""
    torch.manual_seed(0)
    model = build_model(tiny_spec("pelk101_t", resolution=96), backend="torch").train(train)
    x = torch.randn(2, 3, 96, 96)
    results = {}
    for backend in ("torch", "sat"):
        model.set_backend(backend)
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.square().sum().backward()
        weight_grad = model.stages[0].blocks[0].mixer.conv.weight.grad.clone()
        results[backend] = (logits.detach(), weight_grad)
    (reference_logits, reference_grad), (logits, grad) = results["torch"], results["sat"]
    assert (logits - reference_logits).abs().max() <= 1e-5 * reference_logits.abs().max()
    assert (grad - reference_grad).abs().max() <= 1e-4 * reference_grad.abs().max()


@settings(max_examples=20)
@given(dim=st.integers(1, 40), hidden=st.integers(1, 90), multiple=st.sampled_from([8, 16]),
       bias=st.booleans(), seed=st.integers(0, 2**16))
def test_aligned_mlp_equals_the_plain_mlp_with_gradients(dim, hidden, multiple, bias, seed):
    torch.manual_seed(seed)
    mlp = Mlp(dim, hidden).double()
    if not bias:
        mlp.fc1.bias = mlp.fc2.bias = None
    x = torch.randn(2, 3, dim, dtype=torch.float64, requires_grad=True)
    plain = mlp.fc2(mlp.act(mlp.fc1(x)))
    aligned = aligned_mlp(x, mlp.fc1, mlp.act, mlp.fc2, multiple)
    assert aligned.shape == plain.shape
    torch.testing.assert_close(aligned, plain)
    upstream = torch.randn_like(plain)
    grads_plain = torch.autograd.grad(plain, [x, *mlp.parameters()], upstream)
    grads_aligned = torch.autograd.grad(aligned, [x, *mlp.parameters()], upstream)
    for got, expected in zip(grads_aligned, grads_plain):
        torch.testing.assert_close(got, expected)


def test_mlp_marks_unaligned_widths_for_padded_gemms():
    assert Mlp(249, 996).misaligned and Mlp(124, 496).misaligned
    assert not Mlp(96, 384).misaligned
