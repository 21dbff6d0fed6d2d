"""Localisation metrics: does a map put its relevance on the object that decides the class?
Functions of ``(attributions, mask)`` on the maps alone (no model pass), per sample.

* :func:`pointing_game` — Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, "Top-down Neural
  Attention by Excitation Backprop" (IJCV 2018): a hit when the map's maximum lies on the
  object, within ``tolerance`` pixels (15 in the paper).
* :func:`relevance_mass` and :func:`relevance_rank` — Arras, Osman & Samek, "CLEVR-XAI: A
  benchmark dataset for the ground truth evaluation of neural network explanations"
  (Information Fusion 2022): the share of the positive relevance that falls on the object,
  and the share of the object-sized set of top-ranked pixels that lies on it.
* :func:`top_k_intersection` — Theiner, Müller-Budack & Ewerth, "Interpretable Semantic Photo
  Geolocation" (WACV 2022): the share of the ``k`` top-ranked pixels on the object.

Attributions: ``(N, C, H, W)`` (channels summed per pixel), ``(N, H, W)``, an
:class:`~xplain.Explanation`, a framework tensor or numpy; maps of another size than the mask
are resized bilinearly to it, as the CAM family upsamples its maps. Masks: ``(N, H, W)``
(non-zero = object), or boxes ``(N, 4)`` as ``x0, y0, x1, y1`` in pixels (end exclusive) with
``size=(H, W)``.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..errors import InputError, OptionError


def _maps(attributions: Any) -> np.ndarray:
    """``(N, h, w)`` float64 scores per pixel from any accepted attribution form."""
    if hasattr(attributions, "attributions") and hasattr(attributions, "numpy"):
        a = np.asarray(attributions.numpy())
    elif isinstance(attributions, np.ndarray):
        a = attributions
    else:
        from ..backends import backend_for

        a = np.asarray(backend_for(attributions).to_numpy(attributions))
    if a.ndim == 4:
        a = a.sum(axis=1)
    if a.ndim != 3:
        raise InputError(f"attributions of shape {a.shape} are not maps: pass (N, C, H, W) or "
                         f"(N, H, W)")
    return a.astype(np.float64)


def object_masks(mask: Any, n: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """``(N, H, W)`` boolean object masks from masks or ``(N, 4)`` boxes (``x0, y0, x1, y1``,
    end exclusive, clipped to ``size``)."""
    m = np.asarray(mask)
    if m.ndim == 2 and m.shape == (n, 4) and size is not None:
        h, w = (int(s) for s in size)
        out = np.zeros((n, h, w), dtype=bool)
        for i, (x0, y0, x1, y1) in enumerate(np.round(m).astype(int)):
            out[i, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
        return out
    if m.ndim == 2 and n == 1:
        m = m[None]
    if m.ndim != 3 or m.shape[0] != n:
        raise InputError(f"mask of shape {m.shape} does not fit {n} map(s): pass (N, H, W) masks or "
                         f"(N, 4) boxes with size=(H, W)")
    return m != 0


def _on_mask_grid(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    h, w = masks.shape[1:]
    if maps.shape[1:] == (h, w):
        return maps
    return np.stack([cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
                     for m in maps]).astype(np.float64)


def _prepare(attributions: Any, mask: Any, size: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    maps = _maps(attributions)
    masks = object_masks(mask, maps.shape[0], size or maps.shape[1:])
    if not masks.reshape(masks.shape[0], -1).any(axis=1).all():
        empty = np.flatnonzero(~masks.reshape(masks.shape[0], -1).any(axis=1)).tolist()
        raise InputError(f"the object mask of sample(s) {empty[:8]} is empty: a localisation "
                         f"metric needs the object's pixels")
    return _on_mask_grid(maps, masks), masks


def pointing_game(attributions: Any, mask: Any, *, tolerance: float = 15.0,
                  size: tuple[int, int] | None = None) -> np.ndarray:
    """``(N,)`` hits (1.0) and misses (0.0): whether each map's maximum (its first occurrence in
    row-major order, so a constant map points at its top-left corner) lies on the object or
    within ``tolerance`` pixels of it (Euclidean distance). Zhang et al. 2018."""
    if tolerance < 0:
        raise OptionError(f"tolerance={tolerance} must be >= 0 pixels")
    maps, masks = _prepare(attributions, mask, size)
    hits = np.zeros(maps.shape[0])
    for i, (m, obj) in enumerate(zip(maps, masks)):
        y, x = np.unravel_index(int(np.argmax(m)), m.shape)
        # distance of every pixel to the nearest object pixel
        dist = cv2.distanceTransform((~obj).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        hits[i] = float(dist[y, x] <= tolerance)
    return hits


def relevance_mass(attributions: Any, mask: Any, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """``(N,)`` share of each map's positive relevance on the object, ``Σ_obj a⁺ / Σ a⁺``
    (Arras et al. 2022; negative relevance is evidence against the class and left out). A map
    with no positive value scores 0."""
    maps, masks = _prepare(attributions, mask, size)
    pos = np.maximum(maps, 0).reshape(maps.shape[0], -1)
    inside = (pos * masks.reshape(masks.shape[0], -1)).sum(axis=1)
    total = pos.sum(axis=1)
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def _top(maps: np.ndarray, k: np.ndarray) -> list[np.ndarray]:
    """Indices of each map's ``k[i]`` largest values (ties broken by position, stable)."""
    flat = maps.reshape(maps.shape[0], -1)
    return [np.argsort(-f, kind="stable")[:int(kk)] for f, kk in zip(flat, k)]


def relevance_rank(attributions: Any, mask: Any, *, size: tuple[int, int] | None = None) -> np.ndarray:
    """``(N,)`` share of the ``K`` top-ranked pixels that lie on the object, ``K`` the object's
    pixel count (Arras et al. 2022)."""
    maps, masks = _prepare(attributions, mask, size)
    flat = masks.reshape(masks.shape[0], -1)
    k = flat.sum(axis=1)
    return np.array([f[idx].mean() for f, idx in zip(flat, _top(maps, k))])


def top_k_intersection(attributions: Any, mask: Any, *, k: int = 1000,
                       size: tuple[int, int] | None = None) -> np.ndarray:
    """``(N,)`` share of the ``k`` top-ranked pixels that lie on the object (Theiner et al.
    2022); ``k`` at most the map's pixel count."""
    maps, masks = _prepare(attributions, mask, size)
    pixels = maps.shape[1] * maps.shape[2]
    if not 1 <= k <= pixels:
        raise OptionError(f"k={k} must be between 1 and the map's {pixels} pixels")
    flat = masks.reshape(masks.shape[0], -1)
    return np.array([f[idx].mean() for f, idx in zip(flat, _top(maps, np.full(len(flat), k)))])
