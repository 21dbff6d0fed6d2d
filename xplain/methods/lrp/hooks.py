"""The forward hooks of one modified LRP pass, and the state they share.

Every executed layer with a plan gets a forward hook that replaces its output (:mod:`.emit`);
a BatchNorm merged into a conv/linear gets the hook instead of it; in-place activations under
``pass`` get a pre-hook that keeps their input (:mod:`.elementwise`); ``terms`` layers get a
pre-hook that hands them an alias of their input, so the ledger reads their input relevance
alone (:mod:`.ledger`); ReLU layers take the optimistic plans' replacements (:func:`.emit.emit`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import LayerError
from . import elementwise, transformer
from .emit import compose, damped, emit
from .kernels import LRPKernels
from .ledger import Ledger
from .params import base_param
from .planning import LayerPlan
from .terms import terms_of


@dataclass
class PassState:
    """What the hooks of one modified forward pass share (one per pass, never reused)."""

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


def install(B: Any, K: LRPKernels, plans: Mapping[str, LayerPlan], state: PassState, relus: list) -> list:
    handles = []

    def relu_pre_hook(_layer: Any, inputs: tuple) -> tuple | None:
        # an optimistic plan's value goes to its ReLU instead of the tripwire (see emit); to
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
            output = compose(B, K, call[0], B.stop_gradient(output), call[1], True)
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
                    ledger.bias(name, output, base_param(B, plan, "bias"), _on_last_axis(plan))
                    return None
                return _ledgered_epsilon(plan, output)
            if rule.kind == "gate":
                return elementwise.gate(B, output)
            if rule.kind == "layernorm":  # the centring conserves: the bias absorbs Σ b·g
                out, bias = transformer.layernorm(B, plan.info, inputs[0], output)
                if bias is not None:
                    ledger.watch_constant(name, out, bias, None)
                return out
            if rule.kind == "pass":
                a = stash.pop() if stash is not None else inputs[0]
                ratio = elementwise.pass_ratio(B, K, a, output, rule.stabilizer, plan.at_zero, plan.info)
                values = ledger.values(output, copy(plan))
                source = B.alias(a)  # reached by the rule's gradient alone (see Ledger.passed)
                out = elementwise.pass_through(B, K, source, output, ratio)
                ledger.passed(name, out, values, source, plan.info,
                              copy=name in plan.found.inputs_changed_later)
                return out
            # terms: inputs[0] is the alias handed in by the pre-hook (see install)
            if not rule.explicit:
                ledger.measured_in(name, inputs[0])
            groups = terms_of(B, K, plan, inputs[0], state)
            if plan.bn is not None:  # emitted at the BatchNorm's output
                state.pending[id(output)] = (output, groups, inputs[0])
                return None
            return _measured(plan, emit(B, K, plan, output, groups, state, inputs[0]))
        return hook

    def _ledgered_epsilon(plan: LayerPlan, y: Any) -> Any:
        # the stabiliser's share from the kernel, the bias's from the gradient it hands on
        name = plan.info.name
        out = damped(K, y, plan.rule.stabilizer, ledger.adder(name))
        ledger.bias(name, out, base_param(B, plan, "bias"), _on_last_axis(plan))
        return out

    def _measured(plan: LayerPlan, out: Any) -> Any:
        if not plan.optimistic:  # an optimistic plan is measured at its ReLU's output
            ledger.measured_out(plan.info.name, out, copy(plan))
        return out

    def attention_pre_hook(plan: LayerPlan):
        info = plan.info

        def hook(_layer: Any, args: tuple, kwargs: dict) -> tuple:
            # the layer's own forward carries the rule: it is called with inputs whose gradient
            # routes are the rule's (see transformer.attention_inputs)
            query, key, value, _ = info.attrs["read_call"](args, kwargs)
            q, k, v = transformer.attention_inputs(B, plan.rule, query, key, value,
                                                   lambda a: ledger.measured_in(info.name, a))
            return info.attrs["write_call"](args, kwargs, q, k, v)
        return hook

    def packed_hook(plan: LayerPlan):
        def hook(_layer: Any, inputs: tuple, output: Any) -> None:
            ledger.measured_in(plan.info.name, inputs[0])
            ledger.measured_out(plan.info.name, output)
        return hook

    def qkv_hook(plan: LayerPlan):
        def hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
            return transformer.packed_qkv(B, plan.rule, output)
        return hook

    def window_hooks(plan: LayerPlan):
        # once its re-evaluation was checked at an input size, the layer's own forward (whose
        # output the re-evaluation replaces) runs on one token: the pre-hook keeps the input
        # for the re-evaluation and hands the layer a (1, 1, 1, C) corner of it
        kept: list = []

        def pre(_layer: Any, inputs: tuple) -> tuple | None:
            x = inputs[0]
            if not transformer.window_checked(B, plan.info, x):
                return None
            kept.append(x)
            return (x[:1, :1, :1],) + tuple(inputs[1:])

        def hook(_layer: Any, inputs: tuple, output: Any) -> Any:
            x = kept.pop() if kept else inputs[0]
            ledger.measured_in(plan.info.name, x)
            out = transformer.window_attention_rule(B, plan.info, plan.rule, x,
                                                    None if x is not inputs[0] else output)
            ledger.measured_out(plan.info.name, out)
            return out
        return pre, hook

    def attention_hook(plan: LayerPlan):
        def hook(_layer: Any, _inputs: tuple, output: Any) -> None:
            ledger.measured_out(plan.info.name, output[0] if isinstance(output, (tuple, list)) else output)
        return hook

    def bn_hook(plan: LayerPlan):
        rule = plan.rule
        name = plan.info.name

        def hook(_layer: Any, inputs: tuple, output: Any) -> Any:
            if rule.kind == "gradient":
                ledger.bias(name, output, base_param(B, plan, "bias"), _on_last_axis(plan))
                return None
            if rule.kind == "epsilon":
                return _ledgered_epsilon(plan, output)
            entry = state.pending.pop(id(inputs[0]), None)
            if entry is None or entry[0] is not inputs[0]:
                raise LayerError(f"BatchNorm {plan.bn.name!r} did not receive the output of "
                                 f"{plan.info.name!r} as in the probe pass (the model's control flow "
                                 f"changed); pass merge_batchnorm=False")
            return _measured(plan, emit(B, K, plan, output, entry[1], state, entry[2]))
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
            if plan.rule.kind == "attention" and "packed_qkv" in plan.info.attrs:
                # its own forward, the rule on its packed projection's output; measured between
                # an alias of its input and its output
                handles.append(B.add_forward_pre_hook(plan.info.module, alias_pre_hook))
                handles.append(B.add_forward_hook(plan.info.module, packed_hook(plan)))
                handles.append(B.add_forward_hook(plan.info.attrs["packed_qkv"], qkv_hook(plan)))
                continue
            if plan.rule.kind == "attention" and "write_call" not in plan.info.attrs:
                # re-evaluated (Swin): measured between an alias of its input and its output;
                # its own forward, whose graph the replacement drops, records none where the
                # backend can say so
                handles.append(B.add_forward_pre_hook(plan.info.module, alias_pre_hook))
                shrink, replace = window_hooks(plan)
                handles.append(B.add_forward_pre_hook(plan.info.module, shrink))
                handles.append(B.add_forward_hook(plan.info.module, replace))
                gradless = getattr(B, "add_gradless_calls", None)
                if gradless is not None:
                    handles += gradless(plan.info.module)
                continue
            if plan.rule.kind == "attention":
                handles.append(B.add_forward_pre_hook(plan.info.module, attention_pre_hook(plan),
                                                      with_kwargs=True))
                handles.append(B.add_forward_hook(plan.info.module, attention_hook(plan)))
                continue
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


def param_watches(B: Any, layers: Mapping[str, Any], uses: tuple, ledger: Ledger) -> list:
    """Ledger entries for constants a container adds to a sub-layer's input or puts in front
    of it (``Probe.param_uses``): ``Σ p·g`` at that input, booked as ``container.parameter``."""
    handles = []
    for container, pname, relation, child in uses:
        if relation.startswith("embed:"):  # one relation over several parameters
            names = [n for n in relation.split(":")[2].split(",") + [relation.split(":")[3]] if n]
            p, label = None, ".".join(filter(None, (container, "+".join(names))))
        else:
            p = layers[container].params[pname]
            label = f"{container}.{pname}" if container else pname

        def pre_hook(_layer: Any, inputs: tuple, p: Any = p, relation: str = relation,
                     label: str = label, container: str = container) -> None:
            t = inputs[0]
            if relation.startswith("embed:"):
                ledger.watch_constant(label, t, _embedding_constant(B, layers[container], relation, t), None)
            elif relation == "prefix":
                k = B.shape(p)[1]
                ledger.watch_constant(label, t, p, k)
            else:
                ledger.watch_constant(label, t, p, None)
        handles.append(B.add_forward_pre_hook(layers[child].module, pre_hook))
    return handles


def _embedding_constant(B: Any, info: Any, relation: str, t: Any) -> Any:
    """``t − [0 | u]`` of an embedding relation (see ``xplain.observe``), from the parameters:
    the prefix tokens, then zeros over the signal, plus the position embedding."""
    _, k, order, pos, cover = relation.split(":")
    k = int(k)
    n, T, C = B.shape(t)
    parts = [B.broadcast_to(info.params[name], (n,) + tuple(B.shape(info.params[name]))[1:])
             for name in order.split(",") if name]
    parts.append(B.asarray(np.zeros((n, T - k, C), np.float32), like=t))
    constant = B.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    if pos:
        p = info.params[pos]
        constant = constant + (p if cover == "all" else
                               B.concat([B.asarray(np.zeros((1, k, C), np.float32), like=t), p], axis=1))
    return constant


def _on_last_axis(plan: LayerPlan) -> bool:
    """A linear layer's bias runs along the last axis (also on tokens ``(N, L, E)``)."""
    return plan.info.kind == "linear"


def rule_needs_layer_hook(plan: LayerPlan) -> bool:
    return not (plan.rule.kind in ("epsilon", "gradient") and plan.bn is not None)


def layer_probe(B: Any, state: PassState):
    def hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
        if not B.is_tensor(output):
            raise LayerError("relevance can only be read at a layer that outputs one tensor")
        e = B.with_grad(B.zeros_like(output))
        state.probes.append((e, B.stop_gradient(output)))
        return output + e
    return hook


