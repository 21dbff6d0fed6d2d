"""How an :class:`~xplain.api.Explanation` shows itself: a one-line ``repr`` (never the
tensors), and in notebooks a figure of the batch (``_repr_html_`` / ``_repr_png_``): per sample
the input, the heat map with a colour bar in the attribution's units, and the positive evidence
over the input."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, XplainError

#: samples drawn in a notebook figure (the rest are counted in the caption)
MAX_SHOWN = 8


def summary_line(exp: Any) -> str:
    """``Explanation(method='lrp', backend='torch', attributions=(8, 3, 224, 224) float32,
    targets=[...], extras=[...])``: what a ``repr`` should say."""
    B = exp._backend_obj
    a = exp.attributions
    try:
        shape, dtype = tuple(B.shape(a)), B.dtype_name(a)
    except Exception:  # an attribution object a plugin returned in its own type
        shape, dtype = getattr(a, "shape", "?"), type(a).__name__
    t = exp.targets.tolist()
    targets = t if len(t) <= 8 else t[:8] + ["..."]
    return (f"Explanation(method={exp.method!r}, backend={exp.backend!r}, attributions={shape} "
            f"{dtype}, targets={targets}, extras={sorted(exp.extras)})")


def _picture(x: np.ndarray) -> np.ndarray | None:
    """One model input ``(C, H, W)`` as a picture, scaled to ``[0, 1]`` by its own min and max
    (the normalisation a model was trained with is not known here); ``None`` if not an image."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        return None
    lo, hi = float(x.min()), float(x.max())
    p = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    p = p.transpose(1, 2, 0)
    return np.repeat(p, 3, axis=2) if p.shape[2] == 1 else p


def figure(exp: Any, max_images: int = MAX_SHOWN) -> np.ndarray:
    """The batch as one RGB uint8 picture: a row per sample (at most ``max_images``)."""
    from . import viz
    from .jobs.outputs import SIGNED, attribution_map, map_panels

    attr = exp.numpy()
    inputs = exp.inputs
    xs = exp._backend_obj.to_numpy(inputs) if inputs is not None else None
    panels = []
    n = min(len(attr), max_images)
    signed = exp.method in SIGNED
    for i in range(n):
        try:
            m = attribution_map(attr[i])
        except ValueError:
            raise InputError(f"{exp.method!r} attributions of shape {attr.shape[1:]} per sample are "
                             f"not images; plot exp.numpy() yourself") from None
        pic = _picture(xs[i]) if xs is not None else None
        title = f"#{i} target {int(exp.targets[i])}"
        panels += map_panels(pic, m, signed=signed,
                             titles=(title, exp.method if pic is not None else title, "evidence"))
    cols = 3 if xs is not None and _picture(xs[0]) is not None else 1
    return viz.figure(panels, cols=cols, cell=160)


def png_bytes(exp: Any, max_images: int = MAX_SHOWN) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(figure(exp, max_images), cv2.COLOR_RGB2BGR))
    if not ok:
        raise XplainError("OpenCV could not encode the figure as PNG")
    return buf.tobytes()


def html_view(exp: Any) -> str:
    """A compact summary and the figure, inline (no files, no network)."""
    head = html.escape(summary_line(exp))
    rows = ""
    cons = exp.extras.get("conservation")
    if cons is not None:
        rows = (f"<div>LRP conservation: largest error {float(np.max(cons.error)):.2g} "
                f"(tolerance {cons.tolerance:g})</div>")
    try:
        img = base64.b64encode(png_bytes(exp)).decode("ascii")
        more = len(exp.targets) - MAX_SHOWN
        note = f"<div>{more} more samples not drawn</div>" if more > 0 else ""
        pic = f"<img src='data:image/png;base64,{img}'>{note}"
    except XplainError as e:
        pic = f"<div>(no figure: {html.escape(str(e))})</div>"
    return f"<div><code>{head}</code>{rows}{pic}</div>"


def save(exp: Any, path: str | Path, max_images: int = MAX_SHOWN) -> Path:
    from . import viz

    return viz.save(path, figure(exp, max_images))


def show(exp: Any, max_images: int = MAX_SHOWN) -> None:
    """In a notebook: display inline; elsewhere: a matplotlib window if matplotlib is
    installed; else an error that points to :meth:`save`."""
    try:
        from IPython import get_ipython
        from IPython.display import display

        if get_ipython() is not None:
            display(exp)
            return
    except ImportError:
        pass
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise XplainError("show() needs a notebook or matplotlib (pip install matplotlib); "
                          "or write the figure with exp.save('explanation.png')") from None
    fig, ax = plt.subplots(figsize=(10, 10))
    ax.imshow(figure(exp, max_images))
    ax.axis("off")
    plt.show()
