"""The ERF measurement follows RepLKNet / SLaK (erf/visualize_erf.py, erf/analyze_erf.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from compiler import build_model, compile_spec, write_build
from compiler.erf import (IMAGENET_MEAN, IMAGENET_STD, SHIPPED_PHOTOS, ErfError, area_ratio, area_ratios,
                          display_map, find_images, input_gradient, load_image, mean_contribution, measure_erfs,
                          model_erf, unique_labels)
from tests.conftest import tiny_spec


def replknet_get_rectangle(data: np.ndarray, thresh: float):
    """RepLKNet's analyze_erf.get_rectangle, as published (the oracle)."""
    h, w = data.shape
    all_sum = np.sum(data)
    for i in range(1, h // 2):
        selected_area = data[h // 2 - i:h // 2 + 1 + i, w // 2 - i:w // 2 + 1 + i]
        area_sum = np.sum(selected_area)
        if area_sum / all_sum > thresh:
            return i * 2 + 1, (i * 2 + 1) / h * (i * 2 + 1) / w
    return None


@given(st.integers(4, 40).flatmap(lambda size: arrays(np.float64, (size, size),
                                                     elements=st.floats(0.0, 1e3, allow_nan=False))),
       st.sampled_from([0.2, 0.3, 0.5, 0.99]))
def test_area_ratio_is_replknets_get_rectangle(scores, threshold):
    display = display_map(scores)
    if display.sum() == 0:
        assert area_ratio(display, threshold) is None
        return
    expected = replknet_get_rectangle(display, threshold)
    found = area_ratio(display, threshold)
    if expected is None:
        assert found is None
    else:
        assert found[0] == expected[0]
        assert found[1] == pytest.approx(expected[1])


def test_display_is_log_scaled_and_max_normalised():
    scores = np.array([[0.0, 9.0], [99.0, 999.0]])
    np.testing.assert_allclose(display_map(scores), [[0.0, 1 / 3], [2 / 3, 1.0]])


def test_a_point_contribution_has_the_smallest_square_at_every_threshold():
    scores = np.zeros((64, 64))
    scores[32, 32] = 5.0
    ratios = area_ratios(display_map(scores))
    assert list(ratios) == ["20%", "30%", "50%", "99%"]
    assert all(found["side"] == 3 and found["ratio"] == pytest.approx(9 / 64 ** 2) for found in ratios.values())


def test_a_uniform_contribution_needs_the_square_just_past_share_t():
    size = 201
    ratios = area_ratios(np.ones((size, size)))
    for key in ("20%", "30%", "50%"):
        found = ratios[key]
        assert ((found["side"] - 2) / size) ** 2 <= found["threshold"] < found["ratio"]
    assert ratios["99%"] is None  # the largest square RepLKNet tries, 199 x 199, holds 98 %


def test_shipped_photographs_load_offline_as_normalised_rgb():
    paths = find_images(None, None)
    assert [path.name for path in paths] == list(SHIPPED_PHOTOS)
    image = load_image(paths[0], 48)
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    pixels = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.05


def test_image_directory_is_searched_recursively_in_order(tmp_path):
    from PIL import Image
    for relative in ("b/2.png", "a/1.jpg", "a/3.png"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 10), "red").save(tmp_path / relative)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [path.relative_to(tmp_path).as_posix() for path in find_images(tmp_path, None)] == \
        ["a/1.jpg", "a/3.png", "b/2.png"]
    assert len(find_images(tmp_path, 2)) == 2
    with pytest.raises(ErfError, match="only 3 images"):
        find_images(tmp_path, 4)


def test_unreadable_images_and_empty_directories_are_named(tmp_path):
    with pytest.raises(ErfError, match="no image files"):
        find_images(tmp_path, None)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ErfError, match="broken.png: cannot read as an image"):
        load_image(find_images(tmp_path, None)[0], 32)


def test_gradient_support_is_the_theoretical_receptive_field_around_the_centre():
    spec = tiny_spec("convnext_t", dim=8)
    graph = compile_spec(spec).graph
    field, jump = next(graph.nodes[node]["meta"]["receptive_field"] for node in graph
                       if graph.nodes[node]["op"] == "output")
    size = 512
    model = build_model(spec).eval()
    contribution = input_gradient(model, load_image(find_images(None, 1)[0], size))
    rows, columns = np.nonzero(contribution.sum(1)), np.nonzero(contribution.sum(0))
    for support in (rows[0], columns[0]):
        assert field - jump < support.max() - support.min() + 1 <= field
        centre_cell = (size // jump) // 2 * jump  # first input pixel of the central last-stage position
        assert (support.min() + support.max()) / 2 == pytest.approx(centre_cell + (jump - 1) / 2, abs=jump / 2)


def test_measuring_leaves_the_model_as_it_was():
    model = build_model(tiny_spec("pelk_t", dim=8)).train()
    model.stem[0].weight.requires_grad_(False)
    mean_contribution(model, find_images(None, 1), 64, progress=False)
    assert model.training
    assert [name for name, parameter in model.named_parameters() if not parameter.requires_grad] == ["stem.0.weight"]
    assert all(parameter.grad is None for parameter in model.parameters())


def share_outside_the_central_patch(scores: np.ndarray, stride: int = 32) -> float:
    """Share of the contribution outside the input patch of the central last-stage position."""
    low = scores.shape[0] // stride // 2 * stride
    return 1 - scores[low:low + stride, low:low + stride].sum() / scores.sum()


def test_a_build_directory_is_measured_with_its_own_weights(tmp_path):
    spec = tiny_spec("pelk_t", dim=8)
    trained = build_model(spec)
    with torch.no_grad():  # stand-in for training: layer scales grown from 1e-6, so the kernels count
        for stage in trained.stages:
            for block in stage.blocks:
                block.gamma.fill_(1.0)
    build_dir = write_build(compile_spec(spec), tmp_path / "trained", trained)
    images = find_images(None, 2)
    [from_dir] = measure_erfs([build_dir], images, 64, progress=False)
    expected = model_erf(trained, "in memory", images, 64, "trained", progress=False)
    np.testing.assert_allclose(from_dir.scores, expected.scores, rtol=1e-5, atol=1e-12)
    fresh = model_erf(build_model(spec), "fresh", images, 64, "fresh", progress=False)
    assert share_outside_the_central_patch(fresh.scores) < 1e-5  # layer scale 1e-6: only the stem path counts
    assert share_outside_the_central_patch(from_dir.scores) > 1e-3  # the large kernels spread it
    assert from_dir.label == "trained" and from_dir.summary()["num_images"] == 2


def test_sizes_below_the_total_stride_are_refused():
    with pytest.raises(ErfError, match="smaller than the model's total stride 32"):
        model_erf(build_model(tiny_spec("convnext_t", dim=8)), "x", find_images(None, 1), 16, "x")


def test_labels_are_file_names_made_unique():
    assert unique_labels(["pelk_t", "runs/a/", "specs/b.yaml", "other/a", "pelk_t"]) == \
        ["pelk_t", "a", "b", "a-2", "pelk_t-2"]
    assert unique_labels(["a", "x/a", "a-2"]) == ["a", "a-2", "a-2-2"]  # every model keeps its own files
