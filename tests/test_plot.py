"""``viz.plot`` / ``plot_grid`` (matplotlib): Captum's vocabulary, values drawn as computed,
the colour bar in the attribution's units."""
from __future__ import annotations

import numpy as np
import pytest

from xplain import viz
from xplain.errors import InputError, OptionError
from xplain.plotting import cumulative_threshold, signed_map

pytestmark = pytest.mark.core
matplotlib = pytest.importorskip("matplotlib")  # an extra; tox installs it in every env


def test_cumulative_threshold_by_hand():
    v = np.array([1.0, 2.0, 3.0, 4.0])  # cumulative 1, 3, 6, 10
    assert cumulative_threshold(v, 100.0) == 4.0
    assert cumulative_threshold(v, 60.0) == 3.0  # 6 ≥ 0.6 · 10 first at the third value
    assert cumulative_threshold(v, 25.0) == 2.0
    assert cumulative_threshold(np.zeros(3), 98.0) == 0.0


def test_signs_select_and_sum_channels():
    a = np.stack([np.array([[1.0, -2.0], [0.5, 0.0]])] * 3)  # (C, H, W), channels summed
    np.testing.assert_array_equal(signed_map(a, "all"), [[3.0, -6.0], [1.5, 0.0]])
    np.testing.assert_array_equal(signed_map(a, "positive"), [[3.0, 0.0], [1.5, 0.0]])
    np.testing.assert_array_equal(signed_map(a, "negative"), [[0.0, 6.0], [0.0, 0.0]])
    np.testing.assert_array_equal(signed_map(a.transpose(1, 2, 0), "absolute_value"),
                                  [[3.0, 6.0], [1.5, 0.0]])


def test_heat_map_draws_the_values_with_a_bar_in_their_units():
    rng = np.random.default_rng(0)
    attr = rng.standard_normal((3, 8, 8))
    fig = viz.plot(attr, method="heat_map", sign="all", outlier_perc=2.0)
    ax, bar = fig.axes
    im = ax.get_images()[0]
    m = attr.sum(0)
    np.testing.assert_array_equal(im.get_array(), m)
    top = cumulative_threshold(np.abs(m), 98.0)
    assert im.get_clim() == (-top, top)  # white at zero, saturating past the threshold
    assert bar.get_ylim() == pytest.approx((-top, top))  # the bar reads attribution values


def test_image_methods():
    rng = np.random.default_rng(1)
    pic = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    attr = rng.standard_normal((6, 5))
    top = cumulative_threshold(np.abs(attr), 98.0)
    weight = np.clip(np.abs(attr) / top, 0.0, 1.0)
    masked = viz.plot(attr, pic, method="masked_image").axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(masked, pic / 255.0 * weight[..., None])
    alpha = viz.plot(attr, pic, method="alpha_scaling").axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(alpha[..., 3], weight)
    blended = viz.plot(attr, pic, method="blended_heat_map", sign="positive").axes[0].get_images()
    np.testing.assert_allclose(blended[0].get_array(), pic.mean(axis=2) / 255.0)
    np.testing.assert_array_equal(blended[1].get_array(), np.maximum(attr, 0.0))
    with pytest.raises(InputError, match="pass image="):
        viz.plot(attr, method="blended_heat_map")
    with pytest.raises(OptionError, match="sign='both'"):
        viz.plot(attr, pic, sign="both")
    with pytest.raises(InputError, match="the image is"):
        viz.plot(attr, pic[:4], method="masked_image")


def test_grid_of_methods_by_images():
    rng = np.random.default_rng(2)
    pics = [rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for _ in range(3)]
    rows = {"saliency": [rng.random((4, 4)) for _ in range(3)],
            "lrp": [rng.standard_normal((3, 4, 4)) for _ in range(3)]}
    fig = viz.plot_grid(rows, pics, colorbar=False, column_titles=["a", "b", "c"])
    assert len(fig.axes) == 9  # inputs + two method rows
    np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(), pics[0] / 255.0)
    assert fig.axes[0].get_title() == "a" and fig.axes[3].get_ylabel() == "saliency"
    with pytest.raises(InputError, match="one attribution per image"):
        viz.plot_grid({"a": rows["lrp"], "b": rows["lrp"][:2]})
