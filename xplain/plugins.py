"""Plugin system: hook specifications, the ``hookimpl`` marker, and the plugin manager.

Backends, built-in methods and third-party method packs all register through the same
pluggy hooks. A plugin is a module (found through the entry-point group ``xplain``) holding
functions decorated with :data:`hookimpl`::

    from xplain.plugins import hookimpl

    @hookimpl
    def xplain_register_methods(registry):
        registry.add_method("my_method", my_method, description="...")

Loading is lazy: nothing is imported until the first call that needs the registry
(:func:`xplain.methods`, :func:`xplain.explain` ...), and plugin modules must not import a
framework at load time (a backend registers a *loader*, called only when a tensor of its
framework is seen). ``XPLAIN_DISABLE_PLUGINS="name1,name2"`` blocks plugins by entry-point name.
A hook implementation whose name matches no hook specification is reported as a
:class:`~xplain.errors.PluginError` (pluggy's ``check_pending``).
"""
from __future__ import annotations

import importlib
import inspect
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any
from collections.abc import Callable

import pluggy

from .errors import PluginError

PROJECT = "xplain"
ENTRY_POINT_GROUP = "xplain"
DISABLE_ENV = "XPLAIN_DISABLE_PLUGINS"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Plugins that ship with xplain: (entry-point name, module). They are registered through
#: entry points when xplain is installed; from a source checkout they are imported directly.
BUILTIN_PLUGINS = (
    ("builtin_methods", "xplain.methods.plugin"),
    ("torch", "xplain_torch.plugin"),
    ("paddle", "xplain_paddle.plugin"),
)


@dataclass
class BackendEntry:
    """A backend as registered: how to recognise its objects and how to load it."""

    name: str
    detect: Callable[[Any], bool]
    load: Callable[[], Any]
    plugin: str = ""


@dataclass
class MethodEntry:
    """An attribution method as registered."""

    name: str
    fn: Callable[..., Any]
    description: str = ""
    plugin: str = ""
    options: tuple[str, ...] = ()
    accepts_any_option: bool = False


@dataclass
class Registry:
    """What plugins register into; handed to every ``xplain_register_*`` hook."""

    backends: dict[str, BackendEntry] = field(default_factory=dict)
    methods: dict[str, MethodEntry] = field(default_factory=dict)
    composites: dict[str, Any] = field(default_factory=dict)
    current_plugin: str = ""

    def add_backend(self, name: str, *, detect: Callable[[Any], bool], load: Callable[[], Any]) -> None:
        """Register backend ``name``.

        Args:
            detect: ``detect(obj) -> bool`` for a model or tensor; must not import the framework
                (consult ``sys.modules``, as ``xplain_torch.plugin.detect`` does).
            load: returns the :class:`~xplain.backend.Backend`; may import the framework.
        """
        if name in self.backends:
            raise PluginError(
                f"backend {name!r} is registered twice (by {self.backends[name].plugin!r} and "
                f"{self.current_plugin!r}); block one with {DISABLE_ENV}={self.current_plugin}")
        self.backends[name] = BackendEntry(name, detect, load, self.current_plugin)

    def add_method(self, name: str, fn: Callable[..., Any], *, description: str = "") -> None:
        """Register attribution method ``name``.

        ``fn(run, **options)`` receives a :class:`xplain.run.Run` and the user's keyword options
        and returns the attribution tensor (shape of the input) or a
        :class:`xplain.run.MethodResult`. Its keyword-only parameters are the options users may
        pass; any other option is refused with an :class:`~xplain.errors.OptionError`.
        """
        if name in self.methods:
            raise PluginError(
                f"method {name!r} is registered twice (by {self.methods[name].plugin!r} and "
                f"{self.current_plugin!r}); rename one, or block a plugin with {DISABLE_ENV}")
        params = list(inspect.signature(fn).parameters.values())[1:]
        options = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        any_opt = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.methods[name] = MethodEntry(name, fn, description or _first_line(fn.__doc__),
                                         self.current_plugin, options, any_opt)

    def add_composite(self, name: str, composite: Any) -> None:
        """Register an LRP composite (see :mod:`xplain.methods.lrp.composites`) by name."""
        if name in self.composites:
            raise PluginError(f"LRP composite {name!r} is registered twice (now by "
                              f"{self.current_plugin!r}); choose another name")
        self.composites[name] = composite


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


class XplainSpecs:
    """Hook specifications. Each hook receives the :class:`Registry`."""

    @hookspec
    def xplain_register_backends(self, registry: Registry) -> None:
        """Register framework backends with ``registry.add_backend(name, detect=, load=)``."""

    @hookspec
    def xplain_register_methods(self, registry: Registry) -> None:
        """Register attribution methods with ``registry.add_method(name, fn)``."""

    @hookspec
    def xplain_register_composites(self, registry: Registry) -> None:
        """Register LRP composites with ``registry.add_composite(name, composite)``."""


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_registry: Registry | None = None


def blocked_names() -> set[str]:
    """Plugin names listed in ``XPLAIN_DISABLE_PLUGINS`` (comma or whitespace separated)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {n for n in raw.replace(",", " ").split() if n}


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(XplainSpecs)
    blocked = blocked_names()
    for name in blocked:
        pm.set_blocked(name)
    seen: set[str] = set()
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in seen or pm.is_blocked(ep.name):
            continue
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break xplain, but must be visible
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc!r}; fix or "
                              f"uninstall it, or block it with {DISABLE_ENV}={ep.name}") from exc
        pm.register(plugin, name=ep.name)
    for name, module in BUILTIN_PLUGINS:  # source checkout without installed entry points
        if name in seen or pm.is_blocked(name):
            continue
        try:
            plugin = importlib.import_module(module)
        except ImportError:
            continue
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; a plugin implements a hook xplain does not define — check "
                          f"its spelling against xplain.plugins.XplainSpecs") from exc
    return pm


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created, and entry points loaded, on first use)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _new_manager()
        return _manager


def registry() -> Registry:
    """The filled registry (built on first use by calling every plugin's hooks)."""
    global _registry
    with _lock:
        if _registry is None:
            pm = plugin_manager()
            reg = Registry()
            for hook_name in ("xplain_register_backends", "xplain_register_methods",
                              "xplain_register_composites"):
                for impl in getattr(pm.hook, hook_name).get_hookimpls():
                    reg.current_plugin = impl.plugin_name
                    impl.function(registry=reg)
            reg.current_plugin = ""
            _registry = reg
        return _registry


def register(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object/module at run time (for scripts and tests) and refresh."""
    global _registry
    with _lock:
        pm = plugin_manager()
        pm.register(plugin, name=name)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(plugin)
            raise PluginError(f"{exc}; check the hook name against xplain.plugins.XplainSpecs") from exc
        _registry = None


def unregister(plugin: Any = None, name: str | None = None) -> None:
    """Remove a plugin registered with :func:`register` and refresh the registry."""
    global _registry
    with _lock:
        plugin_manager().unregister(plugin, name=name)
        _registry = None


def reset() -> None:
    """Forget the manager and registry (tests use this after changing the environment)."""
    global _manager, _registry
    with _lock:
        _manager = None
        _registry = None
