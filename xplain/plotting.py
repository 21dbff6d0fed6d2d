"""Matplotlib figures of attributions (``xplain.viz.plot`` / ``plot_grid``; the extra
``xplain[plot]``), in Captum's vocabulary (``visualize_image_attr``): methods ``heat_map``,
``blended_heat_map``, ``masked_image``, ``alpha_scaling``, ``original_image``; signs ``all``,
``positive``, ``negative``, ``absolute_value``; ``outlier_perc``.

One difference on purpose: the colour bar is in the attribution's own units. Captum divides the
map by its outlier threshold and labels the bar ``[-1, 1]``; here the same threshold sets the
colour range (values beyond it saturate), and the bar shows the values themselves.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InputError, OptionError

METHODS = ("heat_map", "blended_heat_map", "masked_image", "alpha_scaling", "original_image")
SIGNS = ("all", "positive", "negative", "absolute_value")
#: Captum's default colour maps per sign (``all``: red-white-green, built below)
DEFAULT_CMAPS = {"positive": "Greens", "negative": "Reds", "absolute_value": "Blues"}


def _pyplot() -> Any:
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise OptionError("viz.plot needs matplotlib: pip install 'xplain[plot]' (or matplotlib); "
                          "viz.figure draws without it") from None
    return matplotlib, Figure


def cumulative_threshold(values: np.ndarray, percentile: float) -> float:
    """The value at which the cumulative sum of the sorted ``values`` (non-negative) reaches
    ``percentile`` % of their total (Captum's outlier threshold); 0 for an all-zero map."""
    v = np.sort(values.ravel())
    cum = np.cumsum(v)
    if cum.size == 0 or cum[-1] <= 0:
        return 0.0
    return float(v[np.searchsorted(cum, cum[-1] * 0.01 * percentile)])


def signed_map(attr: np.ndarray, sign: str) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` / ``(C, H, W)`` attributions → the 2-D map a sign selects:
    channels summed (relevance is additive), then ``all`` as is, ``positive`` / ``negative``
    the parts of that sign (negative as magnitudes), ``absolute_value`` magnitudes."""
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim == 3:
        a = a.sum(axis=0) if a.shape[0] in (1, 3) and a.shape[2] not in (1, 3) else a.sum(axis=2)
    elif a.ndim != 2:
        raise InputError(f"attributions of shape {a.shape}: pass one image's (C, H, W), (H, W, C) "
                         f"or (H, W) map (index a batch: exp.numpy()[i])")
    if sign == "all":
        return a
    if sign == "positive":
        return np.maximum(a, 0.0)
    if sign == "negative":
        return np.maximum(-a, 0.0)
    return np.abs(a)


def _cmap(sign: str, cmap: Any) -> Any:
    matplotlib, _ = _pyplot()
    if cmap is not None:
        return cmap
    if sign == "all":
        return matplotlib.colors.LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])
    return DEFAULT_CMAPS[sign]


def _image(image: Any) -> np.ndarray:
    from .viz import as_numpy, to_uint8

    a = as_numpy(image)
    channels_first = a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3)
    return to_uint8(a, channels_first=channels_first).astype(np.float64) / 255.0


def draw(ax: Any, attr: Any, image: Any = None, *, method: str = "blended_heat_map",
         sign: str = "absolute_value", outlier_perc: float = 2.0, cmap: Any = None,
         alpha_overlay: float = 0.5, colorbar: bool = True, title: str | None = None) -> Any:
    """Draw one panel on a matplotlib ``ax`` (see :func:`plot`); returns the colour-mapped image
    artist (``None`` for methods without a colour map)."""
    if method not in METHODS:
        raise OptionError(f"method={method!r}: use one of {METHODS}")
    if sign not in SIGNS:
        raise OptionError(f"sign={sign!r}: use one of {SIGNS}")
    if not 0.0 <= outlier_perc < 100.0:
        raise OptionError(f"outlier_perc={outlier_perc} must be in [0, 100)")
    from .viz import as_numpy

    needs_image = method != "heat_map"
    if needs_image and image is None:
        raise InputError(f"method={method!r} draws over the input: pass image=")
    pic = _image(image) if image is not None else None
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    if method == "original_image":
        ax.imshow(pic)
        return None
    m = signed_map(as_numpy(attr), sign)
    if pic is not None and pic.shape[:2] != m.shape:
        raise InputError(f"the image is {pic.shape[:2]} px and the map {m.shape}; pass the image "
                         f"the model saw (resize it, or upsample the map)")
    top = cumulative_threshold(np.abs(m), 100.0 - outlier_perc) or float(np.abs(m).max()) or 1.0
    if method in ("masked_image", "alpha_scaling"):
        weight = np.clip(np.abs(m) / top, 0.0, 1.0)
        if method == "masked_image":
            ax.imshow(pic * weight[..., None])
        else:
            ax.imshow(np.concatenate([pic, weight[..., None]], axis=2))
        return None
    lo = -top if sign == "all" else 0.0
    artist = None
    if method == "blended_heat_map":
        ax.imshow(pic.mean(axis=2), cmap="gray")
        artist = ax.imshow(m, cmap=_cmap(sign, cmap), vmin=lo, vmax=top, alpha=alpha_overlay)
    else:
        artist = ax.imshow(m, cmap=_cmap(sign, cmap), vmin=lo, vmax=top)
    if colorbar:
        ax.figure.colorbar(artist, ax=ax, fraction=0.046, pad=0.04)
    return artist


def plot(attr: Any, image: Any = None, *, method: str = "blended_heat_map",
         sign: str = "absolute_value", outlier_perc: float = 2.0, cmap: Any = None,
         alpha_overlay: float = 0.5, colorbar: bool = True, title: str | None = None,
         size: tuple[float, float] = (5.0, 5.0)) -> Any:
    """One image's attributions as a matplotlib ``Figure`` (not shown: display it in a
    notebook, or ``fig.savefig(path)``).

    Args:
        attr: one image's attributions, ``(C, H, W)``, ``(H, W, C)`` or a ``(H, W)`` map
            (tensor or numpy; channels are summed).
        image: the input as the model saw it (``(H, W, 3)`` or ``(C, H, W)``, uint8 or floats
            in ``[0, 1]``); needed by every method but ``heat_map``.
        method: ``heat_map``, ``blended_heat_map`` (over the grey input), ``masked_image`` (the
            input times the normalised magnitude), ``alpha_scaling`` (the magnitude as the
            input's opacity) or ``original_image``.
        sign: ``all`` (diverging, white at 0), ``positive``, ``negative`` (as magnitudes) or
            ``absolute_value``.
        outlier_perc: the share (%) of the total magnitude, from the top, that saturates
            (Captum's cumulative-sum threshold).
        cmap: a matplotlib colour map (default: Captum's per sign).
    """
    _, Figure = _pyplot()
    fig = Figure(figsize=size)
    ax = fig.add_subplot(1, 1, 1)
    draw(ax, attr, image, method=method, sign=sign, outlier_perc=outlier_perc, cmap=cmap,
         alpha_overlay=alpha_overlay, colorbar=colorbar, title=title)
    fig.tight_layout()
    return fig


def plot_grid(rows: Mapping[str, Sequence[Any]], images: Sequence[Any] | None = None, *,
              method: str = "blended_heat_map", sign: str = "absolute_value",
              outlier_perc: float = 2.0, cmap: Any = None, alpha_overlay: float = 0.5,
              colorbar: bool = True, cell: float = 3.0, column_titles: Sequence[str] | None = None) -> Any:
    """Methods × images: ``rows`` maps a row title (a method's name) to one attribution per
    image (an :class:`~xplain.api.Explanation` works: its samples). With ``images``, a first
    row shows the inputs. Returns a matplotlib ``Figure``."""
    _, Figure = _pyplot()
    from .viz import as_numpy

    table = {name: (as_numpy(v) if hasattr(v, "numpy") and hasattr(v, "targets") else v)
             for name, v in rows.items()}
    n = {len(v) for v in table.values()}
    if len(n) != 1:
        raise InputError(f"every row needs one attribution per image; got {sorted(n)} per row")
    cols = n.pop()
    if images is not None and len(images) != cols:
        raise InputError(f"{len(images)} images for {cols} attributions per row")
    nrows = len(table) + (images is not None)
    fig = Figure(figsize=(cell * cols, cell * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    r0 = 0
    if images is not None:
        for j, im in enumerate(images):
            draw(axes[0][j], None, im, method="original_image",
                 title=column_titles[j] if column_titles else None)
        r0 = 1
    for i, (name, attrs) in enumerate(table.items()):
        for j in range(cols):
            ax = axes[r0 + i][j]
            draw(ax, attrs[j], images[j] if images is not None else None,
                 method=method if images is not None else "heat_map", sign=sign,
                 outlier_perc=outlier_perc, cmap=cmap, alpha_overlay=alpha_overlay,
                 colorbar=colorbar)
            if j == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    return fig
