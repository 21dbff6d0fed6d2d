"""An Explanation in a notebook: a one-line repr, an inline figure whose pixels are the inputs
and maps it shows, and files written from it."""
from __future__ import annotations

import base64

import cv2
import numpy as np

import xplain


def test_repr_is_one_line_without_tensors(fw):
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(0).standard_normal((3, 1, 28, 28)))
    exp = xplain.explain(model, x, method="saliency")
    text = repr(exp)
    assert text == (f"Explanation(method='saliency', backend='{fw.name}', attributions=(3, 1, 28, 28) "
                    f"float32, targets={exp.targets.tolist()}, extras={sorted(exp.extras)})")


def test_notebook_figure_shows_the_inputs_and_maps(fw, tmp_path):
    model = fw.model("small_cnn")
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((2, 1, 16, 16)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x_np), method="input_x_gradient")
    fig = exp.figure()
    # row i, first panel: the input scaled by its own range to [0, 255], 16 px → the 160 px
    # cell by nearest neighbour (scale 10); tiles are 160 + 4 + 22 high (cell, margin, title)
    for i in range(2):
        a = x_np[i, 0]
        want = np.round((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)
        want = cv2.resize(np.stack([want] * 3, axis=2), (160, 160), interpolation=cv2.INTER_NEAREST)
        top = i * (22 + 160 + 4) + 22
        np.testing.assert_array_equal(fig[top:top + 160, 4:4 + 160], want)
    page = exp._repr_html_()
    assert "LRP" not in page and repr(exp).replace("'", "&#x27;") in page
    png = base64.b64decode(page.split("base64,")[1].split("'")[0])
    shown = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(shown, cv2.COLOR_BGR2RGB), fig)
    path = exp.save(tmp_path / "exp.png")
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), fig)


def test_lrp_view_reports_the_balance_and_non_images_do_not_break_it(fw):
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(2).standard_normal((2, 1, 28, 28)))
    exp = xplain.explain(model, x, method="lrp", composite="epsilon")
    page = exp._repr_html_()
    assert f"largest error {float(np.max(exp.conservation.error)):.2g}" in page
    mlp = fw.model("mlp")
    flat = xplain.explain(mlp, fw.tensor(np.random.default_rng(3).standard_normal((2, 784))),
                          method="saliency")
    page = flat._repr_html_()
    assert "no figure" in page and "not images" in page
