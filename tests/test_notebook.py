"""The notebook path, executed for real with nbclient in an IPython kernel on the backend under
test: an Explanation displays as a one-line summary and an inline figure (the same figure
``exp.figure()`` draws), not as tensors."""
from __future__ import annotations

import base64
import os

import cv2
import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")  # tox installs nbclient, nbformat and ipykernel
nbclient = pytest.importorskip("nbclient")


def test_explanation_renders_itself_in_a_notebook(fw, tmp_path):
    cells = [
        "import numpy as np, xplain\n"
        "from xplain.modelkit import kit\n"
        f"k = kit({fw.name!r})\n"
        "model = k.build_zoo('resnet18')\n"
        "x = k.to_tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype('float32'), model)\n"
        "exp = xplain.explain(model, x, method='gradcam', layer='layer4')",
        "exp",
        "np.save('figure.npy', exp.figure())",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    shown = nb.cells[1].outputs[0]
    assert shown["output_type"] == "execute_result"
    text = shown["data"]["text/plain"]
    assert text.startswith("Explanation(method='gradcam'") and "\n" not in text
    page = shown["data"]["text/html"]
    png = base64.b64decode(page.split("base64,")[1].split("'")[0])
    drawn = cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(drawn, np.load(tmp_path / "figure.npy"))
