"""PaddlePaddle's model kit (:class:`xplain.modelkit.ModelKit`): paddle.vision's classifiers,
weights files (``.pdparams`` through :mod:`xplain.weights`' arrays-only unpickler, never
``paddle.load``; safetensors, npz), input tensors on the model's device. Registered by
:mod:`xplain_paddle.plugin`.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import paddle

from xplain.errors import BackendError, CheckpointError

# the builders xplain's demo and test helpers ask for (see models.py)
from .models import (build_calibrated, build_demo, build_small, build_vision,  # noqa: F401
                     classifier_names, fill_weights)
from xplain.weights import load_arrays

name = "paddle"
zoo = "paddle"
weight_suffixes = (".pdparams",)


def zoo_names() -> list[str]:
    import paddle.vision.models as models

    # the factory functions (lower case) that take ``pretrained``: the classifiers
    return sorted(n for n in models.__all__ if n.islower() and callable(getattr(models, n, None))
                  and "pretrained" in inspect.signature(getattr(models, n)).parameters)


def build_zoo(model_name: str, *, pretrained: bool = False) -> Any:
    import paddle.vision.models as models

    factory = getattr(models, model_name)
    if not pretrained:
        model = factory(pretrained=False)
    else:
        try:
            model = factory(pretrained=True)
        except Exception as e:  # paddle's downloader wraps network errors in its own types
            raise CheckpointError(
                f"downloading paddle.vision's pretrained {model_name} weights failed ({e}); "
                f"offline, download them elsewhere and pass the file: --weights "
                f"{model_name}.pdparams") from e
    model.eval()
    return model


def state_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_state(model: Any, arrays: Mapping[str, np.ndarray]) -> None:
    state = model.state_dict()
    model.set_state_dict({k: np.ascontiguousarray(v).astype(_numpy_dtype(state[k]), copy=False)
                          for k, v in arrays.items()})


def _numpy_dtype(t: Any) -> Any:
    return np.dtype(str(t.dtype).replace("paddle.", ""))


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    return load_arrays(path)


def to_tensor(x: np.ndarray, model: Any = None) -> Any:
    where = device(model)
    place = paddle.CPUPlace() if where == "cpu" else paddle.CUDAPlace(int(where.split(":")[1]))
    return paddle.to_tensor(x, place=place)


def move(model: Any, where: str) -> Any:
    place = where.replace("cuda", "gpu")
    try:
        model.to(device=place)
    except (RuntimeError, ValueError, OSError) as e:  # no such device, or a CPU-only build
        raise BackendError(f"cannot put the model on {where!r}: {e}") from e
    return model


def device(model: Any) -> str:
    p = None if model is None else next(iter(model.parameters()), None)
    if p is None or p.place.is_cpu_place():
        return "cpu"
    return f"gpu:{p.place.gpu_device_id()}"


def set_threads(n: int) -> None:
    paddle.base.core.set_num_threads(int(n))


def transport_reducer(obj: Any) -> Any:
    """How to pickle ``obj`` for another process (a Ray worker): paddle parameters as
    parameters (plain pickling rebuilds them as tensors without ``trainable``, which the
    model's own code and xplain's checks read); ``NotImplemented`` for everything else."""
    if isinstance(obj, paddle.base.framework.EagerParamBase):
        return _rebuild_parameter, (obj.numpy(), bool(obj.trainable), bool(obj.stop_gradient))
    return NotImplemented


def _rebuild_parameter(array: np.ndarray, trainable: bool, stop_gradient: bool) -> Any:
    # a fresh unique name (state dicts key by layer path, not by it): the original's may be
    # taken in the receiving process
    p = paddle.create_parameter(list(array.shape), str(array.dtype),
                                default_initializer=paddle.nn.initializer.Assign(array))
    p.trainable = trainable
    p.stop_gradient = stop_gradient
    return p
