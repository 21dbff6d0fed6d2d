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

A broken plugin never breaks xplain (docs/architecture.md §8): a plugin that fails to import,
implements a hook xplain does not define, or whose hook raises is reported once as a
:class:`PluginWarning` and skipped whole (each plugin registers into a scratch registry that
is merged only if all its hooks succeed). A name already taken is reported and only that
registration is skipped: the first one stays, and built-ins, registered first, always win.
Entry points that use a built-in's name but come from another distribution are skipped.
:func:`register` (run-time registration) instead raises :class:`~xplain.errors.PluginError`,
since its caller is right there to fix it.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import threading
import warnings
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
#: They register before every other plugin, and only the ``xplain`` distribution may use
#: their names, so a third-party plugin can never replace them.
BUILTIN_PLUGINS = (
    ("builtin_methods", "xplain.methods.plugin"),
    ("torch", "xplain_torch.plugin"),
    ("paddle", "xplain_paddle.plugin"),
)
BUILTIN_NAMES = tuple(name for name, _ in BUILTIN_PLUGINS)


class PluginWarning(UserWarning):
    """A plugin, or one of its registrations, was skipped; xplain works on without it.

    The message names the plugin, its distribution when known, the cause, and the fix.
    """


@dataclass
class BackendEntry:
    """A backend as registered: how to recognise its objects and how to load it."""

    name: str
    detect: Callable[[Any], bool]
    load: Callable[[], Any]
    plugin: str = ""


@dataclass
class KernelEntry:
    """Fused LRP kernels for one backend (see :mod:`xplain.methods.lrp.kernels`)."""

    name: str  # the backend's name
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
class ModelKitEntry:
    """A backend's :class:`~xplain.modelkit.ModelKit` (zoo models, weights, input tensors)."""

    name: str  # the backend's name
    load: Callable[[], Any]
    zoo: str = ""  # the prefix of zoo model specs (``torchvision`` in ``torchvision:resnet50``)
    module: str | None = None  # the framework's top-level module, to tell if it is installed
    plugin: str = ""


@dataclass
class Registry:
    """What plugins register into; handed to every ``xplain_register_*`` hook."""

    backends: dict[str, BackendEntry] = field(default_factory=dict)
    methods: dict[str, MethodEntry] = field(default_factory=dict)
    composites: dict[str, Any] = field(default_factory=dict)
    #: composite name → the plugin that registered it (backends and methods carry ``.plugin``).
    composite_plugins: dict[str, str] = field(default_factory=dict)
    #: element-wise layer class (or class name) → f(0), for LRP's ``pass`` rule.
    activations: dict[Any, float] = field(default_factory=dict)
    activation_plugins: dict[Any, str] = field(default_factory=dict)
    #: backend name → its fused LRP kernels (optional; the reference kernels serve otherwise).
    lrp_kernels: dict[str, KernelEntry] = field(default_factory=dict)
    #: backend name → its model kit (zoo models, weights files, input tensors, threads)
    model_kits: dict[str, ModelKitEntry] = field(default_factory=dict)
    current_plugin: str = ""

    def add_backend(self, name: str, *, detect: Callable[[Any], bool], load: Callable[[], Any]) -> None:
        """Register backend ``name``.

        Args:
            detect: ``detect(obj) -> bool`` for a model or tensor; must not import the framework
                (consult ``sys.modules``, as ``xplain_torch.plugin.detect`` does).
            load: returns the :class:`~xplain.backend.Backend`; may import the framework.
        """
        self._check_new("backend", name, self.backends)
        self.backends[name] = BackendEntry(name, detect, load, self.current_plugin)

    def add_lrp_kernels(self, backend: str, *, load: Callable[[], Any]) -> None:
        """Register fused LRP kernels for backend ``backend``: ``load()`` returns an object
        (a module) with any of :data:`xplain.methods.lrp.kernels.KERNELS` as functions of the
        same signature. Each overrides the reference implementation in plain backend ops;
        ``xplain.testing.conformance`` checks every override against it."""
        self._check_new("LRP kernels for backend", backend, self.lrp_kernels)
        self.lrp_kernels[backend] = KernelEntry(backend, load, self.current_plugin)

    def add_model_kit(self, backend: str, *, zoo: str, module: str | None,
                      load: Callable[[], Any]) -> None:
        """Register backend ``backend``'s :class:`~xplain.modelkit.ModelKit`: ``load()``
        returns it (may import the framework); ``zoo`` is the prefix of its zoo model specs;
        ``module`` the framework's importable top-level module."""
        self._check_new("model kit for backend", backend, self.model_kits)
        self.model_kits[backend] = ModelKitEntry(backend, load, zoo, module, self.current_plugin)

    def add_method(self, name: str, fn: Callable[..., Any], *, description: str = "") -> None:
        """Register attribution method ``name``.

        ``fn(run, **options)`` receives a :class:`xplain.run.Run` and the user's keyword options
        and returns the attribution tensor (shape of the input) or a
        :class:`xplain.run.MethodResult`. Its keyword-only parameters are the options users may
        pass; any other option is refused with an :class:`~xplain.errors.OptionError`.
        """
        self._check_new("method", name, self.methods)
        params = list(inspect.signature(fn).parameters.values())[1:]
        options = tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        any_opt = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        self.methods[name] = MethodEntry(name, fn, description or _first_line(fn.__doc__),
                                         self.current_plugin, options, any_opt)

    def add_composite(self, name: str, composite: Any) -> None:
        """Register an LRP composite (see :mod:`xplain.methods.lrp.composites`) by name."""
        self._check_new("LRP composite", name, self.composites)
        self.composites[name] = composite
        self.composite_plugins[name] = self.current_plugin

    def add_activation(self, layer_type: Any, *, at_zero: float = 0.0) -> None:
        """Declare a layer class of your own (the class, or its name) as an element-wise
        activation ``y_i = f(x_i)`` with ``f(0) = at_zero``, so that LRP gives it the ``pass``
        rule instead of refusing it (an unknown parameter-free layer is refused, because its
        gradient is not an LRP rule in general)."""
        if not isinstance(layer_type, (str, type)):
            raise PluginError(f"add_activation takes a layer class or class name, got "
                              f"{type(layer_type).__name__}")
        value = float(at_zero)
        if value != value or value in (float("inf"), float("-inf")):
            raise PluginError(f"add_activation({layer_type!r}): at_zero={at_zero!r} must be finite")
        self._check_new("activation", getattr(layer_type, "__name__", layer_type), {
            getattr(k, "__name__", k): v for k, v in self.activations.items()})
        self.activations[layer_type] = value
        self.activation_plugins[layer_type] = self.current_plugin

    def plugin_of(self, table: str, name: Any) -> str:
        """The plugin that registered ``name`` in ``table`` (``backends``/``methods``/
        ``composites``/``activations``)."""
        if table == "composites":
            return self.composite_plugins.get(name, "")
        if table == "activations":
            return self.activation_plugins.get(name, "")
        return getattr(self, table)[name].plugin

    def _check_new(self, kind: str, name: str, table: dict[str, Any]) -> None:
        # Each plugin fills its own scratch registry, so a clash here is within one plugin.
        if name in table:
            raise PluginError(f"{kind} {name!r} is registered twice by plugin {self.current_plugin!r}")


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

    @hookspec
    def xplain_register_layers(self, registry: Registry) -> None:
        """Declare layer classes of your own, e.g. ``registry.add_activation(MySwish)``."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_HOOKS = ("xplain_register_backends", "xplain_register_methods", "xplain_register_composites",
          "xplain_register_layers")
_KINDS = (("backends", "backend"), ("methods", "method"), ("composites", "LRP composite"),
          ("activations", "activation layer"), ("lrp_kernels", "LRP kernels for backend"),
          ("model_kits", "model kit for backend"))

_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_registry: Registry | None = None
_reported: set[str] = set()     # warnings already given since the last reset()
_dists: dict[str, str] = {}     # plugin name → distribution that declared its entry point
_skipped: dict[str, str] = {}   # plugin name → why it was skipped whole
_known: set[str] = set()        # plugin names that exist (entry points and built-ins)


def blocked_names() -> set[str]:
    """Plugin names listed in ``XPLAIN_DISABLE_PLUGINS`` (comma or whitespace separated)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return {n for n in raw.replace(",", " ").split() if n}


def warn_once(message: str, key: str | None = None) -> None:
    """Warn ``message`` as a :class:`PluginWarning`, unless it (or another message with the same
    ``key``) was given since the last :func:`reset`."""
    with _lock:
        if (key or message) in _reported:
            return
        _reported.add(key or message)
    # Point at the user's line (their explain() call), not at xplain's internals.
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, PluginWarning, stacklevel=level)


def describe(plugin: str) -> str:
    """``plugin 'name' (distribution 'dist')`` — the distribution only where it is known."""
    dist = _dists.get(plugin)
    return f"plugin {plugin!r}" + (f" (distribution {dist!r})" if dist else "")


def _skip(plugin: str, why: str) -> None:
    _skipped[plugin] = why
    warn_once(f"{describe(plugin)} {why}; it is skipped and xplain works on without it. Fix or "
              f"uninstall it, or block it with {DISABLE_ENV}={plugin}")


def _dist_name(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return re.sub(r"[-_.]+", "-", dist.name).lower() if dist is not None and dist.name else None


def _add_plugin(pm: pluggy.PluginManager, name: str, load: Callable[[], Any],
                missing_module: str | None = None) -> None:
    """Import and register one plugin; on any failure report it and leave it out.

    ``missing_module``: a built-in fallback import; its *absence* (a source checkout without
    the backend on ``sys.path``) is expected and not reported.
    """
    try:
        plugin = load()
    except Exception as exc:
        absent = isinstance(exc, ModuleNotFoundError) and exc.name and missing_module is not None \
            and (missing_module + ".").startswith(exc.name + ".")
        if not absent:
            _skip(name, f"failed to import: {exc!r}")
        return
    try:
        pm.register(plugin, name=name)
        pm.check_pending()  # right after each plugin, so an unknown hook names its plugin
    except Exception as exc:  # PluginValidationError; ValueError: object already registered
        if pm.get_plugin(name) is plugin:
            pm.unregister(name=name)
        _skip(name, f"is not a valid xplain plugin: {exc}; hook names and arguments must match "
                    f"xplain.plugins.XplainSpecs")


def _new_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(XplainSpecs)
    blocked = blocked_names()
    for name in blocked:
        pm.set_blocked(name)
    eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    _known.update(BUILTIN_NAMES, (ep.name for ep in eps))
    if blocked - _known:
        warn_once(f"{DISABLE_ENV} names unknown plugin(s) {', '.join(sorted(blocked - _known))}; "
                  f"plugins that exist: {', '.join(sorted(_known))}. Check the spelling")
    builtin_modules = dict(BUILTIN_PLUGINS)
    tried: set[str] = set()
    for ep in eps:
        dist = _dist_name(ep)
        if ep.name in builtin_modules and (dist or "xplain") != "xplain":
            # Only xplain itself may provide a built-in: an impostor must not replace it.
            warn_once(f"entry point {ep.name!r} = {ep.value!r} of distribution {dist!r} uses the name "
                      f"of xplain's built-in plugin {ep.name!r}; it is skipped and the built-in is "
                      f"used. Rename the entry point in {dist!r} or uninstall it ({DISABLE_ENV}="
                      f"{ep.name} would block the built-in too)")
            continue
        if ep.name in tried:
            warn_once(f"entry point {ep.name!r} is declared by distribution {dist!r} and by "
                      f"{_dists.get(ep.name)!r}; only the first is used. Uninstall one, or block "
                      f"both with {DISABLE_ENV}={ep.name}")
            continue
        if pm.is_blocked(ep.name):
            continue
        tried.add(ep.name)
        if dist:
            _dists[ep.name] = dist
        _add_plugin(pm, ep.name, ep.load)
    for name, module in BUILTIN_PLUGINS:  # source checkout without installed entry points
        if name not in tried and not pm.is_blocked(name):
            _add_plugin(pm, name, lambda m=module: importlib.import_module(m), missing_module=module)
    return pm


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (created, and entry points loaded, on first use)."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = _new_manager()
        return _manager


def _build(pm: pluggy.PluginManager) -> tuple[Registry, dict[str, str], list[tuple[str, str]]]:
    """Call every plugin's hooks: built-ins first, then the others in registration order.

    Returns the registry, the plugins skipped whole (name → why: a hook raised) and the
    registrations skipped as duplicates (plugin, message).
    """
    impls: dict[str, list[tuple[str, Any]]] = {}
    for hook in _HOOKS:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            impls.setdefault(impl.plugin_name, []).append((hook, impl))
    names = [n for n, p in pm.list_name_plugin() if p is not None and n in impls]
    names.sort(key=lambda n: BUILTIN_NAMES.index(n) if n in BUILTIN_NAMES else len(BUILTIN_NAMES))
    reg, failed, dupes = Registry(), {}, []
    for name in names:
        part = Registry(current_plugin=name)  # scratch: merged only if every hook succeeds
        error = _call_hooks(impls[name], part)
        if error:
            failed[name] = error
            continue
        dupes += [(name, msg) for msg in _merge(reg, part, name)]
    return reg, failed, dupes


def _call_hooks(impls: list[tuple[str, Any]], part: Registry) -> str:
    """Call one plugin's hook implementations into ``part``; ``''``, or what raised."""
    for hook, impl in impls:
        try:
            impl.function(*(part for _ in impl.argnames))  # the only hook argument: registry
        except Exception as exc:
            return f"raised in {hook}: {exc!r} (nothing it registered is used)"
    return ""


def _merge(reg: Registry, part: Registry, plugin: str) -> list[str]:
    """Move ``part``'s registrations into ``reg``; the first owner of a name keeps it."""
    problems = []
    for table, kind in _KINDS:
        for key, value in getattr(part, table).items():
            if key not in getattr(reg, table):
                getattr(reg, table)[key] = value
                if table == "composites":
                    reg.composite_plugins[key] = plugin
                if table == "activations":
                    reg.activation_plugins[key] = plugin
                continue
            first = reg.plugin_of(table, key)
            note = " (built-ins cannot be replaced)" if first in BUILTIN_NAMES else ""
            problems.append(f"{describe(plugin)} registers {kind} {key!r}, which {describe(first)} "
                            f"registered first{note}; the first stays and this one is skipped. "
                            f"Rename it in {plugin!r}, or block a plugin with {DISABLE_ENV}={plugin}")
    return problems


def registry() -> Registry:
    """The filled registry (built on first use by calling every plugin's hooks)."""
    global _registry
    with _lock:
        if _registry is None:
            reg, failed, dupes = _build(plugin_manager())
            _report(failed, dupes)
            _registry = reg
        return _registry


def _report(failed: dict[str, str], dupes: list[tuple[str, str]]) -> None:
    for name, why in failed.items():
        _skip(name, why)
    for _, msg in dupes:
        warn_once(msg)


def register(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object/module at run time (for scripts and tests) and refresh.

    Raises :class:`~xplain.errors.PluginError`, leaving the plugin unregistered, if it
    implements an unknown hook, a hook raises, or it registers a name already taken.
    Does nothing for a name blocked by ``XPLAIN_DISABLE_PLUGINS``.
    """
    global _registry
    with _lock:
        pm = plugin_manager()
        if pm.register(plugin, name=name) is None:
            return
        name = pm.get_name(plugin)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            pm.unregister(plugin)
            raise PluginError(f"{exc}; check the hook name against xplain.plugins.XplainSpecs") from exc
        reg, failed, dupes = _build(pm)
        mine = [f"plugin {name!r} {failed[name]}"] if name in failed else []
        mine += [msg for owner, msg in dupes if owner == name]
        if mine:
            pm.unregister(plugin)
            _registry = None
            raise PluginError("; ".join(mine) + f" (plugin {name!r} is not registered)")
        _report(failed, dupes)
        _registry = reg


def unregister(plugin: Any = None, name: str | None = None) -> None:
    """Remove a plugin registered with :func:`register` and refresh the registry."""
    global _registry
    with _lock:
        plugin_manager().unregister(plugin, name=name)
        _registry = None


def unavailable_note() -> str:
    """Why plugins may be missing: ``''`` if none is blocked or skipped, else a sentence naming
    them and the fix (for "unknown method" / "no backend" messages)."""
    with _lock:
        registry()
        parts = []
        blocked = sorted(blocked_names() & _known)
        if blocked:
            parts.append(f"{DISABLE_ENV} blocks plugin(s) {', '.join(blocked)} (unset it or remove "
                         f"names from it)")
        if _skipped:
            parts.append(f"broken plugin(s) {', '.join(sorted(_skipped))} were skipped (see the "
                         f"PluginWarning)")
        return "; ".join(parts)


def reset() -> None:
    """Forget the manager, registry and given warnings (tests use this after changing the
    environment or ``sys.path``)."""
    global _manager, _registry
    with _lock:
        _manager = None
        _registry = None
        for state in (_reported, _dists, _skipped, _known):
            state.clear()
