"""Turning a user's ``target`` argument into one class index per sample, with clear errors."""
from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import TargetError


def parse_targets(target: Any, batch: int, backend: Any = None) -> np.ndarray | None:
    """Normalise ``target`` to an ``int64`` array of length ``batch`` (``None`` = argmax later).

    Accepted: ``None``; a Python/numpy integer (same class for every sample); a sequence, numpy
    array or framework tensor of integers with one entry per sample. Floats, booleans, nested
    sequences and lengths other than ``batch`` are refused with :class:`TargetError`.
    """
    if target is None:
        return None
    if isinstance(target, bool) or isinstance(target, np.bool_):
        raise TargetError(f"target={target!r} is a bool; pass a class index (int), one per "
                          f"sample, or None for the predicted class")
    if isinstance(target, numbers.Integral):
        return np.full(batch, int(target), dtype=np.int64)
    if isinstance(target, numbers.Real):
        raise TargetError(f"target={target!r} is a float; class indices must be integers: "
                          f"pass e.g. target={int(target)}")
    if backend is not None and backend.is_tensor(target):
        dtype = backend.dtype_name(target)
        if not dtype.startswith(("int", "uint")):
            kind = "float " if "float" in dtype else ""
            raise TargetError(f"target has {kind}dtype {dtype}; class indices must be integers — "
                              f"convert with .long() / .astype('int64') if the values are whole "
                              f"numbers")
        try:
            arr = backend.to_numpy(target)
        except Exception as exc:  # e.g. a tensor on the meta device holds no values
            raise TargetError(f"the target tensor (device {backend.device(target)}) cannot be "
                              f"read: {exc}; pass class indices as ints or a tensor holding "
                              f"values") from exc
    else:
        if isinstance(target, (list, tuple)) and any(
                isinstance(t, (bool, np.bool_)) for t in target):
            raise TargetError(f"target {target!r} holds booleans; pass integer class indices, "
                              f"one per sample (True is not class 1)")
        try:
            arr = np.asarray(target)
        except Exception as exc:  # ragged lists etc.
            raise TargetError(f"target {target!r} is not a sequence of class indices; pass one int per "
                              f"sample") from exc
        dtype = arr.dtype.name
    if arr.dtype.kind == "b" or dtype == "bool":
        raise TargetError("target is a boolean array; pass integer class indices per sample")
    if arr.dtype.kind == "f" or dtype.startswith("float"):
        raise TargetError(f"target has float dtype {dtype}; class indices must be integers — "
                          f"convert with .astype(int) / .long() if the values are whole numbers")
    if arr.dtype.kind not in "iu":
        raise TargetError(f"target of dtype {arr.dtype} is not a class index; pass ints")
    if arr.ndim == 0:
        return np.full(batch, int(arr), dtype=np.int64)
    if arr.ndim != 1:
        raise TargetError(f"target has shape {arr.shape}; pass one class index per sample "
                          f"(a 1-D sequence of length {batch})")
    if arr.shape[0] != batch:
        raise TargetError(f"target has {arr.shape[0]} entries but the batch has {batch} "
                          f"samples; pass exactly one class index per sample, a single int "
                          f"for all, or None for each sample's predicted class")
    return arr.astype(np.int64)


def check_range(targets: np.ndarray, num_classes: int) -> None:
    """Raise :class:`TargetError` if any target is outside ``[0, num_classes)``."""
    bad = (targets < 0) | (targets >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise TargetError(f"target {int(targets[i])} (sample {i}) is out of range: the model "
                          f"outputs {num_classes} classes, so targets must be in "
                          f"[0, {num_classes - 1}]; pass class indices in that range")
