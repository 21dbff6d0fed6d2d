"""Find the model's structure LRP needs, by watching one forward pass (no model surgery).

A single-sample, no-grad *probe* forward with a hook on every leaf layer records, in execution
order, each call's input and output tensors. From that:

* **BatchNorm merging** (canonisation): a BatchNorm whose input *is* (tensor identity) the output
  of a conv/linear layer is merged into it — ``W' = W·s``, ``b' = (b − μ)·s + β`` with
  ``s = γ/√(σ² + eps)`` — so rules see the affine map the network really applies. Identity works
  in every framework and needs no knowledge of the model's code. BatchNorm that reads anything
  else (DenseNet's BN→ReLU→Conv, after a concatenation) stays a layer of its own.
* **The first layer**: the first conv/linear executed, where explicit rules (flat, w², z^B) go.
* **Executed layers**: only layers that actually run are checked and hooked.

Every probed tensor is kept referenced until matching is done: Python reuses the ``id()`` of a
freed tensor, and DenseNet's many concatenations make that happen (docs/architecture.md §3).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...backend import LayerInfo
from ...checks import call_model
from ...run import Run

_AFFINE = ("conv", "linear")


@dataclass
class Probe:
    """What the probe pass found.

    Attributes:
        order: executed leaf layers by name, in first-call order.
        calls: how often each executed layer ran.
        merged: conv/linear name → the name of the BatchNorm merged into it.
        merged_bn: names of BatchNorm layers merged into their predecessor.
        first: name of the first conv/linear executed, or ``None``.
        first_takes_input: whether that layer reads the model input (itself or reshaped).
        input_users: conv/linear layers that read the model input tensor itself.
        feeds_relu: layers whose output is read by a ReLU module (so the gradient at their
            negative outputs is zero — verified at run time where it matters, see attribute.py).
        per_sample_bytes: bytes of all layer outputs for one sample (for chunking).
        largest_bytes: bytes of the largest layer output for one sample (for chunking on CPU).
    """

    order: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)
    merged_bn: set[str] = field(default_factory=set)
    first: str | None = None
    first_takes_input: bool = False
    input_users: set[str] = field(default_factory=set)
    feeds_relu: set[str] = field(default_factory=set)
    per_sample_bytes: int = 0
    largest_bytes: int = 0


_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def probe(run: Run, *, merge_batchnorm: bool = True) -> Probe:
    """The :class:`Probe` of ``run``'s model for inputs shaped like ``run.inputs``.

    Cached per model object (weakly) under the model's layer structure (names, module objects,
    kinds) and the per-sample input shape, so explaining batch after batch costs one probe; a
    model whose sub-layers are replaced gets a new probe. Only names are cached: parameters are
    always read afresh.
    """
    B = run.backend
    signature = (tuple((i.name, id(i.module), i.kind) for i in run.layers()),
                 tuple(B.shape(run.inputs)[1:]), B.dtype_name(run.inputs), merge_batchnorm)
    try:
        per_model = _CACHE.setdefault(run.model, {})
    except TypeError:  # not weak-referenceable: no cache
        per_model = {}
    if signature not in per_model:
        if len(per_model) >= 8:
            per_model.clear()
        per_model[signature] = _probe(run, merge_batchnorm)
    return per_model[signature]


def _probe(run: Run, merge_batchnorm: bool) -> Probe:
    """Run the probe forward on ``run.inputs[:1]`` and analyse it (see module docstring)."""
    B = run.backend
    leaves = [info for info in run.layers() if not info.has_children and info.name != ""]
    if not leaves:  # the root itself is a single layer
        leaves = [info for info in run.layers() if not info.has_children]
    records: list[tuple[LayerInfo, tuple, Any]] = []  # holds every probed tensor alive

    sums: dict[int, Any] = {}  # output sums, to see whether a tensor was modified in place later

    def make_hook(info: LayerInfo):
        def hook(_layer: Any, inputs: tuple, output: Any) -> None:
            if info.kind in ("conv", "linear", "batchnorm") and B.is_tensor(output):
                sums[id(output)] = B.sum(output)
            records.append((info, tuple(inputs), output))
        return hook

    def relu_pre_hook(_layer: Any, inputs: tuple) -> None:
        # before an in-place ReLU overwrites it: is this input still its producer's output?
        if inputs and id(inputs[0]) in sums and not isinstance(sums[id(inputs[0])], tuple):
            sums[id(inputs[0])] = (sums[id(inputs[0])], B.sum(inputs[0]))

    handles = []
    x = run.inputs[:1]
    try:
        for info in leaves:
            handles.append(B.add_forward_hook(info.module, make_hook(info)))
            if info.kind == "relu":
                handles.append(B.add_forward_pre_hook(info.module, relu_pre_hook))
        with B.no_grad():
            call_model(B, run.model, x)
    finally:
        for h in handles:
            h.remove()

    result = Probe()
    produced_by: dict[int, tuple[LayerInfo, Any]] = {}
    for info, inputs, output in records:
        result.calls[info.name] = result.calls.get(info.name, 0) + 1
        if result.calls[info.name] == 1:
            result.order.append(info.name)
        if B.is_tensor(output):
            size = int(np.prod(B.shape(output))) * 4
            result.per_sample_bytes += size
            result.largest_bytes = max(result.largest_bytes, size)
        if info.kind in _AFFINE:
            if result.first is None:
                result.first = info.name
                result.first_takes_input = bool(inputs) and _is_view_of(B, inputs[0], x)
            if inputs and inputs[0] is x:
                result.input_users.add(info.name)
            if B.is_tensor(output):
                produced_by[id(output)] = (info, output)

    outputs: dict[int, tuple[LayerInfo, Any]] = {}
    for info, inputs, output in records:
        if info.kind == "relu" and inputs:
            hit = outputs.get(id(inputs[0]))
            pair = sums.get(id(inputs[0]))
            unchanged = isinstance(pair, tuple) and bool(B.all(pair[0] == pair[1]))
            if hit is not None and hit[1] is inputs[0] and unchanged:  # not e.g. `out += identity`
                result.feeds_relu.add(hit[0].name)
        if B.is_tensor(output):
            outputs[id(output)] = (info, output)

    if merge_batchnorm:
        candidates: dict[str, str] = {}
        for info, inputs, _output in records:
            if info.kind != "batchnorm" or not inputs:
                continue
            hit = produced_by.get(id(inputs[0]))
            if hit is not None and hit[1] is inputs[0]:  # identity, not a recycled id
                candidates.setdefault(info.name, hit[0].name)
        taken: set[str] = set()
        for bn_name, lin_name in candidates.items():
            # merge only clean one-to-one pairs that run once each (a reused module could meet
            # different partners in different calls)
            if (result.calls.get(bn_name) == 1 and result.calls.get(lin_name) == 1
                    and lin_name not in taken):
                taken.add(lin_name)
                result.merged[lin_name] = bn_name
                result.merged_bn.add(bn_name)
    records.clear()  # matching done: the probed tensors may go
    return result


def _is_view_of(B: Any, a: Any, x: Any) -> bool:
    """``a`` is the model input ``x`` itself or a reshaped copy of it (``x.view``, Flatten)."""
    if a is x:
        return True
    if not B.is_tensor(a) or int(np.prod(B.shape(a))) != int(np.prod(B.shape(x))):
        return False
    return B.all(B.reshape(a, B.shape(x)) == x)


def batchnorm_affine(B: Any, bn: LayerInfo) -> tuple[Any, Any]:
    """``(scale, shift)`` per channel of an eval-mode BatchNorm: ``y = x·scale + shift``."""
    p = bn.params
    var = p["running_var"]
    scale = 1.0 / B.sqrt(var + float(bn.attrs.get("eps", 1e-5)))
    if p.get("weight") is not None:
        scale = scale * p["weight"]
    shift = B.zeros_like(scale) - p["running_mean"] * scale
    if p.get("bias") is not None:
        shift = shift + p["bias"]
    return scale, shift


def channel_scale(B: Any, scale: Any, weight: Any) -> Any:
    """Per-output-channel ``scale`` shaped to broadcast against a conv/linear ``weight``."""
    return B.reshape(scale, (-1,) + (1,) * (len(B.shape(weight)) - 1))


def merged_bias(bias: Any, scale: Any, shift: Any) -> Any:
    """The bias of a conv/linear layer (``None``: without one) with BatchNorm ``(scale, shift)``
    merged in."""
    return shift if bias is None else bias * scale + shift
