"""Draw ``docs/notebook.png``: what a notebook shows for an ``Explanation`` — the HTML its
``_repr_html_`` returns (one-line summary, then input | heat map with colour bar | evidence per
sample), under the code cell that made it, screenshotted in headless Chromium.

    python docs/notebook_view.py            # needs chromium on PATH
"""
from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


CODE = """import numpy as np, xplain
from xplain import demo
images, _ = demo.draw_shapes(np.random.default_rng(3), 3)   # three drawn shapes, 64 x 64
model = demo.build_model()                                  # the bundled shapes CNN
x = demo.to_tensor(demo.to_input(images), demo.default_framework())
exp = xplain.explain(model, x, method="lrp", composite="epsilon_plus_flat")
exp"""


def main() -> None:
    cell: dict = {}
    exec(CODE, cell)  # the cell as shown; its last line is what the notebook displays
    exp = cell["exp"]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><style>"
            "body{font-family:sans-serif;margin:16px;background:#fff}"
            ".in{background:#f5f5f5;border:1px solid #ddd;padding:8px;font:13px monospace;"
            "white-space:pre}.p{color:#307fc1;font:13px monospace}.out{padding:8px 0}"
            "</style></head><body>"
            f"<div class='p'>In [1]:</div><div class='in'>{html.escape(CODE)}</div>"
            f"<div class='p'>Out[1]:</div><div class='out'>{exp._repr_html_()}</div></body></html>")
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        sys.exit("no Chromium on PATH (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "cell.html"
        src.write_text(page, encoding="utf-8")
        shot = Path(__file__).resolve().parent / "notebook.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=960,1000", f"--screenshot={shot}", src.as_uri()],
                       check=True, capture_output=True, timeout=180, env={**os.environ, "HOME": tmp})
    print(f"wrote {shot}")


if __name__ == "__main__":
    main()
