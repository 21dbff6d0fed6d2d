"""The folder job's ``index.html`` opened in a real headless browser (Chromium), offline, and
screenshotted: every figure the report links is drawn on the page (found in the screenshot by
template matching), with nothing fetched from a network. Runs in tox env ``report``, which
installs Debian's chromium package (``XPLAIN_BROWSER=1``)."""
from __future__ import annotations

import os
import shutil
import subprocess

import cv2
import numpy as np
import pytest

import xplain
from xplain.modelkit import kit

pytestmark = pytest.mark.browser


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("no Chromium on PATH: tox env 'report' installs Debian's chromium package "
                "(apt-get install chromium)")


def test_report_draws_every_figure_offline(fw, tmp_path):
    from xplain.demo import draw_shape

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(3):  # shapes, not noise: a scaled copy of a smooth picture matches closely
        cv2.imwrite(str(tmp_path / "imgs" / f"p{i}.png"), cv2.GaussianBlur(draw_shape(rng, i, 80), (5, 5), 0))
    model = kit(fw.name).build_zoo("resnet18")
    rows = xplain.explain_folder(model, tmp_path / "imgs", method="gradcam", options={"layer": "layer4"},
                                 out=tmp_path / "out", preprocess="64", progress=False)
    shot = tmp_path / "shot.png"
    env = {**os.environ, "HOME": str(tmp_path)}  # Chromium writes its profile under HOME
    subprocess.run([browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,1400", f"--screenshot={shot}",
                    (tmp_path / "out" / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=180, env=env)
    page = cv2.imread(str(shot))
    assert page is not None and page.shape[:2] == (1400, 1400)
    for row in rows:
        fig = cv2.imread(str(tmp_path / "out" / row["figure"]))
        # each card draws its figure 340 px wide (the card's content width); found again at a
        # normalised correlation near 1 (the browser's scaling filter differs from OpenCV's)
        w = 340
        small = cv2.resize(fig, (w, round(fig.shape[0] * w / fig.shape[1])), interpolation=cv2.INTER_AREA)
        score = cv2.matchTemplate(page, small, cv2.TM_CCOEFF_NORMED).max()
        assert score > 0.98, (row["figure"], score)  # measured 0.999
