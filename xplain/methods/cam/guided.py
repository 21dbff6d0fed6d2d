"""Guided Grad-CAM: guided backpropagation sharpened by the Grad-CAM map."""
from __future__ import annotations

from typing import Any

from ...run import MethodResult, Run
from .gradient import gradcam
from .target import Layout


def guided_gradcam(run: Run, *, layer: Any = None, normalize: bool = True,
                   layout: Layout | None = None) -> MethodResult:
    """Guided Grad-CAM: guided backpropagation times the upsampled Grad-CAM map,
    ``GB(x) ⊙ gradcam`` (the map broadcast over the input's channels).

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization" (ICCV 2017), Sec. 3.1; guided backpropagation from Springenberg et al.,
    "Striving for Simplicity: The All Convolutional Net" (ICLR workshop 2015), taken from
    :func:`xplain.methods.guided.guided_backprop` (ReLU layers' backward replaced through the
    backend's custom-VJP op).

    Args:
        layer, layout: Grad-CAM's target layer and its layout (as in :func:`gradcam`).
        normalize: min-max normalise the Grad-CAM map to [0, 1] before multiplying (as the
            paper's code does); the guided gradient keeps its units.

    Returns:
        Tensor of the input's shape ``(N, C, H, W)``; extras ``gradcam`` ``(N, H, W)``,
        ``layer_maps``, ``layers``, ``weights``.
    """
    from ..guided import guided_backprop

    B = run.backend
    cam = gradcam(run, layer=layer, relu=True, normalize=normalize, layout=layout)
    gb = guided_backprop(run)
    n, h, w = B.shape(cam.attributions)
    out = gb * B.reshape(cam.attributions, (n, 1, h, w))
    return MethodResult(out, {"gradcam": cam.attributions, **cam.extras})
