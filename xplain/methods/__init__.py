"""Attribution methods, each written once against :class:`xplain.backend.Backend`.

One module per family; :mod:`xplain.methods.plugin` registers the built-ins through the same
pluggy hooks third-party packs use.

``xplain.methods()`` is also the public call that lists method names. Importing this
subpackage binds ``xplain.methods`` to the module, so the module itself is made callable and
answers that call: both spellings keep working in every import order.
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _CallableModule(types.ModuleType):
    def __call__(self, model: Any = None) -> list[str]:
        from ..api import methods

        return methods(model)


sys.modules[__name__].__class__ = _CallableModule
