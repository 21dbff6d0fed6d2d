"""LRP through transformer blocks: LayerNorm and multi-head attention (docs/architecture.md §3).

Both layers are *re-evaluated* from their input and parameters with the rule built into the
computation's gradient (:mod:`xplain.methods._attention`: the value stays exactly the layer's
own, the re-evaluation is checked against it).

* LayerNorm (``constant_std``): ``ŷ = (x − mean(x)) / sg(σ) · w + b`` (Ali et al., "XAI for
  Transformers: Better Explanations through Conservative Propagation", ICML 2022).
* Attention (``cp``, Ali et al. 2022): projections by LRP-ε, the softmax weights ``A`` as
  constants, so relevance flows through ``A·V`` into the values only.
* Attention (``attnlrp``, Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance
  Propagation for Transformers", ICML 2024): projections by LRP-ε; ``Q·Kᵀ`` and ``A·V`` by the
  uniform rule (half of the relevance to each factor: the gradient of a bilinear product
  counts its output twice, so it is halved); the softmax by its Taylor expansion at the input,
  ``R_x = x ⊙ (R_s − s·Σ R_s)``, which in xplain's convention (``R = value ⊙ gradient``) is the
  softmax's own gradient.

The relevance each layer absorbs (biases, stabilisers, the softmax's and the masks' share) is
measured by the ledger at the layer's boundary (``Σ y·g`` out minus ``Σ x·g`` in).
"""
from __future__ import annotations

from typing import Any

from ...backend import LayerInfo
from .._attention import check_reevaluation, reevaluate_attention, same_value
from .kernels import LRPKernels
from .rules import Rule


def _axes(info: LayerInfo, ndim: int) -> tuple[int, ...]:
    return tuple(sorted(a % ndim for a in info.attrs.get("axes", (-1,))))


def _along(B: Any, p: Any, axes: tuple[int, ...], ndim: int, shape: tuple[int, ...]) -> Any:
    """A parameter shaped like the normalised axes, reshaped to broadcast against ``shape``."""
    return B.reshape(p, tuple(shape[i] if i in axes else 1 for i in range(ndim)))


def layernorm(B: Any, info: LayerInfo, a: Any, y: Any) -> Any:
    """The replacement of LayerNorm output ``y`` on input ``a`` under ``constant_std``."""
    shape = tuple(B.shape(a))
    ndim = len(shape)
    axes = _axes(info, ndim)
    centred = a - B.mean(a, axis=axes, keepdims=True)
    fixed = B.stop_gradient(centred)
    std = B.sqrt(B.mean(fixed * fixed, axis=axes, keepdims=True) + float(info.attrs.get("eps", 1e-5)))
    mine = centred / std
    weight, bias = info.params.get("weight"), info.params.get("bias")
    if weight is not None:
        mine = mine * _along(B, weight, axes, ndim, shape)
    if bias is not None:
        mine = mine + _along(B, bias, axes, ndim, shape)
    check_reevaluation(B, info, y, mine, "LayerNorm")
    return same_value(B, y, mine)


def attention(B: Any, K: LRPKernels, info: LayerInfo, rule: Rule, query: Any, key: Any, value: Any,
              mask: Any, y: Any) -> Any:
    """The replacement of multi-head attention output ``y`` (``xplain.backend.ATTENTION_ATTRS``)
    under ``rule`` (``cp`` or ``attnlrp``)."""
    eps = rule.stabilizer
    taylor = rule.params.get("softmax") == "taylor"
    half = None

    def halved(t: Any) -> Any:  # the uniform rule on a bilinear product
        nonlocal half
        half = B.asarray(0.5, like=t) if half is None else half
        return B.scale_gradient(t, half)

    mine, _ = reevaluate_attention(
        B, info, query, key, value, mask,
        project=(lambda z: K.damp_gradient(z, eps, None)) if eps > 0 else None,
        scores=halved if taylor else None,
        weights=None if taylor else B.stop_gradient,  # CP: the attention weights are constants
        context=halved if taylor else None)
    check_reevaluation(B, info, y, mine, "multi-head attention")
    return same_value(B, y, mine)


