"""Models with deterministic weights that are *identical across frameworks*.

Used by the tests, examples and benchmarks (no weights are downloaded anywhere). Every
parameter and buffer is drawn from numpy, seeded by ``(seed, canonical name)`` where the
canonical name is the torch-style state-dict key; so a ``resnet18`` built for torch and one built
for paddle hold the same numbers without either framework having to see the other. BatchNorm
statistics are randomised too, so that BatchNorm handling is really exercised.

The frameworks' own code (model definitions, state-dict layouts) lives in each backend's
``models.py``, reached through its model kit.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

VISION_MODELS = ("resnet18", "resnet34", "resnet50", "vgg11", "vgg16", "vgg16_bn", "vgg19",
                 "densenet121", "squeezenet1_0")
SMALL_MODELS = ("tutorial_cnn", "small_cnn", "mlp")


def draw(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic float32 values for parameter ``key`` (torch layout) of ``shape``."""
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "running_mean":
        return rng.normal(0.0, 0.1, shape).astype(np.float32)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    if len(shape) == 1:  # biases and BatchNorm affine
        if leaf == "weight":
            return rng.uniform(0.5, 1.5, shape).astype(np.float32)
        return rng.normal(0.0, 0.05, shape).astype(np.float32)
    fan_in = int(np.prod(shape[1:]))
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)


def fill(model: Any, framework: str, seed: int = 0) -> Any:
    """Overwrite every parameter/buffer of ``model`` with :func:`draw` values (the same numbers
    in every framework, through the backend's canonical layout)."""
    from ..modelkit import kit

    return kit(framework).fill_weights(model, lambda key, shape: draw(key, shape, seed))


def fill_torch(model: Any, seed: int = 0) -> Any:
    """:func:`fill` for a PyTorch model."""
    return fill(model, "torch", seed)


def fill_paddle(model: Any, seed: int = 0) -> Any:
    """:func:`fill` for a paddle model (the same numbers as :func:`fill_torch` gives the
    equivalent torch model)."""
    return fill(model, "paddle", seed)


def build(name: str, framework: str, *, seed: int = 0, num_classes: int | None = None) -> Any:
    """Model ``name`` for ``framework`` (``"torch"``/``"paddle"``) with :func:`draw` weights.

    ``name`` is one of :data:`SMALL_MODELS` or :data:`VISION_MODELS` (torchvision /
    paddle.vision constructors, random weights — never downloaded).
    """
    from ..modelkit import kit

    k = kit(framework)
    model = k.build_small(name) if name in SMALL_MODELS else k.build_vision(name, num_classes)
    return fill(model, framework, seed)
