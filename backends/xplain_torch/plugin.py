"""Registers the PyTorch backend (hook implementations only; torch is imported lazily)."""
from __future__ import annotations

import importlib
import sys
from typing import Any

from xplain.plugins import Registry, hookimpl


def detect(obj: Any) -> bool:
    """True for torch tensors/modules. Never imports torch: an object of a torch type can only
    exist once someone imported torch, so ``sys.modules`` is consulted instead."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, (torch.Tensor, torch.nn.Module))


@hookimpl
def xplain_register_backends(registry: Registry) -> None:
    registry.add_backend("torch", detect=detect,
                         load=lambda: importlib.import_module("xplain_torch.backend"))
    registry.add_lrp_kernels("torch", load=lambda: importlib.import_module("xplain_torch.lrp_kernels"))
    registry.add_model_kit("torch", zoo="torchvision", module="torch",
                           load=lambda: importlib.import_module("xplain_torch.modelkit"))
