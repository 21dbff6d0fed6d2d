"""Plain-gradient methods: saliency and input × gradient."""
from __future__ import annotations

from typing import Literal

from ..errors import OptionError
from ..run import Run
from ..backend import Tensor

SALIENCY_MODES = ("abs", "raw", "square")


def saliency(run: Run, *, mode: Literal["abs", "raw", "square"] = "abs") -> Tensor:
    """Gradient of the target score with respect to the input.

    Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps" (ICLR workshop 2014).

    Args:
        mode: ``"abs"`` — |∂f/∂x| (the paper's map before the channel max, Captum's default);
            ``"raw"`` — signed ∂f/∂x; ``"square"`` — (∂f/∂x)², as in the MNIST tutorials.

    Returns:
        Tensor of the input's shape, in score units per input unit (squared for ``square``).
    """
    if mode not in SALIENCY_MODES:
        raise OptionError(f"saliency mode={mode!r} is unknown; use one of {SALIENCY_MODES}")
    g, _ = run.input_gradient(run.inputs)
    if mode == "abs":
        return run.backend.abs(g)
    if mode == "square":
        return g * g
    return g


def input_x_gradient(run: Run) -> Tensor:
    """Input times gradient, ``x ⊙ ∂f/∂x``.

    Shrikumar et al., "Not Just a Black Box: Learning Important Features Through Propagating
    Activation Differences" (2016). Equals LRP-0 on ReLU networks without biases.

    Returns:
        Tensor of the input's shape, in score units.
    """
    g, _ = run.input_gradient(run.inputs)
    return run.inputs * g


METHODS = {"saliency": saliency, "input_x_gradient": input_x_gradient}
