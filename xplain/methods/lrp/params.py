"""Parameter modifiers: a layer's weight and bias as a rule's terms see them.

BatchNorm merged into the conv/linear before it (canonisation, see :mod:`.canonize`), then a
term's modifier (``positive``, ``gamma+`` ...; :func:`.rules.modify_param`) applied. Every
modified parameter is computed once per call and cached on the layer's :class:`LayerPlan`.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...backend import LayerInfo
from .canonize import batchnorm_affine, channel_scale, merged_bias
from .kernels import LRPKernels
from .planning import LayerPlan
from .rules import modify_param, piecewise_slopes


def layer_param(B: Any, K: LRPKernels, plan: LayerPlan, modifier: str, part: str) -> Any:
    """Weight or bias of ``plan``'s layer (BatchNorm merged in), under ``modifier``; cached."""
    key = f"{part}:{modifier}"
    if key not in plan.cache:
        info = plan.info
        slopes = piecewise_slopes(modifier, plan.rule.gamma)
        if part == "weight" and info.kind != "batchnorm" and slopes is not None:
            # BatchNorm's scale and the modifier in one scaled leaky ReLU of the layer's own
            # weight: two passes over it instead of up to four (~0.05 of a raw ResNet-50 pass
            # per call)
            alpha, beta = slopes
            w = info.params["weight"]
            scale = alpha if plan.bn is None else channel_scale(B, affine(B, plan)[0] * alpha, w)
            plan.cache[key] = (w if plan.bn is None and alpha == beta == 1.0
                               else K.scaled_leaky_relu(w, scale, beta / alpha))
        else:
            p = base_param(B, plan, part)
            plan.cache[key] = None if p is None else modify_param(B, modifier, p, plan.rule.gamma)
    return plan.cache[key]


def affine(B: Any, plan: LayerPlan) -> tuple[Any, Any]:
    """``(scale, shift)`` per channel of the BatchNorm merged into ``plan``'s layer, or of the
    layer itself if it is a BatchNorm; cached per call."""
    if "affine" not in plan.cache:
        plan.cache["affine"] = batchnorm_affine(B, plan.info if plan.bn is None else plan.bn)
    return plan.cache["affine"]


def base_param(B: Any, plan: LayerPlan, part: str) -> Any:
    """The unmodified weight or bias of ``plan``'s layer with BatchNorm merged in; cached."""
    key = f"base:{part}"
    if key not in plan.cache:
        info = plan.info
        if info.kind == "batchnorm":
            p = affine(B, plan)[0 if part == "weight" else 1]
        else:
            p = info.params[part] if part == "weight" else info.params.get("bias")
            if plan.bn is not None:
                scale, shift = affine(B, plan)
                p = (p * channel_scale(B, scale, p) if part == "weight"
                     else merged_bias(p, scale, shift))
        plan.cache[key] = p
    return plan.cache[key]


def apply_layer(B: Any, info: LayerInfo, a: Any, w: Any, b: Any) -> Any:
    """The layer's affine map with given parameters (BatchNorm: per-channel scale and shift)."""
    if info.kind == "conv":
        at = info.attrs
        return B.conv(a, w, b, stride=at["stride"], padding=at["padding"], dilation=at["dilation"],
                      groups=at["groups"])
    if info.kind == "linear":
        return B.linear(a, w, b)
    shape = (1, -1) + (1,) * (len(B.shape(a)) - 2)
    out = a * B.reshape(w, shape)
    return out if b is None else out + B.reshape(b, shape)



def pointwise(B: Any, info: LayerInfo) -> bool:
    """A linear layer, or a convolution with a 1x1 kernel."""
    return info.kind == "linear" or all(k == 1 for k in B.shape(info.params["weight"])[2:])


def plus_eps(B: Any, plan: LayerPlan, key: str, weight: Any, eps: float, bias: Any) -> Any:
    """``bias + eps`` for each output of a layer with ``weight`` (``bias=None``: ``eps``);
    cached per call under ``key``."""
    cached = f"eps:{key}"
    if cached not in plan.cache:
        shift = B.asarray(np.full(B.shape(weight)[0], eps, np.float32), like=weight)
        plan.cache[cached] = shift if bias is None else bias + shift
    return plan.cache[cached]


def signed_params(B: Any, K: LRPKernels, plan: LayerPlan, term: Any) -> tuple[Any, Any]:
    """A term's weight and bias (``None`` without one) under its modifiers, times its sign."""
    w = layer_param(B, K, plan, term.weight, "weight")
    b = None if term.bias is None else layer_param(B, K, plan, term.bias, "bias")
    if term.sign < 0:
        w, b = w * term.sign, (None if b is None else b * term.sign)
    return w, b


def total(values: Any) -> Any:
    """The sum of the values that are not ``None`` (``None`` if there are none)."""
    total = None
    for v in values:
        if v is not None:
            total = v if total is None else total + v
    return total


def group_params(B: Any, K: LRPKernels, plan: LayerPlan, key: str, terms: list) -> tuple[Any, Any]:
    """Weight and bias of a group whose (non-zero) terms all read the layer input itself: the
    sums over its terms (signs included); cached per call under ``key``."""
    if key not in plan.cache:
        pairs = [signed_params(B, K, plan, t) for t in terms]
        plan.cache[key] = (total(w for w, _ in pairs), total(b for _, b in pairs))
    return plan.cache[key]


