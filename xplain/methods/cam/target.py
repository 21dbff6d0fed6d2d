"""Which layer(s) a CAM method explains, in which layout, and capturing their activations and
gradients.

A layer is given by dotted name (``"layer4"``, ``"features.35"``), by index syntax
(``"features[35]"``, ``"features[-1]"``, turned into dotted names), by the layer object itself
(``model.layer4``), as a list of those (several layers, fused), or ``None``: the last layer
whose output is a spatial map the explained scores depend on (:func:`default_layer`).

Layouts: CAM works on ``(N, C, h, w)``. A layer may output ``(N, h, w, C)`` (Swin, the linear
layers and LayerNorms inside ConvNeXt blocks); its activations and gradients are transposed to
channels-first after capture (:func:`to_channels_first`) and back where a method substitutes
them (Ablation-CAM). Which layout a layer has is proven, never guessed
(:func:`xplain.layers.decide_layout`), or given with ``layout=``; otherwise the call is refused.
"""
from __future__ import annotations

import difflib
import re
import weakref
from contextlib import contextmanager
from typing import Any, Literal
from collections.abc import Iterator, Sequence

import numpy as np

from ...backend import LayerInfo, Tensor
from ...errors import LayerError
from ...layers import LayerSummary, last_spatial_layer, summarise
from ...layout import CHANNELS_FIRST, HEAD_POOLS, TOKENS, decide_layout, describe, is_tokens, own_layout, \
    parse_tokens, plausible_layouts, token_layout
from ...observe import Observation, observe_run
from ...run import Run

_INDEX = re.compile(r"\[(-?\d+)\]")

#: The ``layout=`` option of every CAM method (``None``: detected).
Layout = Literal["channels_first", "channels_last", "tokens"]

#: What the perturbation check (:func:`_feeding_by_perturbation`) found, per observation
#: (weakly): the observation is cached per model, input shape and selector, and so is this.
_PERTURBED: "weakref.WeakKeyDictionary[Observation, dict[str, bool]]" = weakref.WeakKeyDictionary()


def _probe(run: Run) -> dict[str, LayerSummary]:
    """The layers' output shapes, layouts and whether they feed the scores, from the model's
    observation scored by ``run.forward`` (``output=`` applied; :func:`xplain.observe.observe_run`,
    one batch-1 gradient pass shared with LRP, the memory estimate, the listing and the summary,
    once per model, input shape and selector)."""
    cache = getattr(run, "_cam_probe", None)
    if cache is None:
        obs = observe_run(run, need_feeds=True)
        cache = summarise(obs, run.layers())
        for name, feeds in _PERTURBED.get(obs, {}).items():
            cache[name].feeds = feeds
        run._cam_probe = cache  # one probe per run, shared by resolution and checks
        run._cam_observation = obs
        if not run.per_sample_bytes_known:  # a selector function's observation is not cached
            run.set_per_sample_bytes(*obs.leaf_output_bytes())
    return cache


def _feeding_by_perturbation(run: Run, cands: Sequence[LayerSummary]) -> LayerSummary | None:
    """For a model whose scores carry no gradient (a ``no_grad`` forward; the gradient-free CAMs
    still explain it): the last candidate, in execution order, whose output changes the scores
    when noise is added to it, found by batch-1 forward passes from the last candidate back."""
    B = run.backend
    x = run.inputs[:1]
    rng = np.random.default_rng(0)
    with B.no_grad():
        base = B.to_numpy(run.forward(x))

    def noisy(_layer: Any, _inputs: tuple, out: Any) -> Any:
        scale = float(B.to_numpy(B.max(B.abs(out)))) + 1.0  # well above rounding at its scale
        return out + B.asarray(rng.standard_normal(B.shape(out)) * scale, like=out)

    by_name = {i.name: i for i in run.layers()}
    for s in sorted(cands, key=lambda c: c.order, reverse=True):
        handle = B.add_forward_hook(by_name[s.name].module, noisy)
        try:
            with B.no_grad():
                got = B.to_numpy(run.forward(x))
        finally:
            handle.remove()
        s.feeds = not np.array_equal(got, base)
        _PERTURBED.setdefault(run._cam_observation, {})[s.name] = s.feeds
        if s.feeds:
            return s
    return None


def default_layer(run: Run) -> LayerInfo:
    """The CAM default layer: the last layer, in execution order, whose output is a spatial map
    of known layout (``h * w > 1`` at this input, called once, not the head's global pooling)
    and that the explained scores depend on.

    "Depend on" is decided by the observation's gradient (:mod:`xplain.observe`): one batch-1
    forward pass with a zero leaf added to every candidate's output, and backward passes of a
    random projection of the scores that ``output=`` selects, from the last candidate back to
    the first that feeds (usually the last: a pass through the head alone), cached per model,
    input shape and selector and shared with every other client of the observation. Autodiff
    creates no gradient path where the scores do not depend on a tensor, so a layer whose output
    does not reach them — an auxiliary head run for another output (paddle's GoogLeNet computes
    its two auxiliary classifiers after the main one), a branch computed and dropped — gets an
    exactly zero gradient and is never chosen (its Grad-CAM would be all zero). A layer that
    does reach them gets a nonzero gradient for a random projection, unless dead units (ReLUs
    off at the probe input) block every path — then its map is zero there too, and an earlier
    layer is taken. The cost is paid once per model, input shape and selector, about two
    batch-1 forward passes. For a model whose scores carry no gradient the same is checked by
    perturbing candidates
    (:func:`_feeding_by_perturbation`).
    """
    summaries = _probe(run)
    best = last_spatial_layer(summaries)
    if best is not None and best.feeds is None:
        cands = [s for s in summaries.values()
                 if s.spatial and s.feeds is not False and s.kind not in HEAD_POOLS]
        best = _feeding_by_perturbation(run, cands)
    if best is None:
        raise LayerError(_no_default_reason(summaries))
    return next(i for i in run.layers() if i.name == best.name)


def _no_default_reason(summaries: dict[str, LayerSummary]) -> str:
    unknown = [s for s in summaries.values() if s.output_shape is not None
               and len(s.output_shape) == 4 and s.layout is None and s.feeds is not False]
    if unknown:
        names = [s.name for s in sorted(unknown, key=lambda s: -s.order)][:4]
        return (f"no layer of this model outputs a spatial map of known layout that feeds the "
                f"explained scores; the 4-D outputs of {names} could be (N, C, h, w) or "
                f"(N, h, w, C): {unknown[0].layout_reason}. Pass layer= one of them and "
                f"layout='channels_first' or 'channels_last'")
    return ("no layer of this model outputs a spatial map (N, C, h, w) with h*w > 1 on this "
            "input that feeds the explained scores; CAM methods need a convolutional layer — "
            "use a larger input or pass layer= explicitly")


def _children(run: Run, parent: str) -> list[str]:
    prefix = parent + "." if parent else ""
    return [i.name for i in run.layers()
            if i.name.startswith(prefix) and "." not in i.name[len(prefix):] and i.name != parent]


def _normalise_name(run: Run, spec: str) -> str:
    """``"features[35]"`` → ``"features.35"``; ``"features[-1]"`` → the last child's name."""
    name = spec.strip()
    while True:
        m = _INDEX.search(name)
        if not m:
            return name
        parent = name[:m.start()]
        idx = int(m.group(1))
        if idx < 0:
            kids = _children(run, parent)
            if -idx > len(kids):
                raise LayerError(f"layer {spec!r}: {parent or 'the model'} has only {len(kids)} "
                                 f"sub-layers; list them with xplain.layers(model)")
            child = kids[idx]
        else:
            child = (parent + "." if parent else "") + str(idx)
        name = child + name[m.end():]


def _find(run: Run, spec: Any) -> LayerInfo:
    if isinstance(spec, str):
        name = _normalise_name(run, spec)
        for info in run.layers():
            if info.name == name and name:
                return info
        names = [i.name for i in run.layers() if i.name]
        close = difflib.get_close_matches(name, names, n=6, cutoff=0.5)
        leaf = name.split(".")[-1]
        close += [n for n in names if n.endswith("." + leaf) and n not in close][:6 - len(close)]
        raise LayerError(f"the model has no layer named {spec!r}; "
                         + (f"close names: {close}; " if close else "")
                         + "list all names with xplain.layers(model, input_shape)")
    return run.layer(spec)  # by object (raises LayerError when not part of the model)


def resolve_layers(run: Run, spec: Any) -> list[LayerInfo]:
    """The target layer(s) for ``spec`` (see module docstring). That each produces one 4-D
    tensor, once per forward pass, is checked while capturing (no extra forward pass for an
    explicit layer; the automatic choice probes once at batch 1, see :func:`default_layer`)."""
    if spec is None:
        return [default_layer(run)]
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise LayerError("layer=[] names no layer; pass a name, a layer object, or None")
    infos = [_find(run, s) for s in specs]
    if len({id(i.module) for i in infos}) != len(infos):
        raise LayerError(f"layer={spec!r} names the same layer twice; name each layer once")
    return infos


# ---- layouts -----------------------------------------------------------------------------------
def layer_layout(run: Run, info: LayerInfo, shape: Sequence[int], layout: str | None) -> str:
    """The layout of ``info``'s output of ``shape``: for a 4-D map, ``layout`` when given
    (refused when the layer's evidence proves the other one), else proven by
    :func:`xplain.layers.decide_layout` — from the layer's kind, parameters and the input's grid
    without a forward pass, and from the probe's provenance only when those leave it open; for a
    token sequence ``(N, T, C)``, its prefix and grid (:func:`xplain.layout.token_layout`).
    Refused with :class:`~xplain.errors.LayerError` when nothing decides. Decided once per layer
    and run."""
    decided = run.__dict__.setdefault("_cam_layouts", {})
    if info.name in decided:
        return decided[info.name]
    B = run.backend
    in_shape = B.shape(run.inputs)
    grid = (in_shape[2], in_shape[3]) if len(in_shape) == 4 else None
    shown = f"(N, {', '.join(str(d) for d in shape[1:])})"
    if len(shape) == 3:
        auto, reason = token_layout(shape, grid)
        if layout not in (None, TOKENS):
            raise LayerError(f"layout={layout!r} is for 4-D maps; layer {info.name!r} outputs a "
                             f"sequence {shown}: pass layout='tokens' or leave it out")
        if auto is None:
            raise LayerError(f"layer {info.name!r}'s output {shown} is not a token grid CAM can "
                             f"read: {reason}; pick a layer with a 4-D map or a token sequence "
                             f"whose grid is unambiguous at this input size")
        decided[info.name] = auto
        return auto
    if layout == TOKENS:
        raise LayerError(f"layout='tokens' is for token sequences (N, T, C); layer {info.name!r} "
                         f"outputs {shown}")
    own = own_layout(B, info, shape)
    auto, reason = decide_layout(*own, None, plausible_layouts(shape, grid))
    # without evidence of its own, the probe's reading (what the tensor was computed from:
    # inherited layouts, attention weights after token sequences) decides
    if (auto is None or own[0] is None) and layout is None:
        found = _probe(run).get(info.name)
        if found is not None and tuple(found.output_shape or ())[1:] == tuple(shape)[1:]:
            auto, reason = found.layout, found.layout_reason or reason
    if layout is not None and auto is not None and layout != auto:
        raise LayerError(f"layout={layout!r} contradicts layer {info.name!r}: its output {shown} "
                         f"is {auto} ({reason}); remove layout= or pass layout={auto!r}")
    chosen = layout or auto
    if chosen is None and "attention weights" in reason:
        raise LayerError(f"layer {info.name!r}'s output {shown} is no map CAM can read: {reason}; "
                         f"pick a layer whose output is a map or a token sequence (the layer "
                         f"before the attention)")
    if chosen is None:
        raise LayerError(f"cannot tell whether layer {info.name!r}'s output {shown} is (N, C, h, w) "
                         f"or channels-last (N, h, w, C): {reason}; pass "
                         f"layout='channels_first' or layout='channels_last'")
    decided[info.name] = chosen
    return chosen


def to_channels_first(run: Run, info: LayerInfo, t: Tensor, layout: str | None) -> Tensor:
    """A captured activation or gradient of ``info`` as ``(N, C, h, w)`` (see
    :func:`layer_layout`): a token sequence's prefix tokens (class, registers) dropped and its
    grid tokens laid out row by row, as pytorch-grad-cam's ViT ``reshape_transform`` does."""
    B = run.backend
    chosen = layer_layout(run, info, B.shape(t), layout)
    if chosen == CHANNELS_FIRST:
        return t
    if is_tokens(chosen):
        k, (h, w) = parse_tokens(chosen)
        n, _, c = B.shape(t)
        return B.permute_dims(B.reshape(t[:, k:], (n, h, w, c)), (0, 3, 1, 2))
    return B.permute_dims(t, (0, 3, 1, 2))


def from_channels_first(run: Run, info: LayerInfo, t: Tensor) -> Tensor:
    """``(N, C, h, w)`` back in ``info``'s own layout, to substitute for its output (after
    :func:`to_channels_first` decided the layout)."""
    chosen = run.__dict__["_cam_layouts"][info.name]
    if chosen == CHANNELS_FIRST:
        return t
    if is_tokens(chosen):
        raise LayerError(f"layer {info.name!r} outputs a token sequence ({describe(chosen)}); "
                         f"methods that substitute a layer's output (Ablation-CAM) would have to "
                         f"invent its prefix tokens. Use a gradient CAM (gradcam, gradcampp, "
                         f"layercam), Score-CAM, or a layer with a 4-D map")
    return run.backend.permute_dims(t, (0, 2, 3, 1))


@contextmanager
def captured(run: Run, infos: Sequence[LayerInfo], *, grad: bool,
             replace: dict[str, Tensor] | None = None) -> Iterator[dict[str, dict[str, Tensor]]]:
    """Within the block, forward passes record each target layer's activation.

    Yields ``{"act": {name: A}, "z": {name: Z}}``, in the layer's own layout (see
    :func:`to_channels_first`). ``A`` is a copy of the layer's output, safe
    from later in-place ops (torchvision's ``ReLU(inplace=True)``). With ``grad=True`` the
    output is replaced by ``output + Z`` where ``Z`` is a zero leaf tensor that records
    gradients: ``d score / d Z`` is the gradient with respect to the layer's output. Nothing
    before the first target layer requires gradients (the model's parameters are frozen and the
    input is not a leaf), so the backward pass stops at the layer, and layers feeding each
    other (several targets) stay connected.

    ``replace`` maps a layer name to a tensor that substitutes its output (Ablation-CAM).
    """
    B = run.backend
    rec: dict[str, dict[str, Tensor]] = {"act": {}, "z": {}}
    seen: set[str] = set()
    handles = []

    def make(info: LayerInfo) -> Any:
        name = info.name

        def hook(_layer: Any, _inputs: tuple, out: Any) -> Any:
            if not B.is_tensor(out) or len(B.shape(out)) not in (3, 4):
                raise LayerError(f"layer {name!r} outputs "
                                 f"{B.shape(out) if B.is_tensor(out) else type(out).__name__}; "
                                 f"CAM methods need a 4-D (N, C, h, w) or (N, h, w, C) feature "
                                 f"map or a token sequence (N, T, C) — pick a layer listed by "
                                 f"xplain.layers(model, input_shape) with such an output")
            if name in rec["act"] or name in seen:
                raise LayerError(f"layer {name!r} ({info.type_name}) runs more than once per "
                                 f"forward pass (a reused module), so its activation is "
                                 f"ambiguous; pick the enclosing block or another layer")
            seen.add(name)
            if replace is not None and name in replace:
                return replace[name]
            rec["act"][name] = B.stop_gradient(out) + 0.0
            if grad:
                z = B.with_grad(B.zeros_like(out))
                rec["z"][name] = z
                return out + z
            return None
        return hook

    try:
        for info in infos:
            handles.append(B.add_forward_hook(info.module, make(info)))
        yield rec
        for info in infos:
            if info.name not in seen:
                raise LayerError(f"layer {info.name!r} ({info.type_name}) did not run in the "
                                 f"model's forward pass; pick a layer listed by "
                                 f"xplain.layers(model, input_shape) with a 4-D output")
    finally:
        for h in handles:
            h.remove()
