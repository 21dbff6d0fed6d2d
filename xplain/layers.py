"""Listing a model's layers, with the output shape each one produces on a probe input.

``xplain.layers(model, input_shape=(1, 3, 224, 224))`` answers "which names can I pass as
``layer=``?" for the CAM family (and every other method that takes a layer): the dotted names as
the framework spells them (``"layer4"``, ``"features.35"``), the neutral kind, and — when an
input shape is given — the output shape, how often the layer runs per forward pass and, for 4-D
outputs, the layout: ``(N, C, h, w)`` or channels-last ``(N, h, w, C)`` (Swin, ConvNeXt's inner
blocks), proven from the layer's kind and parameters, the input's grid and what the tensor was
computed from (:func:`decide_layout`). Layers whose output is a 4-D map of known layout with more
than one spatial position are the CAM candidates (``spatial=True``). All of it is read from the
model's observation (:mod:`xplain.observe`), the one batch-1 pass every client shares.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from .backends import backend_for
from .errors import InputError, ModelError
from .layout import (CHANNELS_FIRST, CHANNELS_LAST, HEAD_POOLS, KEEPS_LAYOUT, LAYOUTS,
                     decide_layout, map_size, own_layout, plausible_layouts)
from .observe import Observation, batched_shape, observe, observe_model

# the layout proofs moved to xplain.layout; their names stay importable from here
__all__ = ["CHANNELS_FIRST", "CHANNELS_LAST", "HEAD_POOLS", "KEEPS_LAYOUT", "LAYOUTS",
           "LayerSummary", "decide_layout", "last_spatial_layer", "layers", "own_layout",
           "plausible_layouts", "probe", "summarise"]

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
        layout: for a 4-D output, :data:`CHANNELS_FIRST` or :data:`CHANNELS_LAST` as proven by
            :func:`decide_layout`; for a token sequence ``(N, T, C)``, ``"tokens:k:hxw"``
            (:func:`xplain.layout.token_layout`); ``None`` otherwise or when nothing decides.
        layout_reason: why (the evidence, or what is missing), for messages.
        feeds: whether the explained scores depend on this layer's output (a nonzero gradient
            reaches it); ``None`` when the probe did not ask (listing, non-float or non-4-D
            outputs, a model whose output has no gradient).
    """

    name: str
    kind: str
    type_name: str
    output_shape: tuple[int, ...] | None = None
    calls: int = 0
    order: int = -1
    layout: str | None = None
    layout_reason: str = ""
    feeds: bool | None = None

    @property
    def map_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of a 4-D output read with its :attr:`layout` (``None`` if unknown)."""
        return map_size(self.output_shape, self.layout)

    @property
    def spatial(self) -> bool:
        """A CAM candidate: a 4-D output or a token sequence of known layout with ``h * w > 1``,
        called once."""
        hw = self.map_size
        return hw is not None and hw[0] * hw[1] > 1 and self.calls == 1


# ---- from the observation ----------------------------------------------------------------------
def summarise(obs: Observation, infos: Sequence[Any], *, feeds: bool = True,
              batch: int = 1) -> dict[str, LayerSummary]:
    """A :class:`LayerSummary` per named layer (the root excluded) from an observation: calls,
    the position of the last call in execution order, the last call's output shape (batch axis
    as :func:`xplain.observe.batched_shape` scales it to ``batch``) and the layout of its last
    4-D output; with ``feeds``, what the observation's scores check found. Fresh objects: a
    caller may fill in :attr:`LayerSummary.feeds` itself."""
    out = {i.name: LayerSummary(i.name, i.kind, i.type_name) for i in infos if i.name}
    for c in obs.calls:
        s = out.get(c.name)
        if s is None:
            continue
        s.calls += 1
        s.order = c.index
        s.output_shape = None if c.output is None else batched_shape(c.output.shape, batch)
        if c.output is not None and len(c.output.shape) in (3, 4):
            s.layout, s.layout_reason = c.layout, c.layout_reason
    if feeds:
        for name, value in obs.feeds.items():
            if name in out:
                out[name].feeds = value
    return out


def probe(backend: Any, model: Any, x: Any, infos: Sequence[Any], *,
          scores: Callable[[Any], Any] | None = None, seed: int = 0) -> dict[str, LayerSummary]:
    """Each layer's output shape, number of calls, execution order and — for 4-D outputs —
    layout, from the model's observation (:mod:`xplain.observe`: one batch-1 pass on ``x[:1]``,
    shared with every other client and cached per model and input shape; shapes are reported at
    ``x``'s batch). ``infos`` are the model's :class:`~xplain.backend.LayerInfo`.

    Layouts (:func:`decide_layout`) use the layer's own kind and parameters, the input's grid,
    and provenance by tensor identity: the model input ``x`` is channels-first (xplain's image
    convention), an element-wise or pooling layer keeps the layout of its input, and a layer
    returning a tensor already seen (a container returning its last child's output, an in-place
    op) has that tensor's layout.

    ``scores`` (``x -> (N, classes)`` scores, e.g. :meth:`xplain.run.Run.forward`, which applies
    ``output=``) also reports which CAM candidate the scores depend on
    (:attr:`LayerSummary.feeds`): every floating spatial map gets a zero leaf added, and the
    gradient of a random projection of the scores (seeded; a plain sum would vanish under a
    softmax) is taken with respect to them, from the last one back. A layer feeds the
    scores exactly when that gradient is nonzero — an auxiliary head, or anything computed for
    another output, gets an exact zero. Candidates (:attr:`LayerSummary.spatial`, not head
    pools) are checked from the last one back to the first that feeds; earlier ones are left
    ``None``, since :func:`last_spatial_layer` does not need them. A function says nothing
    about what it selects, so its observation is not reused for feeds. Without ``scores``,
    ``feeds`` stays ``None`` (the shared observation checks the model's own output).
    """
    n = backend.shape(x)[0]
    if scores is None:
        obs = observe_model(backend, model, x, infos)
    else:
        obs = observe(backend, model, x, infos, scores=scores, need_feeds=True, seed=seed)
    return summarise(obs, infos, feeds=scores is not None, batch=n)


def last_spatial_layer(summaries: dict[str, LayerSummary]) -> LayerSummary | None:
    """The CAM default layer: the last one (in execution order) whose output is a spatial map
    (see :attr:`LayerSummary.spatial`) that the explained scores depend on
    (:attr:`LayerSummary.feeds` not ``False``), skipping head pooling layers. Containers finish
    after their children, so a block (``"layer4"``) wins over its last sub-layer."""
    cands = [s for s in summaries.values()
             if s.spatial and s.feeds is not False and s.kind not in HEAD_POOLS]
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
            shape, call count, execution order and, for 4-D outputs, layout. Without it no
            forward pass runs.
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

    with B.gradient_lock(), borrowed(B, model):  # the shared pass takes a gradient (see observe)
        found = probe(B, model, x, infos)
    return [found[i.name] for i in infos if i.name in found]
