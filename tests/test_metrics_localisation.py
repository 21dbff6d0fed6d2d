"""Localisation (pointing game, relevance mass and rank, top-k intersection) and complexity
(sparseness, entropy) metrics, on maps with known answers.

Oracles: a perfect map scores 1 everywhere; a uniformly random map's relevance mass is, on
average, the object's area fraction; hand-computed values on 4x4 maps; the formulas' closed
forms (a uniform map's Gini index 0 and entropy log n, a one-pixel map's (n−1)/n and 0).
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import InputError, OptionError
from xplain.metrics import (complexity, object_masks, pointing_game, relevance_mass, relevance_rank,
                            sparseness, top_k_intersection)

core = pytest.mark.core


def _square(n=3, size=32, box=(8, 8, 20, 16)):
    mask = np.zeros((n, size, size), bool)
    x0, y0, x1, y1 = box
    mask[:, y0:y1, x0:x1] = True
    return mask


@core
def test_a_perfect_map_scores_one():
    mask = _square()
    maps = mask.astype(np.float64) * np.arange(1, 4)[:, None, None]
    for metric in (pointing_game, relevance_mass, relevance_rank):
        np.testing.assert_array_equal(metric(maps, mask), 1.0)
    np.testing.assert_array_equal(top_k_intersection(maps, mask, k=96), 1.0)  # the object: 12x8


@core
def test_a_random_map_scores_about_the_area_fraction():
    rng = np.random.default_rng(0)
    mask = _square(n=400)
    maps = rng.random((400, 32, 32))
    area = mask[0].mean()  # 96 / 1024
    # 400 maps of 1024 uniform values: the mean mass's standard error is ~1e-3
    assert abs(relevance_mass(maps, mask).mean() - area) < 0.01
    assert abs(relevance_rank(maps, mask).mean() - area) < 0.01
    assert abs(pointing_game(maps, mask, tolerance=0).mean() - area) < 0.05  # 400 coin flips


@core
def test_hand_values_on_a_4x4_map():
    maps = np.array([[[4.0, 0.0, 0.0, 0.0],
                      [0.0, 3.0, 1.0, 0.0],
                      [0.0, -2.0, 2.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]]])
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 1:3, 1:3] = True  # values 3, 1, −2, 2 on the object
    # positive mass: (3 + 1 + 2) / (4 + 3 + 1 + 2)
    np.testing.assert_allclose(relevance_mass(maps, mask), [0.6])
    # the 4 top pixels (4, 3, 2, 1): three on the object
    np.testing.assert_allclose(relevance_rank(maps, mask), [0.75])
    np.testing.assert_allclose(top_k_intersection(maps, mask, k=2), [0.5])
    # the maximum (4 at (0, 0)) is √2 from the object's corner (1, 1)
    assert pointing_game(maps, mask, tolerance=1.0)[0] == 0.0
    assert pointing_game(maps, mask, tolerance=1.5)[0] == 1.0


@core
def test_boxes_channels_and_resizing():
    box = np.array([[8, 8, 20, 16]])
    mask = object_masks(box, 1, (32, 32))
    assert mask.sum() == 96 and mask[0, 8, 8] and not mask[0, 16, 20]
    maps = np.zeros((1, 3, 32, 32))
    maps[0, :, 10, 12] = [1.0, 2.0, -0.5]  # channels summed: 2.5 on the object
    assert relevance_mass(maps, box, size=(32, 32))[0] == 1.0
    small = np.zeros((1, 8, 8))
    small[0, 3, 3] = 1.0  # upsampled x4: the object (8..20 × 8..16) holds it
    assert pointing_game(small, mask, tolerance=0)[0] == 1.0


@core
def test_refusals():
    maps = np.ones((1, 4, 4))
    with pytest.raises(InputError, match="empty"):
        relevance_mass(maps, np.zeros((1, 4, 4)))
    with pytest.raises(OptionError, match="k=17"):
        top_k_intersection(maps, np.ones((1, 4, 4)), k=17)
    with pytest.raises(InputError, match="does not fit 1 map"):
        relevance_mass(maps, np.ones((2, 4, 4)))


@core
def test_sparseness_and_complexity_by_hand():
    n = 16
    uniform = np.ones((1, 4, 4))
    one = np.zeros((1, 4, 4))
    one[0, 2, 1] = -3.0
    np.testing.assert_allclose(sparseness(uniform), [0.0], atol=1e-12)
    np.testing.assert_allclose(sparseness(one), [(n - 1) / n])
    np.testing.assert_allclose(complexity(uniform), [np.log(n)])
    np.testing.assert_allclose(complexity(one), [0.0])
    values = np.array([[[1.0, 2.0], [-3.0, 4.0]]])
    # sorted |a| = 1, 2, 3, 4: Σ (2i − 5)·a_i / (4·10) = (−3 − 2 + 3 + 12) / 40
    np.testing.assert_allclose(sparseness(values), [0.25])
    p = np.array([1, 2, 3, 4]) / 10
    np.testing.assert_allclose(complexity(values), [-(p * np.log(p)).sum()])
    np.testing.assert_allclose(sparseness(np.zeros((1, 2, 2))), [0.0])


def test_explanations_and_framework_tensors(fw):
    """The metrics take an Explanation or a framework tensor as they take numpy maps."""
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(1).standard_normal((2, 1, 12, 12)))
    exp = xplain.explain(model, x, method="saliency", target=[0, 1])
    mask = _square(n=2, size=12, box=(2, 2, 8, 8))
    maps = exp.numpy()
    for metric in (relevance_mass, relevance_rank, pointing_game, sparseness):
        args = (mask,) if metric is not sparseness else ()
        want = metric(maps, *args)
        np.testing.assert_array_equal(metric(exp, *args), want)
        np.testing.assert_array_equal(metric(exp.attributions, *args), want)


def test_average_drop_and_increase_in_confidence(fw):
    """Y and O by the framework's own forward on ``x`` and on ``x`` times the min-max scaled
    map (numpy); an all-ones map leaves the input as it is: no drop, no increase."""
    from xplain.metrics import confidence_change

    model = fw.model("small_cnn")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 1, 12, 12)).astype(np.float32)
    maps = rng.random((3, 6, 6)) * 3 - 1  # resized bilinearly to 12x12, then scaled to [0, 1]
    got = confidence_change(model, fw.tensor(x), maps, target=[0, 1, 2])
    import cv2
    up = np.stack([cv2.resize(m.astype(np.float32), (12, 12), interpolation=cv2.INTER_LINEAR) for m in maps])
    low, high = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    unit = (up - low) / (high - low)

    def probs(batch):
        logits = fw.numpy(model(fw.tensor(batch))).astype(np.float64)
        p = np.exp(logits - logits.max(1, keepdims=True))
        return (p / p.sum(1, keepdims=True))[np.arange(3), [0, 1, 2]]
    y, o = probs(x), probs(x * unit[:, None])
    # the same float32 forwards, batched differently: 1e-5
    np.testing.assert_allclose(got.original, y, rtol=1e-5)
    np.testing.assert_allclose(got.masked, o, rtol=1e-5)
    np.testing.assert_allclose(got.average_drop, 100 * (np.maximum(y - o, 0) / y).mean(), rtol=1e-4)
    assert got.increase_in_confidence == pytest.approx(100 * (o > y).mean())
    same = confidence_change(model, fw.tensor(x), np.ones((3, 12, 12)), target=[0, 1, 2])
    np.testing.assert_allclose(same.masked, same.original, rtol=1e-6)
    assert same.average_drop < 1e-4  # (O = Y up to rounding: the increase is a coin flip on ulps)
