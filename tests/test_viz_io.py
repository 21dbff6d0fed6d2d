"""xplain.viz and xplain.io: numbers of heat maps, colour maps, overlays, transforms (numpy only)."""
import cv2
import numpy as np
import pytest

import xplain
from xplain import io, viz

pytestmark = pytest.mark.core


def test_heatmap_signs_clipping_and_channel_sum():
    a = np.zeros((1, 3, 10, 10), np.float32)
    a[0, 0] = np.arange(100).reshape(10, 10) - 50.0        # -50 .. 49
    a[0, 1] = 1.0                                          # channels are summed first
    pos = viz.heatmap(a, sign="positive", clip_percentile=0.0)
    s = a.sum(1)[0]
    np.testing.assert_allclose(pos[0], np.maximum(s, 0) / s.max(), rtol=1e-6)
    neg = viz.heatmap(a, sign="negative", clip_percentile=0.0)
    np.testing.assert_allclose(neg[0], np.maximum(-s, 0) / 49.0, rtol=1e-6)
    both = viz.heatmap(a[0], sign="all", clip_percentile=0.0, batched=False)  # (C, H, W) -> (H, W)
    assert both.shape == (10, 10) and both.min() == pytest.approx(-49 / 50) and both.max() == 1.0
    # 1 % clipping: the top percentile of positive values saturates at 1
    clipped = viz.heatmap(a, sign="positive", clip_percentile=10.0)
    vals = s[s > 0]
    scale = np.percentile(vals, 90)
    np.testing.assert_allclose(clipped[0], np.clip(np.maximum(s, 0) / scale, 0, 1), rtol=1e-6)
    assert (clipped[0] == 1.0).sum() == (s >= scale).sum()
    assert viz.heatmap(np.zeros((2, 5, 5)), batched=True).max() == 0.0   # zeros stay zeros, no NaN
    with pytest.raises(xplain.OptionError, match="sign"):
        viz.heatmap(a, sign="pos")


@pytest.mark.parametrize("n", [1, 3, 4, 5])
def test_heatmap_never_guesses_the_layout_of_a_3d_array(n):
    cams = np.random.default_rng(n).random((n, 8, 8))      # n CAM maps, or one n-channel image?
    with pytest.raises(xplain.InputError, match=r"batched=True.*batched=False"):
        viz.heatmap(cams)
    np.testing.assert_allclose(viz.heatmap(cams, batched=True, clip_percentile=0.0),
                               cams / cams.max(axis=(1, 2), keepdims=True), rtol=1e-6)
    one = viz.heatmap(cams, batched=False, clip_percentile=0.0)
    np.testing.assert_allclose(one, cams.sum(0) / cams.sum(0).max(), rtol=1e-6)
    assert viz.heatmap(cams[None]).shape == (1, 8, 8)       # 4-D is always (N, C, H, W)
    with pytest.raises(xplain.InputError, match="batch"):
        viz.heatmap(cams[None], batched=False)
    with pytest.raises(xplain.InputError, match="one"):
        viz.heatmap(cams[0], batched=True)                  # 2-D is one (H, W) map
    with pytest.raises(xplain.InputError, match="not an image"):
        viz.heatmap(np.zeros(5))


class FakeExplanation:
    """What viz reads of an :class:`xplain.Explanation` (duck-typed; no framework needed)."""

    def __init__(self, a, method="gradcam"):
        self.attributions, self.method, self.targets = a, method, np.zeros(len(a), np.int64)

    def numpy(self):
        return self.attributions


def test_heatmap_of_an_explanation_knows_its_layout():
    cams = np.random.default_rng(0).random((3, 8, 8))
    np.testing.assert_allclose(viz.heatmap(FakeExplanation(cams), clip_percentile=0.0),
                               viz.heatmap(cams, batched=True, clip_percentile=0.0))
    rgb = np.random.default_rng(1).random((3, 3, 8, 8))
    assert viz.heatmap(FakeExplanation(rgb, "lrp")).shape == (3, 8, 8)
    with pytest.raises(xplain.OptionError, match="batch"):
        viz.heatmap(FakeExplanation(cams), batched=False)
    with pytest.raises(xplain.InputError, match="reshape"):
        viz.heatmap(FakeExplanation(np.zeros((3, 784)), "saliency"))


def test_to_uint8_overlay_and_figure_refuse_ambiguous_layouts():
    rng = np.random.default_rng(0)
    chw = rng.random((3, 5, 7))
    np.testing.assert_array_equal(viz.to_uint8(chw), viz.to_uint8(chw.transpose(1, 2, 0)))
    assert viz.to_uint8(np.zeros((5, 7))).shape == (5, 7, 3)       # grey
    square = rng.random((3, 5, 3))                                 # (C, H, W) or (H, W, C)?
    with pytest.raises(xplain.InputError, match="channels_first=True"):
        viz.to_uint8(square)
    np.testing.assert_array_equal(viz.to_uint8(square, channels_first=True),
                                  viz.to_uint8(square.transpose(1, 2, 0), channels_first=False))
    assert viz.to_uint8(square, channels_first=False).shape == (3, 5, 3)
    with pytest.raises(xplain.InputError, match="1, 3|grey"):
        viz.to_uint8(rng.random((5, 7, 4)), channels_first=False)
    with pytest.raises(xplain.InputError, match="one image"):
        viz.to_uint8(np.zeros(64))                                 # a row of a map, not an image
    with pytest.raises(xplain.InputError, match="one image"):
        viz.to_uint8(np.zeros((2, 3, 8, 8)))
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(xplain.InputError, match=r"maps?\[i\]|one 2-D map"):
        viz.overlay(img, rng.random((3, 8, 8)))                    # three CAM maps, not a colour
    with pytest.raises(xplain.InputError, match="Panel 'row'"):
        viz.figure([viz.Panel(np.zeros(8), "row")])                # a row of a map
    with pytest.raises(xplain.InputError, match=r"maps\[i\]"):
        viz.figure([viz.Panel(rng.random((3, 8, 8)), "cams")])     # three maps, or an image?
    assert viz.figure([viz.Panel(np.zeros((3, 9, 1)), "grey")], cell=32).shape == (22 + 32 + 4, 40, 3)
    # to_image knows its input is (C, H, W): no ambiguity even for a 3-pixel-high image
    x = rng.random((3, 3, 6)).astype(np.float32)
    np.testing.assert_array_equal(viz.to_image(x), viz.to_uint8(x, channels_first=True))


def test_colorize_maps_and_overlay_formula():
    m = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    g = viz.colorize(m, "gray_r")
    assert g[0, 0].tolist() == [255, 255, 255] and g[-1, -1].tolist() == [0, 0, 0]  # white->black
    jet = viz.colorize(m, "jet")
    ref = cv2.cvtColor(cv2.applyColorMap(np.round(m * 255).astype(np.uint8), cv2.COLORMAP_JET),
                       cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(jet, ref)
    assert jet[-1, -1, 0] > jet[-1, -1, 2]            # high values red (RGB order), not blue
    bwr = viz.colorize(np.array([[-1.0, 0.0, 1.0]]), "bwr")
    np.testing.assert_allclose(bwr[0], [[0, 0, 255], [255, 255, 255], [255, 0, 0]], atol=2)
    img = np.full((16, 16, 3), 100, np.uint8)
    out = viz.overlay(img, jet, alpha=0.3, beta=0.5)
    np.testing.assert_array_equal(out, np.clip(np.round(0.3 * jet + 0.5 * 100.0), 0, 255).astype(np.uint8))
    small = viz.overlay(img, m[:8, :8])                 # 2-D map: coloured and resized
    assert small.shape == (16, 16, 3)


def test_to_image_inverts_normalize_and_save_roundtrip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    x = io.normalize(rgb)
    assert x.shape == (3, 20, 24) and x.dtype == np.float32
    back = viz.to_image(x[None], io.IMAGENET_MEAN, io.IMAGENET_STD)
    assert np.abs(back.astype(int) - rgb).max() <= 1
    np.testing.assert_array_equal(viz.to_image(x, io.IMAGENET_MEAN, io.IMAGENET_STD, bgr=True),
                                  back[..., ::-1])
    path = viz.save(tmp_path / "sub" / "a.png", rgb)
    np.testing.assert_array_equal(io.load_image(path), rgb)          # RGB in, RGB out
    bgr_on_disk = cv2.imread(str(path))
    np.testing.assert_array_equal(bgr_on_disk, rgb[..., ::-1])       # files are in OpenCV order
    with pytest.raises(xplain.InputError, match="cannot read"):
        io.load_image(tmp_path / "missing.png")


def test_figure_layout_and_colorbar():
    maps = [np.random.default_rng(i).random((8, 8)) for i in range(10)]
    fig = viz.figure([viz.Panel(m, f"{i}", cmap="hot", colorbar=True) for i, m in enumerate(maps)],
                     cols=5, cell=64)
    tile_h, tile_w = 22 + 64 + 4, 64 + 62 + 8  # 62 px: the colour bar and its labels
    assert fig.shape == (2 * tile_h, 5 * tile_w, 3)
    # the colour bar of the first panel: top row is the map's max colour, bottom the min
    bar = fig[22:22 + 64, 64 + 8 + 3]
    ramp = viz.colorize(np.linspace(1.0, 0.0, 64, dtype=np.float32)[:, None], "hot")[:, 0]
    np.testing.assert_array_equal(bar[1:-1], ramp[1:-1])     # inside the black frame
    one = viz.grid([np.zeros((4, 4, 3), np.uint8)] * 2, cols=2, titles=["a", "b"], cell=32)
    assert one.shape[1] == 2 * (32 + 8)


def test_preprocess_resize_crop_and_random_resized_crop():
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    x = io.preprocess(img)
    assert x.shape == (3, 224, 224)
    r = io.resize_shorter(img, 256)
    assert r.shape[:2] == (256, 341)
    c = io.center_crop(r, 224)
    np.testing.assert_array_equal(c, r[16:240, 58:282])
    np.testing.assert_allclose(x, io.normalize(c), rtol=1e-6)
    a = io.random_resized_crop(np.random.default_rng(3), img, 64)
    b = io.random_resized_crop(np.random.default_rng(3), img, 64)
    assert a.shape == (64, 64, 3)
    np.testing.assert_array_equal(a, b)                    # seeded
    batch = np.stack([io.normalize(io.random_resized_crop(np.random.default_rng(s), img, 32))
                      for s in range(4)])
    assert batch.shape == (4, 3, 32, 32)


def test_strip_prefix():
    sd = {"module.features.0.weight": 1, "module.classifier.weight": 2, "other": 3}
    assert io.strip_prefix(sd) == {"features.0.weight": 1, "classifier.weight": 2, "other": 3}
    assert io.strip_prefix(io.add_prefix({"a": 1})) == {"a": 1}
