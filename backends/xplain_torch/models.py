"""PyTorch's model builders for xplain's own use (part of its :class:`~xplain.modelkit.ModelKit`):
the demo CNN, the small test models, a model filled with given values, and torchvision
classifiers with calibrated BatchNorm statistics (``xplain.testing`` asks for these by name, so
that no code outside ``backends/`` imports torch)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn


def build_demo(num_classes: int, weights: Mapping[str, np.ndarray] | None) -> Any:
    """The demo CNN (``Sequential``: 3 × [conv 3×3, ReLU] with max-pooling, global average
    pooling, linear classifier), loaded with ``weights`` (names and layouts as this
    ``state_dict``'s) unless ``None``, in eval mode."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
    if weights:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    return model.eval()


class TutorialCNN(nn.Module):
    """Captum's LRP tutorial model: 32×32 RGB in, 10 classes."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = x.view(-1, 16 * 28 * 28)
        return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))


#: A ViT small enough for quick checks: 48×48 RGB in, 6×6 patches + a class token, 10 classes.
TINY_VIT = dict(image_size=48, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                num_classes=10)


def build_small(name: str) -> Any:
    """``tutorial_cnn``, ``small_cnn`` (1×28×28 in, MNIST-like), ``mlp`` (784 → 512 → 100 →
    10, as in the MNIST prototype tutorial) or ``tiny_vit`` (:data:`TINY_VIT`, torchvision's
    ViT), with the constructors' initial weights (the ViT's head drawn: torchvision zeroes it)."""
    if name == "tutorial_cnn":
        return TutorialCNN()
    if name == "small_cnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(16, 10))
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 100),
                             nn.ReLU(), nn.Linear(100, 10))
    if name == "tiny_vit":
        import torchvision

        model = torchvision.models.VisionTransformer(**TINY_VIT)
        with torch.no_grad():
            model.heads.head.weight.normal_(0.0, 0.05)
        return model
    raise KeyError(name)


def build_vision(name: str, num_classes: int | None = None) -> Any:
    """torchvision constructor ``name`` with random weights (never downloaded)."""
    import torchvision

    kw = {} if num_classes is None else {"num_classes": num_classes}
    return getattr(torchvision.models, name)(weights=None, **kw)


def fill_weights(model: Any, values: Callable[[str, tuple[int, ...]], np.ndarray]) -> Any:
    """Overwrite every parameter and buffer with ``values(key, shape)`` (keys and shapes as
    PyTorch's ``state_dict`` has them, which is the canonical layout); eval mode."""
    model.load_state_dict({k: torch.as_tensor(values(k, tuple(v.shape)))
                           for k, v in model.state_dict().items()})
    return model.eval()


def classifier_names() -> list[str]:
    """Every classifier constructor of ``torchvision.models``."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_calibrated(name: str, num_classes: int, seed: int, zero_biases: bool,
                     data: Sequence[np.ndarray]) -> Any:
    """torchvision constructor ``name`` (its own seeded initialisation) with BatchNorm
    statistics averaged over the ``data`` batches (``momentum=None``), in eval mode;
    ``zero_biases``: every bias and running mean, and a ViT's class token and position
    embedding (constants added like biases), then set to 0."""
    import torchvision

    torch.manual_seed(seed)
    kw: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if name in ("googlenet", "inception_v3"):
        kw.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kw)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        with torch.no_grad():
            for x in data:
                model(torch.from_numpy(x))
    model.eval()
    with torch.no_grad():  # a zero-initialised head (torchvision's ViT) makes every logit 0
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0.0, 0.05)
    if zero_biases:
        with torch.no_grad():
            for m in model.modules():
                for attr in ("bias", "running_mean", "class_token", "pos_embedding"):
                    t = getattr(m, attr, None)
                    if isinstance(t, torch.Tensor):
                        t.zero_()
    return model
