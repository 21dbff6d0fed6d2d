"""Turning attributions into pictures: heat maps, colour maps, overlays, figure grids.

numpy and OpenCV only (matplotlib is never needed). Every function accepts framework tensors,
numpy arrays or an :class:`~xplain.api.Explanation`, and returns numpy. Pictures are ``uint8``
RGB arrays of shape ``(H, W, 3)``; :func:`save` writes them as PNG (converting to OpenCV's BGR
order at the file boundary, and only there).

Typical use::

    exp = xplain.explain(model, x, method="lrp", target=5)
    maps = viz.heatmap(exp, sign="positive", clip_percentile=1.0)      # (N, H, W) in [0, 1]
    img = viz.figure([viz.Panel(maps[0], "relevance", cmap="gray_r", colorbar=True),
                      viz.Panel(viz.to_image(x[0], mean, std), "image")])
    viz.save("out/relevance.png", img)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import cv2
import numpy as np

from .errors import InputError, OptionError

SIGNS = ("positive", "negative", "absolute", "all")
REDUCTIONS = ("sum", "mean", "max", "abs_sum", "none")
CMAPS = ("jet", "hot", "gray", "gray_r", "seismic", "bwr", "viridis", "inferno", "magma")
_CV2_CMAPS = {"jet": "COLORMAP_JET", "hot": "COLORMAP_HOT", "viridis": "COLORMAP_VIRIDIS",
              "inferno": "COLORMAP_INFERNO", "magma": "COLORMAP_MAGMA"}


# ---- conversion -------------------------------------------------------------------------------
def _is_explanation(x: Any) -> bool:
    """Duck-typed (as :func:`as_numpy` always was), so that viz does not depend on the API."""
    return hasattr(x, "attributions") and hasattr(x, "targets") and callable(getattr(x, "numpy", None))


def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, an Explanation or any registered framework's tensor."""
    if isinstance(x, np.ndarray):
        return x
    if _is_explanation(x):
        return np.asarray(x.numpy())
    if isinstance(x, (list, tuple, float, int)):
        return np.asarray(x)
    from .backends import backend_for  # only for tensors: keeps numpy inputs framework-free

    return np.asarray(backend_for(x).to_numpy(x))


# ---- heat maps --------------------------------------------------------------------------------
def _reduce(a: np.ndarray, reduce: str, channel_axis: int) -> np.ndarray:
    if reduce == "sum":
        return a.sum(axis=channel_axis)
    if reduce == "mean":
        return a.mean(axis=channel_axis)
    if reduce == "max":
        return a.max(axis=channel_axis)
    if reduce == "abs_sum":
        return np.abs(a).sum(axis=channel_axis)
    return a


def _as_maps(a: np.ndarray, reduce: str, batched: bool | None) -> tuple[np.ndarray, bool]:
    """Channels reduced: ``(N, H, W)`` with ``True`` or ``(H, W)`` with ``False``. The layout is
    read from the rank and ``batched`` only — never from the sizes, which cannot tell three CAM
    maps ``(3, H, W)`` from one RGB image ``(3, H, W)``."""
    if a.ndim == 4:
        if batched is False:
            raise InputError(f"attributions of shape {a.shape} are a batch (N, C, H, W); "
                             f"pass one image (a[i]) with batched=False, or leave batched unset")
        return _reduce(a, reduce, 1), True
    if a.ndim == 3:
        if batched is None:
            raise InputError(f"attributions of shape {a.shape} are ambiguous: pass batched=True "
                             f"for a batch of maps (N, H, W) such as CAM maps, or batched=False "
                             f"for one image (C, H, W) — or pass the Explanation itself")
        return (a, True) if batched else (_reduce(a, reduce, 0), False)
    if a.ndim == 2:
        if batched:
            raise InputError(f"attributions of shape {a.shape} are one (H, W) map, not a batch; "
                             f"pass batched=False (or leave it unset), or a (N, H, W) array")
        return a, False
    raise InputError(f"attributions of shape {a.shape} are not an image; pass (N, C, H, W), "
                     f"(N, H, W) or (C, H, W) with batched=True/False, or (H, W)")


def heatmap(attr: Any, sign: str = "positive", clip_percentile: float = 1.0,
            reduce: str = "sum", *, batched: bool | None = None) -> np.ndarray:
    """A display-ready map from attributions.

    Args:
        attr: an Explanation, or attributions as a tensor / numpy array: ``(N, C, H, W)``,
            ``(C, H, W)``, ``(N, H, W)`` (CAM maps) or ``(H, W)``. An Explanation's layout is
            known (a batch: CAM and RISE maps ``(N, H, W)``, other methods the input's
            ``(N, C, H, W)``). A 3-D array is ambiguous — three CAM maps and one RGB image
            have the same rank — so it needs ``batched=True`` (``(N, H, W)`` maps) or
            ``batched=False`` (one ``(C, H, W)`` image); without it an :class:`InputError`
            is raised rather than a guess.
        sign: ``"positive"`` keeps evidence for the class (negative values → 0),
            ``"negative"`` shows the magnitude of evidence against it, ``"absolute"`` the
            magnitude of both, ``"all"`` keeps the sign (result in ``[-1, 1]``).
        clip_percentile: percentage of the largest magnitudes treated as outliers: values are
            divided by the ``100 - clip_percentile`` percentile of the selected magnitudes and
            clipped, so that a few extreme pixels do not wash out the map. ``0`` scales by the
            maximum. (Captum's visualiser takes its threshold from the cumulative sum of the
            sorted values instead; both saturate the extreme pixels, the scales differ.)
        reduce: how channels are combined *before* the sign is applied: ``"sum"`` (relevance is
            additive, as in Captum's visualiser), ``"mean"``, ``"max"``, ``"abs_sum"``, or
            ``"none"`` (keep channels).
        batched: whether the first dimension is the batch; needed for 3-D arrays only (4-D is
            always a batch, 2-D never).

    Returns:
        float32 map(s) of shape ``(N, H, W)`` or ``(H, W)`` (as the input had a batch or not),
        in ``[0, 1]`` — or ``[-1, 1]`` for ``sign="all"``. An all-zero input gives zeros.
    """
    if sign not in SIGNS:
        raise OptionError(f"heatmap sign={sign!r} is unknown; use one of {SIGNS}")
    if reduce not in REDUCTIONS:
        raise OptionError(f"heatmap reduce={reduce!r} is unknown; use one of {REDUCTIONS}")
    if not 0.0 <= clip_percentile < 100.0:
        raise OptionError(f"clip_percentile={clip_percentile} must be in [0, 100)")
    a = as_numpy(attr).astype(np.float64)
    if _is_explanation(attr):  # its layout is known: the first dimension is the batch
        if batched is False:
            raise OptionError("an Explanation always holds a batch; leave batched unset, or pass "
                              "one image's attributions (exp.numpy()[i]) with batched=False")
        if a.ndim not in (3, 4):
            raise InputError(f"the {attr.method!r} attributions have shape {a.shape}, not images "
                             f"(N, C, H, W) or maps (N, H, W); reshape them (e.g. "
                             f"exp.numpy().reshape(N, 1, 28, 28)) and pass the array")
        batched = True
    maps, batched = _as_maps(a, reduce, batched)
    if not batched:
        maps = maps[None]
    out = np.empty(maps.shape, dtype=np.float32)
    for i, m in enumerate(maps):
        if sign == "positive":
            v = np.maximum(m, 0.0)
        elif sign == "negative":
            v = np.maximum(-m, 0.0)
        elif sign == "absolute":
            v = np.abs(m)
        else:
            v = m
        mag = np.abs(v)
        nonzero = mag[mag > 0]
        if nonzero.size == 0:
            out[i] = 0.0
            continue
        scale = np.percentile(nonzero, 100.0 - clip_percentile) if clip_percentile > 0 else nonzero.max()
        scale = scale if scale > 0 else nonzero.max()
        lo = -1.0 if sign == "all" else 0.0
        out[i] = np.clip(v / scale, lo, 1.0)
    return out if batched else out[0]


def normalize(m: Any, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Min-max scaling to ``[0, 1]`` (a constant map becomes zeros), as the CAM tutorials do."""
    a = as_numpy(m).astype(np.float32)
    lo = float(a.min()) if vmin is None else vmin
    hi = float(a.max()) if vmax is None else vmax
    if hi - lo <= 0:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


# ---- colour ------------------------------------------------------------------------------------
@functools.cache
def _diverging_lut(name: str) -> np.ndarray:
    """256×3 RGB lookup table for ``bwr`` / ``seismic`` (blue → white → red); read-only (cached)."""
    t = np.linspace(0.0, 1.0, 256)
    if name == "bwr":
        nodes = [(0.0, (0, 0, 255)), (0.5, (255, 255, 255)), (1.0, (255, 0, 0))]
    else:  # seismic: dark blue → blue → white → red → dark red
        nodes = [(0.0, (0, 0, 77)), (0.25, (0, 0, 255)), (0.5, (255, 255, 255)),
                 (0.75, (255, 0, 0)), (1.0, (128, 0, 0))]
    xs = [n[0] for n in nodes]
    lut = np.stack([np.interp(t, xs, [n[1][c] for n in nodes]) for c in range(3)], axis=1).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _to_levels(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``round(255 · normalize(a, lo, hi))`` as uint8, computed in place on the float32 copy
    ``a`` (a figure colours a few maps per image: this is most of its cost)."""
    if hi - lo <= 0:
        return np.zeros(a.shape, np.uint8)
    a -= lo
    a *= np.float32(255.0 / (hi - lo))
    np.clip(a, 0.0, 255.0, out=a)
    np.rint(a, out=a)
    return a.astype(np.uint8)


def colorize(m: Any, cmap: str = "jet", *, vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """Colour a 2-D map: ``(H, W)`` float → ``(H, W, 3)`` uint8 RGB.

    Sequential maps (``jet``, ``hot``, ``gray`` black→white, ``gray_r`` white→black, ``viridis``
    ...) read values in ``[vmin, vmax]`` (default ``[0, 1]``); diverging maps (``seismic``,
    ``bwr``) default to ``[-1, 1]`` with white at zero. Values outside are clipped.
    ``jet``/``hot``/``viridis`` are OpenCV's colormaps, converted to RGB.
    """
    if cmap not in CMAPS:
        raise OptionError(f"cmap={cmap!r} is unknown; use one of {CMAPS}")
    a = np.array(as_numpy(m), dtype=np.float32)  # a copy: _to_levels works in place
    if a.ndim != 2:
        raise InputError(f"colorize needs one 2-D map, got shape {a.shape}; reduce channels "
                         f"with heatmap() and pass one image of the batch")
    diverging = cmap in ("seismic", "bwr")
    lo = (-1.0 if diverging else 0.0) if vmin is None else vmin
    hi = 1.0 if vmax is None else vmax
    u8 = _to_levels(a, lo, hi)
    if diverging:
        return cv2.LUT(cv2.merge([u8, u8, u8]), _diverging_lut(cmap)[:, None, :])
    if cmap in ("gray", "gray_r"):
        g = u8 if cmap == "gray" else 255 - u8
        return np.repeat(g[..., None], 3, axis=2)
    bgr = cv2.applyColorMap(u8, getattr(cv2, _CV2_CMAPS[cmap]))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def to_uint8(image: Any, *, channels_first: bool | None = None) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB copy of one image given as uint8, or float in ``[0, 1]``:
    ``(H, W)`` grey, ``(H, W, C)`` or ``(C, H, W)`` with ``C`` 1 or 3.

    The channel axis is the one axis of size 1 or 3 at either end; when both ends are (e.g.
    ``(3, 5, 3)``) the layout is ambiguous and ``channels_first=True/False`` must say which —
    an :class:`InputError` is raised rather than a guess. ``channels_first`` also skips the
    detection when given.
    """
    a = as_numpy(image)
    if a.ndim == 2:
        a = a[..., None]
    elif a.ndim != 3:
        raise InputError(f"an image is (H, W), (H, W, C) or (C, H, W), got shape {a.shape}; "
                         f"pass one image of a batch (x[i]) or one map (maps[i])")
    elif channels_first is None:
        first, last = a.shape[0] in (1, 3), a.shape[2] in (1, 3)
        if first and last:
            raise InputError(f"image of shape {a.shape} is ambiguous: pass channels_first=True "
                             f"for (C, H, W) or channels_first=False for (H, W, C) "
                             f"(e.g. viz.to_uint8(img, channels_first=False))")
        channels_first = first
    if channels_first:
        a = a.transpose(1, 2, 0)
    if a.shape[2] not in (1, 3):
        raise InputError(f"image of shape {a.shape} (as (H, W, C)) has {a.shape[2]} channels; "
                         f"xplain draws grey (1) or RGB (3) images — for an attribution map "
                         f"use heatmap() and colorize() first")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)


def overlay(image: Any, heat: Any, alpha: float = 0.3, beta: float = 0.5,
            cmap: str = "jet") -> np.ndarray:
    """Blend ``alpha · heat + beta · image`` (the CAM tutorials' ``heatmap * 0.3 + img * 0.5``).

    Args:
        image: the picture, ``(H, W, 3)`` uint8 RGB (or float in ``[0, 1]``, or grey).
        heat: one coloured map ``(h, w, 3)`` (channels last, as :func:`colorize` returns), or
            one 2-D float map (coloured with ``cmap``); resized (bilinear) to the image size if
            needed. A batch of maps is refused: pass ``maps[i]``.

    Returns:
        ``(H, W, 3)`` uint8 RGB, saturated at 255.
    """
    img = to_uint8(image)
    h = as_numpy(heat)
    if h.ndim == 2:
        h = colorize(h, cmap)
    elif h.ndim != 3 or h.shape[2] != 3:
        raise InputError(f"overlay's heat has shape {h.shape}; pass one 2-D map (H, W) such as "
                         f"heatmap(exp)[i], or one coloured map (H, W, 3) from colorize()")
    h = to_uint8(h, channels_first=False)
    if h.shape[:2] != img.shape[:2]:
        h = cv2.resize(h, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    # OpenCV's weighted sum rounds to nearest and saturates at 255, as the float formula does
    return cv2.addWeighted(h, float(alpha), img, float(beta), 0.0)


def to_image(x: Any, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             bgr: bool = False) -> np.ndarray:
    """Undo normalisation of one model input: ``(C, H, W)`` or ``(1, C, H, W)`` → uint8 image.

    ``pixel = (x · std + mean) · 255`` per channel (mean/std in ``[0, 1]`` units, as torchvision
    writes ImageNet's). ``bgr=True`` returns OpenCV's channel order (for ``cv2.imwrite``).
    """
    a = as_numpy(x).astype(np.float32)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"to_image takes one image, got a batch of {a.shape[0]}; index it")
        a = a[0]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"to_image needs (C, H, W), got shape {a.shape}")
    c = a.shape[0]
    if std is not None:
        a = a * np.asarray(std, np.float32).reshape(-1, 1, 1)[:c]
    if mean is not None:
        a = a + np.asarray(mean, np.float32).reshape(-1, 1, 1)[:c]
    img = to_uint8(np.clip(a, 0.0, 1.0).transpose(1, 2, 0), channels_first=False)
    return img[..., ::-1].copy() if bgr else img


def save(path: str | Path, rgb: Any, *, channels_first: bool | None = None) -> Path:
    """Write an RGB uint8 image (PNG, or JPEG at quality 95, by extension), creating parent
    folders. Returns the path.
    ``rgb`` is read as :func:`to_uint8` reads it (``channels_first`` for ambiguous shapes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = to_uint8(rgb, channels_first=channels_first)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params):
        raise InputError(f"OpenCV could not write {path}; use a .png or .jpg file name in a "
                         f"writable folder")
    return path


# ---- figures -------------------------------------------------------------------------------------
@dataclass
class Panel:
    """One cell of a :func:`figure`.

    Attributes:
        data: a picture (``(H, W, 3)`` uint8 / float RGB or ``(H, W, 1)`` grey, channels
            last, shown as is) or one 2-D float map (coloured with ``cmap``).
        title: text above the panel.
        cmap: colour map for 2-D maps (default ``"jet"``).
        vmin/vmax: value range of the colour map (default: the data's min/max; symmetric
            ``±max|data|`` for diverging maps).
        colorbar: draw a vertical colour bar with the min/max values beside the panel.
    """

    data: Any
    title: str = ""
    cmap: str = "jet"
    vmin: float | None = None
    vmax: float | None = None
    colorbar: bool = False


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text(canvas: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.4) -> None:
    cv2.putText(canvas, text, org, _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _range(a: np.ndarray, panel: Panel) -> tuple[float, float]:
    """Colour range of a map panel: the given vmin/vmax, else the data's range (symmetric
    around zero for diverging maps, so that white means zero)."""
    if panel.cmap in ("seismic", "bwr"):
        m = float(np.abs(a).max()) or 1.0
        lo, hi = -m, m
    else:
        lo, hi = float(a.min()), float(a.max())
        hi = hi if hi > lo else lo + 1.0
    return (lo if panel.vmin is None else panel.vmin), (hi if panel.vmax is None else panel.vmax)


def _render(panel: Panel, cell: int) -> np.ndarray:
    """Panel → RGB tile: title strip, picture scaled to ``cell`` px, optional colour bar."""
    a = as_numpy(panel.data)
    is_map = a.ndim == 2
    # channels last only: a (3, H, W) array may be three maps as well as one image
    if not (is_map or a.ndim == 3 and a.shape[2] in (1, 3)):
        raise InputError(f"Panel {panel.title!r} holds shape {a.shape}; a panel shows one 2-D map "
                         f"(H, W) or one picture (H, W, 3) — index a batch (maps[i], images[i]), "
                         f"or convert a (C, H, W) image with viz.to_uint8(x, channels_first=True)")
    if is_map:
        lo, hi = _range(a, panel)
        pic = colorize(a, panel.cmap, vmin=lo, vmax=hi)
    else:
        pic = to_uint8(a, channels_first=False)
    h, w = pic.shape[:2]
    s = cell / max(h, w)
    interp = cv2.INTER_NEAREST if s >= 2 else cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    pic = cv2.resize(pic, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
    title_h, bar_w = 22, (62 if panel.colorbar and is_map else 0)
    tile = np.full((title_h + cell + 4, cell + bar_w + 8, 3), 255, np.uint8)
    tile[title_h:title_h + pic.shape[0], 4:4 + pic.shape[1]] = pic
    if panel.title:
        _text(tile, panel.title[:int(cell / 7) + 6], (4, 15))
    if bar_w:
        ramp = np.linspace(hi, lo, cell, dtype=np.float32)[:, None].repeat(10, axis=1)
        x0 = cell + 8
        tile[title_h:title_h + cell, x0:x0 + 10] = colorize(ramp, panel.cmap, vmin=lo, vmax=hi)
        cv2.rectangle(tile, (x0, title_h), (x0 + 9, title_h + cell - 1), (0, 0, 0), 1)
        _text(tile, _fmt(hi), (x0 + 12, title_h + 9), 0.33)
        _text(tile, _fmt(lo), (x0 + 12, title_h + cell - 2), 0.33)
    return tile


def figure(panels: Sequence[Panel | Any], cols: int | None = None, cell: int = 224,
           title: str = "") -> np.ndarray:
    """Compose panels in a grid (row-major) → one RGB uint8 picture.

    ``panels`` are :class:`Panel` objects (or bare images/maps). ``cols`` defaults to the number
    of panels (one row). A 5×2 grid of prototypes is ``figure(panels, cols=5)``. Write it with
    :func:`save`.
    """
    tiles = [_render(p if isinstance(p, Panel) else Panel(p), cell) for p in panels]
    if not tiles:
        raise InputError("figure() needs at least one panel")
    cols = max(1, min(cols or len(tiles), len(tiles)))
    rows = -(-len(tiles) // cols)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    head = 26 if title else 0
    canvas = np.full((head + rows * th, cols * tw, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[head + r * th:head + r * th + t.shape[0], c * tw:c * tw + t.shape[1]] = t
    if title:
        _text(canvas, title, (6, 18), 0.5)
    return canvas


def grid(images: Sequence[Any], cols: int, titles: Sequence[str] | None = None, *,
         cmap: str = "jet", colorbar: bool = False, cell: int = 112,
         vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Shorthand for :func:`figure` over a list of same-styled images or maps."""
    titles = list(titles or [""] * len(images))
    return figure([Panel(im, t, cmap=cmap, colorbar=colorbar, vmin=vmin, vmax=vmax)
                   for im, t in zip(images, titles)], cols=cols, cell=cell)


# ---- matplotlib (optional) ---------------------------------------------------------------------
def plot(attr: Any, image: Any = None, **kwargs: Any) -> Any:
    """One image's attributions as a matplotlib ``Figure`` in Captum's vocabulary, with the
    colour bar in the attribution's units; see :func:`xplain.plotting.plot` (needs
    ``pip install 'xplain[plot]'``)."""
    from .plotting import plot as _plot

    return _plot(attr, image, **kwargs)


def plot_grid(rows: Any, images: Any = None, **kwargs: Any) -> Any:
    """Methods × images as one matplotlib ``Figure``; see :func:`xplain.plotting.plot_grid`."""
    from .plotting import plot_grid as _plot_grid

    return _plot_grid(rows, images, **kwargs)
