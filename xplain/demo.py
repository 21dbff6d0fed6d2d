"""The bundled demo: a small CNN trained on synthetic shapes, explained in whichever framework
is installed. ``xplain demo`` runs :func:`run_demo`; no download is ever needed.

The data are drawn with OpenCV from a numpy generator (:func:`draw_shapes`): one filled shape
(circle, square, triangle or cross; random size, position, rotation and colour) on a noisy
background, ``64 × 64`` RGB. The weights (``xplain/data/demo_cnn.npz``, ~60 kB) were trained by
``examples/train_demo_model.py`` and are stored framework-neutrally: torch-style state-dict keys,
``Linear`` weights in ``(out, in)`` layout (transposed when loaded into paddle).
"""
from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import OptionError
from .jobs.outputs import SIGNED as OUTPUT_SIGNED

SIZE = 64
MEAN, STD = 0.5, 0.25  # input normalisation: (pixel / 255 - MEAN) / STD
WEIGHTS = "demo_cnn.npz"
CLASSES_FILE = "demo_cnn.json"


# ---- data ------------------------------------------------------------------------------------
def _poly(center: np.ndarray, radius: float, angle: float, corners: int) -> np.ndarray:
    t = angle + np.arange(corners) * 2 * np.pi / corners
    return (center + radius * np.stack([np.cos(t), np.sin(t)], axis=1)).astype(np.int32)


def draw_shape(rng: np.random.Generator, label: int, size: int = SIZE) -> np.ndarray:
    """One ``(size, size, 3)`` uint8 RGB image of shape class ``label`` (see :func:`classes`)."""
    img = rng.integers(0, 90, (size, size, 3)).astype(np.uint8)  # noisy dark background
    img = cv2.GaussianBlur(img, (3, 3), 0)
    color = tuple(int(c) for c in rng.integers(120, 256, 3))
    r = rng.uniform(0.16, 0.3) * size
    center = rng.uniform(r + 2, size - r - 2, 2)
    angle = rng.uniform(0, 2 * np.pi)
    if label == 0:  # circle
        cv2.circle(img, (int(center[0]), int(center[1])), int(r), color, -1, cv2.LINE_AA)
    elif label == 1:  # square
        cv2.fillPoly(img, [_poly(center, r * 1.1, angle, 4)], color, cv2.LINE_AA)
    elif label == 2:  # triangle
        cv2.fillPoly(img, [_poly(center, r * 1.2, angle, 3)], color, cv2.LINE_AA)
    else:  # cross: two perpendicular bars
        for a in (angle, angle + np.pi / 2):
            d = np.array([np.cos(a), np.sin(a)])
            n = np.array([-d[1], d[0]])
            w = r * 0.28
            pts = np.array([center + r * d + w * n, center + r * d - w * n,
                            center - r * d - w * n, center - r * d + w * n]).astype(np.int32)
            cv2.fillPoly(img, [pts], color, cv2.LINE_AA)
    return img


def draw_shapes(rng: np.random.Generator, n: int, size: int = SIZE,
                labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``(n, size, size, 3)`` uint8 RGB and their ``int64`` labels (uniform over
    the classes unless given)."""
    if labels is None:
        labels = rng.integers(0, len(classes()), n)
    labels = np.asarray(labels, dtype=np.int64)
    return np.stack([draw_shape(rng, int(lab), size) for lab in labels]), labels


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` → normalised float32 ``(N, 3, H, W)``."""
    x = images.astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2))


def to_picture(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_input` for one image ``(3, H, W)`` → uint8 ``(H, W, 3)``."""
    return np.clip(np.round((x.transpose(1, 2, 0) * STD + MEAN) * 255), 0, 255).astype(np.uint8)


# ---- model -----------------------------------------------------------------------------------
def classes() -> list[str]:
    """Class names of the bundled model."""
    path = resources.files("xplain") / "data" / CLASSES_FILE
    return json.loads(path.read_text())["classes"] if path.is_file() else \
        ["circle", "square", "triangle", "cross"]


def load_weights(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The bundled weights (or an ``.npz`` at ``path``), torch-style keys, neutral layout."""
    if path is None:
        path = resources.files("xplain") / "data" / WEIGHTS
    with resources.as_file(path) if not isinstance(path, (str, Path)) else _nullctx(path) as p:
        with np.load(p, allow_pickle=False) as f:  # arrays only: a file is data, never code
            return {k: f[k] for k in f.files}


class _nullctx:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: Any) -> None:
        return None


def default_framework() -> str:
    """``"torch"`` if installed, else ``"paddle"`` (:func:`xplain.modelkit.default_framework`)."""
    from .modelkit import default_framework as first_installed

    return first_installed()


def build_model(framework: str | None = None, weights: dict[str, np.ndarray] | None = None,
                num_classes: int = 4) -> Any:
    """The demo CNN in ``framework`` (``Sequential``: 3 × [conv 3×3, ReLU] with max-pooling,
    global average pooling, linear classifier — so CAM applies to it), in eval mode, loaded with
    ``weights`` (default: the bundled ones; ``{}`` keeps the random initialisation)."""
    from .modelkit import kit

    framework = framework or default_framework()
    if weights is None:
        weights = load_weights()
    return kit(framework).build_demo(num_classes, weights or None)


def to_tensor(x: np.ndarray, framework: str) -> Any:
    """numpy → a CPU tensor of ``framework`` (its :class:`~xplain.modelkit.ModelKit`)."""
    from .modelkit import kit

    return kit(framework).to_tensor(x)


def accuracy(model: Any, framework: str, *, n: int = 200, seed: int = 1234,
             batch: int = 100) -> float:
    """Accuracy on ``n`` freshly generated images (seeded, never seen in training)."""
    from .backends import backend_for

    images, labels = draw_shapes(np.random.default_rng(seed), n)
    x = to_input(images)
    B = backend_for(model)
    correct = 0
    with B.no_grad():
        for s in range(0, n, batch):
            out = B.forward(model, to_tensor(x[s:s + batch], framework))
            correct += int((B.to_numpy(B.argmax(out, axis=1)) == labels[s:s + batch]).sum())
    return correct / n


def pick_method(requested: str | None = None) -> str:
    """The requested method, else the headline one (LRP) if registered, else input×gradient."""
    import xplain

    available = xplain.methods()
    if requested:
        return requested
    for name in ("lrp", "input_x_gradient", "saliency"):
        if name in available:
            return name
    return available[0]


#: Options the demo passes to a method (merged under ``run_demo(options=...)``): small enough
#: that each method runs in a few seconds on a CPU for the demo's 64 × 64 images, large enough
#: that the pictures still mean something. Occlusion has no default window, so it needs one.
DEMO_OPTIONS: dict[str, dict[str, Any]] = {
    "occlusion": {"sliding_window_shapes": (3, 16, 16), "strides": (3, 8, 8), "baselines": 0.0},
    "rise": {"masks": 200, "cells": 6},
    "integrated_gradients": {"steps": 20},
    "gradient_shap": {"samples": 8},
    "smoothgrad": {"samples": 8},
    "smoothgrad_sq": {"samples": 8},
    "vargrad": {"samples": 8},
    "prototype": {"steps": 30, "lr": 0.05},
}
#: Methods with signed attributions, shown with a diverging colour map (evidence for and against).
SIGNED = OUTPUT_SIGNED
#: Methods whose result is a synthesised input rather than an attribution of the given one: the
#: demo shows that input as a picture, and as a heat map what the synthesis changed.
SYNTHESIS = frozenset({"prototype"})


def run_demo(framework: str | None = None, method: str | None = None,
             out: str | Path = "xplain-demo", n: int = 4, seed: int = 0,
             echo: Any = print, *, options: dict[str, Any] | None = None,
             eval_images: int = 200) -> dict[str, Any]:
    """Explain the bundled model on ``n`` fresh images and write PNGs to ``out``.

    Any registered method works (plugins included); ``options`` are passed to it on top of
    :data:`DEMO_OPTIONS`. ``eval_images`` fresh images measure the accuracy.

    Returns a dict with ``framework``, ``method``, ``options``, ``accuracy``, ``predictions``,
    ``labels``, ``probabilities``, ``logits``, ``attributions`` (numpy), ``maps`` (the heat
    maps shown, ``(n, 64, 64)``), ``sign``, ``relevance_sums``, ``files`` (the PNGs) and ``report`` (``index.html``, which shows
    them); prints what it does.
    """
    import xplain
    from . import viz
    from .jobs.outputs import attribution_map
    from .jobs.outputs import figure as job_figure
    from .jobs.report import write_report

    if eval_images < 1 or n < 1:
        raise OptionError(f"n={n} and eval_images={eval_images} must be positive image counts")
    t0 = time.perf_counter()
    framework = framework or default_framework()
    names = classes()
    model = build_model(framework)
    echo(f"xplain {xplain.__version__} demo — framework: {framework}")
    echo(f"model: bundled demo CNN ({sum(v.size for v in load_weights().values()):,} parameters), "
         f"classes: {', '.join(names)}")
    acc = accuracy(model, framework, n=eval_images)
    echo(f"accuracy on {eval_images} freshly generated {SIZE}×{SIZE} images: {acc:.1%}")
    method = pick_method(method)
    opts = {**DEMO_OPTIONS.get(method, {}), **(options or {})}
    rng = np.random.default_rng(seed)
    images, labels = draw_shapes(rng, n, labels=np.arange(n) % len(names))
    x_np = to_input(images)
    x = to_tensor(x_np, framework)
    exp = xplain.explain(model, x, method=method, seed=seed, **opts)
    B = xplain.backend_for(model)
    with B.no_grad():
        logits = B.to_numpy(B.forward(model, x))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    attr = exp.numpy()
    synthesis = method in SYNTHESIS
    sign = "all" if method in SIGNED else "absolute" if synthesis else "positive"
    # the layout comes from the Explanation (CAM maps are (N, H, W), the rest (N, C, H, W)),
    # never from the array's sizes: three CAM maps look like one RGB image
    if synthesis:
        maps = viz.heatmap(attr - x_np, sign=sign, clip_percentile=1.0)
    else:
        maps = viz.heatmap(exp, sign=sign, clip_percentile=1.0)
        evidence = maps if sign == "positive" else viz.heatmap(exp, clip_percentile=1.0)
    cmap = "bwr" if sign == "all" else "jet"
    scale = {"cmap": cmap, "colorbar": True, "vmin": -1.0 if sign == "all" else 0.0, "vmax": 1.0}
    shown = ", opts: " + ", ".join(f"{k}={v}" for k, v in opts.items()) if opts else ""
    echo(f"method: {method} (target: the predicted class{shown}); heat maps: {sign} sign, "
         f"1% clipped")
    out = Path(out)
    files, panels = [], []
    for i in range(n):
        pred = int(exp.targets[i])
        pic = images[i]
        if synthesis:
            row = [viz.Panel(pic, f"true: {names[labels[i]]}"),
                   viz.Panel(to_picture(attr[i]), f"{method}: {names[pred]}"),
                   viz.Panel(maps[i], "change", **scale)]
        else:
            row = [viz.Panel(pic, f"true: {names[labels[i]]}"),
                   viz.Panel(maps[i], f"{method}: {names[pred]}", **scale),
                   viz.Panel(viz.overlay(pic, evidence[i], 0.5, 0.5), f"p={probs[i, pred]:.2f}")]
        if synthesis:
            picture = viz.figure(row, cell=192, title=f"{names[pred]} (p={probs[i, pred]:.3f}) - {method}")
        else:  # the heat map in the attribution's own units, as `xplain explain` draws it
            picture = job_figure(pic, attribution_map(attr[i]), method=method, signed=sign == "all",
                                 title=f"{names[pred]} (p={probs[i, pred]:.3f}) - {method}", cell=192)
        files.append(viz.save(out / f"demo_{i}_{names[labels[i]]}.png", picture))
        panels += row
        echo(f"  image {i}: true {names[labels[i]]:8s} predicted {names[pred]:8s} "
             f"(p={probs[i, pred]:.3f}); sum of attributions {attr[i].sum():+.3f}, "
             f"logit {logits[i, pred]:+.3f}")
    files.append(viz.save(out / "demo_all.png", viz.figure(panels, cols=3, cell=160,
                                                         title=f"xplain demo: {method} ({framework})")))
    cons = exp.extras.get("conservation")
    rows = [{"image": f"shape {i} (true: {names[labels[i]]})", "target": str(int(exp.targets[i])),
             "class_name": names[int(exp.targets[i])],
             "probability": f"{probs[i, int(exp.targets[i])]:.4f}",
             "seconds": f"{(time.perf_counter() - t0) / n:.3f}",
             "conservation": "" if cons is None else f"{cons.error[i]:.3g}",
             "figure": Path(files[i]).name} for i in range(n)]
    report = write_report(out, rows, {"model": "bundled demo CNN", "method": method,
                                      "options": opts, "framework": framework,
                                      "accuracy": f"{acc:.1%} on {eval_images} fresh images"},
                          command=None, versions={"xplain": xplain.__version__},
                          seconds=time.perf_counter() - t0)
    echo(f"wrote {len(files)} PNG files and {report.name} to {out.resolve()} in "
         f"{time.perf_counter() - t0:.1f} s")
    return {"framework": framework, "method": method, "options": opts, "accuracy": acc,
            "predictions": exp.targets, "labels": labels, "probabilities": probs,
            "attributions": attr, "maps": maps, "sign": sign,
            "relevance_sums": attr.reshape(n, -1).sum(1), "logits": logits,
            "files": [str(f) for f in files], "report": str(report)}
