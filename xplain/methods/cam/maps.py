"""From channel weights to heat maps: weighting rules, ReLU, normalisation, upsampling, fusion.

Shapes: activations ``A`` and gradients ``G`` are ``(N, K, h, w)``; a layer map is
``(N, h, w)``; the returned attributions are ``(N, H, W)`` at the input's resolution.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ...backend import Tensor
from ...errors import InputError, OptionError
from ...run import MethodResult, Run

_HW = (2, 3)


def _safe_div(B: Any, num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, else 0 (no eps: exact where defined, never NaN)."""
    nz = den != 0
    return B.where(nz, num / B.where(nz, den, 1.0), 0.0)


def concat0(B: Any, xs: list) -> Tensor:
    """Concatenate chunks along the batch axis (no copy for a single chunk)."""
    return xs[0] if len(xs) == 1 else B.concat(xs, axis=0)


def weighted_sum(B: Any, weights: Tensor, A: Tensor) -> Tensor:
    """``sum_k weights[n, k] * A[n, k]`` → ``(N, h, w)``."""
    n, k = B.shape(weights)
    return B.sum(B.reshape(weights, (n, k, 1, 1)) * A, axis=1)


def gradcam_weights(B: Any, A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM: ``w_k = mean_ij dS/dA_kij`` (global-average-pooled gradient)."""
    return B.mean(G, axis=_HW)


def gradcampp_weights(B: Any, A: Tensor, G: Tensor) -> Tensor:
    """Grad-CAM++ (eq. 19 with Y = exp(S)): ``alpha = g^2 / (2 g^2 + sum_ab A_ab * g^3)``,
    ``w_k = sum_ij alpha_ij relu(g_ij)``; alpha is 0 where the denominator is 0."""
    g2 = G * G
    den = 2.0 * g2 + B.sum(A, axis=_HW, keepdims=True) * (g2 * G)
    alpha = _safe_div(B, g2, den)
    return B.sum(alpha * B.relu(G), axis=_HW)


def xgradcam_weights(B: Any, A: Tensor, G: Tensor) -> Tensor:
    """XGrad-CAM: ``w_k = sum_ij (A_kij / sum_ab A_kab) * g_kij`` (0 where ``sum A_k = 0``)."""
    s = B.sum(A, axis=_HW, keepdims=True)
    return B.sum(_safe_div(B, A * G, B.broadcast_to(s, B.shape(A))), axis=_HW)


def normalise(B: Any, m: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image min-max to [0, 1] of ``(N, h, w)``; constant images become 0.
    Returns ``(normalised, range)`` with ``range`` of shape ``(N,)``."""
    lo = B.min(m, axis=(1, 2), keepdims=True)
    hi = B.max(m, axis=(1, 2), keepdims=True)
    rng = hi - lo
    return _safe_div(B, m - lo, B.broadcast_to(rng, B.shape(m))), B.reshape(rng, (-1,))


def input_size(run: Run) -> tuple[int, int]:
    shape = run.backend.shape(run.inputs)
    if len(shape) != 4:
        raise InputError(f"CAM methods explain images: inputs must be (N, C, H, W), got shape "
                         f"{shape}")
    return shape[2], shape[3]


def upsample(B: Any, m: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear (half-pixel centres, ``align_corners=False``) ``(N, h, w)`` → ``(N, H, W)``,
    clipped to each map's own ``[min, max]``.

    Bilinear weights are convex, so the exact values lie in that range; float rounding can step
    outside it by an ulp. On a constant map (a ``1 x 1`` layer) that rounding is all the
    upsampled map would vary by, and min-max normalisation would stretch it to a [0, 1] pattern
    of noise; clipped, the map stays exactly constant (and is reported as such)."""
    n, h, w = B.shape(m)
    if (h, w) == tuple(size):
        return m
    up = B.reshape(B.interpolate(B.reshape(m, (n, 1, h, w)), size), (n, size[0], size[1]))
    lo = B.min(m, axis=(1, 2), keepdims=True)
    hi = B.max(m, axis=(1, 2), keepdims=True)
    return B.minimum(B.maximum(up, lo), hi)


def check_flags(relu: Any, normalize: Any) -> None:
    for name, v in (("relu", relu), ("normalize", normalize)):
        if not isinstance(v, (bool, np.bool_)):
            raise OptionError(f"{name}={v!r} must be True or False")


def finish(run: Run, raw: dict[str, Tensor], *, relu: bool, normalize: bool,
           extras: dict[str, Any] | None = None) -> MethodResult:
    """Turn raw layer maps ``{layer: (N, h, w)}`` into the method's result.

    Per layer: optional ReLU; ``layer_maps[layer]`` is that map at layer resolution (min-max
    normalised per image when ``normalize``). The attribution is the bilinear upsampling to the
    input size, normalised again at that size when ``normalize`` (normalising commutes with
    bilinear interpolation up to where its extrema fall between pixels). Several layers are
    fused as the mean of their per-image min-max normalised upsampled maps (maps of different
    layers have unrelated scales), normalised again when ``normalize``.

    A sample whose final map is all zero (or constant, when normalising) gets zeros and a
    ``warnings.warn`` naming it; never NaN.
    """
    check_flags(relu, normalize)
    B = run.backend
    size = input_size(run)
    layer_maps: dict[str, Tensor] = {}
    ups = []
    for name, m in raw.items():
        if relu:
            m = B.relu(m)
        layer_maps[name] = normalise(B, m)[0] if normalize else m
        ups.append(upsample(B, m, size))
    if len(ups) == 1:
        out = ups[0]
    else:
        out = normalise(B, ups[0])[0]
        for u in ups[1:]:
            out = out + normalise(B, u)[0]
        out = out / float(len(ups))
    if normalize:
        out, rng = normalise(B, out)
        flat = B.to_numpy(rng) == 0
    else:
        flat = B.to_numpy(B.max(B.abs(out), axis=(1, 2))) == 0
    if flat.any():
        idx = np.flatnonzero(flat).tolist()
        warnings.warn(f"{run.method}: the map of sample(s) {idx} is "
                      f"{'constant' if normalize else 'all zero'} (no positive evidence at this "
                      f"layer for the target class); returned as zeros. Try another layer, or "
                      f"relu=False to see negative evidence", RuntimeWarning, stacklevel=3)
    ex = {"layer_maps": layer_maps, "layers": list(raw)}
    ex.update(extras or {})
    return MethodResult(out, ex)
