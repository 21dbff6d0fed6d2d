"""Registers xplain's built-in methods through the public plugin hooks."""
from __future__ import annotations

from ..plugins import Registry, hookimpl
from . import gradients


@hookimpl
def xplain_register_methods(registry: Registry) -> None:
    registry.add_method("saliency", gradients.saliency)
    registry.add_method("input_x_gradient", gradients.input_x_gradient)
