"""``xplain demo`` works for every registered method (plugins included), for batches whose size
equals an image's channel count (3) and for 4: files, picture sizes, heat-map ranges and the
predicted classes, on the backend under test."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

import xplain
from xplain import cli, demo
from xplain.errors import LayerError

METHODS = xplain.methods()  # collected at import: built-ins and installed plugin packs
# the demo's own options, made smaller still, so that the whole file runs in well under a minute
TINY = {"rise": {"masks": 40, "cells": 4}, "prototype": {"steps": 4},
        "integrated_gradients": {"steps": 4}, "gradient_shap": {"samples": 2},
        "smoothgrad": {"samples": 2}, "smoothgrad_sq": {"samples": 2}, "vargrad": {"samples": 2},
        "occlusion": {"sliding_window_shapes": (3, 32, 32), "strides": (3, 16, 16)}}
# figure geometry (xplain.viz): title strip 22 px + cell + 4 below; a map panel's colour bar
# adds 46 px; every tile gets 8 px of margin. One file per image (3 panels of cell 192) and one
# with all images (cell 160, a 26 px title on top).
ROW_SHAPE = (26 + 22 + 192 + 4, 3 * (192 + 62 + 8), 3)  # title; 62 px: the colour bar and labels


def all_shape(n: int) -> tuple[int, int, int]:
    return 26 + n * (22 + 160 + 4), 3 * (160 + 62 + 8), 3


def reference_logits(fw, n: int) -> np.ndarray:
    """The demo's images (seed 0, labels 0..n-1 mod 4) through a freshly built demo model."""
    images, _ = demo.draw_shapes(np.random.default_rng(0), n, labels=np.arange(n) % 4)
    model = demo.build_model(fw.name)
    with fw.B.no_grad():
        return fw.numpy(fw.B.forward(model, fw.tensor(demo.to_input(images))))


@pytest.mark.parametrize("method", METHODS)
def test_demo_runs_every_method(fw, tmp_path, method):
    if method not in xplain.methods(demo.build_model(fw.name)):  # attention rollout: a CNN demo
        with pytest.raises(LayerError, match="has none"):
            demo.run_demo(framework=fw.name, method=method, out=tmp_path, n=3, echo=lambda *_: None,
                          eval_images=8)
        return
    for n in (3, 4):  # 3: as many images as an RGB image has channels, the case that was misread
        r = demo.run_demo(framework=fw.name, method=method, out=tmp_path / str(n), n=n,
                          echo=lambda *_: None, options=TINY.get(method), eval_images=8)
        assert r["method"] == method and len(r["files"]) == n + 1
        for f in r["files"]:
            png = cv2.imread(f)
            assert png is not None, f
            assert png.shape == (all_shape(n) if f.endswith("demo_all.png") else ROW_SHAPE), f
        assert sorted(Path(f).name for f in r["files"]) == sorted(
            ["demo_all.png"] + [f"demo_{i}_{demo.classes()[i % 4]}.png" for i in range(n)])
        maps = r["maps"]
        assert maps.shape == (n, demo.SIZE, demo.SIZE) and maps.dtype == np.float32
        lo = -1.0 if r["sign"] == "all" else 0.0
        assert np.isfinite(maps).all() and maps.min() >= lo and maps.max() <= 1.0
        assert np.isclose(np.abs(maps).max(axis=(1, 2)), 1.0).sum() >= n - 1  # scaled per image
        # one map per image, not one image's channels: the maps differ between images
        assert any(not np.allclose(maps[0], maps[i]) for i in range(1, n))
        if r["attributions"].ndim == 3:  # CAM and RISE maps (N, H, W)
            assert r["attributions"].shape == (n, demo.SIZE, demo.SIZE)
            assert all(not np.allclose(maps[i], maps[j]) for i in range(n) for j in range(i))
        else:
            assert r["attributions"].shape == (n, 3, demo.SIZE, demo.SIZE)
        ref = reference_logits(fw, n)
        np.testing.assert_allclose(r["logits"], ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(r["predictions"], ref.argmax(1))


def test_cli_demo_with_a_cam_method_on_three_images(fw, tmp_path, capsys):
    out = tmp_path / "cli"
    assert cli.main(["demo", "--framework", fw.name, "--method", "gradcam", "--out", str(out),
                     "--images", "3"]) == 0
    text = capsys.readouterr().out
    assert "method: gradcam" in text and "wrote 4 PNG files" in text
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 4
    page = (out / "index.html").read_text(encoding="utf-8")  # the report shows each image's figure
    assert all(f"src='demo_{i}_{demo.classes()[i]}.png'" in page for i in range(3))
    assert {cv2.imread(str(p)).shape for p in pngs} == {ROW_SHAPE, all_shape(3)}


def test_demo_refuses_an_unknown_method_with_xplain_error(fw, tmp_path):
    with pytest.raises(xplain.XplainError, match="nope"):
        demo.run_demo(framework=fw.name, method="nope", out=tmp_path, n=1, echo=lambda *_: None,
                      eval_images=1)
