"""LRP through transformer blocks: LayerNorm and multi-head attention (docs/architecture.md §3).

LayerNorm is *re-evaluated* from its input and parameters with the rule built into the
computation's gradient (:mod:`xplain.methods._attention`: the value stays exactly the layer's
own, the re-evaluation is checked against it).

* LayerNorm (``constant_std``): ``ŷ = (x − mean(x)) / sg(σ) · w + b`` (Ali et al., "XAI for
  Transformers: Better Explanations through Conservative Propagation", ICML 2022).
* Attention (``cp``, Ali et al. 2022): the softmax weights ``A`` as constants, so relevance
  flows through ``A·V`` into the values only; projections by LRP-0.
* Attention (``attnlrp``, Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance
  Propagation for Transformers", ICML 2024): ``Q·Kᵀ`` and ``A·V`` by the uniform rule (half of
  the relevance to each factor: the gradient of a bilinear product counts its output twice, so
  it is halved); the softmax by its Taylor expansion at the input, ``R_x = x ⊙ (R_s − s·Σ R_s)``,
  which in xplain's convention (``R = value ⊙ gradient``) is the softmax's own gradient;
  projections by LRP-0.

Attention is not re-evaluated: the layer's own forward runs on inputs whose gradient routes
carry the rule (:func:`attention_inputs`), so masks, head splits and fused kernels are the
layer's own and nothing is computed twice.

The relevance each layer absorbs (biases, stabilisers, the softmax's and the masks' share) is
measured by the ledger at the layer's boundary (``Σ y·g`` out minus ``Σ x·g`` in).
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ...backend import LayerInfo
from .._attention import check_reevaluation, same_value, window_attention
from .rules import Rule


def _axes(info: LayerInfo, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(a % ndim for a in info.attrs.get("axes", (-1,))))


def _along(B: Any, p: Any, axes: tuple[int, ...], ndim: int, shape: tuple[int, ...]) -> Any:
    """A parameter shaped like the normalised axes, reshaped to broadcast against ``shape``."""
    return B.reshape(p, tuple(shape[i] if i in axes else 1 for i in range(ndim)))


#: (LayerNorm module) → input shapes at which its re-evaluation was checked against its output.
_CHECKED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def layernorm(B: Any, info: LayerInfo, a: Any, y: Any) -> tuple[Any, Any]:
    """The replacement of LayerNorm output ``y`` on input ``a`` under ``constant_std``, and the
    layer's bias shaped to broadcast against ``y`` (``None`` without one): what it absorbs is
    ``Σ b·g`` (the centring conserves).

    The replacement is ``sg(y) + (c − sg(c))`` with ``c = (a − mean(a)) · sg(w/σ)``: the
    gradient of the rule, the value of the layer. The first call per layer and input shape
    re-evaluates the whole LayerNorm and checks it against ``y`` (a subclass computing
    something else is refused); a module's forward does not change between calls."""
    shape = tuple(B.shape(a))
    ndim = len(shape)
    axes = _axes(info, ndim)
    eps = float(info.attrs.get("eps", 1e-5))
    weight, bias = info.params.get("weight"), info.params.get("bias")
    centred = a - B.mean(a, axis=axes, keepdims=True)
    fixed = B.stop_gradient(centred)
    scale = 1.0 / B.sqrt(B.mean(fixed * fixed, axis=axes, keepdims=True) + eps)
    if weight is not None:
        scale = scale * _along(B, weight, axes, ndim, shape)
    mine = centred * scale
    shaped_bias = None if bias is None else _along(B, bias, axes, ndim, shape)
    checked = _CHECKED.setdefault(info.module, set())
    if shape[1:] not in checked:
        check_reevaluation(B, info, y, mine if shaped_bias is None else mine + shaped_bias, "LayerNorm")
        checked.add(shape[1:])
    return same_value(B, y, mine), shaped_bias


def attention_inputs(B: Any, rule: Rule, query: Any, key: Any, value: Any,
                     watch: Any) -> tuple[Any, Any, Any]:
    """The query, key and value a multi-head attention layer is called with so that its own
    forward carries ``rule`` (its in-projections are linear, so a rule's factor on the ``Q``,
    ``K`` or ``V`` path can be applied to the gradient at that input): ``cp`` detaches query
    and key (the softmax weights become constants); ``attnlrp`` scales the gradient at the
    value by ½ (uniform rule on ``A·V``) and at query and key by ¼ (½ on ``A·V`` times ½ on
    ``Q·Kᵀ``), the softmax keeping its own gradient. The projections thereby take LRP-0, their
    biases absorbing. ``watch(a)`` is called with each input the relevance passes (an alias
    only the layer reads, for the ledger's measurement)."""
    def routed(t: Any, scale: float | None) -> Any:
        a = B.alias(t)
        watch(a)
        if scale is None:
            return a
        b = B.alias(a)  # scaled behind the watched alias, which then sees the rule's gradient
        return B.scale_gradient(b, B.asarray(scale, like=b))

    if rule.params.get("softmax") == "taylor":
        return routed(query, 0.25), routed(key, 0.25), routed(value, 0.5)
    return B.stop_gradient(query), B.stop_gradient(key), routed(value, None)


def packed_qkv(B: Any, rule: Rule, t: Any) -> Any:
    """The output ``t`` (``q | k | v`` on the last axis) of an attention layer's packed
    projection, with the gradient routes of ``rule`` (see :func:`attention_inputs`): value
    unchanged; ``cp``: query and key parts detached; ``attnlrp``: their gradient ¼, the
    value's ½."""
    width = B.shape(t)[-1] // 3
    if rule.params.get("softmax") != "taylor":
        return B.concat([B.stop_gradient(t[..., :2 * width]), t[..., 2 * width:]], axis=-1)
    scale = np.concatenate([np.full(2 * width, 0.25, np.float32), np.full(width, 0.5, np.float32)])
    fixed = B.stop_gradient(t)
    return fixed + (t - fixed) * B.asarray(scale, like=t)


def window_checked(B: Any, info: LayerInfo, x: Any) -> bool:
    """Whether the re-evaluation of ``info`` was checked against its own output at ``x``'s size."""
    return tuple(B.shape(x))[1:] in _CHECKED.get(info.module, ())


def window_attention_rule(B: Any, info: LayerInfo, rule: Rule, x: Any, y: Any) -> Any:
    """The replacement of shifted-window attention output ``y`` on input ``x`` under ``rule``.
    Swin's layer computes its projections functionally from one packed weight, so its inputs
    cannot carry the rule as :func:`attention_inputs` does: the layer is re-evaluated with the
    rule in the gradient (``cp``: weights constant; ``attnlrp``: ½ on both products), checked
    against ``y`` once per layer and input size, where the output takes ``y``'s value. Once
    checked, ``y`` is ``None`` (the layer's own forward did not run on ``x``) and the output is
    the re-evaluation itself, equal to the layer's function up to float rounding."""
    half: list = []

    def halved(t: Any) -> Any:
        if not half:
            half.append(B.asarray(0.5, like=t))
        return B.scale_gradient(t, half[0])

    taylor = rule.params.get("softmax") == "taylor"
    mine = window_attention(B, info, x, scores=halved if taylor else None,
                            weights=None if taylor else B.stop_gradient,
                            context=halved if taylor else None)
    if y is None:
        return mine
    shape = tuple(B.shape(x))[1:]
    checked = _CHECKED.setdefault(info.module, set())
    if shape not in checked:
        check_reevaluation(B, info, y, mine, "shifted-window attention")
        checked.add(shape)
    return same_value(B, y, mine)
