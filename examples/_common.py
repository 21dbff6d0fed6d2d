"""Helpers shared by the example scripts: framework choice, tensors, checkpoints, sample images.

Only the examples use this module; it keeps each script focused on its story. Everything that
touches a framework is imported inside the functions.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from xplain import modelkit, viz


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--framework", choices=modelkit.installed(), default=modelkit.default_framework(),
                   help="default: torch if installed, else paddle")
    p.add_argument("--out", default="xplain-examples", help="folder for figures")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights/images")


def to_tensor(x: np.ndarray, framework: str) -> Any:
    return modelkit.kit(framework).to_tensor(np.ascontiguousarray(x, dtype=np.float32))


def zoo(name: str, framework: str, *, seed: int = 0, num_classes: int | None = None) -> Any:
    """A torchvision / paddle.vision architecture with deterministic random weights (offline)."""
    from xplain.testing.zoo import build

    return build(name, framework, seed=seed, num_classes=num_classes)


def load_checkpoint(path: str | Path, framework: str) -> dict[str, np.ndarray]:
    """A state dict as numpy, with the ``module.`` prefix of DataParallel checkpoints removed.

    Files are data, never code: ``.safetensors``, ``.npz`` and PaddlePaddle ``.pdparams`` are
    read as arrays only; a PyTorch file by ``torch.load(weights_only=True)`` (the framework's
    model kit, :mod:`xplain.modelkit`, knows which)."""
    return modelkit.read_weights(path, framework)


def load_into(model: Any, state: dict[str, np.ndarray], framework: str) -> Any:
    """Load a (prefix-stripped) numpy state dict into ``model``: names and shapes must match the
    model's exactly (the error says what is missing or extra)."""
    modelkit.load_state(model, state)
    model.eval()
    return model


def sample_image(path: str | Path, size: int = 256, seed: int = 0) -> Path:
    """Write a synthetic RGB picture (two shapes on noise) to ``path`` when the user gave no
    image, so the real OpenCV loading path (BGR → RGB) is still exercised."""
    from xplain import demo

    rng = np.random.default_rng(seed)
    a = demo.draw_shape(rng, 0, size)
    b = demo.draw_shape(rng, 2, size)
    img = np.where(np.arange(size)[None, :, None] < size // 2, a, b).astype(np.uint8)
    return viz.save(path, img)


def logits(model: Any, x: Any) -> np.ndarray:
    import xplain

    B = xplain.backend_for(model)
    with B.no_grad():
        return B.to_numpy(B.forward(model, x))
