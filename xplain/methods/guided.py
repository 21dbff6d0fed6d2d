"""Guided backpropagation and deconvnet: gradients with a modified ReLU backward pass.

The ReLU layers' outputs are replaced (forward hooks, :mod:`._activations`) by the backend's
custom-VJP op: same forward value, hand-written backward. Hooks see ReLU *layers* (also a
module called twice, as in torchvision's BasicBlock) but not functional ReLUs (``F.relu``,
``paddle.nn.functional.relu``); when no ReLU layer runs yet the model is nonlinear, the
methods refuse instead of silently returning the plain gradient. (A model that mixes ReLU
modules with functional ReLUs cannot be told apart from one with modules only: there the
functional ones keep the ordinary ReLU gradient.)
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..backend import LayerInfo, Tensor
from ..errors import ModelError
from ..run import Run
from ._activations import activation_layers, replaced_outputs

#: ``backward(x, g) -> gradient wrt the ReLU input``, ``x`` the ReLU input, ``g`` upstream.
Rule = Callable[[Run, Tensor, Tensor], Tensor]


def _guided(run: Run, x: Tensor, g: Tensor) -> Tensor:
    # the ordinary ReLU gradient, then only positive signals pass
    return run.backend.where(x > 0, run.backend.relu(g), 0.0)


def _deconv(run: Run, x: Tensor, g: Tensor) -> Tensor:
    # ReLU applied to the upstream signal alone; the forward mask is ignored
    return run.backend.relu(g)


def modified_relu_gradient(run: Run, rule: Rule, name: str) -> Tensor:
    """d target / d input with every ReLU layer's backward replaced by ``rule``."""
    B = run.backend
    infos = activation_layers(run, ("relu",))

    def backward(inputs: tuple, _out: Tensor, g: Tensor) -> tuple:
        return (rule(run, inputs[0], g),)

    relu = B.custom_vjp(lambda z: B.relu(z), backward)

    def replace(_info: LayerInfo, z: Tensor, _y: Tensor) -> Tensor:
        return relu(z)

    t = run.targets
    parts = []
    for sl in run.chunks(B.shape(run.inputs)[0]):
        with replaced_outputs(run, infos, replace) as fired:
            g, _ = run.input_gradient(run.inputs[sl], t[sl])
        if fired[0] == 0:
            _refuse_if_nonlinear(run, name, g, sl)
        parts.append(g)
    return parts[0] if len(parts) == 1 else B.concat(parts, axis=0)


def _refuse_if_nonlinear(run: Run, name: str, g: Tensor, sl: slice) -> None:
    """No ReLU layer ran. That is right for an affine model (its gradient is the same
    everywhere); otherwise the ReLUs are functional calls the hooks cannot see."""
    B = run.backend
    x = run.inputs[sl]
    t = run.targets[sl]
    noise = B.asarray(run.rng.standard_normal(B.shape(x)).astype(np.float32), like=x)
    other, _ = run.input_gradient(B.concat([-x, x + noise], axis=0), np.concatenate([t, t]))
    n = B.shape(x)[0]
    scale = float(B.to_numpy(B.max(B.abs(g)))) + 1e-12
    gap = float(B.to_numpy(B.max(B.abs(B.concat([other[:n] - g, other[n:] - g], axis=0)))))
    if gap > 1e-4 * scale:
        raise ModelError(
            f"{name} changes the backward pass of ReLU layers, but no ReLU layer ran in this "
            f"model although it is nonlinear: its ReLUs are probably functional calls "
            f"(F.relu / paddle.nn.functional.relu / torch.relu) that hooks cannot reach. Use "
            f"ReLU modules (nn.ReLU / paddle.nn.ReLU) in the model, or use 'saliency' for the "
            f"plain gradient")


def guided_backprop(run: Run) -> Tensor:
    """Guided backpropagation: the gradient where every ReLU passes back only positive
    signals at positions its input was positive.

    Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All
    Convolutional Net" (ICLR workshop 2015).

    Returns:
        Tensor of the input's shape (a modified gradient, score units per input unit).
    """
    return modified_relu_gradient(run, _guided, "guided_backprop")


def deconvnet(run: Run) -> Tensor:
    """Deconvnet: the gradient where every ReLU applies a ReLU to the backward signal
    instead of masking it with the forward activation pattern.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014).

    Returns:
        Tensor of the input's shape.
    """
    return modified_relu_gradient(run, _deconv, "deconvnet")


METHODS = {"guided_backprop": guided_backprop, "deconvnet": deconvnet}
