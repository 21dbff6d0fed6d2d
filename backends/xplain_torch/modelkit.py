"""PyTorch's model kit (:class:`xplain.modelkit.ModelKit`): torchvision's classifiers, weights
files (``torch.load(weights_only=True)`` for ``.pth``; safetensors, npz through
:mod:`xplain.weights`), input tensors on the model's device. Registered by
:mod:`xplain_torch.plugin`.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xplain.errors import BackendError, CheckpointError

# the builders xplain's demo and test helpers ask for (see models.py)
from .models import (build_calibrated, build_demo, build_small, build_vision,  # noqa: F401
                     classifier_names, fill_weights)
from xplain.weights import file_kind, load_arrays, state_arrays

name = "torch"
zoo = "torchvision"
weight_suffixes = (".pth", ".pt", ".bin", ".ckpt")


def zoo_names() -> list[str]:
    import torchvision

    # the top-level module only: classifiers (detection, segmentation, video live in submodules)
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_zoo(model_name: str, *, pretrained: bool = False) -> Any:
    import torchvision

    if not pretrained:
        return torchvision.models.get_model(model_name, weights=None).eval()
    try:
        return torchvision.models.get_model(model_name, weights="DEFAULT").eval()
    except OSError as e:  # URLError, socket errors and a full disk are all OSErrors
        raise CheckpointError(
            f"downloading torchvision's pretrained {model_name} weights failed ({e}); offline, "
            f"download them elsewhere and pass the file: --weights {model_name}.pth") from e


def state_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state(model: Any, arrays: Mapping[str, np.ndarray]) -> None:
    state = model.state_dict()
    with torch.no_grad():
        model.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)).to(state[k].dtype)
                               for k, v in arrays.items()})


def _numpy(value: Any) -> np.ndarray | None:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else None


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    if file_kind(path) != "zip":
        return load_arrays(path)
    try:  # PyTorch's restricted unpickler: tensors and plain containers only
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {path} with torch.load(weights_only=True): {e}") from e
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping) \
            and "state_dict" not in obj:
        obj = obj["model"]  # {"model": state_dict, "optimizer": ...} (torchvision's references)
    return state_arrays(obj, _numpy)


def to_tensor(x: np.ndarray, model: Any = None) -> Any:
    return torch.as_tensor(x).to(device(model))


def move(model: Any, where: str) -> Any:
    try:
        return model.to(torch.device(where.replace("gpu", "cuda")))
    except (RuntimeError, AssertionError) as e:  # no such device, or torch built without CUDA
        raise BackendError(f"cannot put the model on {where!r}: {e}") from e


def device(model: Any) -> str:
    p = None if model is None else next(iter(model.parameters()), None)
    return "cpu" if p is None else str(p.device)


def set_threads(n: int) -> None:
    torch.set_num_threads(int(n))


def transport_reducer(obj: Any) -> Any:
    """Torch objects pickle as they are for another process (a Ray worker)."""
    return NotImplemented
