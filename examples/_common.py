"""Helpers shared by the example scripts: framework choice, tensors, checkpoints, sample images.

Only the examples use this module; it keeps each script focused on its story. Everything that
touches a framework is imported inside the functions.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from xplain import viz, weights


def add_common_args(p: argparse.ArgumentParser, *, framework: str = "torch") -> None:
    p.add_argument("--framework", choices=("torch", "paddle"), default=framework)
    p.add_argument("--out", default="xplain-examples", help="folder for figures")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights/images")


def to_tensor(x: np.ndarray, framework: str) -> Any:
    if framework == "torch":
        import torch

        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
    import paddle

    return paddle.to_tensor(np.ascontiguousarray(x, dtype=np.float32))


def zoo(name: str, framework: str, *, seed: int = 0, num_classes: int | None = None) -> Any:
    """A torchvision / paddle.vision architecture with deterministic random weights (offline)."""
    from xplain.testing.zoo import build

    return build(name, framework, seed=seed, num_classes=num_classes)


def load_checkpoint(path: str | Path, framework: str) -> dict[str, np.ndarray]:
    """A state dict as numpy, with the ``module.`` prefix of DataParallel checkpoints removed.

    Files are data, never code: ``.safetensors``, ``.npz`` and PaddlePaddle ``.pdparams`` are
    read by :func:`xplain.weights.load_arrays` (recognised by content; paddle's pickle through
    an unpickler that admits arrays only), any other file of a torch model by
    ``torch.load(weights_only=True)``.
    """
    kind = weights.file_kind(path)
    paddle_pickle = kind == "pickle" and str(path).endswith((".pdparams", ".pdopt"))
    if framework == "torch" and kind in ("zip", "pickle") and not paddle_pickle:  # torch.save's
        import torch  # PyTorch's own restricted unpickler: tensors and containers only

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # a pickled model object or code: refused unread
            raise weights.CheckpointError(f"{path} is not a plain state dict: {e}") from e
        arrays = weights.state_arrays(
            state, convert=lambda v: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else None)
    else:
        arrays = weights.load_arrays(path)
    return weights.strip_prefix(arrays, "module.")


def load_into(model: Any, state: dict[str, np.ndarray], framework: str) -> Any:
    """Load a (prefix-stripped) numpy state dict into ``model``: names and shapes must match the
    model's exactly (:func:`xplain.weights.check_state` says what is missing or extra)."""
    own = model_state_numpy(model, framework)
    weights.check_state({k: v.shape for k, v in own.items()}, state)
    if framework == "torch":
        import torch

        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    else:
        model.set_state_dict(state)
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


def model_state_numpy(model: Any, framework: str) -> dict[str, np.ndarray]:
    """The model's state dict as numpy arrays (framework layout)."""
    if framework == "torch":
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return {k: np.asarray(v) for k, v in model.state_dict().items()}


def logits(model: Any, x: Any) -> np.ndarray:
    import xplain

    B = xplain.backend_for(model)
    with B.no_grad():
        return B.to_numpy(B.forward(model, x))
