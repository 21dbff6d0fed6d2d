"""The ``lrp`` method: relevance as ``input ⊙ modified gradient`` (docs/architecture.md §3).

Each rule replaces a layer's output in a forward hook by

    y' = sg(y) + Σ_g (z_g − sg(z_g)) ⊙ sg(c_g · y / stab(z_g))

whose *value* is exactly ``y`` (``z − sg(z)`` is exactly zero) and whose *gradient* is the rule
(Montavon et al., "Layer-Wise Relevance Propagation: An Overview", 2019, sec. 10.2.2). One
ordinary backward pass then carries LRP through the whole network, so residual additions,
reused modules, in-place ReLUs, concatenations and functional ops (``x.view``) need no special
code: the gradient of a sum is exactly LRP-0 at that node. Rules whose relevance is not of the
``input ⊙ c`` form (flat, w², z^B) read the gradient at fresh leaf tensors standing for their
modified inputs, which is possible at the first layer. Where the rule is "the gradient times an
element-wise factor" (ε; the ``(z − sg(z))`` parts), ``Backend.scale_gradient`` applies the factor
in the backward pass instead of costing element-wise ops forward. Where ``z`` is one linear map
of the layer input (1x1 and linear layers, two-sided γ, the first layer's stacked terms),
``Backend.route_to_input`` takes ``Wᵀ(c ⊙ g)`` straight into the input, so ``z`` itself is
evaluated without a graph.
"""
from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from ...backend import LayerInfo, iter_chunks
from ...errors import ConservationWarning, LayerError, OptionError
from ...options import NonNegativeFloat, PositiveFloat
from ...run import MethodResult, Run
from .canonize import batchnorm_affine, channel_scale, merged_bias, probe
from . import elementwise
from .composites import DEFAULT, lookup
from .ledger import Conservation, Ledger, TOLERANCE, per_sample
from .planning import LayerPlan, assign_rules
from .rules import INPUT_MODIFIERS, Rule, modify_param, piecewise_slopes, stabilize

@dataclass
class _Forward:
    """Per-forward bookkeeping filled by the hooks."""

    pending: dict[int, tuple[Any, list, Any]] = field(default_factory=dict)  # -> (out, groups, input)
    # (layer name, input shape, [(leaf, stacked terms)]) of each explicit rule's call
    explicit: list[tuple[str, tuple[int, ...], list[tuple[Any, int]]]] = field(default_factory=list)
    probes: list[tuple[Any, Any]] = field(default_factory=list)
    # id(wire) -> (wire, value, plan, groups) of an optimistic plan, emitted at its ReLU's output
    # ((wire, None, None, None) once a ReLU took it)
    relu_inputs: dict[int, tuple[Any, Any, Any, Any]] = field(default_factory=dict)
    relu_call: tuple[LayerPlan, list] | None = None  # set by a ReLU's pre-hook, for its hook
    # (optimistic plan, flag): the flag is set when the plan's output was read by more than a ReLU
    tripped: list[tuple[LayerPlan, list[bool]]] = field(default_factory=list)
    relu_outputs: dict[int, tuple[Any, int]] = field(default_factory=dict)  # id -> (tensor, version)
    ledger: Ledger | None = None  # relevance absorbed by biases and stabilisers


# ---- the hooks ---------------------------------------------------------------------------------
def _params(B: Any, plan: LayerPlan, modifier: str, part: str) -> Any:
    """Weight or bias of ``plan``'s layer (BatchNorm merged in), under ``modifier``; cached."""
    key = f"{part}:{modifier}"
    if key not in plan.cache:
        info = plan.info
        slopes = piecewise_slopes(modifier, plan.rule.gamma)
        if part == "weight" and info.kind != "batchnorm" and slopes is not None:
            # BatchNorm's scale and the modifier in one scaled leaky ReLU of the layer's own
            # weight: two passes over it instead of up to four (~0.05 of a raw ResNet-50 pass
            # per call)
            alpha, beta = slopes
            w = info.params["weight"]
            scale = alpha if plan.bn is None else channel_scale(B, _affine(B, plan)[0] * alpha, w)
            plan.cache[key] = (w if plan.bn is None and alpha == beta == 1.0
                               else B.scaled_leaky_relu(w, scale, beta / alpha))
        else:
            p = _base(B, plan, part)
            plan.cache[key] = None if p is None else modify_param(B, modifier, p, plan.rule.gamma)
    return plan.cache[key]


def _affine(B: Any, plan: LayerPlan) -> tuple[Any, Any]:
    """``(scale, shift)`` per channel of the BatchNorm merged into ``plan``'s layer, or of the
    layer itself if it is a BatchNorm; cached per call."""
    if "affine" not in plan.cache:
        plan.cache["affine"] = batchnorm_affine(B, plan.info if plan.bn is None else plan.bn)
    return plan.cache["affine"]


def _base(B: Any, plan: LayerPlan, part: str) -> Any:
    """The unmodified weight or bias of ``plan``'s layer with BatchNorm merged in; cached."""
    key = f"base:{part}"
    if key not in plan.cache:
        info = plan.info
        if info.kind == "batchnorm":
            p = _affine(B, plan)[0 if part == "weight" else 1]
        else:
            p = info.params[part] if part == "weight" else info.params.get("bias")
            if plan.bn is not None:
                scale, shift = _affine(B, plan)
                p = (p * channel_scale(B, scale, p) if part == "weight"
                     else merged_bias(p, scale, shift))
        plan.cache[key] = p
    return plan.cache[key]


def _apply(B: Any, info: LayerInfo, a: Any, w: Any, b: Any) -> Any:
    """The layer's affine map with given parameters (BatchNorm: per-channel scale and shift)."""
    if info.kind == "conv":
        at = info.attrs
        return B.conv(a, w, b, stride=at["stride"], padding=at["padding"], dilation=at["dilation"],
                      groups=at["groups"])
    if info.kind == "linear":
        return B.linear(a, w, b)
    shape = (1, -1) + (1,) * (len(B.shape(a)) - 2)
    out = a * B.reshape(w, shape)
    return out if b is None else out + B.reshape(b, shape)


#: How far (relative to the bound's magnitude, at least 1) an input may lie outside the z^B box:
#: bounds computed in float64 from pixel limits and inputs normalised in float32 differ by a few
#: float32 ulps at the box's edge.
ZBOX_SLACK = 1e-5


def _bound_tensor(B: Any, value: np.ndarray, a: Any, info: LayerInfo, which: str) -> Any:
    shape = B.shape(a)
    if value.ndim == 1 and value.size != 1:
        if len(shape) < 2 or shape[1] != value.size:
            raise OptionError(f"zbox {which} has {value.size} values but layer {info.name!r} reads "
                              f"{shape[1] if len(shape) > 1 else 1} channels; give one per channel or a scalar")
        value = value.reshape((1, -1) + (1,) * (len(shape) - 2))
    bound = B.zeros_like(a) + B.asarray(value.astype(np.float32), like=a)
    # z^B's relevance is only defined for inputs inside the box; outside it the map is wrong
    slack = B.asarray(ZBOX_SLACK * np.maximum(1.0, np.abs(value)).astype(np.float32), like=a)
    outside = (a < bound - slack) if which == "low" else (a > bound + slack)
    if not B.all(outside == 0):
        worst = B.to_numpy(B.min(a) if which == "low" else B.max(a))
        raise OptionError(f"the z^B rule on layer {info.name!r} needs inputs "
                          f"{'>= low' if which == 'low' else '<= high'}, but an input reaches "
                          f"{float(worst):.6g} ({which}={_show_bound(value)}); pass the bounds of "
                          f"the inputs' actual range (normalised units, per channel), e.g. "
                          f"low=(0 - mean) / std and high=(1 - mean) / std")
    return bound


def _show_bound(value: np.ndarray) -> str:
    flat = np.asarray(value).ravel()
    return f"{float(flat[0]):.6g}" if flat.size == 1 else "[" + ", ".join(f"{v:.4g}" for v in flat) + "]"


def _terms(B: Any, plan: LayerPlan, a: Any, state: _Forward) -> list:
    """The :class:`_Group` list (or one :class:`_SharedGamma`) of one call of a ``terms`` rule
    on input ``a``."""
    rule, info = plan.rule, plan.info
    nonneg = False
    if not rule.explicit and any(t.inputs in ("positive", "negative") for g in rule.groups for t in g.terms):
        # post-ReLU inputs: a⁺ = a and a⁻ = 0 (saves convolutions). Known without a pass over
        # ``a`` where ``a`` is what a ReLU layer returned, unchanged since; else a min-reduction
        # (one pass, no allocation, unlike all(a >= 0))
        seen = state.relu_outputs.get(id(a))
        nonneg = ((seen is not None and seen[0] is a and B.version(a) == seen[1])
                  or B.all(B.min(B.stop_gradient(a)) >= 0))
    if nonneg and not plan.optimistic and _is_two_sided_gamma(rule):
        # z± = y ± ... from one extra convolution instead of two (see _shared_gamma)
        direct = _routes_directly(info)
        w = _params(B, plan, "gamma*positive", "weight")
        bias = _plus_eps(B, plan, "gamma*positive", w, rule.stabilizer,  # D's ε, for free
                         _params(B, plan, "gamma*positive", "bias"))
        with B.no_grad() if direct else nullcontext():  # then q is only a denominator
            q = _apply(B, info, a, w, bias)
        return [_SharedGamma(q, rule.gamma, a, direct)]
    if rule.explicit:
        return _explicit_terms(B, plan, a, state)
    # every term reads ``a`` itself: each group is one linear map of ``a``, whose gradient route
    # the backend takes straight into ``a`` (no graph behind z, see Backend.route_to_input):
    # for matrix products (linear, 1x1 kernels), where that beats the framework's own conv
    # backward; a larger kernel's input gradient is a transposed convolution, slower on paddle
    direct = _routes_directly(info) and _pointwise(B, info) and all(
        t.inputs == "identity" or (nonneg and (t.inputs == "positive"
                                               or (t.inputs == "negative" and t.bias is None)))
        for g in rule.groups for t in g.terms)
    groups = []
    for index, group in enumerate(rule.groups):
        if plan.optimistic and group.outputs == "negative":
            continue
        parts = []  # (input, term) of every term that is not exactly zero
        z_nonneg = True  # every term provably >= 0: stabilise with a plain + eps
        for term in group.terms:
            if term.inputs == "positive":
                inp = a if nonneg else B.relu(a)
            elif term.inputs == "negative":
                if nonneg and term.bias is None:  # the term is exactly zero
                    continue
                inp = a - B.relu(a)
            elif term.inputs == "identity":
                inp = a
            else:
                raise OptionError(f"LRP rule {rule.name!r} modifies its inputs with {term.inputs!r}, "
                                  f"which only a rule with explicit=True (first layer) can; rules of "
                                  f"the input×gradient form take 'identity', 'positive' or 'negative'")
            z_nonneg = z_nonneg and (term.sign > 0 and term.weight in ("positive", "ones", "square")
                                     and term.bias in (None, "positive", "square")
                                     and (term.inputs in ("ones", "positive") or nonneg))
            parts.append((inp, term))
        if not parts:
            continue
        # a denominator known to be >= 0 where it matters gets its ε as part of the bias, which
        # the layer adds anyway: the scale is then y / z (see _compose)
        fold = rule.stabilizer > 0 and ((z_nonneg and group.outputs is None) or (
            plan.optimistic and group.outputs == "positive"))
        if direct:
            key = f"group{index}:" + ",".join(f"{t.sign}{t.weight}/{t.bias}" for _, t in parts)
            w, bias = _group_params(B, plan, key, [t for _, t in parts])
            if fold:
                bias = _plus_eps(B, plan, key, w, rule.stabilizer, bias)
            with B.no_grad():  # z is only a denominator: its route is (w, scale)
                z = _apply(B, info, a, w, bias)
            groups.append(_Group(z, group.coefficient, group.outputs, z_nonneg, fold, w, a))
            continue
        z = None
        folded = False
        for inp, term in parts:
            w = _params(B, plan, term.weight, "weight")
            bias = None if term.bias is None else _params(B, plan, term.bias, "bias")
            if fold and not folded and term.sign > 0:
                bias = _plus_eps(B, plan, f"{term.weight}/{term.bias}", w, rule.stabilizer, bias)
                folded = True
            zt = _apply(B, info, inp, w, bias)
            if term.sign < 0:
                zt = zt * term.sign
            z = zt if z is None else z + zt
        groups.append(_Group(z, group.coefficient, group.outputs, z_nonneg, folded))
    return groups


class _Group(NamedTuple):
    """One group of a rule on one layer call: ``R = c · a ⊙ ∂z/∂a · R_y / z`` where ``y`` has
    the group's output sign."""

    z: Any  # the group's modified output (with its graph unless ``weight`` is set)
    coefficient: float
    outputs: str | None  # "positive" / "negative": the output sign the group is restricted to
    nonneg: bool  # z >= 0 is known
    folded: bool = False  # z includes the stabiliser ε (through the bias)
    weight: Any = None  # z = layer(source, weight, bias): routed directly into source
    source: Any = None


def _pointwise(B: Any, info: LayerInfo) -> bool:
    """A linear layer, or a convolution with a 1x1 kernel."""
    return info.kind == "linear" or all(k == 1 for k in B.shape(info.params["weight"])[2:])


def _plus_eps(B: Any, plan: LayerPlan, key: str, weight: Any, eps: float, bias: Any) -> Any:
    """``bias + eps`` for each output of a layer with ``weight`` (``bias=None``: ``eps``);
    cached per call under ``key``."""
    cached = f"eps:{key}"
    if cached not in plan.cache:
        shift = B.asarray(np.full(B.shape(weight)[0], eps, np.float32), like=weight)
        plan.cache[cached] = shift if bias is None else bias + shift
    return plan.cache[cached]


def _signed_params(B: Any, plan: LayerPlan, term: Any) -> tuple[Any, Any]:
    """A term's weight and bias (``None`` without one) under its modifiers, times its sign."""
    w = _params(B, plan, term.weight, "weight")
    b = None if term.bias is None else _params(B, plan, term.bias, "bias")
    if term.sign < 0:
        w, b = w * term.sign, (None if b is None else b * term.sign)
    return w, b


def _total(values: Any) -> Any:
    """The sum of the values that are not ``None`` (``None`` if there are none)."""
    total = None
    for v in values:
        if v is not None:
            total = v if total is None else total + v
    return total


def _group_params(B: Any, plan: LayerPlan, key: str, terms: list) -> tuple[Any, Any]:
    """Weight and bias of a group whose (non-zero) terms all read the layer input itself: the
    sums over its terms (signs included); cached per call under ``key``."""
    if key not in plan.cache:
        pairs = [_signed_params(B, plan, t) for t in terms]
        plan.cache[key] = (_total(w for w, _ in pairs), _total(b for _, b in pairs))
    return plan.cache[key]


def _explicit_input(B: Any, inputs: str, a: Any, plan: LayerPlan) -> Any:
    """The modified input ``inputs`` (a Term's input modifier) of layer input ``a``."""
    rule, info = plan.rule, plan.info
    if inputs == "identity":
        return a
    if inputs == "ones":
        return B.ones_like(a)
    if inputs == "positive":
        return B.relu(a)
    if inputs == "negative":
        return a - B.relu(a)
    if inputs == "low":
        return _bound_tensor(B, rule.low, a, info, "low")
    if inputs == "high":
        return _bound_tensor(B, rule.high, a, info, "high")
    if inputs == "identity-high":
        return a - _bound_tensor(B, rule.high, a, info, "high")
    if inputs == "high-low":
        return _bound_tensor(B, rule.high, a, info, "high") - _bound_tensor(B, rule.low, a, info, "low")
    raise OptionError(f"LRP rule {rule.name!r} has a term with unknown input modifier {inputs!r}; "
                      f"known: {list(INPUT_MODIFIERS)}")


#: Input modifiers whose value is the same for every sample (the z^B bounds, flat's ones).
_CONSTANT_INPUTS = ("ones", "low", "high", "high-low")


def _explicit_terms(B: Any, plan: LayerPlan, a: Any, state: _Forward) -> list[_Group]:
    """Groups of an explicit rule (flat, w², z^B), whose relevance is read at leaf tensors
    standing for the modified inputs (``Σ_k input_k ⊙ gradient_k``).

    On a conv/linear layer the terms' inputs are stacked along the channel axis into *one* leaf,
    with the weights stacked alike, and the backend routes the gradient straight into it (one
    input gradient of K·C channels; on a stem convolution, 3 or 9 channels cost the same). The
    value of ``z`` then needs no graph: terms whose input is the same for every sample (the
    bounds, ones) are evaluated on one sample and broadcast, so flat costs no batch convolution
    forward and z^B one of 3 channels instead of 6."""
    info = plan.info
    groups = []
    for group in plan.rule.groups:
        inputs = [_explicit_input(B, t.inputs, a, plan) for t in group.terms]
        z_nonneg = all(t.sign > 0 and t.weight in ("ones", "square") and t.bias in (None, "square")
                       and t.inputs == "ones" for t in group.terms)
        if _routes_directly(info):
            pairs = [_signed_params(B, plan, t) for t in group.terms]
            weights, bias = [w for w, _ in pairs], _total(b for _, b in pairs)
            constant = [t.inputs in _CONSTANT_INPUTS for t in group.terms]
            with B.no_grad():
                z = _stacked_value(B, info, inputs, weights, bias, constant)
            leaf = B.with_grad(B.concat(inputs, axis=1) if len(inputs) > 1 else inputs[0])
            state.explicit.append((info.name, tuple(B.shape(a)), [(leaf, len(inputs))]))
            weight = B.concat(weights, axis=1) if len(weights) > 1 else weights[0]
            groups.append(_Group(z, group.coefficient, group.outputs, z_nonneg, False, weight, leaf))
            continue
        z = None
        leaves = []
        for inp, term in zip(inputs, group.terms):
            leaf = B.with_grad(inp)  # read the relevance of this modified input directly
            leaves.append((leaf, 1))
            w, b = _signed_params(B, plan, term)
            zt = _apply(B, info, leaf, w, b)
            z = zt if z is None else z + zt
        state.explicit.append((info.name, tuple(B.shape(a)), leaves))
        groups.append(_Group(z, group.coefficient, group.outputs, z_nonneg))
    return groups


def _stacked_value(B: Any, info: LayerInfo, inputs: list, weights: list, bias: Any,
                   constant: list[bool]) -> Any:
    """``Σ_k layer(input_k, W_k) + bias``: one call on the per-sample inputs stacked, plus one on
    the first sample of the constant ones, broadcast (batch 1 when all are constant)."""
    def part(keep: bool, b: Any) -> Any:
        ins = [i for i, c in zip(inputs, constant) if c == keep]
        ws = [w for w, c in zip(weights, constant) if c == keep]
        if not ins:
            return None
        x = B.concat(ins, axis=1) if len(ins) > 1 else ins[0]
        return _apply(B, info, x if not keep else x[:1], B.concat(ws, axis=1) if len(ws) > 1 else ws[0], b)

    varying = part(False, bias)
    fixed = part(True, None if varying is not None else bias)
    if varying is None:
        return fixed
    # broadcast explicitly: paddle's implicit broadcast add costs 10x (25 ms on a ResNet stem)
    return varying if fixed is None else varying + B.broadcast_to(fixed, B.shape(varying))


def _emit(B: Any, plan: LayerPlan, y: Any, groups: list, state: _Forward, a: Any) -> Any:
    """The replacement of ``y``, the output of ``plan``'s layer (or of its merged BatchNorm)
    on input ``a``.

    An optimistic plan (γ without its negative-output group) is right only if nothing but a
    ReLU reads ``y``. It is emitted at the ReLU's *output* ``r = relu(y)`` instead: the ReLU's
    pre-hook swaps ``y``'s value (no graph) in for a tripwire, and the ReLU's hook replaces
    ``r`` by a tensor whose gradient is the rule with ``r`` as numerator (``r / z`` is
    ``y / z`` where ``y > 0`` and 0 elsewhere, the ReLU's own mask), so the ReLU needs no
    backward. Any other use of ``y`` is a use of the tripwire, whose backward then marks the
    plan wrong and the pass is run again with the full rule. No tensor passes, and it works
    the same on every backend."""
    ys = B.stop_gradient(y)
    if groups and isinstance(groups[0], _SharedGamma):
        return _shared_gamma(B, plan, y, ys, groups[0])
    if not plan.optimistic:
        return _compose(B, plan, ys, groups)
    # the callback must not reach ``state``, which holds the wire: a cycle through paddle's
    # autograd nodes is never collected (the whole graph leaked, +600 MB per ResNet-50 call)
    flag: list[bool] = []
    state.tripped.append((plan, flag))
    wire = B.tripwire(ys, a, lambda: flag.append(True))
    state.relu_inputs[id(wire)] = (wire, ys, plan, groups)
    return wire


@dataclass(frozen=True)
class _SharedGamma:
    """γ on non-negative inputs ``a`` with both output groups live: ``q = γ(a·W⁺ + b⁺)`` (≥ 0);
    ``direct``: the layer is a convolution or linear map whose gradient routes the backend can
    take straight into ``a`` (see ``_shared_gamma``)."""

    q: Any
    gamma: float
    a: Any = None
    direct: bool = False


def _is_two_sided_gamma(rule: Rule) -> bool:
    return (rule.name == "gamma" and rule.stabilizer > 0 and not rule.explicit
            and {g.outputs for g in rule.groups} == {"positive", "negative"})


def _conv_attrs(info: LayerInfo) -> Mapping[str, Any] | None:
    """The ``conv`` argument of :meth:`Backend.route_to_input` for layer ``info``."""
    return info.attrs if info.kind == "conv" else None


def _routes_directly(info: LayerInfo) -> bool:
    """Whether :meth:`Backend.route_to_input` covers the layer (not grouped convolutions nor
    BatchNorm alone, which route through their own graph instead)."""
    return info.kind == "linear" or (info.kind == "conv" and info.attrs["groups"] == 1)


def _shared_gamma(B: Any, plan: LayerPlan, y: Any, ys: Any, shared: _SharedGamma) -> Any:
    """γ for both output signs from the layer's own output ``y = a·W + b`` and one convolution
    ``q = γ(a·W⁺ + b⁺)``, for inputs ``a ≥ 0`` (after a ReLU).

    With ``a ≥ 0`` the two denominators are ``z⁺ = y + q`` and ``z⁻ = (1+γ)·y − q``
    (``W⁻ = W − W⁺``), and ``W + γW⁻ = (1+γ)·W − γW⁺``, so the rule's backward
    ``(W+γW⁺)ᵀ s⁺ + (W+γW⁻)ᵀ s⁻`` (``s±`` = output relevance over ``z±`` where ``y`` has that
    sign) is ``Wᵀ(s⁺ + (1+γ)·s⁻) + γW⁺ᵀ(s⁺ − s⁻)``. With ``u = max(y, −(1+γ)·y)``
    (``|z±| = u + q`` on each side) and ``D = u + q + ε``, the two scales are ``u/D`` (on
    ``W``) and ``y/D`` (on ``γW⁺``). One convolution forward less than evaluating ``z⁺`` and
    ``z⁻`` separately, and fewer element-wise passes. For a convolution or linear layer the
    backend takes both products straight into ``a`` (:meth:`Backend.route_to_input`: no
    backward through the layer's own graph or its BatchNorm, and ``q`` needs no graph); other
    layers route ``u/D`` through ``y``'s graph and ``y/D`` through ``q``'s.
    """
    # q includes the stabiliser (see _terms): D = u + q
    through_w, through_q = B.gamma_ratios(ys, B.stop_gradient(shared.q), shared.gamma, 0.0)
    if shared.direct:
        return B.route_to_input(ys, shared.a, [(_params(B, plan, "identity", "weight"), through_w),
                                               (_params(B, plan, "gamma*positive", "weight"), through_q)],
                                _conv_attrs(plan.info))
    return B.replace_gradient(ys, [(y, through_w), (shared.q, through_q)])


def _compose(B: Any, plan: LayerPlan, ys: Any, groups: list[_Group], optimistic: bool = False) -> Any:
    """``ys + Σ (z − sg z) ⊙ sg(c · y / stab(z))`` with ``ys`` = sg(y): value ``y``, gradient the
    rule.

    Sign-restricted groups (γ) have ``z ≥ y`` (positive group) / ``z ≤ y`` (negative group), so
    wherever the output has the group's sign, ``z`` has it too and ``y / stab(z)`` equals
    ``relu(±y) / (|z| + ε)``, which is also 0 elsewhere — no sign tests needed. An
    ``optimistic`` plan is emitted at the ReLU's output (see ``_emit``): ``ys`` is ``relu(y)``
    there, so the positive group's ``relu(y)`` is just ``ys``: one element-wise pass less.
    """
    routes = []
    eps = plan.rule.stabilizer
    yv = B.stop_gradient(ys)
    for z, coef, sign, z_nonneg, folded, _, _ in groups:
        zs = B.stop_gradient(z)  # z is needed only for its gradient route from here on
        if folded:  # z includes ε: z >= ε where it matters (see _terms)
            # an optimistic group's z may be < ε where y <= 0 (the numerator relu(y) is 0
            # there): the floor keeps that scale finite
            c = B.floored_ratio(yv, zs, eps if optimistic and sign == "positive" else None)
        elif optimistic and sign == "positive" and eps > 0:
            # ys is relu(y) here (see _emit)
            c = B.stabilized_ratio(yv, zs, eps)
        elif sign is not None and eps > 0:
            c = B.stabilized_ratio(B.relu(yv if sign == "positive" else -yv), zs, eps)
        elif z_nonneg and eps > 0:
            c = B.stabilized_ratio(yv, zs, eps)
        else:
            c = B.signed_ratio(yv, zs, eps) if eps > 0 else yv / stabilize(B, zs, eps)
            if sign == "positive":
                c = B.where(yv > 0, c, 0.0)
            elif sign == "negative":
                c = B.where(yv < 0, c, 0.0)
        if coef != 1.0:
            c = c * coef
        routes.append((z, c))
    if groups and groups[0].weight is not None:  # all direct (see _terms)
        return B.route_to_input(ys, groups[0].source, [(g.weight, c) for g, (_, c) in zip(groups, routes)],
                                _conv_attrs(plan.info))
    return B.replace_gradient(ys, routes)


def _epsilon(B: Any, y: Any, eps: float) -> Any:
    """LRP-ε with the layer's own output as denominator: gradient scaled by |y| / (|y| + ε).

    ``damp_gradient`` keeps ``y`` itself and lets the backend fuse the factor, which matters on
    networks with large activations (ResNet-50)."""
    return B.damp_gradient(y, eps)


def _install(B: Any, plans: Mapping[str, LayerPlan], state: _Forward, relus: list) -> list:
    handles = []

    def relu_pre_hook(_layer: Any, inputs: tuple) -> tuple | None:
        # an optimistic plan's value goes to its ReLU instead of the tripwire (see _emit); to
        # one ReLU call only (its z is handed over): a second one reads the wire, which trips
        entry = state.relu_inputs.get(id(inputs[0])) if inputs else None
        if entry is None or entry[0] is not inputs[0] or entry[2] is None:
            return None
        state.relu_inputs[id(inputs[0])] = (entry[0], None, None, None)  # keeps the id unique
        state.relu_call = entry[2:]
        return (entry[1], *inputs[1:])

    def relu_hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
        call, state.relu_call = state.relu_call, None
        if call is not None:  # the optimistic plan's replacement, at the ReLU output
            output = _compose(B, call[0], B.stop_gradient(output), call[1], True)
            state.ledger.measured_out(call[0].info.name, output)
        # held until the pass ends (the ReLU's own backward keeps it anyway), so ids stay unique
        if B.is_tensor(output):
            state.relu_outputs[id(output)] = (output, B.version(output))
        return output if call is not None else None

    ledger = state.ledger

    def copy(plan: LayerPlan) -> bool:  # the emitted output is changed in place later
        return (plan.bn.name if plan.bn is not None else plan.info.name) in plan.found.modified_outputs

    def layer_hook(plan: LayerPlan, stash: list | None):
        rule = plan.rule
        name = plan.info.name

        def hook(_layer: Any, inputs: tuple, output: Any) -> Any:
            if rule.kind in ("epsilon", "gradient"):
                if plan.bn is not None:
                    return None  # emitted at the BatchNorm's output
                if rule.kind == "gradient":
                    ledger.bias(name, output, _base(B, plan, "bias"))
                    return None
                return _ledgered_epsilon(plan, output)
            if rule.kind == "gate":
                return elementwise.gate(B, output)
            if rule.kind == "pass":
                a = stash.pop() if stash is not None else inputs[0]
                ratio = elementwise.pass_ratio(B, a, output, rule.stabilizer, plan.at_zero, plan.info)
                kept = B.stop_gradient(a) * ratio  # before the ratio is handed over
                values = ledger.values(output, copy(plan))
                out = elementwise.pass_through(B, a, output, ratio)
                ledger.passed(name, out, values, kept)
                return out
            # terms: inputs[0] is the alias handed in by the pre-hook (see _install)
            if not rule.explicit:
                ledger.measured_in(name, inputs[0])
            groups = _terms(B, plan, inputs[0], state)
            if plan.bn is not None:  # emitted at the BatchNorm's output
                state.pending[id(output)] = (output, groups, inputs[0])
                return None
            return _measured(plan, _emit(B, plan, output, groups, state, inputs[0]))
        return hook

    def _ledgered_epsilon(plan: LayerPlan, y: Any) -> Any:
        # the relevance entering (gradient g, watched before ε scales it) and leaving (g̃,
        # watched after)
        values = ledger.values(y, copy(plan))
        ledger.out(plan.info.name, y, values)
        out = _epsilon(B, y, plan.rule.stabilizer)
        ledger.epsilon_in(plan.info.name, out, values, _base(B, plan, "bias"))
        return out

    def _measured(plan: LayerPlan, out: Any) -> Any:
        if not plan.optimistic:  # an optimistic plan is measured at its ReLU's output
            ledger.measured_out(plan.info.name, out, copy(plan))
        return out

    def bn_hook(plan: LayerPlan):
        rule = plan.rule
        name = plan.info.name

        def hook(_layer: Any, inputs: tuple, output: Any) -> Any:
            if rule.kind == "gradient":
                ledger.bias(name, output, _base(B, plan, "bias"))
                return None
            if rule.kind == "epsilon":
                return _ledgered_epsilon(plan, output)
            entry = state.pending.pop(id(inputs[0]), None)
            if entry is None or entry[0] is not inputs[0]:
                raise LayerError(f"BatchNorm {plan.bn.name!r} did not receive the output of "
                                 f"{plan.info.name!r} as in the probe pass (the model's control flow "
                                 f"changed); pass merge_batchnorm=False")
            return _measured(plan, _emit(B, plan, output, entry[1], state, entry[2]))
        return hook

    def alias_pre_hook(_layer: Any, inputs: tuple) -> tuple | None:
        # the terms rule's input gradient, and only it, reaches the alias (see Ledger)
        if not inputs or not B.is_tensor(inputs[0]):
            return None
        a = inputs[0]
        alias = B.alias(a)
        seen = state.relu_outputs.get(id(a))
        if seen is not None and seen[0] is a and B.version(a) == seen[1]:
            state.relu_outputs[id(alias)] = (alias, B.version(alias))  # a ReLU's output too
        return (alias,) + tuple(inputs[1:])

    try:
        for plan in plans.values():
            stash = None
            if plan.rule.kind == "pass" and plan.info.attrs.get("inplace"):
                stash = []
                handles.append(B.add_forward_pre_hook(plan.info.module, elementwise.keep_input(stash)))
            if plan.rule.kind == "terms":
                handles.append(B.add_forward_pre_hook(plan.info.module, alias_pre_hook))
            if rule_needs_layer_hook(plan):
                handles.append(B.add_forward_hook(plan.info.module, layer_hook(plan, stash)))
            if plan.bn is not None and plan.rule.kind in ("epsilon", "terms", "gradient"):
                handles.append(B.add_forward_hook(plan.bn.module, bn_hook(plan)))
        for module in relus:
            handles.append(B.add_forward_pre_hook(module, relu_pre_hook))
            handles.append(B.add_forward_hook(module, relu_hook))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return handles


def rule_needs_layer_hook(plan: LayerPlan) -> bool:
    return not (plan.rule.kind in ("epsilon", "gradient") and plan.bn is not None)


def _layer_probe(B: Any, state: _Forward):
    def hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
        if not B.is_tensor(output):
            raise LayerError("relevance can only be read at a layer that outputs one tensor")
        e = B.with_grad(B.zeros_like(output))
        state.probes.append((e, B.stop_gradient(output)))
        return output + e
    return hook


# ---- the method --------------------------------------------------------------------------------
def lrp(run: Run, *, composite: Any = DEFAULT, rules: Mapping[str, Any] | None = None,
        epsilon: NonNegativeFloat = 1e-6, gamma: NonNegativeFloat = 0.25, alpha: float = 2.0,
        beta: NonNegativeFloat = 1.0, low: Any = None, high: Any = None,
        stabilizer: PositiveFloat = 1e-6, layer: str | None = None,
        merge_batchnorm: bool = True) -> MethodResult:
    """Layer-wise Relevance Propagation.

    Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
    Relevance Propagation" (PLoS ONE 2015); Montavon et al., "Layer-Wise Relevance Propagation:
    An Overview" (2019). Relevance starts as the target logit and is redistributed layer by layer
    according to each layer's rule; BatchNorm is merged into the conv/linear before it.

    Args:
        composite: registered composite name (default ``"epsilon_plus_flat"``: flat on the first
            layer, z⁺ on convolutions, ε on linear layers), a
            :class:`~xplain.methods.lrp.Composite`, or ``None`` (only ``rules``; other conv/linear
            layers then use LRP-0).
        rules: ``{key: rule}`` overriding the composite. Keys are exact layer names
            (``"features.0"``), glob patterns (``"layer4.*"``) or layer kinds (``"conv"``,
            ``"linear"``, ``"batchnorm"``, ``"activation"``; prefix ``"kind:"``/``"name:"`` to
            disambiguate). Values are rule names (``zero, epsilon, gamma, zplus, alphabeta,
            alpha2beta1, flat, wsquare, zbox, pass``), ``(name, {param: value})`` or a Rule.
            Precedence: rules by name > rules by pattern > composite names > the composite's
            first-layer rule > rules by kind > composite kinds.
        epsilon: ε of the ε rule. gamma: γ of the γ rule. alpha, beta: of the αβ rule (α−β=1).
        low, high: input bounds of the z^B rule, scalars or one per channel (normalised units).
        stabilizer: ε of all other rules' denominators.
        layer: also return the relevance at this layer's output (``extras["layer_relevance"]``).
        merge_batchnorm: merge BatchNorm into the preceding conv/linear (canonisation).

    Returns:
        Relevance of the input's shape, in units of the target logit; extras ``relevance_sum`` and
        ``target_output`` (per sample: equal when relevance is conserved, e.g. bias-free networks
        with LRP-0/ε→0), ``rules`` (layer → rule applied) and, with ``layer=``,
        ``layer_relevance``.
    """
    from ...plugins import registry

    B = run.backend
    options = {"epsilon": epsilon, "gamma": gamma, "alpha": alpha, "beta": beta, "low": low,
               "high": high, "stabilizer": stabilizer}
    comp = lookup(composite, registry().composites)
    if rules is not None and not isinstance(rules, Mapping):
        raise OptionError(f"rules must be a dict {{layer name / pattern / kind: rule}}, got "
                          f"{type(rules).__name__}")
    found = probe(run, merge_batchnorm=merge_batchnorm)
    plans = assign_rules(run.layers(), found, comp, rules, options, registry().activations)
    probe_module = None
    if layer is not None:
        target = run.layer(layer)
        probe_module = target.module
        if target.name in found.merged:  # its output's relevance lives after the merged BN
            probe_module = run.layer(found.merged[target.name]).module

    # ReLU layers: their outputs prove a rule's input non-negative (see _terms), and they take
    # the optimistic plans' replacements (see _emit)
    relus = [info.module for info in run.layers() if info.kind == "relu"]
    n = run.batch_size
    # Peak memory of a modified forward+backward is 1.15x (LRP-ε) to 1.55x (epsilon_gamma_box)
    # the probe's activation estimate (resnet50, batch 8). Budgeting 4x keeps chunks small
    # enough that glibc's default malloc reuses freed memory between passes instead of
    # returning it to the OS: batch 8 in one pass cost 3.7x a raw pass there, two of 4 cost 2.0x.
    # On CPU each layer output also stays under the mmap threshold (vgg16, torch: chunks of 2
    # instead of 4 took γ-box from 1.43x to 1.36x a raw pass, LRP-ε from 1.09x to 0.99x).
    size = run.max_batch or run.within_cpu_tensor_bytes(
        max(1, run.memory_budget // max(1, 4 * found.per_sample_bytes)), found.largest_bytes)
    # without given targets each chunk takes its own argmax (samples are independent): no
    # extra forward pass just to resolve them
    given = run.given_targets
    parts: list[tuple[Any, Any, list]] = []
    used: list[np.ndarray] = []
    for sl in iter_chunks(n, size):
        t = None if given is None else given[sl]
        parts.append(_one_pass(run, plans, run.inputs[sl], t, probe_module, used, relus))
    if given is None:
        run.record_argmax_targets(np.concatenate(used))
    rel = parts[0][0] if len(parts) == 1 else B.concat([p[0] for p in parts], axis=0)
    tout = parts[0][1] if len(parts) == 1 else B.concat([p[1] for p in parts], axis=0)
    ndim = len(B.shape(rel))
    extras: dict[str, Any] = {
        "relevance_sum": B.sum(rel, axis=tuple(range(1, ndim))) if ndim > 1 else rel,
        "target_output": tout,
        "rules": {name: p.rule.describe() + (f" (merged with {p.bn.name})" if p.bn is not None else "")
                  for name, p in plans.items()},
    }
    extras["conservation"] = _balance(B, rel, tout, [p[3] for p in parts],
                                      [B.shape(p[0])[0] for p in parts], ndim)
    if layer is not None:
        maps = [p[2] for p in parts]
        per_call = [B.concat([m[i] for m in maps], axis=0) if len(maps) > 1 else maps[0][i]
                    for i in range(len(maps[0]))]
        if not per_call:
            raise LayerError(f"layer {layer!r} did not run in the forward pass; choose a layer that does")
        extras["layer_relevance"] = per_call[0] if len(per_call) == 1 else per_call
    return MethodResult(rel, extras)


def _balance(B: Any, rel: Any, tout: Any, ledgers: list[dict[str, np.ndarray]], rows: list[int],
             ndim: int) -> Conservation:
    """The :class:`Conservation` of one call (chunks' ledgers joined); warns when it is off."""
    target = B.to_numpy(tout).astype(np.float64).reshape(-1)
    relevance = B.to_numpy(B.sum(rel, axis=tuple(range(1, ndim))) if ndim > 1 else rel)
    relevance = relevance.astype(np.float64).reshape(-1)
    names = list(dict.fromkeys(n for led in ledgers for n in led))
    layers = {}
    for name in names:
        layers[name] = np.concatenate([led.get(name, np.zeros(r)) for led, r in zip(ledgers, rows)])
    absorbed = sum(layers.values(), np.zeros_like(target))
    report = Conservation(target, relevance, absorbed, layers, TOLERANCE)
    off = np.flatnonzero(~report.balanced)
    if off.size:
        n = int(off[0])
        largest = ", ".join(f"{name} ({v:.3g})" for name, v in report.largest(3))
        warnings.warn(
            f"LRP relevance is not conserved for sample(s) {off.tolist()[:8]}: sample {n} has target "
            f"output {target[n]:.6g}, relevance {relevance[n]:.6g}, absorbed by biases and "
            f"stabilisers {absorbed[n]:.6g} (off by {report.error[n]:.2g} of the largest, tolerance "
            f"{TOLERANCE:g}). Relevance was created or lost outside the rules' bookkeeping: a "
            f"functional operation in the model's forward (torch.sigmoid, x * y, a gate computed "
            f"outside a module), a layer given a rule that does not fit it, or an optimistic rule. "
            f"Layers that absorbed the most: {largest or 'none'}. exp.conservation has the numbers "
            f"per sample and layer", ConservationWarning, stacklevel=2)
    return report


def _one_pass(run: Run, plans: Mapping[str, LayerPlan], x: Any, targets: np.ndarray | None,
              probe_module: Any, used: list[np.ndarray], relus: list) -> tuple[Any, Any, list, dict]:
    """One modified forward+backward on batch ``x``: (relevance, target outputs, layer maps,
    absorbed relevance per layer). ``targets=None`` explains each sample's argmax, appended to
    ``used``."""
    B = run.backend
    state = _Forward(ledger=Ledger(B))
    handles = _install(B, plans, state, relus)
    try:
        if probe_module is not None:
            handles.append(B.add_forward_hook(probe_module, _layer_probe(B, state)))
        with B.enable_grad():
            xg = B.with_grad(x)
            out = run.forward(xg)
            if targets is None:
                targets = B.to_numpy(B.argmax(out, axis=1)).astype(np.int64)
                used.append(targets)
            score = run.target_score(out, targets)
            leaves = [leaf for _, _, ls in state.explicit for leaf, _ in ls]
            probes = [e for e, _ in state.probes]
            grads = B.grad(score, [xg] + leaves + probes)
            wrong = [plan for plan, flag in state.tripped if flag]
    finally:
        for h in handles:
            h.remove()
        state.relu_inputs.clear()
        state.relu_call = None
        state.relu_outputs.clear()
    if wrong:  # a negative output is used after all (not only by a ReLU): the full rule there
        for plan in wrong:
            plan.optimistic = False
            plan.found.feeds_relu.discard(plan.bn.name if plan.bn is not None else plan.info.name)
        return _one_pass(run, plans, x, targets, probe_module, used, relus)
    rel = x * grads[0]
    shape = B.shape(x)
    i = 1
    for layer_name, in_shape, ls in state.explicit:
        r = None
        for leaf, stacked in ls:
            part = B.stop_gradient(leaf) * grads[i]
            if stacked > 1:  # Σ over the K stacked inputs (N, K·C, ...): slices added, as
                # paddle's sum over a K axis is 10x slower (6 ms on a 224² ResNet stem)
                c = B.shape(part)[1] // stacked
                part = _total(part[:, k * c:(k + 1) * c] for k in range(stacked))
            r = part if r is None else r + part
            i += 1
        if int(np.prod(in_shape)) != int(np.prod(shape)):
            raise LayerError(f"an explicit LRP rule (flat, wsquare, zbox) sits on a first layer whose "
                             f"input {in_shape} is not the model input {shape}; give that layer an "
                             f"input×gradient rule such as 'epsilon' or 'zplus'")
        if r is not None:
            state.ledger.add(layer_name, -per_sample(B, B.stop_gradient(r)))
            rel = rel + B.reshape(r, shape)
    layer_maps = [y * grads[i + k] for k, (_, y) in enumerate(state.probes)]
    tout = B.stop_gradient(run.target_outputs(out, targets))
    return (B.stop_gradient(rel), tout, [B.stop_gradient(m) for m in layer_maps],
            state.ledger.per_layer())
