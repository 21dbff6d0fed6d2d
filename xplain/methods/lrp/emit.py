"""The replacement of a layer's output: value exactly ``y``, gradient the layer's rule.

``y' = sg(y) + Σ_g (z_g − sg(z_g)) ⊙ sg(c_g · y / stab(z_g))`` (Montavon et al., "Layer-Wise
Relevance Propagation: An Overview", 2019, sec. 10.2.2), built from the :class:`.terms.TermGroup`
values of one layer call with the :class:`~.kernels.LRPKernels`. Optimistic plans (γ without its
negative-output group, where a ReLU reads the output) are emitted at the ReLU's output behind a
tripwire (:func:`emit`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .kernels import LRPKernels
from .params import layer_param
from .planning import LayerPlan
from .rules import stabilize
from .terms import SharedGamma, TermGroup, conv_attrs

if TYPE_CHECKING:
    from .hooks import PassState


def emit(B: Any, K: LRPKernels, plan: LayerPlan, y: Any, groups: list, state: PassState, a: Any) -> Any:
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
    if groups and isinstance(groups[0], SharedGamma):
        return shared_gamma(B, K, plan, y, ys, groups[0])
    if not plan.optimistic:
        return compose(B, K, plan, ys, groups)
    # the callback must not reach ``state``, which holds the wire: a cycle through paddle's
    # autograd nodes is never collected (the whole graph leaked, +600 MB per ResNet-50 call)
    flag: list[bool] = []
    state.tripped.append((plan, flag))
    wire = K.tripwire(ys, a, lambda: flag.append(True))
    state.relu_inputs[id(wire)] = (wire, ys, plan, groups)
    return wire




def shared_gamma(B: Any, K: LRPKernels, plan: LayerPlan, y: Any, ys: Any, shared: SharedGamma) -> Any:
    """γ for both output signs from the layer's own output ``y = a·W + b`` and
    ``q = γ(a⁺·W⁺ + a⁻·W⁻ + b⁺)`` (one convolution for inputs ``a ≥ 0``, two otherwise).

    The rule's denominators are ``z⁺ = y + q`` and ``z⁻ = (1+γ)·y − q``: the negative
    contributions ``a⁺W⁻ + a⁻W⁺`` are ``y − b − (a⁺W⁺ + a⁻W⁻)`` and ``b = b⁺ + b⁻``. So the
    rule's backward (``s±`` = output relevance over ``z±`` where ``y`` has that sign) is
    ``∂y/∂aᵀ(s⁺ + (1+γ)·s⁻) + ∂q/∂aᵀ(s⁺ − s⁻)``. With ``u = max(y, −(1+γ)·y)`` (``q ≥ 0``, so
    ``|z±| = u + q`` on each side) and ``D = u + q + ε``, the two scales are ``u/D`` (into
    ``y``'s route) and ``y/D`` (into ``q``'s). Fewer convolutions than evaluating ``z⁺`` and
    ``z⁻`` separately (four for signed inputs), and fewer element-wise passes. For ``a ≥ 0``
    on a convolution or linear layer the backend takes both products straight into ``a``
    (:meth:`LRPKernels.route_to_input`: ``Wᵀ`` and ``γW⁺ᵀ``, no backward through the layer's
    own graph or its BatchNorm, and ``q`` needs no graph); otherwise ``u/D`` goes through
    ``y``'s graph and ``y/D`` through ``q``'s, whose gradient for signed inputs is masked by
    the sign of ``a``.
    """
    # q includes the stabiliser (see shared_gamma_terms): D = u + q
    through_w, through_q = K.gamma_ratios(ys, B.stop_gradient(shared.q), shared.gamma, 0.0)
    if shared.direct:
        return K.route_to_input(ys, shared.a, [(layer_param(B, K, plan, "identity", "weight"), through_w),
                                               (layer_param(B, K, plan, "gamma*positive", "weight"), through_q)],
                                conv_attrs(plan.info))
    return K.replace_gradient(ys, [(y, through_w), (shared.q, through_q)])


def compose(B: Any, K: LRPKernels, plan: LayerPlan, ys: Any, groups: list[TermGroup], optimistic: bool = False) -> Any:
    """``ys + Σ (z − sg z) ⊙ sg(c · y / stab(z))`` with ``ys`` = sg(y): value ``y``, gradient the
    rule.

    Sign-restricted groups (γ) have ``z ≥ y`` (positive group) / ``z ≤ y`` (negative group), so
    wherever the output has the group's sign, ``z`` has it too and ``y / stab(z)`` equals
    ``relu(±y) / (|z| + ε)``, which is also 0 elsewhere — no sign tests needed. An
    ``optimistic`` plan is emitted at the ReLU's output (see ``emit``): ``ys`` is ``relu(y)``
    there, so the positive group's ``relu(y)`` is just ``ys``: one element-wise pass less.
    """
    routes = []
    eps = plan.rule.stabilizer
    yv = B.stop_gradient(ys)
    for z, coef, sign, z_nonneg, folded, _, _ in groups:
        zs = B.stop_gradient(z)  # z is needed only for its gradient route from here on
        if folded:  # z includes ε: z >= ε where it matters (see terms_of)
            # an optimistic group's z may be < ε where y <= 0 (the numerator relu(y) is 0
            # there): the floor keeps that scale finite
            c = K.floored_ratio(yv, zs, eps if optimistic and sign == "positive" else None)
        elif optimistic and sign == "positive" and eps > 0:
            # ys is relu(y) here (see emit)
            c = K.stabilized_ratio(yv, zs, eps)
        elif sign is not None and eps > 0:
            c = K.stabilized_ratio(B.relu(yv if sign == "positive" else -yv), zs, eps)
        elif z_nonneg and eps > 0:
            c = K.stabilized_ratio(yv, zs, eps)
        else:
            c = K.signed_ratio(yv, zs, eps) if eps > 0 else yv / stabilize(B, zs, eps)
            if sign == "positive":
                c = B.where(yv > 0, c, 0.0)
            elif sign == "negative":
                c = B.where(yv < 0, c, 0.0)
        if coef != 1.0:
            c = c * coef
        routes.append((z, c))
    if groups and groups[0].weight is not None:  # all direct (see terms_of)
        return K.route_to_input(ys, groups[0].source, [(g.weight, c) for g, (_, c) in zip(groups, routes)],
                                conv_attrs(plan.info))
    return K.replace_gradient(ys, routes)


def damped(K: LRPKernels, y: Any, eps: float, on_absorbed: Any = None) -> Any:
    """LRP-ε with the layer's own output as denominator: gradient scaled by |y| / (|y| + ε);
    ``on_absorbed`` receives what the stabiliser absorbs, per sample (see
    :meth:`.kernels.LRPKernels.damp_gradient`, which a backend may fuse: large activations)."""
    return K.damp_gradient(y, eps, on_absorbed)


