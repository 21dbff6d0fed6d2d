"""Rule planning: which LRP rule every executed layer gets, or a :class:`LayerError` saying why
none can be given.

Precedence, highest first: the user's ``rules`` by exact name, by glob pattern; the composite's
names; a detected gate (``gate``); the composite's first-layer rule; the user's rules by kind;
the composite's kinds. Then the plan is checked against what the layer is:

* element-wise activations (``xplain.backend.ACTIVATIONS``) take ``pass`` (or a rule the user
  gives); softmax-like activations and parameter-free layers xplain does not know are refused
  unless the user names a rule for them or registers them (``registry.add_activation``) — their
  gradient is not an LRP rule, and taking it silently is how relevance gets created or lost;
* layers with parameters and no rule, and containers that compute with parameters of their own
  (attention, layer scale), are refused;
* z⁺/γ/αβ from a composite's kind table go only where the layer's input is provably
  non-negative (``Probe.nonneg_inputs``); elsewhere the composite's ``signed`` rule (ε);
* rules that re-evaluate a layer need a conv, linear or BatchNorm layer; explicit rules (flat,
  w², z^B) need the layer that reads the model input.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...backend import ACTIVATIONS, LAYER_KINDS, LayerInfo
from ...errors import LayerError, OptionError
from .canonize import Probe
from .composites import Composite
from .rules import Rule, make_rule

_PARAM_KINDS = ("conv", "linear", "batchnorm")
#: Layer kinds re-evaluated by a rule of the same kind (:mod:`.transformer`), with the rule
#: they get when no composite or user rule names one.
_REEVALUATED = {"layernorm": "constant_std", "attention": "attnlrp"}
_REEVALUATING_RULES = {"layernorm": "constant_std", "attention": "'cp' or 'attnlrp'"}
_GLOB = set("*?[")
#: Rules that assume non-negative inputs (Montavon et al. 2019, sec. 10.2.2).
_POSITIVE_INPUT_RULES = ("zplus", "gamma", "alphabeta")
#: Of those, rules whose denominator is the positive contributions only: where an output is
#: negative and none of its contributions is positive (a depthwise kernel over sparse ReLU
#: outputs), its relevance is lost, unless a ReLU reads the output (then it carries none).
_POSITIVE_PART_RULES = ("zplus", "alphabeta")


@dataclass
class LayerPlan:
    """The rule one executed layer gets, and where its replacement is emitted."""

    info: LayerInfo
    rule: Rule
    bn: LayerInfo | None = None  # BatchNorm merged into this conv/linear
    optimistic: bool = False  # skip output-sign groups for negative outputs (a ReLU follows)
    found: Probe | None = None  # the (cached, immutable) probe the plan was made from
    at_zero: float = 0.0  # f(0) of an element-wise layer under ``pass``
    cache: dict[str, Any] = field(default_factory=dict)  # modified parameters, once per call


def _split_user_rules(rules: Mapping[str, Any] | None, names: set[str]) -> tuple[dict, list, dict]:
    exact: dict[str, Any] = {}
    globs: list[tuple[str, Any]] = []
    kinds: dict[str, Any] = {}
    for key, spec in (rules or {}).items():
        if not isinstance(key, str):
            raise OptionError(f"LRP rules keys must be layer names, glob patterns or layer kinds, got "
                              f"{key!r}")
        if key.startswith("kind:"):
            kinds[key[5:]] = spec
        elif key.startswith("name:"):
            exact[key[5:]] = spec
        elif key in LAYER_KINDS:
            kinds[key] = spec
        elif _GLOB & set(key):
            if not any(fnmatch.fnmatchcase(n, key) for n in names):
                raise LayerError(f"LRP rules pattern {key!r} matches no layer of the model; list layer "
                                 f"names with xplain.layers(model)")
            globs.append((key, spec))
        else:
            exact[key] = spec
    for key in exact:
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=6, cutoff=0.6)
            raise LayerError(f"LRP rules name a layer {key!r} the model does not have"
                             + (f"; similar names: {close}" if close else "")
                             + f"; layer kinds usable as keys: {list(LAYER_KINDS)}")
    bad = [k for k in kinds if k not in LAYER_KINDS]
    if bad:
        raise OptionError(f"unknown layer kind(s) {bad} in LRP rules; kinds are {list(LAYER_KINDS)}")
    return exact, globs, kinds


def _match(name: str, exact: Mapping[str, Any], globs: list[tuple[str, Any]]) -> Any:
    if name in exact:
        return exact[name]
    for pattern, spec in globs:
        if fnmatch.fnmatchcase(name, pattern):
            return spec
    return None


def _how_to(info: LayerInfo) -> str:
    return (f"give it a rule, e.g. rules={{{info.name!r}: 'pass'}} if it is element-wise "
            f"(y_i = f(x_i)), {{{info.name!r}: 'gate'}} if it gates a signal, "
            f"{{{info.name!r}: 'epsilon'}} to propagate with its own gradient, or "
            f"{{{info.name!r}: 'zero'}} if it is linear")


def _registered_activation(info: LayerInfo, registered: Mapping[Any, float]) -> float | None:
    """f(0) of a layer the user registered as element-wise (by class or class name)."""
    for key, at_zero in registered.items():
        if (isinstance(key, str) and key == info.type_name) or (
                isinstance(key, type) and isinstance(info.module, key)):
            return at_zero
    return None


def _default_spec(info: LayerInfo, found: Probe, composite: Composite, kinds: Mapping[str, Any],
                  registered: Mapping[Any, float]) -> tuple[Any, float]:
    """The rule spec of a layer no name or pattern matched (``None``: the gradient is the rule)
    and f(0) for ``pass``; raises :class:`LayerError` where no rule is known."""
    name = info.name
    if name in found.gates:
        return "gate", 0.0
    if name == found.first and composite.first is not None:
        return composite.first, 0.0
    spec = kinds.get(info.kind, composite.kinds.get(info.kind))
    if info.kind in _REEVALUATED:
        reason = info.attrs.get("unsupported")
        if reason and "write_call" not in info.attrs:  # the own-forward route takes any call
            raise LayerError(f"layer {name!r} ({info.type_name}) computes {reason}, which xplain's "
                             f"attention rules do not cover; explain the model with a gradient "
                             f"method (method='integrated_gradients')")
        return (spec if spec is not None else _REEVALUATED[info.kind]), 0.0
    if info.kind == "activation":
        function = info.attrs.get("function")
        if not ACTIVATIONS.get(function, False):
            raise LayerError(f"layer {name!r} ({info.type_name}) computes {function}, which is not "
                             f"element-wise, so LRP has no rule for it; explain the output before it "
                             f"(e.g. the logits instead of a softmax), or {_how_to(info)}")
        return (spec if spec is not None else "pass"), float(info.attrs.get("at_zero", 0.0))
    if info.kind == "other":
        at_zero = _registered_activation(info, registered)
        if at_zero is not None:
            return (spec if spec is not None else "pass"), at_zero
        if name in found.scaling_leaves:  # y = p ⊙ x, proven: LRP-0 is its gradient
            return spec, 0.0
        if any(v is not None for v in info.params.values()):
            raise LayerError(f"layer {name!r} ({info.type_name}) has parameters and xplain does "
                             f"not know what it computes, so no LRP rule can be derived; "
                             f"{_how_to(info)}")
        if spec is None:
            raise LayerError(f"layer {name!r} ({info.type_name}) is not a layer xplain knows, and "
                             f"its gradient is not an LRP rule in general (relevance would be "
                             f"created or lost silently); {_how_to(info)}, or register the class "
                             f"as element-wise with registry.add_activation in a "
                             f"xplain_register_layers plugin hook")
        return spec, 0.0
    if spec is None and info.kind in _PARAM_KINDS:
        spec = "zero"
    return spec, 0.0


def assign_rules(layers: list[LayerInfo], found: Probe, composite: Composite,
                 rules: Mapping[str, Any] | None, options: Mapping[str, Any],
                 registered: Mapping[Any, float] | None = None) -> dict[str, LayerPlan]:
    """The :class:`LayerPlan` of every executed layer that needs a hook (see the module
    docstring for the precedence). ``registered`` maps element-wise layer classes (or class
    names) to their f(0). Raises :class:`LayerError` for layers LRP cannot handle without a
    rule, and for rules a layer cannot take."""
    by_name = {info.name: info for info in layers}
    exact, globs, kinds = _split_user_rules(rules, set(by_name) - {""})
    comp_exact = {k: v for k, v in composite.names.items() if not (_GLOB & set(k))}
    comp_globs = [(k, v) for k, v in composite.names.items() if _GLOB & set(k)]
    for name in found.containers_with_params:
        if _match(name, exact, globs) is None:
            info = by_name[name]
            raise LayerError(f"layer {name!r} ({info.type_name}) computes with parameters of its own "
                             f"({sorted(k for k, v in info.params.items() if v is not None)}) outside "
                             f"any sub-layer, so LRP cannot see what it does (attention, layer "
                             f"scale ...); no rule is derived — explain it with a gradient method, "
                             f"or give it a rule if you know it is right, e.g. "
                             f"rules={{{name!r}: 'zero'}} for a linear map")
    plans: dict[str, LayerPlan] = {}
    for name in found.order:
        info = by_name[name]
        if name in found.merged_bn:
            continue  # takes the rule of the conv/linear it is merged into
        at_zero = float(info.attrs.get("at_zero", 0.0)) if info.kind == "activation" else 0.0
        spec = _match(name, exact, globs)
        if spec is None:
            spec = _match(name, comp_exact, comp_globs)
        from_kind = False
        if spec is None:
            from_kind = not (name in found.gates
                             or (name == found.first and composite.first is not None))
            spec, at_zero = _default_spec(info, found, composite, kinds, registered or {})
            if spec is None:
                continue  # ReLU, pooling, flatten ...: the gradient is the rule
        rule = make_rule(spec, options)
        if (from_kind and info.kind not in kinds and composite.signed is not None
                and not _conserves_here(rule, name, found)):
            rule = make_rule(composite.signed, options)
        _check(info, rule, found)
        if rule.kind == "gradient" and info.kind not in _PARAM_KINDS:
            continue  # exact as it is; affine layers keep a plan for their bias' ledger entry
        bn = found.merged.get(name)
        plan = LayerPlan(info, rule, None if bn is None else by_name[bn], found=found,
                         at_zero=at_zero)
        emitter = plan.bn.name if plan.bn is not None else name
        # γ's group for negative outputs is dead where a ReLU zeroes their gradient: skip it
        # (one conv less forward and backward), and verify that only the ReLU reads it (see emit.emit)
        plan.optimistic = (emitter in found.feeds_relu
                           and any(g.outputs == "negative" for g in rule.groups))
        plans[name] = plan
    return plans


def _conserves_here(rule: Rule, name: str, found: Probe) -> bool:
    """Whether a composite's z⁺/γ/αβ is provably conservative on layer ``name``: its input is
    non-negative, and for z⁺/αβ a ReLU reads its (BatchNorm-merged) output."""
    if rule.name not in _POSITIVE_INPUT_RULES:
        return True
    if name not in found.nonneg_inputs:
        return False
    emitter = found.merged.get(name, name)
    return rule.name not in _POSITIVE_PART_RULES or emitter in found.feeds_relu


def _check(info: LayerInfo, rule: Rule, found: Probe) -> None:
    name = f"{info.name!r} ({info.type_name})"
    if (info.kind in _REEVALUATED or rule.kind in _REEVALUATED) and rule.kind != info.kind:
        if info.kind in _REEVALUATED:
            raise LayerError(f"layer {name} is a {info.kind} layer, whose gradient is not an LRP "
                             f"rule; give it {_REEVALUATING_RULES[info.kind]}, not {rule.name!r}")
        raise LayerError(f"LRP rule {rule.name!r} is for {rule.kind} layers; layer {name} is of "
                         f"kind {info.kind!r}")
    if rule.needs_params:
        if info.kind not in _PARAM_KINDS:
            raise LayerError(f"LRP rule {rule.name!r} needs a conv, linear or BatchNorm layer, but layer "
                             f"{name} is of kind {info.kind!r}; use 'pass', 'epsilon' or 'zero' there")
        if info.kind == "conv" and (info.attrs.get("transposed")
                                    or info.attrs.get("padding_mode", "zeros") != "zeros"):
            raise LayerError(f"LRP rule {rule.name!r} re-evaluates layer {name} with modified weights, "
                             f"which xplain supports only for ordinary zero-padded convolutions; use "
                             f"rules={{{info.name!r}: 'epsilon'}} for it")
        if info.kind == "batchnorm" and info.params.get("running_var") is None:
            raise LayerError(f"BatchNorm layer {name} has no running statistics, so it is not an affine "
                             f"map in evaluation; give it rules={{{info.name!r}: 'pass'}}")
    if rule.explicit and info.name not in found.input_users and not (
            info.name == found.first and found.first_takes_input):
        where = (f"the first layer {found.first!r} reads a transformed input, so no layer qualifies"
                 if not found.first_takes_input and not found.input_users else
                 f"{sorted(found.input_users) or [found.first]} read the model input")
        raise LayerError(f"LRP rule {rule.name!r} does not have the form input×gradient and can only be "
                         f"used on a layer that reads the model input directly ({where}), not on "
                         f"{name}; use e.g. rules={{{info.name!r}: 'epsilon'}} (or 'zplus', 'gamma')")
    if rule.kind in ("pass", "gate") and info.kind in ("conv", "linear"):
        raise LayerError(f"the {rule.name!r} rule is for element-wise layers; layer {name} is a "
                         f"{info.kind} layer — use 'epsilon', 'zplus', 'gamma' ... there")
    if rule.kind == "pass" and info.kind == "activation" and not ACTIVATIONS.get(
            info.attrs.get("function"), False):
        raise LayerError(f"the 'pass' rule is for element-wise layers; layer {name} computes "
                         f"{info.attrs.get('function')}, which mixes its inputs")
