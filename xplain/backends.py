"""Choosing a backend for a model and its tensors, without importing any framework early.

Detection follows einops' ``_backends.py``: a framework is only consulted when an object of its
type is seen, and a framework that is installed but broken never breaks xplain itself.
"""
from __future__ import annotations

from typing import Any

from .backend import Backend
from .errors import BackendError
from .plugins import DISABLE_ENV, registry

_loaded: dict[str, Backend] = {}


def load_backend(name: str) -> Backend:
    """The backend registered as ``name``, loaded (framework imported) on first use."""
    if name in _loaded:
        return _loaded[name]
    entries = registry().backends
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise BackendError(f"unknown backend {name!r}; registered backends: {known}. Install "
                           f"xplain with the matching extra (pip install 'xplain[{name}]') or "
                           f"check {DISABLE_ENV}")
    try:
        backend = entries[name].load()
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is registered but its framework cannot be "
                           f"imported ({exc}); install it, e.g. pip install 'xplain[{name}]'") from exc
    _loaded[name] = backend
    return backend


def backend_for(*objs: Any, name: str | None = None) -> Backend:
    """The backend owning every object in ``objs`` (models and tensors), or the named one.

    Raises :class:`BackendError` if no backend or several different backends claim them.
    """
    if name is not None:
        backend = load_backend(name)
        for obj in objs:
            if not (backend.is_model(obj) or backend.is_tensor(obj)):
                raise BackendError(f"backend={name!r} was requested but {type(obj).__name__} "
                                   f"is not a {name} model or tensor; convert it, or drop "
                                   f"backend= to let xplain detect the framework")
        return backend
    entries = registry().backends
    found: list[str] = []
    for obj in objs:
        owners = [n for n, e in entries.items() if e.detect(obj)]
        if not owners:
            kinds = ", ".join(sorted(entries)) or "none registered"
            raise BackendError(f"no backend recognises {type(obj).__module__}."
                               f"{type(obj).__name__}; xplain explains models and tensors of: "
                               f"{kinds}")
        found.append(owners[0])
    if len(set(found)) > 1:
        raise BackendError(f"the model and inputs belong to different frameworks ({found}); "
                           f"convert the inputs to the model's framework")
    return load_backend(found[0])


def backends() -> list[str]:
    """Names of registered backends whose framework imports in this environment."""
    ok = []
    for name in sorted(registry().backends):
        try:
            load_backend(name)
        except BackendError:
            continue
        ok.append(name)
    return ok
