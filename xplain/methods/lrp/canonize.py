"""Find the model's structure LRP needs, from the model's observation (no model surgery).

The shared batch-1 observation pass (:mod:`xplain.observe`) records, in execution order, each
layer call's inputs and output by tensor identity, with the value facts LRP needs. From that:

* **BatchNorm merging** (canonisation): a BatchNorm whose input *is* (tensor identity) the output
  of a conv/linear layer is merged into it — ``W' = W·s``, ``b' = (b − μ)·s + β`` with
  ``s = γ/√(σ² + eps)`` — so rules see the affine map the network really applies. Identity works
  in every framework and needs no knowledge of the model's code. BatchNorm that reads anything
  else (DenseNet's BN→ReLU→Conv, after a concatenation) stays a layer of its own.
* **The first layer**: the first conv/linear executed, where explicit rules (flat, w², z^B) go.
* **Executed layers**: only layers that actually run are checked and hooked — leaves, and
  attention layers as one unit (their sub-layers are re-evaluated with them); containers that
  run and hold parameters of their own are listed, so LRP can refuse them, unless the
  observation proved each parameter's use: a layer scale (linear: the gradient is exact), a
  constant added to a sub-layer's input or put in front of it along the token axis (position
  embeddings, class tokens: absorbed like a bias, see :attr:`Probe.param_uses`).
* **Provably non-negative inputs**: a conv/linear layer whose input is the output of an
  activation with a non-negative range (ReLU, ReLU6, sigmoid ...), possibly through pooling,
  flatten or dropout, still non-negative when read. Built-in composites put z⁺/γ/αβ only there.
* **Gates**: an activation inside a container whose output is exactly the container's input
  times that activation's output (squeeze-and-excitation: ``x * sigmoid(fc(pool(x)))``). LRP
  treats the gate as a constant weight (Arras et al., "Explaining Recurrent Neural Network
  Predictions in Sentiment Analysis", 2017), so relevance follows the signal.
* **Outputs read by a ReLU** and **outputs changed in place later**, from the sums the pass
  took when each output was produced, when a ReLU read it and at the end.

The :class:`Probe` is immutable and cached per model (weakly) under the observation's key and
``merge_batchnorm``; :func:`without_relu_reader` replaces it there when a pass proves a guess
about ReLU readers wrong (docs/architecture.md §3).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any
from collections.abc import Iterable, Mapping

from ...backend import LayerInfo
from ...observe import Call, Observation, observe_run, structure_key
from ...run import Run

_AFFINE = ("conv", "linear")
#: Layers LRP treats as one unit although they have sub-layers: their rule re-evaluates them.
_UNITS = ("attention",)


def _frozen_map() -> Mapping:
    return MappingProxyType({})


@dataclass(frozen=True)
class Probe:
    """What LRP needs to know about the model, from its observation. Immutable: a correction is
    a new probe (:func:`without_relu_reader`).

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
        containers_with_params: executed containers with parameters of their own whose use the
            observation did not prove.
        scaling_leaves: leaves of unknown kind proven to multiply their input by their one
            parameter (timm's ``LayerScale``): a linear map without bias, the gradient its rule.
        sequence_first: the first layer whose output is a sequence-first ``(L, N, E)`` tensor
            (at batch 1: ``(L, 1, E)``, L > 1), or ``None``: its rows are not samples, so the
            conservation report could not book it per sample.
        param_uses: ``(container, parameter, relation, sub-layer)`` for each proven use of a
            container's own parameter as a constant added to (``"add"``) or put in front of
            (``"prefix"``) the sub-layer's input: the ledger books ``Σ p·g`` there.
        modified_outputs: conv/linear/BatchNorm/activation layers whose output tensor is changed
            in place later by something other than a ReLU (``out += identity``): their values
            must be copied where they are needed after the forward pass (the LRP ledger).
        inputs_changed_later: activation layers (not in-place) whose input tensor is changed in
            place after they read it: the ledger copies the input it reads backward.
    """

    order: tuple[str, ...] = ()
    calls: Mapping[str, int] = field(default_factory=_frozen_map)
    merged: Mapping[str, str] = field(default_factory=_frozen_map)
    merged_bn: frozenset[str] = frozenset()
    first: str | None = None
    first_takes_input: bool = False
    input_users: frozenset[str] = frozenset()
    feeds_relu: frozenset[str] = frozenset()
    per_sample_bytes: int = 0
    largest_bytes: int = 0
    nonneg_inputs: frozenset[str] = frozenset()
    gates: frozenset[str] = frozenset()
    containers_with_params: tuple[str, ...] = ()
    scaling_leaves: frozenset[str] = frozenset()
    sequence_first: str | None = None
    param_uses: tuple[tuple[str, str, str, str], ...] = ()
    modified_outputs: frozenset[str] = frozenset()
    inputs_changed_later: frozenset[str] = frozenset()


#: Probes per model (weakly: the model is borrowed), keyed by the observation's key and
#: ``merge_batchnorm``. Only names are cached: parameters are always read afresh.
_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, Probe]]" = weakref.WeakKeyDictionary()


def _key(run: Run, merge_batchnorm: bool) -> tuple:
    return structure_key(run.backend, run.layers(), run.inputs[:1]), merge_batchnorm


def probe(run: Run, *, merge_batchnorm: bool = True) -> Probe:
    """The :class:`Probe` of ``run``'s model for inputs shaped like ``run.inputs``.

    Derived from the model's observation (:func:`xplain.observe.observe_run`: one batch-1 pass,
    shared with the CAM layer choice, the memory estimate, the listing and the summary) and
    cached per model object (weakly) under the model's layer structure and the per-sample input
    shape and dtype, so explaining batch after batch costs no pass; a model whose sub-layers are
    replaced gets a new probe.
    """
    key = _key(run, merge_batchnorm)
    try:
        per_model = _CACHE.setdefault(run.model, {})
    except TypeError:  # not weak-referenceable: no cache
        per_model = {}
    if key not in per_model:
        if len(per_model) >= 8:
            per_model.clear()
        per_model[key] = derive(observe_run(run), run.layers(), merge_batchnorm)
    return per_model[key]


def without_relu_reader(run: Run, found: Probe, names: Iterable[str], *,
                        merge_batchnorm: bool) -> Probe:
    """``found`` with ``names`` removed from :attr:`Probe.feeds_relu` (a pass proved that
    something besides a ReLU reads their outputs), put in the cache in place of ``found`` so
    later calls on this model and input shape plan with it."""
    new = replace(found, feeds_relu=found.feeds_relu - frozenset(names))
    try:
        _CACHE.setdefault(run.model, {})[_key(run, merge_batchnorm)] = new
    except TypeError:
        pass
    return new


#: Layer kinds whose output is non-negative wherever their input is (order statistics, means,
#: reshapes, the identity in evaluation).
_KEEP_SIGN = ("maxpool", "avgpool", "adaptive_avgpool", "adaptive_maxpool", "flatten", "reshape", "dropout",
              "identity")

#: Kinds whose output's sum the in-place check follows (the outputs LRP's rules and ledger read).
_SUMMED = ("conv", "linear", "batchnorm", "activation")


def _nonneg_range(info: LayerInfo) -> bool:
    """The layer's output is ≥ 0 for every input."""
    return info.kind == "relu" or (info.kind == "activation" and bool(info.attrs.get("nonnegative")))


def derive(obs: Observation, infos: Iterable[LayerInfo], merge_batchnorm: bool) -> Probe:
    """The :class:`Probe` from an observation (see the module docstring); ``infos``: the model's
    layers (for the activations' ranges and the containers' parameters)."""
    by_name = {i.name: i for i in infos}
    inside = [(c.first_inner, c.index) for c in obs.calls if c.kind in _UNITS]
    leaves = [c for c in obs.calls if (c.leaf or c.kind in _UNITS)
              and not any(lo <= c.index < hi for lo, hi in inside)]
    counts: dict[str, int] = {}
    for c in obs.calls:
        counts[c.name] = counts.get(c.name, 0) + 1
    uses = [(c.name, pname, relation, obs.calls[i].name) for c in obs.calls
            for pname, relation, i in c.param_uses
            if relation == "scale" or counts[obs.calls[i].name] == 1]
    proven = {(u[0], u[1]) for u in uses}
    # an embedding uses several parameters in one relation: booked once
    uses = list({(u[0], u[2], u[3]) if u[2].startswith("embed:") else u: u for u in uses}.values())
    calls: dict[str, int] = {}
    for c in leaves:
        calls[c.name] = calls.get(c.name, 0) + 1
    total, largest = obs.leaf_output_bytes()
    first, takes_input, input_users = None, False, set()
    produced_by: dict[int, Call] = {}  # token -> the last conv/linear that output it
    nonneg: dict[int, bool] = {}  # token -> provably >= 0, as left by its last writer
    nonneg_inputs: set[str] = set()
    signed_inputs: set[str] = set()  # read a signed input in at least one call
    for c in leaves:
        a = c.first_input
        a_nonneg = a is not None and nonneg.get(a.token, False)
        if c.kind in _AFFINE:
            if first is None:
                first, takes_input = c.name, c.input_views_model_input
            if a is not None and a.token == obs.input.token:
                input_users.add(c.name)
            if c.output is not None:
                produced_by[c.output.token] = c
            (nonneg_inputs if a_nonneg and c.input_nonneg else signed_inputs).add(c.name)
        if c.output is not None:
            nonneg[c.output.token] = (_nonneg_range(by_name[c.name])
                                      or (c.kind in _KEEP_SIGN and a_nonneg))
    merged: dict[str, str] = {}
    if merge_batchnorm:
        merged = _merges(leaves, produced_by, calls)
    return Probe(
        order=tuple(calls), calls=MappingProxyType(calls), merged=MappingProxyType(merged),
        merged_bn=frozenset(merged.values()), first=first, first_takes_input=takes_input,
        input_users=frozenset(input_users), feeds_relu=frozenset(_relu_readers(obs, leaves)),
        per_sample_bytes=total, largest_bytes=largest,
        nonneg_inputs=frozenset(nonneg_inputs - signed_inputs),
        gates=frozenset(obs.calls[g].name for c in obs.calls if c.name for g in c.gates),
        sequence_first=next((c.name for c in leaves if c.output is not None and len(c.output.shape) == 3
                             and c.output.shape[0] > 1 and c.output.shape[1] == 1), None),
        scaling_leaves=frozenset(c.name for c in obs.calls if c.leaf and c.kind == "other"
                                 and any(u[1] == "scale" for u in c.param_uses)
                                 and counts[c.name] == sum(1 for d in obs.calls if d.name == c.name
                                                           and d.param_uses)),
        containers_with_params=tuple(dict.fromkeys(
            c.name for c in obs.calls if not c.leaf and c.kind not in _UNITS
            and any(p is not None and (c.name, k) not in proven
                    for k, p in by_name[c.name].params.items()))),
        param_uses=tuple(u for u in uses if u[2] != "scale"),
        modified_outputs=frozenset(_modified_later(obs, leaves)),
        inputs_changed_later=frozenset(_inputs_changed_later(obs, leaves, by_name)))


def _merges(leaves: list[Call], produced_by: dict[int, Call], calls: dict[str, int]) -> dict[str, str]:
    """conv/linear → BatchNorm to merge: the BatchNorm reads that layer's output tensor and no
    other layer does (MaxViT's stem conv also feeds a shortcut: a merged rule would leave that
    branch's relevance to the conv's plain gradient and its bias unbooked), and only clean
    one-to-one pairs that run once each (a reused module could meet different partners in
    different calls)."""
    readers: dict[int, int] = {}
    for c in leaves:
        for t in {t.token for t in c.inputs if t is not None}:
            readers[t] = readers.get(t, 0) + 1
    candidates: dict[str, str] = {}
    for c in leaves:
        a = c.first_input
        if c.kind == "batchnorm" and a is not None and a.token in produced_by and readers[a.token] == 1:
            candidates.setdefault(c.name, produced_by[a.token].name)
    merged: dict[str, str] = {}
    for bn_name, lin_name in candidates.items():
        if calls.get(bn_name) == 1 and calls.get(lin_name) == 1 and lin_name not in merged:
            merged[lin_name] = bn_name
    return merged


def _sums(obs: Observation, leaves: list[Call]) -> dict[int, Any]:
    """token → the sum of a conv/linear/BatchNorm/activation output when its last such writer
    produced it, paired with its sum when a ReLU first read it afterwards: ``(made, read)``."""
    sums: dict[int, Any] = {}
    for c in leaves:
        a = c.first_input
        if c.kind == "relu" and a is not None and a.token in sums \
                and not isinstance(sums[a.token], tuple) and c.input_sum is not None:
            sums[a.token] = (sums[a.token], c.input_sum)
        if c.kind in _SUMMED and c.output is not None and c.output_sum is not None:
            sums[c.output.token] = c.output_sum
    return sums


def _relu_readers(obs: Observation, leaves: list[Call]) -> set[str]:
    """Layers whose output a ReLU module reads unchanged (not after ``out += identity``)."""
    sums = _sums(obs, leaves)
    found: set[str] = set()
    last_writer: dict[int, Call] = {}
    for c in leaves:
        a = c.first_input
        if c.kind == "relu" and a is not None and a.token in last_writer:
            pair = sums.get(a.token)
            if isinstance(pair, tuple) and pair[0] == pair[1]:
                found.add(last_writer[a.token].name)
        if c.output is not None:
            last_writer[c.output.token] = c
    return found


def _modified_later(obs: Observation, leaves: list[Call]) -> set[str]:
    """Layers whose output was changed in place after it was produced, other than by the
    ReLU that reads it (which only zeroes values whose gradient is then zero anyway)."""
    sums = _sums(obs, leaves)
    found: set[str] = set()
    for c in leaves:
        entry = sums.get(c.output.token) if c.output is not None else None
        if entry is None:
            continue
        if isinstance(entry, tuple):  # (sum when produced, sum when a ReLU read it)
            changed = entry[0] != entry[1]
        else:
            changed = entry != obs.final_sums.get(c.output.token)
        if changed:
            found.add(c.name)
    return found


def _inputs_changed_later(obs: Observation, leaves: list[Call], by_name: dict[str, LayerInfo]) -> set[str]:
    """Activation layers (not in-place) whose input tensor is changed in place after they read
    it (its sum at the end of the pass differs, or is unknown): LRP's ledger then keeps a copy
    of the input it reads in the backward pass."""
    found: set[str] = set()
    for c in leaves:
        a = c.first_input
        if c.kind != "activation" or a is None or c.input_sum is None \
                or by_name[c.name].attrs.get("inplace"):
            continue
        if obs.final_sums.get(a.token) != c.input_sum:
            found.add(c.name)
    return found


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
