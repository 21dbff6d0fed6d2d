"""What a folder job writes: one figure per image and target, the attributions (one
``attributions.npz``, appended to as batches finish) and ``results.csv`` (one row per image and
target, flushed per batch, read back to resume a job)."""
from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import viz

#: the columns of ``results.csv``; ``conservation`` is LRP's relative balance error per image
#: (``exp.conservation.error``), empty for other methods
COLUMNS = ("image", "target", "class_name", "probability", "method", "options", "seconds",
           "conservation", "figure", "attribution_key")

#: methods whose attributions are signed evidence (for and against the class): drawn with a
#: diverging colour map, white at zero
SIGNED = frozenset({"lrp", "input_x_gradient", "integrated_gradients", "deeplift", "gradient_shap",
                    "occlusion"})


def attribution_map(attr: np.ndarray) -> np.ndarray:
    """One image's attributions as a 2-D map in their own units: ``(C, H, W)`` summed over the
    channels (relevance is additive), ``(H, W)`` (CAM) as it is."""
    a = np.asarray(attr, dtype=np.float64)
    if a.ndim == 3:
        return a.sum(axis=0)
    if a.ndim == 2:
        return a
    raise ValueError(f"attributions of shape {a.shape} are not an image's")


def color_range(m: np.ndarray, signed: bool, clip_percentile: float = 0.5) -> tuple[float, float]:
    """The colour bar's range in the map's units: ``±`` the ``100 − clip_percentile``
    percentile of ``|m|`` (signed maps, white at 0), else ``[min, that percentile]``; a few
    extreme pixels saturate instead of washing the map out."""
    mag = np.abs(m[np.isfinite(m)])
    top = float(np.percentile(mag, 100.0 - clip_percentile)) if mag.size else 0.0
    top = top if top > 0 else (float(mag.max()) if mag.size and mag.max() > 0 else 1.0)
    if signed:
        return -top, top
    lo = float(np.nanmin(m)) if m.size else 0.0
    return min(lo, 0.0) if lo < 0 else lo, top if top > lo else lo + 1.0


def map_panels(picture: np.ndarray | None, m: np.ndarray, *, signed: bool,
               titles: tuple[str, str, str] = ("input", "", "overlay")) -> list[viz.Panel]:
    """``input | heat map with a colour bar in the map's units | positive evidence over the
    input`` (only the heat map without a ``picture``)."""
    lo, hi = color_range(m, signed)
    heat = viz.Panel(np.clip(m, lo, hi), titles[1], cmap="bwr" if signed else "jet", vmin=lo,
                     vmax=hi, colorbar=True)
    if picture is None:
        return [heat]
    evidence = np.clip(np.maximum(m, 0.0) / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(m)
    return [viz.Panel(picture, titles[0]), heat,
            viz.Panel(viz.overlay(picture, evidence, 0.5, 0.5), titles[2])]


def figure(picture: np.ndarray, m: np.ndarray, *, title: str, method: str, signed: bool,
           cell: int = 224) -> np.ndarray:
    """:func:`map_panels` as one RGB uint8 picture under ``title``."""
    return viz.figure(map_panels(picture, m, signed=signed, titles=("input", method, "overlay")),
                      cell=cell, title=title)


class AttributionArchive:
    """``attributions.npz`` written one array at a time (``np.load`` reads it as usual), so a
    job's memory does not grow with the folder. Keys are ``<image key>:<class>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def keys(self) -> set[str]:
        if not self.path.is_file():
            return set()
        with zipfile.ZipFile(self.path) as z:
            return {n[:-4] for n in z.namelist() if n.endswith(".npy")}

    def add(self, items: Iterable[tuple[str, np.ndarray | bytes]]) -> None:
        """Append ``(key, array)`` pairs; an array may come as its ``.npy`` file's bytes
        (encoded by a Ray worker)."""
        with zipfile.ZipFile(self.path, "a", compression=zipfile.ZIP_STORED) as z:
            for key, arr in items:
                z.writestr(key + ".npy", arr if isinstance(arr, bytes) else encode_npy(arr))


def encode_npy(arr: np.ndarray) -> bytes:
    """``arr`` as the bytes of a ``.npy`` file (what ``attributions.npz`` stores per key)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


class ResultsTable:
    """``results.csv``: the rows of a job, written as batches finish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                self.rows = list(csv.DictReader(f))

    def images(self) -> set[str]:
        """Images with at least one row whose figure exists or that has none (done in an
        earlier run)."""
        root = self.path.parent
        return {r["image"] for r in self.rows if not r["figure"] or (root / r["figure"]).is_file()}

    def keep(self, images: set[str]) -> None:
        """Drop rows of images not in ``images`` (their work is redone), rewriting the file."""
        self.rows = [r for r in self.rows if r["image"] in images]
        self._write(self.rows, "w")

    def add(self, rows: list[Mapping[str, Any]]) -> None:
        text = [{c: _cell(r.get(c, "")) for c in COLUMNS} for r in rows]
        self.rows += text
        self._write(text, "a")

    def _write(self, rows: list[dict[str, str]], mode: str) -> None:
        new = mode == "w" or not self.path.is_file()
        with open(self.path, mode, newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            w.writerows(rows)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else str(v)
