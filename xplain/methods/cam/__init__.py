"""The class activation map (CAM) family, written once for every backend.

Modules: :mod:`.target` (which layer; capturing activations and gradients), :mod:`.maps`
(channel weightings, ReLU, normalisation, upsampling, fusion of several layers),
:mod:`.gradient` (Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM), :mod:`.score`
(Score-CAM, Ablation-CAM: batched forward passes), :mod:`.classic` (CAM, Eigen-CAM),
:mod:`.guided` (Guided Grad-CAM).

Every method returns ``(N, H, W)`` maps at the input's resolution (bilinear, half-pixel
centres) — Guided Grad-CAM the input's shape — with ``extras["layer_maps"]`` at the layer's
resolution.
"""
from __future__ import annotations

from .classic import cam, eigencam
from .gradient import gradcam, gradcam_plus_plus, hirescam, layercam, xgradcam
from .guided import guided_gradcam
from .score import ablationcam, scorecam

METHODS = {
    "cam": cam,
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "xgradcam": xgradcam,
    "layercam": layercam,
    "hirescam": hirescam,
    "scorecam": scorecam,
    "ablationcam": ablationcam,
    "eigencam": eigencam,
    "guided_gradcam": guided_gradcam,
}

__all__ = ["METHODS", *[f.__name__ for f in METHODS.values()]]
