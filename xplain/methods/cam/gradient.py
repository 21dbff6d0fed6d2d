"""Gradient-weighted class activation maps: Grad-CAM and its variants.

All share one pass: a forward with the target layers' outputs captured, and a backward from the
target scores down to the (earliest) target layer only — nothing before it records a graph.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any
from collections.abc import Callable

import numpy as np

from ...backend import Tensor
from ...errors import LayerError
from ...layout import describe, is_tokens
from ...run import MethodResult, Run
from .maps import (concat0, finish, gradcam_weights, gradcampp_weights, weighted_sum, xgradcam_weights)
from .target import Layout, captured, resolve_layers, to_channels_first

#: ``(B, A, G) -> (N, K)`` channel weights.
ChannelRule = Callable[[Any, Tensor, Tensor], Tensor]
#: ``(B, A, G) -> (N, h, w)`` map directly (element-wise methods).
MapRule = Callable[[Any, Tensor, Tensor], Tensor]


def activations_and_gradients(run: Run, layer: Any,
                              layout: str | None = None) -> tuple[list[str], dict, dict, np.ndarray]:
    """``(names, {name: A}, {name: dS/dA}, targets)`` for the whole batch, ``A``/``dS/dA`` of
    shape ``(N, K, h, w)`` (transposed from a channels-last layer, see
    :func:`~xplain.methods.cam.target.to_channels_first`), in memory-bounded chunks.

    Chunks are sized without the separate batch-1 probe forward of :meth:`Run.chunk_size`
    (it cost ~60 % of a batch-2 Grad-CAM on resnet50): unless ``max_batch`` is given, the first
    sample runs alone with its activation bytes counted, and that count sizes the chunks of the
    rest (and is left on the run for later passes, e.g. Guided Grad-CAM's).
    """
    B = run.backend
    infos = resolve_layers(run, layer)
    n = B.shape(run.inputs)[0]
    explicit = run.given_targets  # None: argmax per chunk (samples are independent in eval mode)
    known = run.max_batch is not None or run.per_sample_bytes_known
    size = run.chunk_size() if known else 1
    acts: dict[str, list] = {i.name: [] for i in infos}
    grads: dict[str, list] = {i.name: [] for i in infos}
    outs: list = []
    start = 0
    while start < n:
        sl = slice(start, min(n, start + size))
        counter = nullcontext([0, 0]) if known else run.counting_output_bytes()
        with B.enable_grad(), captured(run, infos, grad=True) as rec, counter as nbytes:
            out = run.forward(run.inputs[sl])
        if explicit is None:
            t = B.to_numpy(B.argmax(out, axis=1)).astype(np.int64)
        else:
            t = run.resolve_targets(out)[sl]  # range-checked against the model's classes
        with B.enable_grad():
            names = list(rec["z"])
            gs = B.grad(run.target_score(out, t), [rec["z"][k] for k in names])
        for k, g in zip(names, gs):
            acts[k].append(rec["act"][k])
            grads[k].append(g)
        outs.append(B.stop_gradient(out))
        start = sl.stop
        if not known:
            run.set_per_sample_bytes(*nbytes)
            known = True
            size = run.chunk_size()
    names = [i.name for i in infos]
    A = {i.name: to_channels_first(run, i, concat0(B, acts[i.name]), layout) for i in infos}
    G = {i.name: to_channels_first(run, i, concat0(B, grads[i.name]), layout) for i in infos}
    for info in infos:
        _check_grid_feeds(run, info, G[info.name])
    return names, A, G, run.resolve_targets(concat0(B, outs))


def _check_grid_feeds(run: Run, info: Any, g: Tensor) -> None:
    """Refuse a token layer whose grid tokens the scores do not depend on (after a ViT's last
    attention only the class token reaches the head): every map would be zero, and a zero map
    reads as "no evidence" where the truth is "this layer cannot show any"."""
    B = run.backend
    chosen = run.__dict__.get("_cam_layouts", {}).get(info.name)
    if is_tokens(chosen) and bool(B.all(g == 0)):
        raise LayerError(f"the explained scores do not depend on the grid tokens of layer "
                         f"{info.name!r} ({describe(chosen)}), only on its prefix tokens (a class "
                         f"token read after the last attention), so its CAM is zero everywhere; "
                         f"pick a layer before the last attention, e.g. that block's first "
                         f"LayerNorm, or leave layer= out for the default")


def channel_cam(run: Run, rule: ChannelRule, *, layer: Any, relu: bool, normalize: bool,
                layout: str | None = None) -> MethodResult:
    """``relu(sum_k w_k A_k)`` with ``w = rule(A, G)`` per layer."""
    B = run.backend
    names, A, G, _ = activations_and_gradients(run, layer, layout)
    weights = {k: rule(B, A[k], G[k]) for k in names}
    raw = {k: weighted_sum(B, weights[k], A[k]) for k in names}
    return finish(run, raw, relu=relu, normalize=normalize, extras={"weights": weights})


def elementwise_cam(run: Run, rule: MapRule, *, layer: Any, relu: bool, normalize: bool,
                    layout: str | None = None) -> MethodResult:
    """``rule(A, G)`` per layer: a map from activations and gradients position by position."""
    B = run.backend
    names, A, G, _ = activations_and_gradients(run, layer, layout)
    return finish(run, {k: rule(B, A[k], G[k]) for k in names}, relu=relu, normalize=normalize)


def gradcam(run: Run, *, layer: Any = None, relu: bool = True, normalize: bool = True,
            layout: Layout | None = None) -> MethodResult:
    """Grad-CAM: the layer's activations weighted by their global-average-pooled gradients,
    ``relu(sum_k mean_ij(dS_c/dA_kij) A_k)``, upsampled bilinearly to the input size.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization" (ICCV 2017). ``S_c`` is the pre-softmax score (logit) of the target class.

    Args:
        layer: target layer: dotted name (``"layer4"``, ``"features.35"``), index form
            (``"features[-1]"``), layer object, a list of those (maps fused: mean of the per-image
            normalised maps), or ``None``: the last layer with a spatial output that the
            explained scores depend on (:func:`~xplain.methods.cam.target.default_layer`).
        relu: keep positive evidence only (the paper's ReLU).
        normalize: per-image min-max to [0, 1] (how the paper displays maps); ``False`` keeps
            score units (Captum's ``LayerGradCam`` units, upsampled).
        layout: how the layer's 4-D output holds its axes: ``"channels_first"`` ``(N, C, h, w)``
            or ``"channels_last"`` ``(N, h, w, C)`` (Swin; transposed for the map). ``None``:
            proven from the layer's kind and parameters, the input's grid and what the tensor
            was computed from (:func:`xplain.layers.decide_layout`); a layer whose layout
            cannot be told is refused with :class:`~xplain.errors.LayerError` asking for it.

    Returns:
        ``(N, H, W)`` maps; extras ``layer_maps`` ``{layer: (N, h, w)}``, ``layers``,
        ``weights`` ``{layer: (N, K)}``.
    """
    return channel_cam(run, gradcam_weights, layer=layer, relu=relu, normalize=normalize,
                       layout=layout)


def gradcam_plus_plus(run: Run, *, layer: Any = None, relu: bool = True,
                      normalize: bool = True, layout: Layout | None = None) -> MethodResult:
    """Grad-CAM++: channel weights ``w_k = sum_ij alpha_kij relu(g_kij)`` with
    ``alpha = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (0 where the denominator is 0).

    Chattopadhay, Sarkar, Howlader & Balasubramanian, "Grad-CAM++: Generalized Gradient-based
    Visual Explanations for Deep Convolutional Networks" (WACV 2018), eq. 19: with the
    exponential of the score, ``Y = exp(S)``, the higher derivatives are powers of ``g = dS/dA``.
    The paper's weights also carry the factor ``exp(S)`` (from ``dY/dA = exp(S) g``); it is one
    positive number per image, so it only rescales the map — we drop it (it overflows float32
    for logits above ~88) and use ``relu(g)``, as pytorch-grad-cam does. Unlike
    pytorch-grad-cam no ``1e-6`` is added to the denominator: alpha is exact where defined
    (0 where it is 0). That constant is not harmless there: logit gradients at the last conv
    layer are typically ~1e-3, so ``g^2 ~ 1e-6`` and pytorch-grad-cam's maps move visibly away
    from eq. 19; with gradients large enough for it to vanish both agree (tested).

    Options and returns as :func:`gradcam`.
    """
    return channel_cam(run, gradcampp_weights, layer=layer, relu=relu, normalize=normalize,
                       layout=layout)


def xgradcam(run: Run, *, layer: Any = None, relu: bool = True, normalize: bool = True,
             layout: Layout | None = None) -> MethodResult:
    """XGrad-CAM: gradients weighted by the normalised activations,
    ``w_k = sum_ij (A_kij / sum_ab A_kab) dS/dA_kij`` (0 for a channel summing to 0).

    Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs"
    (BMVC 2020). Options and returns as :func:`gradcam`.
    """
    return channel_cam(run, xgradcam_weights, layer=layer, relu=relu, normalize=normalize,
                       layout=layout)


def _layercam(B: Any, A: Tensor, G: Tensor) -> Tensor:
    return B.sum(B.relu(G) * A, axis=1)


def _hirescam(B: Any, A: Tensor, G: Tensor) -> Tensor:
    return B.sum(G * A, axis=1)


def layercam(run: Run, *, layer: Any = None, relu: bool = True, normalize: bool = True,
             layout: Layout | None = None) -> MethodResult:
    """LayerCAM: each position weighted by its own positive gradient,
    ``relu(sum_k relu(dS/dA_k) ⊙ A_k)`` — usable on shallow layers too.

    Jiang, Zhang, Hou, Cheng & Wei, "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization" (IEEE TIP 2021). Options as :func:`gradcam`; extras without ``weights``.
    """
    return elementwise_cam(run, _layercam, layer=layer, relu=relu, normalize=normalize,
                           layout=layout)


def hirescam(run: Run, *, layer: Any = None, relu: bool = True, normalize: bool = True,
             layout: Layout | None = None) -> MethodResult:
    """HiResCAM: the element-wise product of gradient and activation summed over channels,
    ``sum_k dS/dA_k ⊙ A_k`` (no spatial averaging of the gradient), then the ReLU.

    Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
    convolutional neural networks" (arXiv 2011.08891, 2020). On a GAP + linear head it equals
    CAM. The ReLU (default on, as in pytorch-grad-cam) keeps positive evidence; ``relu=False``
    gives the paper's signed map. Options as :func:`gradcam`.
    """
    return elementwise_cam(run, _hirescam, layer=layer, relu=relu, normalize=normalize,
                           layout=layout)
