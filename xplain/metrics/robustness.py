"""Robustness of an explanation to small input perturbations (max-sensitivity)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..api import explain, validate_inputs
from ..backends import backend_for
from ..errors import OptionError


def sensitivity_max(model: Any, inputs: Any, method: str = "saliency", target: Any = None, *,
                    radius: float = 0.02, samples: int = 8, seed: int = 0,
                    **options: Any) -> np.ndarray:
    """Max-sensitivity: ``max_{‖δ‖∞ ≤ r} ‖E(x + δ) − E(x)‖₂ / ‖E(x)‖₂`` estimated from
    ``samples`` uniform draws of ``δ`` (Yeh et al., "On the (In)fidelity and Sensitivity of
    Explanations", NeurIPS 2019). Lower is more robust.

    All ``N × samples`` perturbed copies are explained in one :func:`xplain.explain` call (the
    method batches them itself); the target of each copy is its original's (the predicted
    class when ``target`` is None), so the explanation changes only through the input.

    Returns:
        ``(N,)`` float64, relative to the unperturbed explanation's norm.
    """
    if samples < 1 or radius <= 0:
        raise OptionError(f"sensitivity_max needs samples >= 1 and radius > 0 (got "
                          f"samples={samples}, radius={radius})")
    B = backend_for(model)
    validate_inputs(B, inputs)
    base = explain(model, inputs, method, target, seed=seed, **options)
    n = B.shape(inputs)[0]
    x = B.to_numpy(inputs)
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-radius, radius, (samples, *x.shape)).astype(np.float32)
    batch = (x[None] + noise).transpose(1, 0, *range(2, x.ndim + 1)).reshape(n * samples, *x.shape[1:])
    pert = explain(model, B.asarray(batch, like=inputs), method, np.repeat(base.targets, samples),
                   seed=seed, **options)
    e0 = base.numpy().reshape(n, 1, -1).astype(np.float64)
    e1 = pert.numpy().reshape(n, samples, -1).astype(np.float64)
    norm = np.maximum(np.linalg.norm(e0, axis=2), 1e-12)
    return (np.linalg.norm(e1 - e0, axis=2) / norm).max(axis=1)
