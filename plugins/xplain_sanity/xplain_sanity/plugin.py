"""Hook implementations of the ``xplain-sanity`` method pack (public API only)."""
from __future__ import annotations

import numpy as np

from xplain import OptionError, Run, hookimpl

#: Sobel derivative kernels (x: left→right, y: top→bottom), applied as cross-correlation.
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=np.float32)


def random_baseline(run: Run, *, distribution: str = "uniform"):
    """Random attributions drawn from the run's seeded generator: the floor any real method
    must beat in faithfulness metrics (Adebayo et al., "Sanity Checks for Saliency Maps", 2018).

    Args:
        distribution: ``"uniform"`` (U[0, 1)) or ``"normal"`` (N(0, 1)).
    """
    if distribution not in ("uniform", "normal"):
        raise OptionError(f"distribution={distribution!r} is unknown; use 'uniform' or 'normal'")
    shape = run.backend.shape(run.inputs)
    values = run.rng.random(shape) if distribution == "uniform" else run.rng.standard_normal(shape)
    run.resolve_targets()
    return run.backend.asarray(values.astype(np.float32), like=run.inputs)


def sobel_edges(run: Run):
    """Edge-detector "attributions": the Sobel gradient magnitude of the channel-mean image,
    the same for every class and every channel. A model-independent baseline: Adebayo et al.
    ("Sanity Checks for Saliency Maps", NeurIPS 2018) show that some saliency methods produce
    maps an edge detector reproduces; faithfulness metrics should rank real methods above it.

    Zero padding at the border (OpenCV's ``BORDER_CONSTANT``). Input: ``(N, C, H, W)``.
    Returns a tensor of the input's shape, in input units per pixel.
    """
    B = run.backend
    x = run.inputs
    shape = B.shape(x)
    if len(shape) != 4:
        raise OptionError(f"sobel_edges needs images (N, C, H, W), got shape {shape}")
    kernels = np.stack([_SOBEL_X, _SOBEL_X.T])[:, None]            # (2, 1, 3, 3)
    grey = B.mean(x, axis=1, keepdims=True)
    g = B.conv(grey, B.asarray(kernels, like=x), stride=(1, 1), padding=(1, 1))
    magnitude = B.sqrt(B.sum(g * g, axis=1, keepdims=True))
    run.resolve_targets()
    return B.broadcast_to(magnitude, shape) + 0.0


@hookimpl
def xplain_register_methods(registry) -> None:
    registry.add_method("random_baseline", random_baseline)
    registry.add_method("sobel_edges", sobel_edges)
