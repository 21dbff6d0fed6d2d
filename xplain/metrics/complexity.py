"""Complexity metrics: how concentrated is a map? Functions of the attributions alone, per
sample, on the absolute relevance per pixel (channels summed first, as the localisation
metrics do).

* :func:`sparseness` — the Gini index of the sorted absolute attributions (Chalasani, Chen,
  Chowdhury, Wu & Jha, "Concise Explanations of Neural Networks using Adversarial Training",
  ICML 2020): 0 for a uniform map, → 1 for a single pixel; higher is sparser.
* :func:`complexity` — the entropy of the fractional contributions ``|a_i| / Σ|a|`` (Bhatt,
  Weller & Moura, "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020):
  ``log(pixels)`` for a uniform map, 0 for a single pixel; lower is simpler.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .localisation import _maps


def _abs_flat(attributions: Any) -> np.ndarray:
    a = _maps(attributions)
    return np.abs(a).reshape(a.shape[0], -1)


def sparseness(attributions: Any) -> np.ndarray:
    """``(N,)`` Gini index ``Σ_i (2i − n − 1)·a_(i) / (n·Σ a)`` of each map's absolute values
    sorted ascending (``i`` from 1); an all-zero map scores 0."""
    a = np.sort(_abs_flat(attributions), axis=1)
    n = a.shape[1]
    weights = 2 * np.arange(1, n + 1) - n - 1
    total = a.sum(axis=1)
    return np.divide((a * weights).sum(axis=1), n * total, out=np.zeros_like(total), where=total > 0)


def complexity(attributions: Any) -> np.ndarray:
    """``(N,)`` entropy ``−Σ p_i log p_i`` (natural log) of ``p_i = |a_i| / Σ|a|``; an all-zero
    map scores 0."""
    a = _abs_flat(attributions)
    total = a.sum(axis=1, keepdims=True)
    p = np.divide(a, total, out=np.zeros_like(a), where=total > 0)
    logs = np.log(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logs).sum(axis=1)
