"""Which layer(s) a CAM method explains, and capturing their activations and gradients.

A layer is given by dotted name (``"layer4"``, ``"features.35"``), by index syntax
(``"features[35]"``, ``"features[-1]"``, turned into dotted names), by the layer object itself
(``model.layer4``), as a list of those (several layers, fused), or ``None``: the last layer
whose output is a spatial map (:func:`xplain.layers.last_spatial_layer`).
"""
from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator, Sequence

import numpy as np

from ...backend import LayerInfo, Tensor
from ...errors import LayerError
from ...layers import LayerSummary, last_spatial_layer, probe
from ...run import Run

_INDEX = re.compile(r"\[(-?\d+)\]")


def _probe(run: Run) -> dict[str, LayerSummary]:
    cache = getattr(run, "_cam_probe", None)
    if cache is None:
        B = run.backend
        cache = probe(B, run.model, run.inputs[:1], run.layers())
        run._cam_probe = cache  # one probe per run, shared by resolution and checks
        if not run.per_sample_bytes_known:
            # the same estimate as Run.per_sample_bytes (leaf outputs), from this probe instead
            # of a second batch-1 forward pass
            leaves = {i.name for i in run.layers() if not i.has_children}
            sizes = [(s.calls, 4 * int(np.prod(s.output_shape))) for s in cache.values()
                     if s.name in leaves and s.output_shape is not None]
            run.set_per_sample_bytes(sum(c * b for c, b in sizes), max((b for _, b in sizes), default=0))
    return cache


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


def resolve_layers(run: Run, spec: Any, *, allow_1x1: bool = False) -> list[LayerInfo]:
    """The target layer(s) for ``spec`` (see module docstring). That each produces one 4-D
    ``(N, C, h, w)`` tensor, once per forward pass, is checked while capturing (no extra
    forward pass for an explicit layer; the automatic choice probes once at batch 1)."""
    if spec is None:
        best = last_spatial_layer(_probe(run), allow_1x1=allow_1x1)
        if best is None:
            raise LayerError("no layer of this model outputs a spatial map (N, C, h, w) with "
                             "h*w > 1 on this input; CAM methods need a convolutional layer — "
                             "use a larger input or pass layer= explicitly")
        return [next(i for i in run.layers() if i.name == best.name)]
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise LayerError("layer=[] names no layer; pass a name, a layer object, or None")
    infos = [_find(run, s) for s in specs]
    if len({id(i.module) for i in infos}) != len(infos):
        raise LayerError(f"layer={spec!r} names the same layer twice; name each layer once")
    return infos


@contextmanager
def captured(run: Run, infos: Sequence[LayerInfo], *, grad: bool,
             replace: dict[str, Tensor] | None = None) -> Iterator[dict[str, dict[str, Tensor]]]:
    """Within the block, forward passes record each target layer's activation.

    Yields ``{"act": {name: A}, "z": {name: Z}}``. ``A`` is a copy of the layer's output, safe
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
            if not B.is_tensor(out) or len(B.shape(out)) != 4:
                raise LayerError(f"layer {name!r} outputs "
                                 f"{B.shape(out) if B.is_tensor(out) else type(out).__name__}; "
                                 f"CAM methods need a 4-D (N, C, h, w) feature map")
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
