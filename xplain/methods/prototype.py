"""Class prototypes by activation maximisation: the input a class likes best.

Gradient ascent (Adam, written with backend ops) on ``f_c(x) − λ‖x − x̄_c‖²``: the class score
pulled toward a per-class mean image, the "what does class 7 look like" picture of the MNIST
interpretability tutorials.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Tensor
from ..errors import OptionError
from ..options import Decay, NonNegativeFloat, PositiveFloat, PositiveInt
from ..run import MethodResult, Run


def _class_means(run: Run, mean_images: Any) -> Tensor | None:
    """``mean_images[targets]`` as a tensor ``(N, ...)``, or None when not given."""
    if mean_images is None:
        return None
    B = run.backend
    x = run.inputs
    sub = B.shape(x)[1:]
    a = B.to_numpy(mean_images) if B.is_tensor(mean_images) else np.asarray(mean_images, dtype=np.float32)
    if a.shape[1:] != sub:
        raise OptionError(f"mean_images has shape {a.shape}; it must hold one image per class, "
                          f"(classes,) + {sub}, e.g. the mean training image of each class")
    t = run.targets
    if t.max() >= a.shape[0]:
        raise OptionError(f"mean_images holds {a.shape[0]} classes but target {int(t.max())} "
                          f"was asked for; pass one mean image per class of the model")
    return B.asarray(a[t].astype(np.float32), like=x)


def prototype(run: Run, *, steps: PositiveInt = 200, lr: PositiveFloat = 0.01,
              l2: NonNegativeFloat = 0.05, mean_images: Any = None, beta1: Decay = 0.9,
              beta2: Decay = 0.999, eps: PositiveFloat = 1e-8) -> MethodResult:
    """Activation maximisation: synthesise, for each target class, an input maximising
    ``f_c(x) − λ‖x − x̄_c‖²`` by ``steps`` Adam ascent steps.

    Erhan, Bengio, Courville & Vincent, "Visualizing Higher-Layer Features of a Deep Network"
    (2009); with the mean-image prior of Montavon, Samek & Müller, "Methods for Interpreting
    and Understanding Deep Neural Networks" (Digital Signal Processing, 2018), §3. Adam: Kingma
    & Ba (ICLR 2015).

    Args:
        steps: ascent steps (all targets of a chunk are optimised in one batch per step).
        lr: Adam step size, in input units per step.
        l2: λ, the weight of the pull toward ``x̄_c``.
        mean_images: ``(classes, ...)`` mean image per class (tensor or array), used as start
            point and as ``x̄_c``; when omitted the inputs are both.
        beta1, beta2, eps: Adam's moment decay rates and denominator guard.

    Returns:
        The synthesised inputs, shaped like the inputs (one per target; ``target`` selects the
        classes). Extras: ``scores`` (final target logits) and ``probabilities`` (softmax).
    """
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise OptionError(f"steps={steps!r} must be a positive int (e.g. 200)")
    if not lr > 0 or not l2 >= 0:
        raise OptionError(f"lr={lr!r} must be > 0 and l2={l2!r} >= 0")
    B = run.backend
    x_all = run.inputs
    t_all = run.targets
    means = _class_means(run, mean_images)
    anchor_all = x_all if means is None else means
    results, scores, probs = [], [], []
    for sl in run.chunks(B.shape(x_all)[0]):
        anchor = B.stop_gradient(anchor_all[sl])
        t = t_all[sl]
        x = anchor + 0.0
        m = B.zeros_like(x)
        v = B.zeros_like(x)
        for k in run.progress(range(1, steps + 1), total=steps, desc="prototype"):
            g, _ = run.input_gradient(x, t)
            g = g - (2.0 * l2) * (x - anchor)
            m = beta1 * m + (1.0 - beta1) * g
            v = beta2 * v + (1.0 - beta2) * g * g
            mhat = m / (1.0 - beta1 ** k)
            vhat = v / (1.0 - beta2 ** k)
            x = B.stop_gradient(x + lr * mhat / (B.sqrt(vhat) + eps))
        with B.no_grad():
            out = run.forward(x)
            scores.append(run.target_outputs(out, t))
            probs.append(run.target_outputs(B.softmax(out, axis=1), t))
        results.append(x)

    def cat(parts: list) -> Tensor:
        return parts[0] if len(parts) == 1 else B.concat(parts, axis=0)

    return MethodResult(cat(results), {"scores": cat(scores), "probabilities": cat(probs)})


METHODS = {"prototype": prototype}
