"""Registers the PaddlePaddle backend (hook implementations only; paddle is imported lazily)."""
from __future__ import annotations

import importlib
import sys
from typing import Any

from xplain.plugins import Registry, hookimpl


def detect(obj: Any) -> bool:
    """True for paddle tensors/layers; consults ``sys.modules`` so paddle is never imported."""
    paddle = sys.modules.get("paddle")
    return paddle is not None and isinstance(obj, (paddle.Tensor, paddle.nn.Layer))


@hookimpl
def xplain_register_backends(registry: Registry) -> None:
    registry.add_backend("paddle", detect=detect,
                         load=lambda: importlib.import_module("xplain_paddle.backend"))
    registry.add_lrp_kernels("paddle", load=lambda: importlib.import_module("xplain_paddle.lrp_kernels"))
    registry.add_model_kit("paddle", zoo="paddle", module="paddle",
                           load=lambda: importlib.import_module("xplain_paddle.modelkit"))
