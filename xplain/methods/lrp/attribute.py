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
element-wise factor" (ε; the ``(z − sg(z))`` parts), the kernels apply the factor in the
backward pass instead of costing element-wise ops forward. Where ``z`` is one linear map of the
layer input (1x1 and linear layers, two-sided γ, the first layer's stacked terms),
``LRPKernels.route_to_input`` takes ``Wᵀ(c ⊙ g)`` straight into the input, so ``z`` itself is
evaluated without a graph.

This module is the method: observe (:mod:`.canonize`), plan (:mod:`.planning`), run the
modified passes in chunks (:mod:`.hooks`, :mod:`.terms`, :mod:`.emit` on the backend's
:mod:`.kernels`), and balance the relevance against the target (:mod:`.ledger`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ...backend import iter_chunks
from ...errors import ConservationWarning, LayerError, OptionError
from ...options import NonNegativeFloat, PositiveFloat
from ...run import MethodResult, Run
from .canonize import probe, without_relu_reader
from .composites import DEFAULT, DEFAULT_ATTENTION, lookup
from .hooks import PassState, install, layer_probe, param_watches
from .kernels import kernels_for
from .ledger import Conservation, Ledger, TOLERANCE, per_sample
from .params import total
from .planning import LayerPlan, assign_rules

#: On CPU, the most bytes one layer output of an LRP chunk takes (see the chunking in lrp).
_CPU_LAYER_BYTES = 16 * 2**20


# ---- the method --------------------------------------------------------------------------------
def lrp(run: Run, *, composite: Any = "auto", rules: Mapping[str, Any] | None = None,
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
        composite: registered composite name; ``"auto"`` (default): ``"epsilon_plus_flat"``
            (flat on the first layer, z⁺ on convolutions, ε on linear layers), or
            ``"attn_lrp"`` for a model with attention layers; a
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
    if isinstance(composite, str) and composite.strip().lower() == "auto":
        composite = DEFAULT_ATTENTION if any(i.kind == "attention" for i in run.layers()) else DEFAULT
    comp = lookup(composite, registry().composites)
    if rules is not None and not isinstance(rules, Mapping):
        raise OptionError(f"rules must be a dict {{layer name / pattern / kind: rule}}, got "
                          f"{type(rules).__name__}")
    found = probe(run, merge_batchnorm=merge_batchnorm)
    if found.sequence_first is not None:
        raise LayerError(f"layer {found.sequence_first!r} computes on a sequence-first (L, N, E) "
                         f"tensor (its rows are tokens, not samples), which LRP's per-sample "
                         f"bookkeeping cannot follow; build the model batch-first (torch: "
                         f"nn.MultiheadAttention(..., batch_first=True)) or explain it with a "
                         f"gradient method (method='integrated_gradients')")
    latest = [found]

    def learned(names: set[str]) -> None:
        # the cached probe is immutable: a corrected copy replaces it for later calls
        latest[0] = without_relu_reader(run, latest[0], names, merge_batchnorm=merge_batchnorm)
    plans = assign_rules(run.layers(), found, comp, rules, options, registry().activations)
    probe_module = None
    if layer is not None:
        target = run.layer(layer)
        probe_module = target.module
        if target.name in found.merged:  # its output's relevance lives after the merged BN
            probe_module = run.layer(found.merged[target.name]).module

    # ReLU layers: their outputs prove a rule's input non-negative (see terms_of), and they take
    # the optimistic plans' replacements (see emit)
    relus = [info.module for info in run.layers() if info.kind == "relu"]
    n = run.batch_size
    # A modified forward+backward holds more than the probe's activation estimate: a kept
    # tensor per rule (a ratio, a scale) beside each layer output. Budgeting 4x, and on CPU
    # half the plain methods' cap on the largest layer output, keeps chunks small enough that
    # glibc's malloc reuses freed memory between passes instead of returning it to the OS and
    # faulting it in again on every call. Chunks of equal size. benchmarks/RESULTS.md has the
    # measurements (page faults and times per chunk size).
    size = run.max_batch or _even(n, run.within_cpu_tensor_bytes(
        max(1, run.memory_budget // max(1, 4 * found.per_sample_bytes)), found.largest_bytes,
        limit=_CPU_LAYER_BYTES))
    # without given targets each chunk takes its own argmax (samples are independent): no
    # extra forward pass just to resolve them
    given = run.given_targets
    parts: list[tuple[Any, Any, list]] = []
    used: list[tuple[np.ndarray, np.ndarray]] = []  # per chunk: argmax targets, scores
    for sl in iter_chunks(n, size):
        t = None if given is None else given[sl]
        parts.append(_one_pass(run, plans, run.inputs[sl], t, probe_module, used, relus, learned,
                               found.param_uses))
    if given is None:
        run.record_argmax_targets(np.concatenate([t for t, _ in used]),
                                  np.concatenate([sc for _, sc in used]))
    rel = parts[0][0] if len(parts) == 1 else B.concat([p[0] for p in parts], axis=0)
    tout = parts[0][1] if len(parts) == 1 else B.concat([p[1] for p in parts], axis=0)
    ndim = len(B.shape(rel))
    extras: dict[str, Any] = {
        "relevance_sum": _per_sample_sum(B, rel),
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


def _even(total: int, size: int) -> int:
    """The chunk size that covers ``total`` samples in as many chunks as ``size`` needs, all of
    (nearly) equal size: 8 samples at most 6 per chunk are two chunks of 4, not 6 and 2 (each
    pass costs its hooks and kernels' fixed overhead; a small last pass buys nothing)."""
    if total <= 0 or size <= 0:
        return max(1, size)
    chunks = -(-total // size)
    return -(-total // chunks)


def _per_sample_sum(B: Any, rel: Any, keep_float64: bool = False) -> Any:
    """Σ relevance per sample, accumulated in float64: relevance of both signs cancels over
    ~10⁵ pixels, and paddle's float32 reduction lost 5e-4 of the target that way on a ViT with a
    flat first layer (the map itself was right), so conservation was misreported."""
    ndim = len(B.shape(rel))
    wide = B.astype(rel, "float64")
    total = B.sum(wide, axis=tuple(range(1, ndim))) if ndim > 1 else wide
    return total if keep_float64 else B.astype(total, B.dtype_name(rel))


def _balance(B: Any, rel: Any, tout: Any, ledgers: list[dict[str, np.ndarray]], rows: list[int],
             ndim: int) -> Conservation:
    """The :class:`Conservation` of one call (chunks' ledgers joined); warns when it is off."""
    target = B.to_numpy(tout).astype(np.float64).reshape(-1)
    relevance = B.to_numpy(_per_sample_sum(B, rel, keep_float64=True))
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
              probe_module: Any, used: list[tuple[np.ndarray, np.ndarray]], relus: list,
              on_tripped: Callable[[set[str]], None], uses: tuple = ()) -> tuple[Any, Any, list, dict]:
    """One modified forward+backward on batch ``x``: (relevance, target outputs, layer maps,
    absorbed relevance per layer). ``targets=None`` explains each sample's argmax, appended to
    ``used``. ``on_tripped(names)`` learns the layers whose optimistic plan a tripwire refuted
    (their outputs are read by more than a ReLU); the pass is then redone with the full rules."""
    B = run.backend
    K = kernels_for(B)
    state = PassState(ledger=Ledger(B))
    handles = install(B, K, plans, state, relus)
    try:
        if uses:
            handles += param_watches(B, {i.name: i for i in run.layers()}, uses, state.ledger)
        if probe_module is not None:
            handles.append(B.add_forward_hook(probe_module, layer_probe(B, state)))
        with B.enable_grad():
            xg = B.with_grad(x)
            out = run.forward(xg)
            if targets is None:
                scores = B.to_numpy(B.stop_gradient(out))
                targets = scores.argmax(axis=1).astype(np.int64)
                used.append((targets, scores))
            score = run.target_score(out, targets)
            leaves = [leaf for _, _, ls in state.explicit for leaf, _ in ls]
            probes = [e for e, _ in state.probes]
            grads = B.grad(score, [xg] + leaves + probes)
            state.ledger.refusal()
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
        on_tripped({plan.bn.name if plan.bn is not None else plan.info.name for plan in wrong})
        return _one_pass(run, plans, x, targets, probe_module, used, relus, on_tripped, uses)
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
                part = total(part[:, k * c:(k + 1) * c] for k in range(stacked))
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
            state.ledger.per_layer(int(B.shape(x)[0])))

