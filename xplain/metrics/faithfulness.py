"""Deletion / insertion curves and pixel flipping (region perturbation).

All three share one mechanism: rank the input's pixels (or patches) by attribution, then
perturb them in that order, ``steps`` times, and record the model's target score. The
perturbed inputs are built as ``x · keep + baseline · (1 − keep)`` with framework tensor
operators, and pushed through the model in chunks (``batch_size`` samples per forward, or as
many as fit in ``memory_budget``), never one forward per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..api import validate_inputs
from ..backends import backend_for
from ..errors import InputError, OptionError
from ..guard import borrowed
from ..run import Run
from ..targets import parse_targets

SCORES = ("probability", "logit")


@dataclass
class CurveResult:
    """A perturbation curve per sample.

    Attributes:
        curve: ``(N, steps + 1)`` target score after perturbing ``fractions[k]`` of the input.
        fractions: ``(steps + 1,)`` fraction of pixels (or patches) perturbed, from 0 to 1.
        auc: ``(N,)`` area under each curve (trapezoid rule over ``fractions``); for deletion
            lower is better, for insertion higher.
        aopc: ``(N,)`` area over the perturbation curve, ``mean_k (curve[0] − curve[k])``
            (Samek et al. 2017); higher is better.
        targets: ``(N,)`` explained classes.
    """

    curve: np.ndarray
    fractions: np.ndarray
    auc: np.ndarray
    aopc: np.ndarray
    targets: np.ndarray

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())

    @property
    def mean_aopc(self) -> float:
        return float(self.aopc.mean())


def _as_numpy(backend: Any, x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "attributions") and hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(backend.to_numpy(x))


def _pixel_scores(attr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Attributions → one score per pixel ``(N, H, W)`` (channels summed; CAM-sized maps
    resized bilinearly to the input)."""
    n, h, w = shape[0], shape[-2], shape[-1]
    a = attr.astype(np.float32)
    if a.ndim == len(shape) and a.shape == tuple(shape):
        a = a.sum(axis=1) if a.ndim == 4 else a
    elif a.ndim == 3 and a.shape[0] == n:
        pass
    else:
        raise InputError(f"attributions of shape {attr.shape} do not fit inputs of shape "
                         f"{tuple(shape)}; pass the input's shape or (N, h, w) maps")
    if a.shape[1:] != (h, w):
        a = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in a])
    return a


def _baseline(backend: Any, inputs: Any, baseline: Any, blur_sigma: float) -> Any:
    """The replacement values as a tensor of the input's shape."""
    shape = backend.shape(inputs)
    if isinstance(baseline, str):
        x = backend.to_numpy(inputs)
        if baseline == "blur":
            k = int(2 * round(3 * blur_sigma) + 1)
            out = np.empty_like(x)
            for i in range(shape[0]):
                for c in range(shape[1]):
                    out[i, c] = cv2.GaussianBlur(x[i, c], (k, k), blur_sigma)
            return backend.asarray(out, like=inputs)
        if baseline == "mean":
            return backend.asarray(np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), shape).copy(),
                                   like=inputs)
        raise OptionError(f"baseline={baseline!r} is unknown; use a number, an array of the "
                          f"input's shape, 'blur' or 'mean'")
    if backend.is_tensor(baseline):
        return backend.broadcast_to(baseline, shape)
    arr = np.asarray(baseline, dtype=np.float32)
    try:
        arr = np.broadcast_to(arr, shape).copy()
    except ValueError:
        raise InputError(f"baseline of shape {arr.shape} does not broadcast to the inputs' "
                         f"shape {tuple(shape)}") from None
    return backend.asarray(arr, like=inputs)


def _run_curve(model: Any, inputs: Any, target: Any, keep: np.ndarray, baseline: Any, *,
               score: str, batch_size: int | None, memory_budget: int | str,
               backend: str | None, blur_sigma: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Scores of ``inputs[i] · keep[i, k] + baseline · (1 − keep[i, k])`` for every ``i, k``.

    ``keep`` is ``(N, K, H, W)`` float32 in {0, 1}. Returns ``(scores (N, K), targets)``.
    """
    if score not in SCORES:
        raise OptionError(f"score={score!r} is unknown; use one of {SCORES}")
    B = backend_for(model, name=backend)
    validate_inputs(B, inputs)
    shape = B.shape(inputs)
    n, k = keep.shape[:2]
    targets = parse_targets(target, n, B)
    run = Run(B, model, inputs, targets, max_batch=batch_size, memory_budget=memory_budget,
              progress=False, method="metric")
    base = _baseline(B, inputs, baseline, blur_sigma)
    flat_keep = keep.reshape(n * k, 1, *keep.shape[2:])
    scores = np.empty(n * k, dtype=np.float64)
    with borrowed(B, model), B.no_grad():
        t = run.resolve_targets()
        for sl in run.chunks(n * k, backward=False):
            xs, bs = [], []
            for i in range(sl.start // k, (sl.stop - 1) // k + 1):  # samples in this chunk
                count = min(sl.stop, (i + 1) * k) - max(sl.start, i * k)
                xs.append(B.broadcast_to(inputs[i:i + 1], (count, *shape[1:])))
                bs.append(B.broadcast_to(base[i:i + 1], (count, *shape[1:])))
            x = B.concat(xs, axis=0) if len(xs) > 1 else xs[0]
            b = B.concat(bs, axis=0) if len(bs) > 1 else bs[0]
            m = B.asarray(flat_keep[sl], like=inputs)
            out = run.forward(x * m + b * (1.0 - m))
            if score == "probability":
                out = B.softmax(out, axis=1)
            idx = np.repeat(t, k)[sl]
            scores[sl] = B.to_numpy(out)[np.arange(len(idx)), idx]
    return scores.reshape(n, k), t


def _order(scores: np.ndarray) -> np.ndarray:
    """Per sample, flat pixel indices from most to least relevant (stable for ties)."""
    flat = scores.reshape(scores.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable")


def _masks(order: np.ndarray, hw: tuple[int, int], steps: int, insert: bool) -> tuple[np.ndarray, np.ndarray]:
    """Keep-masks ``(N, steps + 1, H, W)``: step ``k`` has the first ``round(k·P/steps)``
    ranked pixels removed (deletion) or the only ones present (insertion)."""
    n, p = order.shape
    counts = np.round(np.arange(steps + 1) * p / steps).astype(int)
    rank = np.empty_like(order)
    rank[np.arange(n)[:, None], order] = np.arange(p)[None, :]
    touched = rank[:, None, :] < counts[None, :, None]  # (N, K, P): pixel already perturbed
    keep = touched if insert else ~touched
    return keep.reshape(n, steps + 1, *hw).astype(np.float32), counts / p


def _auc(curve: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    dx = np.diff(fractions)
    return ((curve[:, 1:] + curve[:, :-1]) * 0.5 * dx).sum(axis=1)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise OptionError(f"steps={steps!r} must be a positive int (number of perturbation steps)")


def _ordered_curve(model: Any, inputs: Any, attributions: Any, target: Any, *, insert: bool,
                   steps: int, baseline: Any, score: str, batch_size: int | None,
                   memory_budget: int | str, backend: str | None) -> CurveResult:
    """Deletion (``insert=False``) or insertion curve over pixels ranked by relevance."""
    _check_steps(steps)
    B = backend_for(model, name=backend)
    shape = B.shape(inputs)
    pix = _pixel_scores(_as_numpy(B, attributions), shape)
    keep, fractions = _masks(_order(pix), shape[-2:], steps, insert=insert)
    curve, t = _run_curve(model, inputs, target, keep, baseline, score=score,
                          batch_size=batch_size, memory_budget=memory_budget, backend=backend)
    return CurveResult(curve, fractions, _auc(curve, fractions),
                       (curve[:, :1] - curve).mean(axis=1), t)


def deletion(model: Any, inputs: Any, attributions: Any, target: Any = None, *,
             steps: int = 50, baseline: Any = 0.0, score: str = "probability",
             batch_size: int | None = None, memory_budget: int | str = "2GB",
             backend: str | None = None) -> CurveResult:
    """Deletion curve: remove pixels, most relevant first, and watch the class score fall.

    Petsiuk et al. (2018): a faithful attribution ranks first the pixels whose removal hurts the
    score most, giving a steep curve and a **low** AUC.

    Args:
        model, inputs: the model and a float ``(N, C, H, W)`` batch of its framework.
        attributions: ``(N, C, H, W)`` (summed over channels), or ``(N, h, w)`` maps (resized
            to ``H × W``); tensor, numpy or Explanation.
        target: explained class (int, one per sample, or None for the predicted class).
        steps: number of removal steps; step ``k`` removes ``round(k · H·W / steps)`` pixels (all
            channels of a pixel together).
        baseline: value removed pixels take: a number (0 = black in normalised units), an array
            or tensor broadcastable to the input, ``"blur"`` (Gaussian-blurred input, σ=5) or
            ``"mean"`` (per-image channel means).
        score: ``"probability"`` (softmax, as in the paper) or ``"logit"``.
        batch_size / memory_budget: perturbed inputs per forward pass.

    Returns:
        :class:`CurveResult`; ``auc`` in score units (probability by default).
    """
    return _ordered_curve(model, inputs, attributions, target, insert=False, steps=steps,
                          baseline=baseline, score=score, batch_size=batch_size,
                          memory_budget=memory_budget, backend=backend)


def insertion(model: Any, inputs: Any, attributions: Any, target: Any = None, *,
              steps: int = 50, baseline: Any = "blur", score: str = "probability",
              batch_size: int | None = None, memory_budget: int | str = "2GB",
              backend: str | None = None) -> CurveResult:
    """Insertion curve: start from ``baseline`` (a blurred copy, as in the paper) and put the
    original pixels back, most relevant first; a faithful attribution gives a **high** AUC.

    Petsiuk et al. (2018). Arguments as in :func:`deletion`.
    """
    return _ordered_curve(model, inputs, attributions, target, insert=True, steps=steps,
                          baseline=baseline, score=score, batch_size=batch_size,
                          memory_budget=memory_budget, backend=backend)


def pixel_flipping(model: Any, inputs: Any, attributions: Any, target: Any = None, *,
                   patch: int = 1, steps: int = 100, perturbation: Any = "uniform",
                   score: str = "logit", seed: int | None = 0, batch_size: int | None = None,
                   memory_budget: int | str = "2GB", backend: str | None = None) -> CurveResult:
    """Pixel flipping / region perturbation, most relevant first (MoRF), and its AOPC.

    Samek et al. (2017): non-overlapping ``patch × patch`` regions are ranked by their summed
    relevance and replaced, ``steps`` times, by random values; the area over the perturbation
    curve ``AOPC = mean_k (f(x) − f(x_k))`` is **higher** for better attributions.

    Args:
        patch: region side in pixels (the paper uses 9 on 224² images; 1 = single pixels).
        steps: number of perturbation steps covering all regions (``fractions`` go 0 → 1).
        perturbation: ``"uniform"`` — values drawn per element from U[min, max] of each image
            (seeded by ``seed``, reproducible across backends) — or a number / array baseline.
        score: ``"logit"`` (the paper's f(x)) or ``"probability"``.

    Returns:
        :class:`CurveResult` with ``aopc`` per sample (score units).
    """
    _check_steps(steps)
    if not isinstance(patch, int) or patch < 1:
        raise OptionError(f"patch={patch!r} must be a positive int (region side in pixels)")
    B = backend_for(model, name=backend)
    shape = B.shape(inputs)
    n, h, w = shape[0], shape[-2], shape[-1]
    pix = _pixel_scores(_as_numpy(B, attributions), shape)
    gh, gw = -(-h // patch), -(-w // patch)
    padded = np.zeros((n, gh * patch, gw * patch), np.float32)
    padded[:, :h, :w] = pix
    regions = padded.reshape(n, gh, patch, gw, patch).sum(axis=(2, 4))
    keep_r, fractions = _masks(_order(regions), (gh, gw), min(steps, gh * gw), insert=False)
    keep = keep_r.repeat(patch, axis=2).repeat(patch, axis=3)[:, :, :h, :w]
    if isinstance(perturbation, str):
        if perturbation != "uniform":
            raise OptionError(f"perturbation={perturbation!r} is unknown; use 'uniform' or a "
                              f"number/array baseline")
        x = B.to_numpy(inputs)
        lo = x.reshape(n, -1).min(axis=1).reshape(n, *([1] * (len(shape) - 1)))
        hi = x.reshape(n, -1).max(axis=1).reshape(n, *([1] * (len(shape) - 1)))
        rng = np.random.default_rng(seed)
        perturbation = (lo + (hi - lo) * rng.random(shape)).astype(np.float32)
    curve, t = _run_curve(model, inputs, target, np.ascontiguousarray(keep), perturbation,
                          score=score, batch_size=batch_size, memory_budget=memory_budget,
                          backend=backend)
    return CurveResult(curve, fractions, _auc(curve, fractions),
                       (curve[:, :1] - curve).mean(axis=1), t)
