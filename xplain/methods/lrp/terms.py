"""A ``terms`` rule on one layer call: the modified outputs ``z_g`` of its groups.

Rules are data (:mod:`.rules`): groups of terms, each an input modifier, a parameter modifier
and a sign. :func:`terms_of` evaluates them on the layer's input ``a`` into :class:`TermGroup`
values that :mod:`.emit` turns into the layer's replacement. Fast paths are chosen by what a
rule *is* (its groups and terms), never by its name: terms that read ``a`` itself on a 1x1 or
linear layer route their gradient straight into ``a`` (``LRPKernels.route_to_input``); the
two-sided γ needs one extra convolution on non-negative inputs and two on signed ones, instead
of four (:func:`is_two_sided_gamma`, :func:`shared_gamma_terms`, :func:`.emit.shared_gamma`); explicit first-layer rules (flat, w²,
z^B) stack their modified inputs into one leaf (:func:`explicit_terms`).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ...backend import LayerInfo
from ...errors import OptionError
from .kernels import LRPKernels
from .params import apply_layer, group_params, layer_param, plus_eps, pointwise, signed_params, total
from .planning import LayerPlan
from .rules import INPUT_MODIFIERS, Rule, gamma

if TYPE_CHECKING:
    from .hooks import PassState


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




def terms_of(B: Any, K: LRPKernels, plan: LayerPlan, a: Any, state: PassState) -> list:
    """The :class:`TermGroup` list (or one :class:`SharedGamma`) of one call of a ``terms`` rule
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
    if not plan.optimistic and is_two_sided_gamma(rule):
        # z± from the layer's own output and q (see shared_gamma): one or two extra
        # convolutions instead of four
        return [shared_gamma_terms(B, K, plan, a, nonneg)]
    if rule.explicit:
        return explicit_terms(B, K, plan, a, state)
    # every term reads ``a`` itself: each group is one linear map of ``a``, whose gradient route
    # the backend takes straight into ``a`` (no graph behind z, see LRPKernels.route_to_input):
    # for matrix products (linear, 1x1 kernels), where that beats the framework's own conv
    # backward; a larger kernel's input gradient is a transposed convolution, slower on paddle
    direct = routes_directly(info) and pointwise(B, info) and all(
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
        # the layer adds anyway: the scale is then y / z (see compose)
        fold = rule.stabilizer > 0 and ((z_nonneg and group.outputs is None) or (
            plan.optimistic and group.outputs == "positive"))
        if direct:
            key = f"group{index}:" + ",".join(f"{t.sign}{t.weight}/{t.bias}" for _, t in parts)
            w, bias = group_params(B, K, plan, key, [t for _, t in parts])
            if fold:
                bias = plus_eps(B, plan, key, w, rule.stabilizer, bias)
            with B.no_grad():  # z is only a denominator: its route is (w, scale)
                z = apply_layer(B, info, a, w, bias)
            groups.append(TermGroup(z, group.coefficient, group.outputs, z_nonneg, fold, w, a))
            continue
        z = None
        folded = False
        for inp, term in parts:
            w = layer_param(B, K, plan, term.weight, "weight")
            bias = None if term.bias is None else layer_param(B, K, plan, term.bias, "bias")
            if fold and not folded and term.sign > 0:
                bias = plus_eps(B, plan, f"{term.weight}/{term.bias}", w, rule.stabilizer, bias)
                folded = True
            zt = apply_layer(B, info, inp, w, bias)
            if term.sign < 0:
                zt = zt * term.sign
            z = zt if z is None else z + zt
        groups.append(TermGroup(z, group.coefficient, group.outputs, z_nonneg, folded))
    return groups


class TermGroup(NamedTuple):
    """One group of a rule on one layer call: ``R = c · a ⊙ ∂z/∂a · R_y / z`` where ``y`` has
    the group's output sign."""

    z: Any  # the group's modified output (with its graph unless ``weight`` is set)
    coefficient: float
    outputs: str | None  # "positive" / "negative": the output sign the group is restricted to
    nonneg: bool  # z >= 0 is known
    folded: bool = False  # z includes the stabiliser ε (through the bias)
    weight: Any = None  # z = layer(source, weight, bias): routed directly into source
    source: Any = None




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


def explicit_terms(B: Any, K: LRPKernels, plan: LayerPlan, a: Any, state: PassState) -> list[TermGroup]:
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
        if routes_directly(info):
            pairs = [signed_params(B, K, plan, t) for t in group.terms]
            weights, bias = [w for w, _ in pairs], total(b for _, b in pairs)
            constant = [t.inputs in _CONSTANT_INPUTS for t in group.terms]
            with B.no_grad():
                z = _stacked_value(B, info, inputs, weights, bias, constant)
            leaf = B.with_grad(B.concat(inputs, axis=1) if len(inputs) > 1 else inputs[0])
            state.explicit.append((info.name, tuple(B.shape(a)), [(leaf, len(inputs))]))
            weight = B.concat(weights, axis=1) if len(weights) > 1 else weights[0]
            groups.append(TermGroup(z, group.coefficient, group.outputs, z_nonneg, False, weight, leaf))
            continue
        z = None
        leaves = []
        for inp, term in zip(inputs, group.terms):
            leaf = B.with_grad(inp)  # read the relevance of this modified input directly
            leaves.append((leaf, 1))
            w, b = signed_params(B, K, plan, term)
            zt = apply_layer(B, info, leaf, w, b)
            z = zt if z is None else z + zt
        state.explicit.append((info.name, tuple(B.shape(a)), leaves))
        groups.append(TermGroup(z, group.coefficient, group.outputs, z_nonneg))
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
        return apply_layer(B, info, x if not keep else x[:1], B.concat(ws, axis=1) if len(ws) > 1 else ws[0], b)

    varying = part(False, bias)
    fixed = part(True, None if varying is not None else bias)
    if varying is None:
        return fixed
    # broadcast explicitly: paddle's implicit broadcast add costs 10x (25 ms on a ResNet stem)
    return varying if fixed is None else varying + B.broadcast_to(fixed, B.shape(varying))




@dataclass(frozen=True)
class SharedGamma:
    """γ with both output groups live, from ``q = γ(a⁺·W⁺ + a⁻·W⁻ + b⁺)`` (≥ 0; ``q = γ(a·W⁺ +
    b⁺)`` for non-negative inputs ``a``); ``direct``: ``a ≥ 0`` and the layer is a convolution or
    linear map whose gradient routes the backend can take straight into ``a`` (see
    ``shared_gamma``); otherwise ``q`` carries its own graph (for signed ``a`` its gradient
    is masked by the sign of ``a``: ``γ(W⁺ where a > 0, W⁻ where a < 0)``)."""

    q: Any
    gamma: float
    a: Any = None
    direct: bool = False


def shared_gamma_terms(B: Any, K: LRPKernels, plan: LayerPlan, a: Any, nonneg: bool) -> SharedGamma:
    """The :class:`SharedGamma` of one call of the two-sided γ rule on input ``a``
    (``nonneg``: ``a ≥ 0`` is known). ``q`` includes the stabiliser ε (in its bias: for free),
    so the rule's denominators are ``u + q`` (see :func:`.emit.shared_gamma`)."""
    info, rule = plan.info, plan.rule
    w = layer_param(B, K, plan, "gamma*positive", "weight")
    bias = plus_eps(B, plan, "gamma*positive", w, rule.stabilizer,
                    layer_param(B, K, plan, "gamma*positive", "bias"))
    if nonneg:
        direct = routes_directly(info)
        with B.no_grad() if direct else nullcontext():  # then q is only a denominator
            q = apply_layer(B, info, a, w, bias)
        return SharedGamma(q, rule.gamma, a, direct)
    positive = B.relu(a)
    q = (apply_layer(B, info, positive, w, bias)
         + apply_layer(B, info, a - positive, layer_param(B, K, plan, "gamma*negative", "weight"), None))
    return SharedGamma(q, rule.gamma, a, False)


def is_two_sided_gamma(rule: Rule) -> bool:
    """Whether ``rule`` is, term for term, the generalised γ rule (:func:`.rules.gamma`: both
    output signs, inputs of either sign) with a stabiliser: then :func:`.emit.shared_gamma`
    computes it from the layer's own output and one extra convolution (two for signed inputs). Decided by the rule's structure, so a user's rule of the same terms gets the
    fast path and a rule merely named "gamma" does not."""
    return (rule.kind == "terms" and not rule.explicit and rule.stabilizer > 0
            and rule.groups == gamma(rule.gamma).groups)


def conv_attrs(info: LayerInfo) -> Mapping[str, Any] | None:
    """The ``conv`` argument of :meth:`LRPKernels.route_to_input` for layer ``info``."""
    return info.attrs if info.kind == "conv" else None


def routes_directly(info: LayerInfo) -> bool:
    """Whether :meth:`LRPKernels.route_to_input` covers the layer (not grouped convolutions nor
    BatchNorm alone, which route through their own graph instead)."""
    return info.kind == "linear" or (info.kind == "conv" and info.attrs["groups"] == 1)


