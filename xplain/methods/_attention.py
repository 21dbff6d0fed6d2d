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

import numpy as np

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
    q = _project(B, info, _batch_first(B, info, query), "q", project)
    k = _project(B, info, _batch_first(B, info, key), "k", project)
    return weights_of_projections(B, info, q, k, mask, scores=scores)


def weights_of_projections(B: Any, info: LayerInfo, q: Any, k: Any, mask: Any, *, scores: Any = None,
                           scale: float | None = None) -> Any:
    """The softmax weights ``(N, heads, L, S)`` from the projected queries and keys
    ``(N, L, E)`` / ``(N, S, E)`` (batch first); ``scale`` on ``q·kᵀ`` (default
    ``(E / heads)^-1/2``)."""
    heads = int(info.attrs["heads"])
    q, k = _heads(B, q, heads), _heads(B, k, heads)
    s = B.matmul(q, B.permute_dims(k, (0, 1, 3, 2))) * (B.shape(q)[-1] ** -0.5 if scale is None else scale)
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


def packed_attention(B: Any, info: LayerInfo, t: Any, *, weights: Any = None) -> tuple[Any, Any]:
    """Self-attention from its packed projection's output ``t`` ``(N, T, 3E)`` (``q | k | v`` on
    the last axis, heads contiguous within each, as timm's ``qkv``): ``(output (N, T, E) through
    ``out_weight``/``out_bias``, softmax weights (N, heads, T, T))``, with ``packed_scale`` on
    ``q·kᵀ``; ``weights`` as in :func:`reevaluate_attention`."""
    A = info.attrs
    e = B.shape(t)[-1] // 3
    a = packed_weights(B, info, t)
    n, heads, length, _ = B.shape(a)
    ctx = B.matmul(a if weights is None else weights(a), _heads(B, t[..., 2 * e:], heads))
    out = B.linear(B.reshape(B.permute_dims(ctx, (0, 2, 1, 3)), (n, length, e)), A["out_weight"], A.get("out_bias"))
    return out, a


def packed_weights(B: Any, info: LayerInfo, t: Any) -> Any:
    """The softmax weights ``(N, heads, T, T)`` from a packed projection's output ``t``
    (see :func:`packed_attention`)."""
    e = B.shape(t)[-1] // 3
    return weights_of_projections(B, info, t[..., :e], t[..., e:2 * e], None, scale=info.attrs["packed_scale"])


def _roll(B: Any, x: Any, shift: int, axis: int) -> Any:
    """``x`` rolled by ``shift`` along ``axis`` (1 or 2 of a 4-D tensor), as two slices."""
    size = B.shape(x)[axis]
    shift %= size
    if shift == 0:
        return x
    if axis == 1:
        return B.concat([x[:, size - shift:], x[:, :size - shift]], axis=1)
    return B.concat([x[:, :, size - shift:], x[:, :, :size - shift]], axis=2)


def _shift_mask(pad_h: int, pad_w: int, window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """The additive mask ``(windows, L, L)`` of shifted-window attention (Liu et al., "Swin
    Transformer", ICCV 2021, sec. 3.2): tokens from regions the cyclic shift brought together
    do not attend to each other (−100 before the softmax, as torchvision's)."""
    region = np.zeros((pad_h, pad_w), dtype=np.float32)
    count = 0
    for h in ((0, pad_h - window[0]), (pad_h - window[0], pad_h - shift[0]), (pad_h - shift[0], pad_h)):
        for w in ((0, pad_w - window[1]), (pad_w - window[1], pad_w - shift[1]), (pad_w - shift[1], pad_w)):
            region[h[0]:h[1], w[0]:w[1]] = count
            count += 1
    windows = region.reshape(pad_h // window[0], window[0], pad_w // window[1], window[1])
    windows = windows.transpose(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    diff = windows[:, None, :] - windows[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0))


def window_attention(B: Any, info: LayerInfo, x: Any, *, scores: Any = None, weights: Any = None,
                     context: Any = None) -> Any:
    """Shifted-window multi-head self-attention (Swin, Liu et al. 2021; V2's cosine attention,
    Liu et al. 2022) of an ``(N, H, W, C)`` map from the layer's parameters: ``qkv_weight``,
    ``qkv_bias``, ``out_weight``, ``out_bias``, ``logit_scale`` (V2, else ``None``) and attrs
    ``heads``, ``window_size``, ``shift_size``, ``relative_bias()`` (``(heads, L, L)``
    broadcastable), ``cosine``. ``scores``, ``weights`` and ``context`` as in
    :func:`reevaluate_attention`; V2's query and key norms are taken as constants."""
    P, A = info.params, info.attrs
    n, H, W, C = B.shape(x)
    wh, ww = (int(v) for v in A["window_size"])
    sh, sw = (int(v) for v in A["shift_size"])
    pad_b, pad_r = (wh - H % wh) % wh, (ww - W % ww) % ww
    if pad_r:  # zeros on the right and at the bottom, to whole windows
        x = B.concat([x, B.asarray(np.zeros((n, H, pad_r, C), np.float32), like=x)], axis=2)
    if pad_b:
        x = B.concat([x, B.asarray(np.zeros((n, pad_b, W + pad_r, C), np.float32), like=x)], axis=1)
    ph, pw = H + pad_b, W + pad_r
    sh, sw = (0 if wh >= ph else sh), (0 if ww >= pw else sw)
    if sh or sw:
        x = _roll(B, _roll(B, x, -sh, 1), -sw, 2)
    nw, length = (ph // wh) * (pw // ww), wh * ww
    x = B.reshape(B.permute_dims(B.reshape(x, (n, ph // wh, wh, pw // ww, ww, C)), (0, 1, 3, 2, 4, 5)),
                  (n * nw, length, C))
    heads = int(A["heads"])
    d = C // heads
    bias = P.get("qkv_bias")
    if bias is not None and A.get("cosine"):  # V2 has no key bias (torchvision zeroes it)
        bias = B.concat([bias[:C], B.zeros_like(bias[C:2 * C]), bias[2 * C:]], axis=0)
    qkv = B.permute_dims(B.reshape(B.linear(x, P["qkv_weight"], bias), (n * nw, length, 3, heads, d)),
                         (2, 0, 3, 1, 4))
    q, k, v = qkv[0], qkv[1], qkv[2]
    if A.get("cosine"):
        def unit(t: Any) -> Any:
            norm = B.sqrt(B.sum(B.stop_gradient(t) * B.stop_gradient(t), axis=-1, keepdims=True))
            return t / B.maximum(norm, 1e-12)
        scale = B.exp(B.minimum(P["logit_scale"], float(np.log(100.0))))
        s = B.matmul(unit(q), B.permute_dims(unit(k), (0, 1, 3, 2))) * scale
    else:
        s = B.matmul(q * (d ** -0.5), B.permute_dims(k, (0, 1, 3, 2)))
    if scores is not None:
        s = scores(s)
    s = s + A["relative_bias"]()
    if sh or sw:
        mask = B.asarray(_shift_mask(ph, pw, (wh, ww), (sh, sw))[None, :, None], like=s)
        s = B.reshape(B.reshape(s, (n, nw, heads, length, length)) + mask, (n * nw, heads, length, length))
    a = B.softmax(s, axis=-1)
    ctx = B.matmul(a if weights is None else weights(a), v)
    if context is not None:
        ctx = context(ctx)
    out = B.linear(B.reshape(B.permute_dims(ctx, (0, 2, 1, 3)), (n * nw, length, C)),
                   P["out_weight"], P.get("out_bias"))
    out = B.reshape(B.permute_dims(B.reshape(out, (n, ph // wh, pw // ww, wh, ww, C)), (0, 1, 3, 2, 4, 5)),
                    (n, ph, pw, C))
    if sh or sw:
        out = _roll(B, _roll(B, out, sh, 1), sw, 2)
    return out[:, :H, :W] if (pad_b or pad_r) else out
