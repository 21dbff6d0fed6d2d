"""Replacing the output of activation layers (ReLU and friends) with forward hooks.

Guided backprop, deconvnet and DeepLIFT change how the gradient passes an activation. They do it
by replacing each activation layer's output with a tensor of the same value whose graph carries
the modified gradient, built from the layer's *input*. Forward hooks fire on every call of a
layer, so a module used twice (torchvision's BasicBlock calls one ``nn.ReLU`` twice) is covered
on both calls.

An in-place layer (``nn.ReLU(inplace=True)``) overwrites its input, so a pre-hook keeps the
original input and hands the layer a copy to overwrite instead.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any
from collections.abc import Callable, Iterator

from ..backend import ACTIVATIONS, LayerInfo, Tensor
from ..run import Run



def is_elementwise(info: LayerInfo) -> bool:
    """A ReLU, or an activation layer whose function is element-wise (not softmax, GLU ...)."""
    return info.kind == "relu" or (info.kind == "activation"
                                   and ACTIVATIONS.get(info.attrs.get("function"), False))

#: ``replace(info, x, y) -> new output``: ``x`` the layer's input, ``y`` its output.
Replace = Callable[[LayerInfo, Tensor, Tensor], Tensor]


def activation_layers(run: Run, kinds: tuple[str, ...]) -> list[LayerInfo]:
    """Leaf layers of the given kinds, each module once (a module registered under two names
    appears once), element-wise activations only."""
    seen: set[int] = set()
    found = []
    for info in run.layers():
        if info.kind in kinds and not info.has_children and is_elementwise(info):
            if id(info.module) not in seen:
                seen.add(id(info.module))
                found.append(info)
    return found


@contextmanager
def replaced_outputs(run: Run, infos: list[LayerInfo], replace: Replace) -> Iterator[list[int]]:
    """Within the block, every call of a layer in ``infos`` returns ``replace(info, x, y)``.

    Yields a one-element list counting the calls seen (how many times a hook fired), so that a
    method can tell whether the layers it needs were reached at all. Hooks are removed on exit,
    also on error.
    """
    B = run.backend
    fired = [0]
    handles = []
    stash: dict[int, list[Tensor]] = {}

    def make(info: LayerInfo) -> tuple[Callable, Callable]:
        key = id(info.module)
        inplace = bool(info.attrs.get("inplace"))

        def pre(_layer: Any, inputs: tuple) -> tuple | None:
            stash.setdefault(key, []).append(inputs[0])
            if inplace:  # let the layer overwrite a copy; keep the original for the rule
                return (inputs[0] + 0.0,) + tuple(inputs[1:])
            return None

        def post(_layer: Any, _inputs: tuple, output: Tensor) -> Tensor:
            x = stash[key].pop()
            fired[0] += 1
            return replace(info, x, output)

        return pre, post

    try:
        for info in infos:
            pre, post = make(info)
            handles.append(B.add_forward_pre_hook(info.module, pre))
            handles.append(B.add_forward_hook(info.module, post))
        yield fired
    finally:
        for h in handles:
            h.remove()
