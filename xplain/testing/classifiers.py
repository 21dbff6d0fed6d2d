"""Every classifier constructor of ``torchvision.models`` and ``paddle.vision.models``, built
with random weights and calibrated BatchNorm statistics, for the zoo-wide tests and the zoo
table (``benchmarks/zoo_table.py``).

Random weights alone are not enough for LRP checks: with the initial BatchNorm statistics
(mean 0, variance 1) a deep net's activations grow or vanish layer by layer, and a map that
conserves on those says little about the deployed model. :func:`build` therefore runs a few
random batches through the model in training mode with cumulative statistics (torch
``momentum=None``; paddle ``momentum=0`` on the last batch), then returns it in evaluation mode
— the statistics then match the data, as a trained model's do. Frameworks are imported inside
the backends only (each one's ``models.py``, through its model kit).
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Constructors that are transformers (token sequences between blocks, attention).
TRANSFORMERS = ("vit_", "swin_", "maxvit_")

#: Smallest square input (pixels) each family accepts, per framework; the rest run at 64.
_MIN_SIZE = {"torch": {"inception_v3": 80, "vit_": 224, "maxvit_t": 224},
             # paddle's AlexNet and GoogLeNet pool to fixed sizes before their linear layers
             "paddle": {"inception_v3": 80, "alexnet": 224, "googlenet": 224, "vit_": 224,
                        "maxvit_t": 224}}

#: The smallest constructor of every family (what the default test run covers).
FAMILIES = {
    "torch": ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
              "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
              "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
              "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0",
              "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vgg11_bn", "vit_b_32",
              "wide_resnet50_2"),
    "paddle": ("alexnet", "convnext_tiny", "densenet121", "googlenet", "inception_v3", "maxvit_t", "mobilenet_v1",
               "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet18",
               "resnext50_32x4d", "shufflenet_v2_swish", "shufflenet_v2_x0_25", "squeezenet1_0",
               "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vit_b_32", "wide_resnet50_2"),
}

#: Constructors LRP refuses, and why (the LayerError names the layer and the fix).
LRP_REFUSED: dict[str, str] = {}  # every constructor of both zoos is explained now


def names(framework: str) -> list[str]:
    """Every classifier constructor name of the framework's model zoo."""
    from ..modelkit import kit

    return kit(framework).classifier_names()


def input_size(name: str, framework: str = "torch") -> int:
    """The square input size the model is tested at (small, but accepted by the model)."""
    for prefix, size in _MIN_SIZE[framework].items():
        if name.startswith(prefix):
            return size
    return 64


def lrp_refusal(name: str) -> str | None:
    """Why LRP refuses constructor ``name`` (``None``: it must conserve)."""
    return next((why for prefix, why in LRP_REFUSED.items() if name.startswith(prefix)), None)


def is_transformer(name: str) -> bool:
    return name.startswith(TRANSFORMERS)


def build(name: str, framework: str, *, num_classes: int = 10, seed: int = 0,
          zero_biases: bool = False, batches: int = 3, batch: int = 4) -> Any:
    """Constructor ``name`` of the framework's zoo with random weights (the constructor's own
    initialisation, seeded), BatchNorm statistics calibrated on ``batches`` random batches of
    ``batch`` images at :func:`input_size`, in evaluation mode. ``zero_biases``: every bias,
    BatchNorm shift and running mean set to 0 afterwards (a bias-free net, where LRP-0/ε must
    conserve relevance)."""
    size = input_size(name, framework)
    rng = np.random.default_rng(seed)
    data = [rng.standard_normal((batch, 3, size, size)).astype(np.float32) for _ in range(batches)]
    from ..modelkit import kit

    return kit(framework).build_calibrated(name, num_classes, seed, zero_biases, data)
