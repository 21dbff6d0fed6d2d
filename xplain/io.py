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
from dataclasses import dataclass
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .errors import InputError
from .weights import add_prefix, strip_prefix  # noqa: F401  (checkpoint helpers, kept here too)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: file suffixes a folder is searched for (what OpenCV decodes)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 **RGB**: grayscale is repeated over the three
    channels, an alpha channel dropped (as PIL's ``convert("RGB")`` does), 16-bit samples
    scaled to 8 bits (``round(v / 257)``) and float samples taken as ``[0, 1]``."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"cannot read an image from {str(path)!r}; check that the file exists "
                         f"and is a PNG/JPEG OpenCV can decode")
    return to_rgb8(img, bgr=True)


def to_rgb8(img: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """An image array of any of OpenCV's layouts (``(H, W)``, ``(H, W, 1|3|4)``; uint8, uint16
    or float in ``[0, 1]``) as ``(H, W, 3)`` uint8 RGB; ``bgr``: the channels are OpenCV's BGR."""
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype.kind == "f":
        img = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(f"images of {img.dtype} samples are not supported; save 8- or 16-bit")
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 4:
        img = img[..., :3]
    elif channels != 3:
        raise InputError(f"an image with {channels} channels; expected 1 (gray), 3 or 4 (RGBA)")
    return np.ascontiguousarray(img[..., ::-1] if bgr else img)


def find_images(specs: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files named by ``specs``: files, folders (searched recursively for
    :data:`IMAGE_SUFFIXES`, in sorted order) and glob patterns (``**`` included). Each file is
    listed once, in the order given. A spec that names nothing raises an :class:`InputError`."""
    import glob

    if isinstance(specs, (str, Path)):
        specs = [specs]
    found: dict[Path, None] = {}
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            hits = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            hits = [p]
        elif any(ch in str(spec) for ch in "*?["):
            hits = sorted(Path(f) for f in glob.glob(str(spec), recursive=True)
                          if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise InputError(f"{str(spec)!r} is not a file, a folder or a glob pattern that exists")
        if not hits:
            raise InputError(f"{str(spec)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        found.update(dict.fromkeys(hits))
    return list(found)


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


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB uint8 image becomes a model input: shorter side resized to ``resize``,
    centre crop ``crop`` (``None``: skipped), then ``(x/255 − mean) / std``, channels first."""

    name: str
    resize: int | None
    crop: int | None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def picture(self, img: np.ndarray) -> np.ndarray:
        """The pixels the model sees (resized and cropped, uint8 ``(H, W, 3)``): what heat
        maps are drawn over."""
        if self.resize:
            img = resize_shorter(img, self.resize)
        if self.crop:
            img = center_crop(img, self.crop)
        return img

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """RGB uint8 ``(H, W, 3)`` → float32 ``(3, H', W')``."""
        return normalize(self.picture(img), self.mean, self.std)

    def describe(self) -> str:
        steps = [f"resize {self.resize}" if self.resize else "", f"crop {self.crop}" if self.crop else "",
                 f"mean {self.mean}, std {self.std}"]
        return f"{self.name}: " + ", ".join(x for x in steps if x)


def preprocessing(spec: str | Preprocessing) -> Preprocessing:
    """A pre-processing preset: ``imagenet`` (resize 256, crop 224, ImageNet mean/std: what
    torchvision's and paddle.vision's classifiers were trained with), ``imagenet:S`` (the same
    at crop ``S``, resize ``S·256/224``), ``none`` (the image as it is, scaled to ``[0, 1]``)
    or a size ``S`` (shorter side ``S``, centre crop ``S``, scaled to ``[0, 1]``)."""
    if isinstance(spec, Preprocessing):
        return spec
    text = str(spec).strip().lower()
    if text == "imagenet":
        return Preprocessing("imagenet", 256, 224, IMAGENET_MEAN, IMAGENET_STD)
    if text.startswith("imagenet:") and text[9:].isdigit() and int(text[9:]) > 0:
        size = int(text[9:])
        return Preprocessing(text, int(round(size * 256 / 224)), size, IMAGENET_MEAN, IMAGENET_STD)
    if text == "none":
        return Preprocessing("none", None, None)
    if text.isdigit() and int(text) > 0:
        return Preprocessing(text, int(text), int(text))
    raise InputError(f"pre-processing {spec!r}: use imagenet, imagenet:SIZE, none or a size in px")


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
