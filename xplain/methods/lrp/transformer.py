"""LRP through transformer blocks: LayerNorm and multi-head attention (docs/architecture.md §3).

Both layers are *re-evaluated* from their input and parameters with the rule built into the
computation's gradient, and the layer's output is replaced by ``sg(y) + (ŷ − sg(ŷ))``: the value
stays exactly the layer's own ``y``, the gradient is the rule's. Before that, ``ŷ`` is checked
against ``y``: a layer that computes something else than the standard layer it was described as
(a subclass with another forward, a mask the hook cannot see, another head split) is refused
with a :class:`LayerError` instead of being explained by a rule for a different function.

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
from ...errors import LayerError
from .kernels import LRPKernels
from .rules import Rule

#: Relative tolerance of the re-evaluation check. The same float32 LayerNorm or attention
#: computed in another operation order (a fused kernel against matmul + softmax) differs by
#: ~1e-6 of the output's scale; a mis-described layer (other axes, an unseen mask, another head
#: split, a different scaling) by O(1). 1e-3 sits between with three orders of margin each way.
RECHECK_TOLERANCE = 1e-3


def same_value(B: Any, y: Any, mine: Any) -> Any:
    """``y``'s value with ``mine``'s gradient: ``sg(y) + (mine − sg(mine))``."""
    return B.stop_gradient(y) + (mine - B.stop_gradient(mine))


def check_reevaluation(B: Any, info: LayerInfo, y: Any, mine: Any, what: str) -> None:
    """Refuse when the re-evaluation ``mine`` does not reproduce the layer's output ``y``."""
    ys, ms = B.stop_gradient(y), B.stop_gradient(mine)
    pair = B.to_numpy(B.stack([B.max(B.abs(ms - ys)), B.max(B.abs(ys))]))
    diff, scale = float(pair[0]), float(pair[1])
    if not diff <= RECHECK_TOLERANCE * max(scale, 1e-6):  # also refuses NaN
        raise LayerError(
            f"layer {info.name!r} ({info.type_name}) does not compute a standard {what} of its "
            f"input: re-evaluated from its parameters it differs by {diff:.3g} from its own output "
            f"(whose values reach {scale:.3g}), so xplain's {what} rule would explain another "
            f"function. Its forward differs from the class it derives from, or it reads something "
            f"the hook cannot see; explain the model with a gradient method "
            f"(method='integrated_gradients'), or report the layer class to xplain")


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
    P, A = info.params, info.attrs
    eps = rule.stabilizer
    batch_first = bool(A.get("batch_first", True))
    if not batch_first:  # (L, N, E) -> (N, L, E)
        query, key, value = (B.permute_dims(t, (1, 0, 2)) for t in (query, key, value))

    def project(x: Any, which: str) -> Any:
        z = B.linear(x, P[f"{which}_weight"], P.get(f"{which}_bias"))
        return K.damp_gradient(z, eps, None) if eps > 0 else z

    q, k, v = project(query, "q"), project(key, "k"), project(value, "v")
    n, lq, e = B.shape(q)
    ls = B.shape(k)[1]
    heads = int(A["heads"])
    d = e // heads

    def split(t: Any, length: int) -> Any:  # (N, L, E) -> (N, heads, L, d)
        return B.permute_dims(B.reshape(t, (n, length, heads, d)), (0, 2, 1, 3))

    taylor = rule.params.get("softmax") == "taylor"
    scores = B.matmul(split(q, lq), B.permute_dims(split(k, ls), (0, 1, 3, 2))) * (d ** -0.5)
    if taylor:
        scores = B.scale_gradient(scores, B.asarray(0.5, like=scores))  # uniform rule on Q·Kᵀ
    if mask is not None:
        scores = scores + mask
    weights = B.softmax(scores, axis=-1)
    if not taylor:
        weights = B.stop_gradient(weights)  # CP: the attention weights are constants
    context = B.matmul(weights, split(v, ls))
    if taylor:
        context = B.scale_gradient(context, B.asarray(0.5, like=context))  # uniform rule on A·V
    context = B.reshape(B.permute_dims(context, (0, 2, 1, 3)), (n, lq, e))
    mine = project(context, "out")
    if not batch_first:
        mine = B.permute_dims(mine, (1, 0, 2))
    check_reevaluation(B, info, y, mine, "multi-head attention")
    return same_value(B, y, mine)
