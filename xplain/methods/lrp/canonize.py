"""Find the model's structure LRP needs, by watching one forward pass (no model surgery).

A single-sample, no-grad *probe* forward with a hook on every leaf layer records, in execution
order, each call's input and output tensors. From that:

* **BatchNorm merging** (canonisation): a BatchNorm whose input *is* (tensor identity) the output
  of a conv/linear layer is merged into it — ``W' = W·s``, ``b' = (b − μ)·s + β`` with
  ``s = γ/√(σ² + eps)`` — so rules see the affine map the network really applies. Identity works
  in every framework and needs no knowledge of the model's code. BatchNorm that reads anything
  else (DenseNet's BN→ReLU→Conv, after a concatenation) stays a layer of its own.
* **The first layer**: the first conv/linear executed, where explicit rules (flat, w², z^B) go.
* **Executed layers**: only layers that actually run are checked and hooked; containers that
  run and hold parameters of their own (attention, layer scale) are listed, so LRP can refuse
  them.
* **Provably non-negative inputs**: a conv/linear layer whose input is the output of an
  activation with a non-negative range (ReLU, ReLU6, sigmoid ...), possibly through pooling,
  flatten or dropout, still non-negative when read. Built-in composites put z⁺/γ/αβ only there.
* **Gates**: an activation inside a container whose output is exactly the container's input
  times that activation's output (squeeze-and-excitation: ``x * sigmoid(fc(pool(x)))``). LRP
  treats the gate as a constant weight (Arras et al., "Explaining Recurrent Neural Network
  Predictions in Sentiment Analysis", 2017), so relevance follows the signal.

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
            negative outputs is zero — verified at run time where it matters, see hooks.py).
        per_sample_bytes: bytes of all layer outputs for one sample (for chunking).
        largest_bytes: bytes of the largest layer output for one sample (for chunking on CPU).
        nonneg_inputs: conv/linear layers whose input is provably non-negative (see above).
        gates: activation layers that gate a signal (see above).
        containers_with_params: executed containers with parameters of their own.
        modified_outputs: conv/linear/BatchNorm/activation layers whose output tensor is changed
            in place later by something other than a ReLU (``out += identity``): their values
            must be copied where they are needed after the forward pass (the LRP ledger).
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
    nonneg_inputs: frozenset[str] = frozenset()
    gates: frozenset[str] = frozenset()
    containers_with_params: tuple[str, ...] = ()
    modified_outputs: frozenset[str] = frozenset()


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


#: Layer kinds whose output is non-negative wherever their input is (order statistics, means,
#: reshapes, the identity in evaluation).
_KEEP_SIGN = ("maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "flatten", "dropout",
              "identity")


def _nonneg_range(info: LayerInfo) -> bool:
    """The layer's output is ≥ 0 for every input."""
    return info.kind == "relu" or (info.kind == "activation" and bool(info.attrs.get("nonnegative")))


def _probe(run: Run, merge_batchnorm: bool) -> Probe:
    """Run the probe forward on ``run.inputs[:1]`` and analyse it (see module docstring)."""
    B = run.backend
    infos = run.layers()
    leaves = [info for info in infos if not info.has_children and info.name != ""]
    if not leaves:  # the root itself is a single layer
        leaves = [info for info in infos if not info.has_children]
    containers = [info for info in infos if info.has_children and info.name != ""]
    records: list[tuple[LayerInfo, tuple, Any]] = []  # holds every probed tensor alive
    container_records: list[tuple[LayerInfo, tuple, Any]] = []
    read_nonneg: dict[int, bool] = {}  # id(record's inputs) -> min(input) >= 0 when read

    sums: dict[int, Any] = {}  # output sums, to see whether a tensor was modified in place later

    def make_hook(info: LayerInfo):
        def hook(_layer: Any, inputs: tuple, output: Any) -> None:
            if info.kind in ("conv", "linear", "batchnorm", "activation") and B.is_tensor(output):
                sums[id(output)] = B.sum(output)
            records.append((info, tuple(inputs), output))
        return hook

    def affine_pre_hook(_layer: Any, inputs: tuple) -> None:
        if inputs and B.is_tensor(inputs[0]):
            read_nonneg[id(inputs[0])] = bool(B.all(inputs[0] >= 0))

    gates: set[str] = set()
    starts: list[int] = []  # len(records) when each running container started (a stack)

    def container_pre_hook(_layer: Any, _inputs: tuple) -> None:
        starts.append(len(records))

    def container_hook(info: LayerInfo):
        def hook(_layer: Any, inputs: tuple, output: Any) -> None:
            start = starts.pop() if starts else 0
            container_records.append((info, tuple(inputs), output))
            gates.update(_gates_of(B, tuple(inputs), output, records[start:]))
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
            if info.kind in _AFFINE:
                handles.append(B.add_forward_pre_hook(info.module, affine_pre_hook))
        for info in containers:
            handles.append(B.add_forward_pre_hook(info.module, container_pre_hook))
            handles.append(B.add_forward_hook(info.module, container_hook(info)))
        with B.no_grad():
            call_model(B, run.model, x)
    finally:
        for h in handles:
            h.remove()

    result = Probe()
    produced_by: dict[int, tuple[LayerInfo, Any]] = {}
    nonneg: dict[int, tuple[Any, bool]] = {}  # id(tensor) -> (tensor, provably >= 0), latest writer
    nonneg_inputs: set[str] = set()
    signed_inputs: set[str] = set()  # read a signed input in at least one call
    for info, inputs, output in records:
        result.calls[info.name] = result.calls.get(info.name, 0) + 1
        if result.calls[info.name] == 1:
            result.order.append(info.name)
        if B.is_tensor(output):
            size = int(np.prod(B.shape(output))) * 4
            result.per_sample_bytes += size
            result.largest_bytes = max(result.largest_bytes, size)
        a = inputs[0] if inputs else None
        seen = nonneg.get(id(a)) if a is not None else None
        a_nonneg = seen is not None and seen[0] is a and seen[1]
        if info.kind in _AFFINE:
            if result.first is None:
                result.first = info.name
                result.first_takes_input = bool(inputs) and _is_view_of(B, inputs[0], x)
            if inputs and inputs[0] is x:
                result.input_users.add(info.name)
            if B.is_tensor(output):
                produced_by[id(output)] = (info, output)
            if a_nonneg and read_nonneg.get(id(a), False):
                nonneg_inputs.add(info.name)
            else:
                signed_inputs.add(info.name)
        if B.is_tensor(output):
            nonneg[id(output)] = (output, _nonneg_range(info) or (info.kind in _KEEP_SIGN and a_nonneg))
    result.nonneg_inputs = frozenset(nonneg_inputs - signed_inputs)
    result.gates = frozenset(gates)
    result.containers_with_params = tuple(dict.fromkeys(
        info.name for info, _, _ in container_records
        if any(p is not None for p in info.params.values())))

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
    result.modified_outputs = frozenset(_modified_later(B, records, sums))
    records.clear()  # matching done: the probed tensors may go
    container_records.clear()
    return result


def _modified_later(B: Any, records: list, sums: dict[int, Any]) -> set[str]:
    """Layers whose output was changed in place after it was produced, other than by the
    ReLU that reads it (which only zeroes values whose gradient is then zero anyway)."""
    found: set[str] = set()
    for info, _inputs, output in records:
        entry = sums.get(id(output)) if B.is_tensor(output) else None
        if entry is None:
            continue
        if isinstance(entry, tuple):  # (sum when produced, sum when a ReLU read it)
            changed = not bool(B.all(entry[0] == entry[1]))
        else:
            changed = not bool(B.all(entry == B.sum(output)))
        if changed:
            found.add(info.name)
    return found


def _gates_of(B: Any, inputs: tuple, out: Any, records: list) -> set[str]:
    """Activation layers among ``records`` (the calls inside one container call) whose output
    ``s`` multiplies the container's input ``x`` into its output (``out == x * s`` exactly, ``s`` broadcast): the
    gates of squeeze-and-excitation blocks, found without knowing the block's code. Checked
    when the container returns, before anything later can modify ``x`` or ``out`` in place."""
    found: set[str] = set()
    if not inputs or not B.is_tensor(inputs[0]) or not B.is_tensor(out):
        return found
    x = inputs[0]
    full = B.shape(x)
    if B.shape(out) != full:
        return found
    for info, _inputs, s in records:
        if info.kind not in ("activation", "relu") or not B.is_tensor(s) or s is x or s is out:
            continue
        shape = B.shape(s)
        if len(shape) == len(full) and all(a in (1, b) for a, b in zip(shape, full)) \
                and bool(B.all(x * s == out)):
            found.add(info.name)
    return found


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
