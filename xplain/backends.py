"""Choosing a backend for a model and its tensors, without importing any framework early.

Detection follows einops' ``_backends.py``: a framework is only consulted when an object of its
type is seen, and a framework that is installed but broken never breaks xplain itself. Nor does
a broken backend plugin: a ``detect`` that raises counts as "no" (reported once), and when
several backends claim one object, the one whose framework defines the object's type wins.
"""
from __future__ import annotations

from typing import Any

from .backend import Backend
from .errors import BackendError
from .plugins import BUILTIN_NAMES, DISABLE_ENV, BackendEntry, describe, registry, unavailable_note, warn_once

#: (backend name, registering plugin) → loaded backend. Keyed by plugin too, so a registry
#: rebuilt with another plugin behind a name never reuses a stale backend.
_loaded: dict[tuple[str, str], Backend] = {}


def load_backend(name: str) -> Backend:
    """The backend registered as ``name``, loaded (framework imported) on first use."""
    entries = registry().backends
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        note = unavailable_note()
        raise BackendError(f"unknown backend {name!r}; registered backends: {known}. Install "
                           f"xplain with the matching extra (pip install 'xplain[{name}]') or "
                           f"check {DISABLE_ENV}" + (f" ({note})" if note else ""))
    entry = entries[name]
    key = (name, entry.plugin)
    if key in _loaded:
        return _loaded[key]
    try:
        backend = entry.load()
    except ImportError as exc:
        raise BackendError(f"backend {name!r} is registered but its framework cannot be "
                           f"imported ({exc}); install it, e.g. pip install 'xplain[{name}]'") from exc
    except Exception as exc:  # a bug in the plugin, not a missing framework
        raise BackendError(f"backend {name!r} of {describe(entry.plugin)} failed to load: {exc!r}; "
                           f"fix or uninstall the plugin, or block it with "
                           f"{DISABLE_ENV}={entry.plugin}") from exc
    _loaded[key] = backend
    return backend


def _claims(entry: BackendEntry, obj: Any) -> bool:
    """``entry.detect(obj)``; a detect that raises is a plugin bug: reported once, counted as no."""
    try:
        return bool(entry.detect(obj))
    except Exception as exc:
        warn_once(f"backend {entry.name!r} of {describe(entry.plugin)}: detect raised {exc!r}; "
                  f"it is treated as not recognising the object. Fix or uninstall the plugin, or "
                  f"block it with {DISABLE_ENV}={entry.plugin}", key=f"detect:{entry.plugin}:{entry.name}")
        return False


def _owner(obj: Any, claimants: list[str], entries: dict[str, BackendEntry]) -> str:
    """The one backend for ``obj`` among several ``claimants``.

    The framework that defines the object's type owns it: a backend whose name is the top-level
    package of a class in ``type(obj).__mro__`` (a user's ``Net(torch.nn.Module)`` is torch's),
    a built-in before a plugin's.
    """
    packages = {c.__module__.partition(".")[0] for c in type(obj).__mro__}
    owners = [n for n in claimants if n in packages]
    builtin = [n for n in owners if entries[n].plugin in BUILTIN_NAMES]
    chosen = builtin or owners
    if len(chosen) != 1:
        who = ", ".join(f"{n!r} ({describe(entries[n].plugin)})" for n in claimants)
        blockable = [entries[n].plugin for n in claimants if entries[n].plugin not in BUILTIN_NAMES]
        raise BackendError(f"several backends claim {type(obj).__module__}.{type(obj).__name__}: "
                           f"{who}; pass backend='<name>' to explain(), or block the wrong plugin "
                           f"with {DISABLE_ENV}={','.join(blockable) or '<plugin>'}")
    for n in claimants:
        if n != chosen[0]:
            warn_once(f"backend {n!r} of {describe(entries[n].plugin)} claims "
                      f"{type(obj).__module__}.{type(obj).__name__}, which belongs to backend "
                      f"{chosen[0]!r}; {chosen[0]!r} is used. Fix the plugin's detect, or block it "
                      f"with {DISABLE_ENV}={entries[n].plugin}", key=f"claims:{entries[n].plugin}:{n}")
    return chosen[0]


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
        claimants = [n for n, e in entries.items() if _claims(e, obj)]
        if not claimants:
            kinds = ", ".join(sorted(entries)) or "none registered"
            note = unavailable_note()
            raise BackendError(f"no backend recognises {type(obj).__module__}."
                               f"{type(obj).__name__}; pass a model or tensor of one of the "
                               f"frameworks xplain explains: {kinds}" + (f" ({note})" if note else ""))
        found.append(claimants[0] if len(claimants) == 1 else _owner(obj, claimants, entries))
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
