"""PaddlePaddle's model builders for xplain's own use (part of its
:class:`~xplain.modelkit.ModelKit`): the demo CNN, the small test models, a model filled with
given values, and paddle.vision classifiers with calibrated BatchNorm statistics. Weights come
in PyTorch's canonical layout (``running_mean`` for ``_mean``, Linear weights as
``(out, in)``) and are converted here, so that a torch and a paddle model built from the same
values compute the same function."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import paddle
from paddle import nn


def canonical_key(key: str) -> str:
    """PyTorch's state-dict key for a paddle key (``bn1._mean`` → ``bn1.running_mean``)."""
    return key.replace("._mean", ".running_mean").replace("._variance", ".running_var")


def _linear_weights(model: Any) -> set[str]:
    return {f"{n}.weight" if n else "weight" for n, m in model.named_sublayers(include_self=True)
            if isinstance(m, nn.Linear)}


def build_demo(num_classes: int, weights: Mapping[str, np.ndarray] | None) -> Any:
    """The demo CNN (see the torch backend's), loaded with ``weights`` in PyTorch's layout
    unless ``None``, in eval mode."""
    model = nn.Sequential(
        nn.Conv2D(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
        nn.Conv2D(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.Linear(32, num_classes))
    if weights:
        linear = _linear_weights(model)
        model.set_state_dict({k: np.ascontiguousarray(v.T if k in linear else v)
                              for k, v in weights.items()})
    model.eval()
    return model


class TutorialCNN(nn.Layer):
    """Captum's LRP tutorial model: 32×32 RGB in, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(3, 6, 3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2D(6, 16, 3)
        self.relu2 = nn.ReLU()
        self.fc1 = nn.Linear(16 * 28 * 28, 512)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(512, 64)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = paddle.reshape(x, [-1, 16 * 28 * 28])
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))


#: The torch backend's tiny ViT configuration.
TINY_VIT = dict(image_size=48, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                num_classes=10)


def build_small(name: str) -> Any:
    """``tutorial_cnn``, ``small_cnn``, ``mlp`` or ``tiny_vit`` (the torch backend's, layer for
    layer)."""
    if name == "tutorial_cnn":
        return TutorialCNN()
    if name == "small_cnn":
        return nn.Sequential(
            nn.Conv2D(1, 8, 3, padding=1), nn.BatchNorm2D(8), nn.ReLU(), nn.MaxPool2D(2),
            nn.Conv2D(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
            nn.Linear(16, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 100),
                             nn.ReLU(), nn.Linear(100, 10))
    if name == "tiny_vit":
        from .transformers import VisionTransformer

        return VisionTransformer(**TINY_VIT)
    raise KeyError(name)


def build_vision(name: str, num_classes: int | None = None) -> Any:
    """paddle.vision constructor ``name`` (``vgg16_bn``: VGG-16 with batch norm) with random
    weights (never downloaded)."""
    import paddle.vision.models as pvm

    kw = {} if num_classes is None else {"num_classes": num_classes}
    if name == "vgg16_bn":
        return pvm.vgg16(batch_norm=True, **kw)
    return getattr(pvm, name)(**kw)


def fill_weights(model: Any, values: Callable[[str, tuple[int, ...]], np.ndarray]) -> Any:
    """Overwrite every parameter and buffer with ``values(key, shape)`` asked in PyTorch's
    canonical key and layout (a Linear weight as ``(out, in)``, stored transposed); eval mode."""
    linear = _linear_weights(model)
    new = {}
    for k, v in model.state_dict().items():
        shape = tuple(int(s) for s in v.shape)
        if k in linear:
            new[k] = values(canonical_key(k), shape[::-1]).T.copy()
        else:
            new[k] = values(canonical_key(k), shape)
    model.set_state_dict(new)
    model.eval()
    return model


#: Classifiers paddle.vision lacks, built from paddle.nn layers by xplain's test zoo
#: (:mod:`xplain_paddle.transformers`, torchvision's architectures and names): constructor →
#: its keyword arguments.
TRANSFORMERS = {"vit_b_16": {"patch_size": 16}, "vit_b_32": {"patch_size": 32}, "convnext_tiny": {},
                "swin_t": {}, "swin_v2_t": {"window_size": (8, 8), "v2": True}, "maxvit_t": {}}


def classifier_names() -> list[str]:
    """Every classifier constructor of ``paddle.vision.models`` (LeNet, an MNIST model, left
    out), and the vision transformers of :data:`TRANSFORMERS`."""
    import paddle.vision.models as pvm

    return sorted([n for n in pvm.__all__ if n[0].islower() and n != "lenet"] + list(TRANSFORMERS))


def build_calibrated(name: str, num_classes: int, seed: int, zero_biases: bool,
                     data: Sequence[np.ndarray]) -> Any:
    """paddle.vision constructor ``name`` (its own seeded initialisation) with BatchNorm
    statistics of the ``data`` batches, in eval mode; ``zero_biases``: every bias and running
    mean then set to 0."""
    import paddle.vision.models as pvm

    paddle.seed(seed)
    if name in TRANSFORMERS:
        from .transformers import ConvNeXt, MaxVit, SwinTransformer, VisionTransformer

        build = {"convnext": ConvNeXt, "maxvit": MaxVit, "swin": SwinTransformer,
                 "vit": VisionTransformer}[name.split("_")[0]]
        model = build(num_classes=num_classes, **TRANSFORMERS[name])
    else:
        model = getattr(pvm, name)(num_classes=num_classes)
    bns = [m for m in model.sublayers() if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
    if bns:
        # paddle's running average is `running * momentum + batch * (1 - momentum)`: momentum 0
        # keeps the statistics of one batch, so all calibration batches go in as one
        for m in bns:
            m._momentum = 0.0
        model.train()
        with paddle.no_grad():
            model(paddle.to_tensor(np.concatenate(data)))
    model.eval()
    if zero_biases:
        with paddle.no_grad():
            for m in model.sublayers(include_self=True):
                for attr in ("bias", "_mean", "class_token", "pos_embedding"):
                    # (a ConvNeXt's layer scale multiplies, it is no bias: kept)
                    t = getattr(m, attr, None)
                    if isinstance(t, paddle.Tensor):
                        t.set_value(paddle.zeros_like(t))
    return model
