"""Layers re-evaluated from their parameters, for methods that need what happens inside them:
multi-head attention (its softmax weights, or its output rebuilt with a rule in the gradient).

A re-evaluation replaces the layer's output by ``sg(y) + (ŷ − sg(ŷ))`` (:func:`same_value`):
the value stays exactly the layer's own ``y``, the gradient is the rebuilt ``ŷ``'s. Before that,
:func:`check_reevaluation` compares ``ŷ`` with ``y``: a layer that computes something else than
the standard layer it was described as (a subclass with another forward, a mask the hook cannot
see, another head split) is refused with a :class:`LayerError` instead of being explained as a
different function. Used by LRP's transformer rules (:mod:`xplain.methods.lrp.transformer`) and
attention rollout (:mod:`xplain.methods.attention`).
"""
from __future__ import annotations

from typing import Any

from ..backend import LayerInfo
from ..errors import LayerError

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


def _batch_first(B: Any, info: LayerInfo, t: Any) -> Any:
    """``(L, N, E)`` → ``(N, L, E)`` for a layer that is not batch-first."""
    return t if info.attrs.get("batch_first", True) else B.permute_dims(t, (1, 0, 2))


def _project(B: Any, info: LayerInfo, x: Any, which: str, project: Any) -> Any:
    z = B.linear(x, info.params[f"{which}_weight"], info.params.get(f"{which}_bias"))
    return z if project is None else project(z)


def _heads(B: Any, t: Any, heads: int) -> Any:
    """``(N, L, E)`` → ``(N, heads, L, E / heads)``."""
    n, length, e = B.shape(t)
    return B.permute_dims(B.reshape(t, (n, length, heads, e // heads)), (0, 2, 1, 3))


def attention_weights(B: Any, info: LayerInfo, query: Any, key: Any, mask: Any, *,
                      project: Any = None, scores: Any = None) -> Any:
    """The softmax weights ``(N, heads, L, S)`` of a multi-head attention layer, from its
    parameters (``xplain.backend.ATTENTION_ATTRS``) and inputs in the layer's layout;
    ``project`` and ``scores`` as in :func:`reevaluate_attention`."""
    heads = int(info.attrs["heads"])
    q = _heads(B, _project(B, info, _batch_first(B, info, query), "q", project), heads)
    k = _heads(B, _project(B, info, _batch_first(B, info, key), "k", project), heads)
    s = B.matmul(q, B.permute_dims(k, (0, 1, 3, 2))) * (B.shape(q)[-1] ** -0.5)
    if scores is not None:
        s = scores(s)
    if mask is not None:
        s = s + mask
    return B.softmax(s, axis=-1)


def reevaluate_attention(B: Any, info: LayerInfo, query: Any, key: Any, value: Any, mask: Any, *,
                         project: Any = None, scores: Any = None, weights: Any = None,
                         context: Any = None) -> tuple[Any, Any]:
    """Multi-head attention from the layer's parameters (``xplain.backend.ATTENTION_ATTRS``):
    ``(output in the layer's layout, softmax weights (N, heads, L, S))``. ``project``,
    ``scores``, ``weights`` and ``context`` (each ``None`` or a function of a tensor) rewrite
    the projections' outputs, ``Q·Kᵀ``, the softmax weights and ``A·V`` as they are computed:
    where a rule puts its gradient."""
    a = attention_weights(B, info, query, key, mask, project=project, scores=scores)
    n, heads, lq, _ = B.shape(a)
    v = _heads(B, _project(B, info, _batch_first(B, info, value), "v", project), heads)
    ctx = B.matmul(a if weights is None else weights(a), v)
    if context is not None:
        ctx = context(ctx)
    e = heads * B.shape(v)[-1]
    out = _project(B, info, B.reshape(B.permute_dims(ctx, (0, 2, 1, 3)), (n, lq, e)), "out", project)
    return _batch_first(B, info, out), a
