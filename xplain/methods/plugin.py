"""Registers xplain's built-in methods through the public plugin hooks.

Each family module in :data:`FAMILIES` exposes ``METHODS: dict[str, callable]``; registering
them here, through the same hook third-party packs implement, keeps built-ins honest about
using only the public plugin API.
"""
from __future__ import annotations

from importlib import import_module

from ..plugins import Registry, hookimpl

#: Method family modules under :mod:`xplain.methods`.
FAMILIES = ("gradients", "path", "noise", "guided", "perturbation", "prototype", "cam", "lrp",
            "attention")


@hookimpl
def xplain_register_methods(registry: Registry) -> None:
    for family in FAMILIES:
        module = import_module(f"{__package__}.{family}")
        for name, fn in module.METHODS.items():
            registry.add_method(name, fn)


@hookimpl
def xplain_register_composites(registry: Registry) -> None:
    from .lrp.composites import BUILTIN

    for name, composite in BUILTIN.items():
        registry.add_composite(name, composite)
