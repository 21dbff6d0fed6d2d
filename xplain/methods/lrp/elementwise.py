"""The LRP rules of element-wise layers: ``pass`` and ``gate`` (docs/architecture.md §3).

Both replace a layer's output in a forward hook by a tensor of the same value whose gradient
carries the rule. An in-place layer (``nn.ReLU6(inplace=True)``, ``nn.Hardswish(inplace=True)``,
``nn.SiLU(inplace=True)``) overwrites its input, which the rule needs: :func:`keep_input` hands it
a copy to overwrite instead and keeps the original.
"""
from __future__ import annotations

from typing import Any

from ...backend import LayerInfo
from ...errors import LayerError
from .kernels import LRPKernels


def pass_ratio(B: Any, K: LRPKernels, a: Any, y: Any, eps: float, at_zero: float, info: LayerInfo) -> Any:
    """``(y − f(0)) / stab(a)`` for ``y = f(a)`` element-wise: the pass rule's factor from the
    output gradient to the input gradient.

    Pass: ``R_a = R_y − f(0)·g`` (relevance passes unchanged; a constant offset ``f(0)``, as of
    a sigmoid, is absorbed like a bias). ``(y − f(0)) / a`` is bounded for every activation of
    ``xplain.backend.ACTIVATIONS`` (by the largest slope of ``f``), so the gradient stays finite
    where ``a`` is near 0; the stabiliser ``ε`` (``stab(a) = a ± ε``) absorbs
    ``(y − f(0))·ε/(|a| + ε)·g`` there."""
    if B.shape(a) != B.shape(y):  # the gradient is routed element by element
        raise LayerError(f"the 'pass' rule needs an element-wise layer, but {info.name!r} "
                         f"({info.type_name}) maps {B.shape(a)} to {B.shape(y)}; use 'epsilon' there")
    ys = B.stop_gradient(y)
    return K.signed_ratio(ys if at_zero == 0.0 else ys - at_zero, B.stop_gradient(a), eps)


def pass_through(B: Any, K: LRPKernels, a: Any, y: Any, ratio: Any) -> Any:
    """Pass as a replacement of ``y``: its value, and ``g · ratio`` (:func:`pass_ratio`, handed
    over) as the gradient into ``a``."""
    return K.replace_gradient(B.stop_gradient(y), [(a, ratio)])


def gate(B: Any, y: Any) -> Any:
    """Gate: the output as a constant (no gradient into the gate's branch)."""
    return B.stop_gradient(y)


def keep_input(stash: list) -> Any:
    """A forward pre-hook for an in-place layer: the layer gets a copy of its input to
    overwrite; the original is pushed on ``stash`` (a stack: a reused module nests no calls,
    but runs several times per forward)."""
    def pre_hook(_layer: Any, inputs: tuple) -> tuple | None:
        if not inputs:
            return None
        stash.append(inputs[0])
        return (inputs[0] + 0.0,) + tuple(inputs[1:])
    return pre_hook
