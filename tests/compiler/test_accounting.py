"""Counting matches the paper (Tables 2, 4, 8; design.md) and the built modules."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from compiler import build_model, compile_spec
from tests.conftest import tiny_spec

# (preset, resolution, paper non-zero params, paper GMACs, tolerance on params, tolerance on MACs)
PAPER = [
    ("pelk_t", 224, 29e6, 5.6e9, 0.03, 0.06),
    ("pelk_s", 224, 50e6, 10.7e9, 0.03, 0.06),
    ("pelk_b", 224, 89e6, 18.3e9, 0.03, 0.06),
    ("pelk_b101", 384, 90e6, 68.3e9, 0.03, 0.06),
    ("slak_t", 224, 30e6, 5.0e9, 0.06, 0.06),
]


@pytest.mark.parametrize("name, resolution, params, macs, params_tol, macs_tol", PAPER, ids=[p[0] for p in PAPER])
def test_counts_match_the_paper(name, resolution, params, macs, params_tol, macs_tol):
    totals = compile_spec(name, resolution).totals
    assert totals["params"]["nonzero"] == pytest.approx(params, rel=params_tol)
    assert totals["macs"]["at_density"] == pytest.approx(macs, rel=macs_tol)


def test_convnext_t_is_timm_convnext_tiny():
    totals = compile_spec("convnext_t").totals
    assert totals["params"]["dense"] == totals["params"]["nonzero"] == 28_589_128
    assert totals["macs"]["total"] == pytest.approx(4.47e9, rel=0.01)


def test_dense_pelk_sizes_of_design_md():
    """design.md: the dense models are about 48.7M / 85.3M / 150.2M (positional embedding included)."""
    for name, dense in [("pelk_t", 48.7e6), ("pelk_s", 85.3e6), ("pelk_b", 150.2e6)]:
        assert compile_spec(name).totals["params"]["dense"] == pytest.approx(dense, rel=0.005)


def test_positional_embedding_is_outside_the_papers_count():
    totals = compile_spec("pelk_t").totals
    assert totals["params"]["pos_embed"] == 46 * 51**2 + 93 * 49**2 + 187 * 47**2 + 374 * 13**2


@pytest.mark.parametrize("name", ["pelk_t", "convnext_t", "slak_t", "replknet_31b", "pelk_b101"])
def test_ir_parameter_count_is_the_module_numel(name):
    spec = tiny_spec(name)
    model = build_model(spec)
    assert sum(p.numel() for p in model.parameters()) == compile_spec(spec).totals["params"]["dense"]


def test_full_pelk_t_module_numel():
    model = build_model("pelk_t")
    assert sum(p.numel() for p in model.parameters()) == compile_spec("pelk_t").totals["params"]["dense"]


@pytest.mark.parametrize("name", ["pelk_t", "convnext_t", "slak_t", "pelk_b101"])
def test_ir_macs_match_torch_flop_counter(name):
    """FlopCounterMode counts convolutions and matmuls (2 FLOPs per MAC); the peripheral op registers a
    dense-K x K-depthwise formula, so conv + linear MACs of the IR must agree exactly. The IR counts the
    training form (small kernels included, as the paper does), which train mode runs."""
    spec = tiny_spec(name, resolution=64)
    model = build_model(spec, backend="torch").train()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    by_kind = compile_spec(spec).totals["macs"]["by_kind"]
    assert counter.get_total_flops() == 2 * (by_kind["conv"] + by_kind.get("small_conv", 0) + by_kind["linear"])
