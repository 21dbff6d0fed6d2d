"""Models with deterministic weights that are *identical across frameworks*.

Used by the tests, examples and benchmarks (no weights are downloaded anywhere). Every
parameter and buffer is drawn from numpy, seeded by ``(seed, canonical name)`` where the
canonical name is the torch-style state-dict key; so a ``resnet18`` built for torch and one built
for paddle hold the same numbers without either framework having to see the other. BatchNorm
statistics are randomised too, so that BatchNorm handling is really exercised.

Frameworks are imported inside the functions only.
"""
from __future__ import annotations

import zlib
from typing import Any

import numpy as np

VISION_MODELS = ("resnet18", "resnet34", "resnet50", "vgg11", "vgg16", "vgg16_bn", "vgg19",
                 "densenet121", "squeezenet1_0")
SMALL_MODELS = ("tutorial_cnn", "small_cnn", "mlp")


def canonical_key(key: str) -> str:
    """Torch-style state-dict key for a paddle key (``bn1._mean`` → ``bn1.running_mean``)."""
    return key.replace("._mean", ".running_mean").replace("._variance", ".running_var")


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


def _torch_small(name: str) -> Any:
    from torch import nn

    if name == "tutorial_cnn":  # Captum's LRP tutorial model, 32x32 RGB input
        class TutorialCNN(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv1 = nn.Conv2d(3, 6, 3)
                self.relu1 = nn.ReLU()
                self.conv2 = nn.Conv2d(6, 16, 3)
                self.relu2 = nn.ReLU()
                self.fc1 = nn.Linear(16 * 28 * 28, 512)
                self.relu3 = nn.ReLU()
                self.fc2 = nn.Linear(512, 64)
                self.relu4 = nn.ReLU()
                self.fc3 = nn.Linear(64, 10)

            def forward(self, x):
                x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
                x = x.view(-1, 16 * 28 * 28)
                return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))

        return TutorialCNN()
    if name == "small_cnn":  # 1x28x28 input, MNIST-like
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, 10))
    if name == "mlp":  # 784 -> 512 -> 100 -> 10, as in the MNIST prototype tutorial
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 100),
                             nn.ReLU(), nn.Linear(100, 10))
    raise KeyError(name)


def _paddle_small(name: str) -> Any:
    import paddle
    from paddle import nn

    if name == "tutorial_cnn":
        class TutorialCNN(nn.Layer):
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

            def forward(self, x):
                x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
                x = paddle.reshape(x, [-1, 16 * 28 * 28])
                return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))

        return TutorialCNN()
    if name == "small_cnn":
        return nn.Sequential(
            nn.Conv2D(1, 8, 3, padding=1), nn.BatchNorm2D(8), nn.ReLU(), nn.MaxPool2D(2),
            nn.Conv2D(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2D(1), nn.Flatten(),
            nn.Linear(16, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 100),
                             nn.ReLU(), nn.Linear(100, 10))
    raise KeyError(name)


def fill_torch(model: Any, seed: int = 0) -> Any:
    """Overwrite every parameter/buffer of a torch model with :func:`draw` values."""
    import torch

    sd = model.state_dict()
    new = {k: torch.as_tensor(draw(k, tuple(v.shape), seed)) for k, v in sd.items()}
    model.load_state_dict(new)
    return model.eval()


def _paddle_linear_weights(model: Any) -> set[str]:
    from paddle import nn

    return {f"{n}.weight" if n else "weight" for n, m in model.named_sublayers(include_self=True)
            if isinstance(m, nn.Linear)}


def fill_paddle(model: Any, seed: int = 0) -> Any:
    """Overwrite every parameter/buffer of a paddle model with :func:`draw` values (the same
    numbers as :func:`fill_torch` gives the equivalent torch model)."""
    linear = _paddle_linear_weights(model)
    new = {}
    for k, v in model.state_dict().items():
        shape = tuple(int(s) for s in v.shape)
        if k in linear:  # paddle Linear stores (in, out); draw in torch's (out, in)
            new[k] = draw(canonical_key(k), shape[::-1], seed).T.copy()
        else:
            new[k] = draw(canonical_key(k), shape, seed)
    model.set_state_dict(new)
    model.eval()
    return model


def build(name: str, framework: str, *, seed: int = 0, num_classes: int | None = None) -> Any:
    """Model ``name`` for ``framework`` (``"torch"``/``"paddle"``) with :func:`draw` weights.

    ``name`` is one of :data:`SMALL_MODELS` or :data:`VISION_MODELS` (torchvision /
    paddle.vision constructors, random weights — never downloaded).
    """
    kw = {} if num_classes is None else {"num_classes": num_classes}
    if framework == "torch":
        if name in SMALL_MODELS:
            model = _torch_small(name)
        else:
            import torchvision

            model = getattr(torchvision.models, name)(weights=None, **kw)
        return fill_torch(model, seed)
    if framework == "paddle":
        if name in SMALL_MODELS:
            model = _paddle_small(name)
        else:
            import paddle.vision.models as pvm

            if name == "vgg16_bn":
                model = pvm.vgg16(batch_norm=True, **kw)
            else:
                model = getattr(pvm, name)(**kw)
        return fill_paddle(model, seed)
    raise ValueError(f"unknown framework {framework!r}; use 'torch' or 'paddle'")
