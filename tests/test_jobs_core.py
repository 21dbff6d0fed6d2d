"""The framework-free parts of folder jobs: finding and reading images, pre-processing presets,
target and label parsing, ``--set`` values, the streamed npz and the results table."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from xplain import io as xio
from xplain.cli import parse_setting
from xplain.errors import InputError, OptionError, TargetError
from xplain.jobs.folder import image_keys
from xplain.jobs.labels import class_names, imagenet_classes
from xplain.jobs.outputs import AttributionArchive, ResultsTable, color_range
from xplain.jobs.targets import parse_target

pytestmark = pytest.mark.core


def test_images_of_every_layout_become_rgb8(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(xio.load_image(tmp_path / "rgb.png"), rgb)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    np.testing.assert_array_equal(xio.load_image(tmp_path / "gray.png"), np.stack([gray] * 3, axis=2))
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_array_equal(xio.load_image(tmp_path / "rgba.png"), rgba[..., :3])
    deep = np.array([[[0, 257, 65535], [128, 32896, 65279]]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep[..., ::-1])
    # v / 257 maps 0..65535 onto 0..255 exactly at the multiples of 257
    np.testing.assert_array_equal(xio.load_image(tmp_path / "deep.png"),
                                  np.array([[[0, 1, 255], [0, 128, 254]]], dtype=np.uint8))
    with pytest.raises(InputError, match="channels"):
        xio.to_rgb8(np.zeros((2, 2, 2), np.uint8))


def test_find_images_walks_folders_and_globs_once_each(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/2.png", "a/10.jpg", "a/deep/x.PNG", "a/notes.txt", "b.bmp"):
        (tmp_path / name).write_bytes(b"")
    found = xio.find_images([tmp_path / "a", str(tmp_path / "*.bmp"), tmp_path / "a" / "2.png"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a/10.jpg", "a/2.png", "a/deep/x.PNG", "b.bmp"]
    with pytest.raises(InputError, match="not a file, a folder or a glob"):
        xio.find_images(tmp_path / "nothing")
    with pytest.raises(InputError, match="holds no images"):
        xio.find_images(str(tmp_path / "*.gif"))


def test_preprocessing_presets():
    img = np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    p = xio.preprocessing("imagenet")
    assert (p.resize, p.crop, p.mean) == (256, 224, xio.IMAGENET_MEAN)
    np.testing.assert_array_equal(p(img), xio.preprocess(img))  # the library's own transform
    assert xio.preprocessing("imagenet:112").resize == 128
    none = xio.preprocessing("none")(img)
    assert none.shape == (3, 300, 400)
    np.testing.assert_allclose(none, img.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    assert xio.preprocessing("64")(img).shape == (3, 64, 64)
    with pytest.raises(InputError, match="imagenet, imagenet:SIZE, none"):
        xio.preprocessing("huge")


def test_targets_from_text():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert parse_target("top1", None).choose(probs) == [[1], [0]]
    assert parse_target("topk:2", None).choose(probs) == [[1, 2], [0, 2]]
    assert parse_target("2", None).choose(probs) == [[2], [2]]
    names = ["cat", "Tabby cat", "dog"]
    assert parse_target("tabby cat", names).index == 1  # case-insensitive
    with pytest.raises(TargetError, match="did you mean 'cat', 'Tabby cat'"):
        parse_target("ca", names)
    with pytest.raises(TargetError, match="out of range"):
        parse_target("5", None).choose(probs)
    with pytest.raises(TargetError, match="only 3 classes"):
        parse_target("topk:4", None).choose(probs)
    with pytest.raises(TargetError, match="--labels FILE"):
        parse_target("dog", None)


def test_labels(tmp_path):
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[281] == "tabby"
    assert class_names(None, 1000, zoo=True)[207] == "golden retriever"
    assert class_names(None, 1000, zoo=False) is None
    (tmp_path / "l.txt").write_text("a\nb\nc\n")
    assert class_names(tmp_path / "l.txt", 3, zoo=False) == ["a", "b", "c"]
    (tmp_path / "l.json").write_text('{"classes": ["x", "y"]}')
    assert class_names(str(tmp_path / "l.json"), 2, zoo=False) == ["x", "y"]
    with pytest.raises(InputError, match="name 3 classes but the model outputs 4"):
        class_names(tmp_path / "l.txt", 4, zoo=False)


def test_set_values_are_literals_or_text():
    assert parse_setting("steps=32") == ("steps", 32)
    assert parse_setting("low=-2.12") == ("low", -2.12)
    assert parse_setting("sliding_window_shapes=3,16,16") == ("sliding_window_shapes", (3, 16, 16))
    assert parse_setting("composite=epsilon_gamma_box") == ("composite", "epsilon_gamma_box")
    assert parse_setting("baselines=None") == ("baselines", None)
    for bad in ("composite", "=3", "two words=1"):
        with pytest.raises(OptionError, match="NAME=VALUE"):
            parse_setting(bad)


def test_archive_and_table_append_and_resume(tmp_path):
    arc = AttributionArchive(tmp_path / "a.npz")
    a, b = np.arange(6.0).reshape(2, 3), np.ones((1, 2), np.float32)
    arc.add([("x/1:3", a)])
    arc.add([("y:0", b)])
    with np.load(tmp_path / "a.npz") as f:
        np.testing.assert_array_equal(f["x/1:3"], a)
        np.testing.assert_array_equal(f["y:0"], b)
    assert arc.keys() == {"x/1:3", "y:0"}
    t = ResultsTable(tmp_path / "r.csv")
    (tmp_path / "f1.png").write_bytes(b"")
    t.add([{"image": "one", "target": 3, "probability": 0.25, "figure": "f1.png"},
           {"image": "two", "target": 1, "probability": 0.5, "figure": "f2.png"}])
    again = ResultsTable(tmp_path / "r.csv")
    assert [r["image"] for r in again.rows] == ["one", "two"] and again.rows[0]["probability"] == "0.25"
    assert again.images() == {"one"}  # two's figure is missing: not done
    again.keep({"one"})
    assert [r["image"] for r in ResultsTable(tmp_path / "r.csv").rows] == ["one"]


def test_color_range_in_the_maps_units():
    m = np.zeros((40, 50))
    m[0, 0], m[0, 1] = 1000.0, -3.0  # one outlier pixel in 2,000: above the 99.5th percentile
    m[1:, :] = np.linspace(-2.0, 2.0, 39 * 50).reshape(39, 50)
    lo, hi = color_range(m, signed=True)
    assert lo == -hi and 1.9 < hi < 3.0  # the outlier saturates instead of setting the scale
    lo, hi = color_range(np.abs(m), signed=False)
    assert lo == 0.0 and hi < 1000.0


def test_image_keys_are_unique_and_short(tmp_path):
    files = [tmp_path / n for n in ("a/x.png", "a/x.jpg", "a/y.png", "b/y.png")]
    keys = image_keys(files)
    # relative to the common folder; the suffix kept only where two files differ in it alone
    assert [keys[f] for f in files] == ["a/x.png", "a/x.jpg", "a/y", "b/y"]
