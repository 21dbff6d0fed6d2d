"""Images in, model inputs out: OpenCV loading (BGR → RGB), ImageNet pre-processing.

Checkpoints are read by :mod:`xplain.weights` (``strip_prefix`` / ``add_prefix`` are importable
from here too).

Everything here is numpy (``float32``, ``NCHW``); convert to your framework with
``torch.from_numpy(x)`` / ``paddle.to_tensor(x)``. The transforms reproduce torchvision's
``Resize(256) → CenterCrop(224) → ToTensor → Normalize(mean, std)`` and
``RandomResizedCrop(224)`` (Szegedy et al., "Going deeper with convolutions", 2015) without a
framework, so the same pre-processed array can be fed to a torch and a paddle model.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import InputError
from .weights import add_prefix, strip_prefix  # noqa: F401  (checkpoint helpers, kept here too)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 **RGB** (OpenCV reads BGR; converted here)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"cannot read an image from {str(path)!r}; check that the file exists "
                         f"and is a PNG/JPEG OpenCV can decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` px, keeping the aspect ratio (bilinear), as
    torchvision's ``Resize(int)`` does."""
    h, w = img.shape[:2]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size × size`` crop (torchvision's rounding)."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise InputError(f"image of {h}×{w} px is smaller than the crop {size}; resize first")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img[top:top + size, left:left + size]


def normalize(img: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """``(H, W, C)`` uint8 (or float in ``[0, 1]``) → ``(C, H, W)`` float32, ``(x/255 − mean)/std``."""
    a = img.astype(np.float32)
    if img.dtype == np.uint8:
        a = a / 255.0
    if a.ndim == 2:
        a = a[..., None]
    a = (a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def preprocess(img: np.ndarray, resize: int | None = 256, crop: int | None = 224,
               mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Resize the shorter side, centre-crop, normalise: RGB uint8 ``(H, W, 3)`` →
    ``(3, crop, crop)`` float32. ``None`` skips a step."""
    if resize:
        img = resize_shorter(img, resize)
    if crop:
        img = center_crop(img, crop)
    return normalize(img, mean, std)


def load_batch(paths: Iterable[str | Path], **kw: Any) -> np.ndarray:
    """Load and :func:`preprocess` image files into one ``(N, 3, H, W)`` float32 batch."""
    arrays = [preprocess(load_image(p), **kw) for p in paths]
    if not arrays:
        raise InputError("load_batch got no image paths")
    return np.stack(arrays)


def random_resized_crop(rng: np.random.Generator, img: np.ndarray, size: int = 224,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """A random crop of random area and aspect ratio, resized to ``size × size`` (torchvision's
    ``RandomResizedCrop`` algorithm: 10 tries, then a centre crop clamped to ``ratio``).

    Randomness comes from ``rng`` (numpy), so results are reproducible from a seed.
    Returns the cropped uint8 image ``(size, size, C)``.
    """
    h, w = img.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            break
    else:  # fallback: whole image cropped to the nearest allowed aspect ratio
        in_ratio = w / h
        if in_ratio < ratio[0]:
            cw, ch = w, int(round(w / ratio[0]))
        elif in_ratio > ratio[1]:
            ch, cw = h, int(round(h * ratio[1]))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = img[top:top + ch, left:left + cw]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)
