"""Listing a model's layers, with the output shape each one produces on a probe input.

``xplain.layers(model, input_shape=(1, 3, 224, 224))`` answers "which names can I pass as
``layer=``?" for the CAM family (and every other method that takes a layer): the dotted names as
the framework spells them (``"layer4"``, ``"features.35"``), the neutral kind, and — when an
input shape is given — the output shape and how often the layer runs per forward pass. Layers
whose output is a 4-D map with more than one spatial position are the CAM candidates
(``spatial=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np

from .backends import backend_for
from .checks import call_model
from .errors import InputError, ModelError

#: Pooling layers that end a network's feature extractor. Their (often constant, upsampled)
#: output is never a useful CAM layer, so the automatic choice skips them.
HEAD_POOLS = ("adaptive_avgpool", "adaptive_maxpool")


@dataclass
class LayerSummary:
    """One layer of a model.

    Attributes:
        name: dotted name to pass as ``layer=`` (``""`` is the model itself, never listed).
        kind: neutral kind (:data:`xplain.backend.LAYER_KINDS`).
        type_name: the framework class name.
        output_shape: shape of the layer's output on the probe input (``None`` without a probe,
            or when the output is not a single tensor).
        calls: how many times the layer ran during the probe forward (``0`` without a probe;
            ``2`` for a module reused inside a block, such as torchvision's BasicBlock ReLU).
        order: position of the layer's last call in execution order (``-1`` without a probe).
    """

    name: str
    kind: str
    type_name: str
    output_shape: tuple[int, ...] | None = None
    calls: int = 0
    order: int = -1

    @property
    def spatial(self) -> bool:
        """A CAM candidate: 4-D ``(N, C, h, w)`` output with ``h * w > 1``, called once."""
        s = self.output_shape
        return s is not None and len(s) == 4 and s[2] * s[3] > 1 and self.calls == 1


def probe(backend: Any, model: Any, x: Any, infos: Sequence[Any]) -> dict[str, LayerSummary]:
    """Run ``model(x)`` once without gradients, recording each layer's output shape, number of
    calls and execution order. ``infos`` are the model's :class:`~xplain.backend.LayerInfo`."""
    B = backend
    out: dict[str, LayerSummary] = {}
    counter = [0]
    handles = []

    def make(summary: LayerSummary) -> Any:
        def hook(_layer: Any, _inputs: tuple, output: Any) -> None:
            summary.calls += 1
            summary.order = counter[0]
            counter[0] += 1
            summary.output_shape = B.shape(output) if B.is_tensor(output) else None
        return hook

    try:
        for info in infos:
            if not info.name:
                continue
            summary = LayerSummary(info.name, info.kind, info.type_name)
            out[info.name] = summary
            handles.append(B.add_forward_hook(info.module, make(summary)))
        with B.no_grad():
            call_model(B, model, x)
    finally:
        for h in handles:
            h.remove()
    return out


def last_spatial_layer(summaries: dict[str, LayerSummary], *,
                       allow_1x1: bool = False) -> LayerSummary | None:
    """The CAM default layer: the last one (in execution order) whose output is a spatial map
    (see :attr:`LayerSummary.spatial`), skipping head pooling layers. Containers finish after
    their children, so a block (``"layer4"``) wins over its last sub-layer. ``allow_1x1``
    also accepts ``(N, C, 1, 1)`` maps."""
    def ok(s: LayerSummary) -> bool:
        if allow_1x1:
            return (s.output_shape is not None and len(s.output_shape) == 4 and s.calls == 1)
        return s.spatial

    cands = [s for s in summaries.values() if ok(s) and s.kind not in HEAD_POOLS]
    return max(cands, key=lambda s: s.order) if cands else None


def _probe_input(B: Any, model: Any, infos: Sequence[Any], shape: Sequence[int]) -> Any:
    like = None
    for info in infos:
        for p in info.params.values():
            if p is not None and B.is_tensor(p):
                like = p
                break
        if like is not None:
            break
    if like is None:
        raise ModelError("the model has no parameters to take a device/dtype from; pass an "
                         "example input tensor instead of input_shape")
    rng = np.random.default_rng(0)
    return B.asarray(rng.standard_normal(tuple(int(s) for s in shape)).astype(np.float32),
                     like=like)


def layers(model: Any, input_shape: Sequence[int] | Any = None, *,
           backend: str | None = None) -> list[LayerSummary]:
    """The model's named layers (the root excluded), in registration order.

    Args:
        model: a model of any registered backend.
        input_shape: ``(N, C, H, W)`` of a probe input (random normal numbers, on the model's
            device), or an example input tensor; when given, every summary carries its output
            shape, call count and execution order. Without it no forward pass runs.
        backend: force a backend by name instead of detecting it from the model.

    Returns:
        A list of :class:`LayerSummary`; ``[s.name for s in layers(m, shape) if s.spatial]``
        are the layers a CAM method can explain.
    """
    B = backend_for(model, name=backend)
    infos = B.layers(model)
    if input_shape is None:
        return [LayerSummary(i.name, i.kind, i.type_name) for i in infos if i.name]
    if B.is_tensor(input_shape):
        x = input_shape
    else:
        shape = tuple(input_shape)
        if len(shape) < 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in shape):
            raise InputError(f"input_shape={input_shape!r} is not a shape; pass e.g. "
                             f"(1, 3, 224, 224) with the batch dimension first")
        x = _probe_input(B, model, infos, shape)
    from .guard import borrowed

    with borrowed(B, model):
        found = probe(B, model, x, infos)
    return [found[i.name] for i in infos if i.name in found]
