"""Listing a model's layers, with the output shape each one produces on a probe input.

``xplain.layers(model, input_shape=(1, 3, 224, 224))`` answers "which names can I pass as
``layer=``?" for the CAM family (and every other method that takes a layer): the dotted names as
the framework spells them (``"layer4"``, ``"features.35"``), the neutral kind, and — when an
input shape is given — the output shape, how often the layer runs per forward pass and, for 4-D
outputs, the layout: ``(N, C, h, w)`` or channels-last ``(N, h, w, C)`` (Swin, ConvNeXt's inner
blocks), proven from the layer's kind and parameters, the input's grid and what the tensor was
computed from (:func:`decide_layout`). Layers whose output is a 4-D map of known layout with more
than one spatial position are the CAM candidates (``spatial=True``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np

from .backends import backend_for
from .checks import call_model
from .errors import InputError, ModelError

#: Pooling layers that end a network's feature extractor. Their (often constant, upsampled)
#: output is never a useful CAM layer, so the automatic choice skips them.
HEAD_POOLS = ("adaptive_avgpool", "adaptive_maxpool")

#: The two ways a 4-D feature map can hold its axes: ``(N, C, h, w)`` (convolutions, the
#: convention of xplain's image inputs) and ``(N, h, w, C)`` (what a linear layer or a LayerNorm
#: over the last axis produces: Swin, ConvNeXt's inner blocks).
CHANNELS_FIRST, CHANNELS_LAST = "channels_first", "channels_last"
LAYOUTS = (CHANNELS_FIRST, CHANNELS_LAST)

#: Kinds whose output keeps the layout of their input (element-wise ops; pooling keeps the
#: axes it pools), so the layout is inherited from whatever produced the input.
KEEPS_LAYOUT = ("relu", "activation", "dropout", "identity", "maxpool", "avgpool",
                "adaptive_avgpool", "adaptive_maxpool")


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
            :func:`decide_layout`; ``None`` when not 4-D or when nothing tells them apart.
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
        s = self.output_shape
        if s is None or len(s) != 4 or self.layout is None:
            return None
        return (s[2], s[3]) if self.layout == CHANNELS_FIRST else (s[1], s[2])

    @property
    def spatial(self) -> bool:
        """A CAM candidate: a 4-D output of known layout with ``h * w > 1``, called once."""
        hw = self.map_size
        return hw is not None and hw[0] * hw[1] > 1 and self.calls == 1


# ---- layouts -----------------------------------------------------------------------------------
def _on_grid(h: int, w: int, grid: tuple[int, int]) -> bool:
    """Whether an ``h x w`` map is the input's ``H x W`` grid scaled by one factor: some ``s``
    with ``|h - H/s| <= 1`` and ``|w - W/s| <= 1`` (strides, paddings and rounding move each
    side by less than one cell at the map's scale)."""
    H, W = grid
    low = max((h - 1) / H, (w - 1) / W)  # bounds on 1/s from each side
    high = min((h + 1) / H, (w + 1) / W)
    return low <= high and high > 0


def plausible_layouts(shape: Sequence[int], grid: tuple[int, int] | None) -> tuple[str, ...]:
    """The readings of a 4-D ``shape`` whose map lies on the input's grid (:func:`_on_grid`):
    channels-first puts the map on axes 2, 3, channels-last on axes 1, 2. Both for a square
    input whose channel count is about the map's side; neither for shapes no scaling explains
    (or without an image ``grid``)."""
    if grid is None:
        return ()
    return tuple(lay for lay, (h, w) in ((CHANNELS_FIRST, shape[2:4]), (CHANNELS_LAST, shape[1:3]))
                 if _on_grid(int(h), int(w), grid))


def _axis_of(n: int | None, shape: Sequence[int], default: str | None) -> str | None:
    """Which channel axis a per-channel size ``n`` names in a 4-D ``shape``: axis 1
    (channels-first) or 3 (channels-last); ``default`` when it matches both."""
    if n is None:
        return None
    first, last = n == shape[1], n == shape[3]
    if first and last:
        return default
    return CHANNELS_FIRST if first else CHANNELS_LAST if last else None


def own_layout(B: Any, info: Any, shape: Sequence[int]) -> tuple[str | None, str]:
    """What a layer's kind and parameters prove about the layout of its 4-D output ``shape``.

    * linear: channels-last — it acts on the last axis, whatever the tensor's rank;
    * conv, batchnorm: the axis holding their channel count (``weight``'s first dimension, the
      running mean's length); both axes match only when channels equal the map's width, and then
      the frameworks' default layout for these kinds, channels-first, is taken;
    * a leaf of unknown kind whose per-channel parameters (one non-1 dimension, all the same
      size: LayerNorm, GroupNorm, ConvNeXt's LayerNorm2d) match exactly one of the two axes.

    Returns ``(layout or None, the evidence in words)``.
    """
    def size(t: Any) -> int | None:
        if t is None or not B.is_tensor(t):
            return None
        dims = [d for d in B.shape(t) if d != 1]
        return dims[0] if len(dims) == 1 else None

    if info.kind == "linear":
        return CHANNELS_LAST, "a linear layer acts on the last axis"
    if info.kind in ("conv", "batchnorm"):
        weight = info.params.get("weight")
        if info.kind == "conv":  # neutral layout (out, in / groups, kh, kw)
            n = B.shape(weight)[0] if B.is_tensor(weight) else None
        else:  # affine weight, else running mean: one value per channel
            n = size(weight) or size(info.params.get("running_mean"))
        lay = _axis_of(n, shape, CHANNELS_FIRST)
        return lay, (f"its {n} channels sit on axis {1 if lay == CHANNELS_FIRST else 3}"
                     if lay else "")
    if info.kind == "other" and not info.has_children and info.params:
        sizes = {size(t) for t in info.params.values()}
        if len(sizes) == 1 and None not in sizes:
            n = sizes.pop()
            lay = _axis_of(n, shape, None)
            if lay is not None:
                return lay, (f"its per-channel parameters of size {n} match axis "
                             f"{1 if lay == CHANNELS_FIRST else 3}")
    return None, ""


def decide_layout(own: str | None, why: str, inherited: str | None,
                  plausible: tuple[str, ...]) -> tuple[str | None, str]:
    """The layout of a 4-D output from the evidence, or ``None`` with the reason.

    In order: the layer's own kind and parameters (:func:`own_layout`), unless the map would
    then lie off the input's grid while the other reading lies on it (a contradiction, not
    decided); else the one reading that puts the map on the input's grid
    (:func:`plausible_layouts`); else the layout inherited from the layer's input or from the
    child that produced the same tensor (``inherited``, found by the probe).
    """
    if own is not None:
        if plausible and own not in plausible:
            return None, (f"{why}, so it would be {own}, but only the {plausible[0]} reading puts "
                          f"its map on the input's grid")
        return own, why
    if len(plausible) == 1:
        return plausible[0], f"only the {plausible[0]} reading puts its map on the input's grid"
    if inherited is not None and (inherited in plausible or not plausible):
        return inherited, f"it keeps the {inherited} layout of the tensor it was computed from"
    if plausible:
        return None, ("both readings put its map on the input's grid (channels about as many as "
                      "the map is wide) and its kind and parameters do not tell them apart")
    return None, "neither reading puts its map on the input's grid"


# ---- the probe ---------------------------------------------------------------------------------
class _Origins:
    """Layouts of the tensors seen in one forward pass, by identity (a reference to each keeps
    its ``id`` from being reused during the pass)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[Any, str | None]] = {}

    def put(self, t: Any, layout: str | None) -> None:
        self._seen[id(t)] = (t, layout)

    def get(self, t: Any) -> str | None:
        hit = self._seen.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None


def _grid(B: Any, x: Any) -> tuple[int, int] | None:
    shape = B.shape(x)
    return (shape[2], shape[3]) if len(shape) == 4 else None


def probe(backend: Any, model: Any, x: Any, infos: Sequence[Any], *,
          scores: Callable[[Any], Any] | None = None, seed: int = 0) -> dict[str, LayerSummary]:
    """Run ``model(x)`` once, recording each layer's output shape, number of calls, execution
    order and — for 4-D outputs — layout. ``infos`` are the model's
    :class:`~xplain.backend.LayerInfo`.

    Layouts (:func:`decide_layout`) use the layer's own kind and parameters, the input's grid,
    and provenance by tensor identity: the model input ``x`` is channels-first (xplain's image
    convention), an element-wise or pooling layer keeps the layout of its input, and a layer
    returning a tensor already seen (a container returning its last child's output, an in-place
    op) has that tensor's layout.

    ``scores`` (``x -> (N, classes)`` scores, e.g. :meth:`xplain.run.Run.forward`, which applies
    ``output=``) makes it a gradient pass that also finds the last CAM candidate the scores
    depend on (:attr:`LayerSummary.feeds`): every floating spatial map gets a zero leaf added,
    and the gradient of a random projection of the scores (seeded; a plain sum would vanish
    under a softmax) is taken with respect to all of them in one backward pass. A layer feeds
    the scores exactly when that gradient is nonzero — an auxiliary head, or anything computed
    for another output, gets an exact zero. Candidates (:attr:`LayerSummary.spatial`, not head
    pools) are checked from the last one back to the first that feeds; earlier ones are left
    ``None``, since :func:`last_spatial_layer` does not need them. Without ``scores`` the pass
    runs without gradients.
    """
    B = backend
    out: dict[str, LayerSummary] = {}
    zeros: dict[str, list[Any]] = {}
    counter = [0]
    handles = []
    origins = _Origins()
    grid = _grid(B, x)

    def make(info: Any, summary: LayerSummary) -> Any:
        def hook(_layer: Any, inputs: tuple, output: Any) -> Any:
            summary.calls += 1
            summary.order = counter[0]
            counter[0] += 1
            summary.output_shape = B.shape(output) if B.is_tensor(output) else None
            if summary.output_shape is None or len(summary.output_shape) != 4:
                return None
            _record_layout(B, info, summary, inputs, output, grid, origins)
            if scores is None or not _candidate(summary):
                return None  # no gradient needed
            if not B.dtype_name(output).startswith("float"):
                summary.feeds = False  # indices or masks: no gradient reaches them, no CAM layer
                return None
            z = B.with_grad(B.zeros_like(output))
            zeros.setdefault(info.name, []).append(z)
            replaced = output + z
            origins.put(replaced, summary.layout)
            return replaced
        return hook

    try:
        for info in infos:
            if not info.name:
                continue
            summary = LayerSummary(info.name, info.kind, info.type_name)
            out[info.name] = summary
            handles.append(B.add_forward_hook(info.module, make(info, summary)))
        if grid is not None:
            origins.put(x, CHANNELS_FIRST)
        if scores is None:
            with B.no_grad():
                call_model(B, model, x)
        else:
            with B.enable_grad():
                _record_feeds(B, scores(x), zeros, out, seed)
    finally:
        for h in handles:
            h.remove()
    return out


def _record_layout(B: Any, info: Any, summary: LayerSummary, inputs: tuple, output: Any,
                   grid: tuple[int, int] | None, origins: _Origins) -> None:
    """Decide the layout of a layer's 4-D ``output`` during the probe (see :func:`probe`) and
    remember it for the layers that consume the tensor."""
    inherited = origins.get(output)
    if inherited is None and info.kind in KEEPS_LAYOUT and inputs and B.is_tensor(inputs[0]):
        inherited = origins.get(inputs[0])
    summary.layout, summary.layout_reason = decide_layout(
        *own_layout(B, info, summary.output_shape), inherited,
        plausible_layouts(summary.output_shape, grid))
    origins.put(output, summary.layout)


def _candidate(summary: LayerSummary) -> bool:
    """Whether a layer's output, as recorded so far, could be the CAM default (spatial, not the
    head's global pooling); the call count is checked once the pass is over."""
    hw = summary.map_size
    return hw is not None and hw[0] * hw[1] > 1 and summary.kind not in HEAD_POOLS


def _record_feeds(B: Any, scores: Any, zeros: dict[str, list[Any]],
                  out: dict[str, LayerSummary], seed: int) -> None:
    """Set :attr:`LayerSummary.feeds` from the gradient of ``sum(r * scores)`` (``r`` standard
    normal) at the zero leaves the probe added, for the candidates from the last one back to the
    first that feeds; left ``None`` when the scores have no gradient (a ``no_grad`` forward:
    the caller then has to find out otherwise)."""
    if not zeros or not B.requires_grad(scores):
        return
    r = np.random.default_rng(seed).standard_normal(B.shape(scores)).astype(np.float32)
    names = list(zeros)
    grads = B.grad(B.sum(scores * B.asarray(r, like=scores)), [z for n in names for z in zeros[n]])
    per_layer: dict[str, list[Any]] = {}
    for name, g in zip((n for n in names for _ in zeros[n]), grads):
        per_layer.setdefault(name, []).append(g)
    cands = [out[n] for n in names if out[n].spatial]
    for summary in sorted(cands, key=lambda c: c.order, reverse=True):
        summary.feeds = not all(B.all(g == 0) for g in per_layer[summary.name])
        if summary.feeds:
            return


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

    with borrowed(B, model):
        found = probe(B, model, x, infos)
    return [found[i.name] for i in infos if i.name in found]
