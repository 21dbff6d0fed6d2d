"""Every classifier constructor of ``torchvision.models`` and ``paddle.vision.models``, built
with random weights and calibrated BatchNorm statistics, for the zoo-wide tests and the zoo
table (``benchmarks/zoo_table.py``).

Random weights alone are not enough for LRP checks: with the initial BatchNorm statistics
(mean 0, variance 1) a deep net's activations grow or vanish layer by layer, and a map that
conserves on those says little about the deployed model. :func:`build` therefore runs a few
random batches through the model in training mode with cumulative statistics (torch
``momentum=None``; paddle ``momentum=0`` on the last batch), then returns it in evaluation mode
— the statistics then match the data, as a trained model's do. Frameworks are imported inside
the functions only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

#: Constructors that are transformers (issue of their own): LRP refuses them, CAM needs care.
TRANSFORMERS = ("vit_", "swin_", "maxvit_")

#: Smallest square input (pixels) each family accepts, per framework; the rest run at 64.
_MIN_SIZE = {"torch": {"inception_v3": 80, "vit_": 224, "maxvit_t": 224},
             # paddle's AlexNet and GoogLeNet pool to fixed sizes before their linear layers
             "paddle": {"inception_v3": 80, "alexnet": 224, "googlenet": 224}}

#: The smallest constructor of every family (what the default test run covers).
FAMILIES = {
    "torch": ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
              "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
              "mobilenet_v3_large", "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf",
              "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_0",
              "squeezenet1_1", "swin_t", "swin_v2_t", "vgg11", "vgg11_bn", "vit_b_32",
              "wide_resnet50_2"),
    "paddle": ("alexnet", "densenet121", "googlenet", "inception_v3", "mobilenet_v1",
               "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "resnet18",
               "resnext50_32x4d", "shufflenet_v2_swish", "shufflenet_v2_x0_25", "squeezenet1_0",
               "squeezenet1_1", "vgg11", "wide_resnet50_2"),
}

#: Constructors LRP refuses, and why (the LayerError names the layer and the fix).
LRP_REFUSED = {
    "convnext_": "CNBlock scales its output by a parameter of its own (layer_scale) and uses LayerNorm",
    "swin_": "attention with parameters of its own (relative position bias)",
    "vit_": "nn.MultiheadAttention computes with parameters of its own",
    "maxvit_t": "attention with parameters of its own (relative positional bias)",
}


def names(framework: str) -> list[str]:
    """Every classifier constructor name of the framework's model zoo."""
    if framework == "torch":
        import torchvision

        return sorted(torchvision.models.list_models(module=torchvision.models))
    if framework == "paddle":
        import paddle.vision.models as pvm

        return sorted(n for n in pvm.__all__ if n[0].islower() and n != "lenet")
    raise ValueError(f"unknown framework {framework!r}")


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
    if framework == "torch":
        return _build_torch(name, num_classes, seed, zero_biases, data)
    if framework == "paddle":
        return _build_paddle(name, num_classes, seed, zero_biases, data)
    raise ValueError(f"unknown framework {framework!r}")


def _build_torch(name: str, num_classes: int, seed: int, zero_biases: bool, data: list) -> Any:
    import torch
    import torchvision

    torch.manual_seed(seed)
    kw: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kw)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for x in data:
                model(torch.from_numpy(x))
    model.eval()
    if zero_biases:
        with torch.no_grad():
            for m in model.modules():
                for attr in ("bias", "running_mean"):
                    t = getattr(m, attr, None)
                    if isinstance(t, torch.Tensor):
                        t.zero_()
    return model


def _build_paddle(name: str, num_classes: int, seed: int, zero_biases: bool, data: list) -> Any:
    import paddle
    import paddle.vision.models as pvm

    paddle.seed(seed)
    model = getattr(pvm, name)(num_classes=num_classes)
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    if bns:
        # paddle's running average is `running * momentum + batch * (1 - momentum)`: momentum 0
        # keeps the statistics of the last (largest) calibration batch
        for m in bns:
            m._momentum = 0.0
        model.train()
        with paddle.no_grad():
            model(paddle.to_tensor(np.concatenate(data)))
    model.eval()
    if zero_biases:
        with paddle.no_grad():
            for m in model.sublayers(include_self=True):
                for attr in ("bias", "_mean"):
                    t = getattr(m, attr, None)
                    if isinstance(t, paddle.Tensor):
                        t.set_value(paddle.zeros_like(t))
    return model
