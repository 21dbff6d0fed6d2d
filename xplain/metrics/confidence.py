"""Average Drop and Increase in Confidence: the model's confidence on the input multiplied by
the explanation map.

Chattopadhay, Sarkar, Howlader & Balasubramanian, "Grad-CAM++: Generalized Gradient-based
Visual Explanations for Deep Convolutional Networks" (WACV 2018), sec. 6.1: with the map
``E`` scaled to [0, 1] and the input masked as ``x ⊙ E``, per sample the target class's
softmax probability ``Y`` on ``x`` and ``O`` on ``x ⊙ E``; **Average Drop** is the mean of
``max(0, Y − O) / Y`` (lower is better: the highlighted region keeps the evidence) and
**Increase in Confidence** the share of samples with ``O > Y`` (higher is better), both in
percent. Both forwards of each sample go through the model in the same batched passes as the
perturbation curves (:func:`xplain.metrics.faithfulness._run_curve`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backends import backend_for
from .faithfulness import _as_numpy, _pixel_scores, _run_curve


@dataclass
class ConfidenceResult:
    """Per-sample confidences on the input and on the input masked by its map.

    Attributes:
        original: ``(N,)`` target probability on the input (``Y``).
        masked: ``(N,)`` target probability on ``x ⊙ E`` (``O``).
        targets: ``(N,)`` explained classes.
    """

    original: np.ndarray
    masked: np.ndarray
    targets: np.ndarray

    @property
    def drop(self) -> np.ndarray:
        """``(N,)`` ``max(0, Y − O) / Y``."""
        return np.maximum(self.original - self.masked, 0.0) / self.original

    @property
    def increase(self) -> np.ndarray:
        """``(N,)`` 1.0 where ``O > Y``, else 0.0."""
        return (self.masked > self.original).astype(np.float64)

    @property
    def average_drop(self) -> float:
        """Average Drop in percent."""
        return float(100.0 * self.drop.mean())

    @property
    def increase_in_confidence(self) -> float:
        """Increase in Confidence in percent."""
        return float(100.0 * self.increase.mean())


def unit_maps(scores: np.ndarray) -> np.ndarray:
    """Each ``(H, W)`` map min-max scaled to [0, 1]; a constant map becomes all ones (it
    highlights everything alike, so the masked input is the input)."""
    flat = scores.reshape(scores.shape[0], -1).astype(np.float64)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    span = high - low
    scaled = np.divide(flat - low, span, out=np.ones_like(flat), where=span > 0)
    return scaled.reshape(scores.shape)


def confidence_change(model: Any, inputs: Any, attributions: Any, target: Any = None, *,
                      batch_size: int | None = None, memory_budget: int | str = "2GB",
                      backend: str | None = None) -> ConfidenceResult:
    """Average Drop and Increase in Confidence of ``attributions`` (Chattopadhay et al. 2018).

    Args:
        model, inputs: the model and a float ``(N, C, H, W)`` batch of its framework.
        attributions: ``(N, C, H, W)`` (summed over channels) or ``(N, h, w)`` maps (resized
            bilinearly to ``H × W``), min-max scaled to [0, 1] per sample
            (:func:`unit_maps`); tensor, numpy or Explanation.
        target: explained class (int, one per sample, or None for the predicted class).
        batch_size / memory_budget: inputs per forward pass.

    Returns:
        :class:`ConfidenceResult` (``average_drop``, ``increase_in_confidence`` in percent).
    """
    B = backend_for(model, name=backend)
    shape = B.shape(inputs)
    maps = unit_maps(_pixel_scores(_as_numpy(B, attributions), shape))
    keep = np.stack([np.ones_like(maps), maps], axis=1).astype(np.float32)  # (N, 2, H, W)
    scores, t = _run_curve(model, inputs, target, keep, 0.0, score="probability",
                           batch_size=batch_size, memory_budget=memory_budget, backend=backend)
    return ConfidenceResult(scores[:, 0], scores[:, 1], t)
