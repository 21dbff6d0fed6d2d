"""A broken plugin never breaks xplain (docs/architecture.md §8).

Each test installs real entry-point distributions (a package plus a ``*.dist-info`` folder with
``entry_points.txt``) into a temporary folder on ``sys.path``, rebuilds the registry, and checks
that the plugin is reported once as a :class:`PluginWarning` naming it and the fix, and that the
built-ins keep working: a Linear model's saliency is still ``|W[target]|``, from the built-in
backend. Tests marked ``core`` also run without a framework (then only the registry is checked).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import threading
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xplain
from xplain import cli, plugins
from xplain.backends import load_backend
from xplain.errors import BackendError, PluginError, XplainError
from xplain.plugins import BUILTIN_NAMES, DISABLE_ENV, PluginWarning

SELECTED = os.environ.get("XPLAIN_BACKEND", "torch").strip().lower()

W = np.array([[1.0, -2.0, 3.0, -4.0], [0.5, 0.25, -1.0, 2.0], [-3.0, 1.0, 0.0, 1.5]], np.float32)
B = np.array([0.1, -0.2, 0.3], np.float32)
X = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, -2.0]], np.float32)


class Site:
    """A folder on ``sys.path`` into which tests install distributions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packages: list[str] = []

    def install(self, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        """Write ``modules`` (dotted name → source) and ``dist``'s metadata declaring
        ``entry_points`` (name → module) in the group ``xplain``."""
        for name, source in modules.items():
            path = self.root.joinpath(*name.split(".")).with_suffix(".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in path.parents:  # every package level needs an __init__
                if parent == self.root:
                    break
                (parent / "__init__.py").touch()
            path.write_text(textwrap.dedent(source))
            self.packages.append(name.split(".")[0])
        info = self.root / f"{dist.replace('-', '_')}-1.0.dist-info"  # as wheels name it
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
        (info / "entry_points.txt").write_text(f"[xplain]\n{lines}")
        importlib.invalidate_caches()
        plugins.reset()
        seen = {ep.name for ep in metadata.entry_points(group="xplain") if ep.dist.name == dist}
        assert seen == set(entry_points), "importlib.metadata does not see the test distribution"


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    s = Site(tmp_path)
    plugins.reset()
    yield s
    for name in list(sys.modules):  # the next test's packages must be imported afresh
        if name.split(".")[0] in s.packages:
            del sys.modules[name]
    plugins.reset()  # the normal registry for every other test


@pytest.fixture
def fw_opt(request: pytest.FixtureRequest) -> Any:
    """The framework under test, or ``None`` in the framework-free core env."""
    return request.getfixturevalue("fw") if SELECTED in ("torch", "paddle") else None


def plugin_warnings(fn, *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """``fn(*args, **kwargs)`` and the messages of every :class:`PluginWarning` it gave."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in rec if issubclass(w.category, PluginWarning)]


def the_warning(messages: list[str], *fragments: str) -> str:
    """The one message holding every fragment (the plugin, the fix ...)."""
    hits = [m for m in messages if all(f in m for f in fragments)]
    assert len(hits) == 1, f"expected one PluginWarning with {fragments}, got {messages}"
    return hits[0]


def check_saliency(fw: Any) -> None:
    """The built-ins still work: saliency of a Linear model is |W[target]|, from the built-in
    backend; a second run warns nothing (every problem is reported once)."""
    if fw is None:
        assert "saliency" in xplain.methods()
        return
    model = fw.sequential(fw.linear(4, 3, weight=W, bias=B))
    exp, again = plugin_warnings(xplain.explain, model, fw.tensor(X), "saliency")
    target = (X @ W.T + B).argmax(axis=1)
    np.testing.assert_allclose(exp.numpy(), np.abs(W[target]), rtol=1e-6)
    assert exp.backend == fw.name
    assert load_backend(fw.name).__name__ == f"xplain_{fw.name}.backend"
    assert plugins.registry().backends[fw.name].plugin == fw.name
    assert plugins.registry().methods["saliency"].plugin == "builtin_methods"
    assert again == [], "a problem was reported twice"


GOOD = """
    from xplain.plugins import hookimpl

    @hookimpl
    def xplain_register_methods(registry):
        def goodpack_method(run):
            '''Twice the input (test method).'''
            return run.inputs * 2.0
        registry.add_method("goodpack_method", goodpack_method)
"""


@pytest.mark.core
@pytest.mark.parametrize("error,shown", [
    ("import not_installed_dependency_xyz",
     "ModuleNotFoundError(\"No module named 'not_installed_dependency_xyz'"),
    ("raise RuntimeError('boom at import')", "RuntimeError('boom at import')"),
], ids=["ImportError", "RuntimeError"])
def test_plugin_failing_to_import_is_reported_once_and_skipped(site, fw_opt, error, shown):
    site.install("brokenpack", {"brokenpack": "brokenpack.plugin"}, {"brokenpack.plugin": error})
    site.install("goodpack", {"goodpack": "goodpack.plugin"}, {"goodpack.plugin": GOOD})
    names, messages = plugin_warnings(xplain.methods)
    msg = the_warning(messages, "'brokenpack'", f"{DISABLE_ENV}=brokenpack")
    assert "distribution 'brokenpack'" in msg and "failed to import" in msg
    assert shown in msg
    assert {"saliency", "goodpack_method"} <= set(names)
    assert plugins.registry().methods["goodpack_method"].plugin == "goodpack"  # who registered it
    check_saliency(fw_opt)


RAISING = """
    from xplain.plugins import hookimpl

    FAILING = {failing!r}

    @hookimpl
    def xplain_register_backends(registry):
        registry.add_backend("raisepack_backend", detect=lambda obj: False, load=lambda: None)
        if FAILING == "backends":
            raise RuntimeError("hook failed in backends")

    @hookimpl
    def xplain_register_methods(registry):
        registry.add_method("raisepack_method", lambda run: run.inputs)
        if FAILING == "methods":
            raise RuntimeError("hook failed in methods")

    @hookimpl
    def xplain_register_composites(registry):
        registry.add_composite("raisepack_composite", object())
        if FAILING == "composites":
            raise RuntimeError("hook failed in composites")
"""


@pytest.mark.core
@pytest.mark.parametrize("failing", ["backends", "methods", "composites"])
def test_raising_hook_is_skipped_and_rolled_back(site, fw_opt, failing):
    site.install("raisepack", {"raisepack": "raisepack.plugin"},
                 {"raisepack.plugin": RAISING.format(failing=failing)})
    site.install("goodpack", {"goodpack": "goodpack.plugin"}, {"goodpack.plugin": GOOD})
    reg, messages = plugin_warnings(plugins.registry)
    msg = the_warning(messages, "'raisepack'", f"{DISABLE_ENV}=raisepack")
    assert f"xplain_register_{failing}" in msg and f"hook failed in {failing}" in msg
    # nothing of the plugin survives, not even what its other hooks registered first
    assert "raisepack_backend" not in reg.backends
    assert "raisepack_method" not in reg.methods
    assert "raisepack_composite" not in reg.composites
    assert reg.methods["goodpack_method"].plugin == "goodpack"
    check_saliency(fw_opt)


@pytest.mark.core
def test_duplicate_of_a_builtin_method_keeps_the_builtin(site, fw_opt):
    site.install("duppack", {"duppack": "duppack.plugin"}, {"duppack.plugin": """
        from xplain.plugins import hookimpl

        @hookimpl
        def xplain_register_methods(registry):
            registry.add_method("saliency", lambda run: run.inputs * 0.0)
            registry.add_method("duppack_extra", lambda run: run.inputs)
    """})
    reg, messages = plugin_warnings(plugins.registry)
    msg = the_warning(messages, "'duppack'", f"{DISABLE_ENV}=duppack")
    assert msg.startswith("plugin 'duppack' (distribution 'duppack') registers method 'saliency'")
    assert "plugin 'builtin_methods'" in msg and "built-ins cannot be replaced" in msg
    assert reg.methods["duppack_extra"].plugin == "duppack"  # only the duplicate is skipped
    check_saliency(fw_opt)


@pytest.mark.core
def test_duplicate_between_two_plugins_blames_the_second(site, fw_opt):
    for dist, factor in (("firstpack", 1.0), ("secondpack", 3.0)):
        site.install(dist, {dist: f"{dist}.plugin"}, {f"{dist}.plugin": f"""
            from xplain.plugins import hookimpl

            @hookimpl
            def xplain_register_methods(registry):
                registry.add_method("shared_method", lambda run: run.inputs * {factor})
        """})
    reg, messages = plugin_warnings(plugins.registry)
    owner = reg.methods["shared_method"].plugin
    other = ({"firstpack", "secondpack"} - {owner}).pop()
    msg = the_warning(messages, "'shared_method'")
    assert msg.startswith(f"plugin {other!r} (distribution {other!r}) registers method 'shared_method'")
    assert f"which plugin {owner!r} (distribution {owner!r}) registered first" in msg
    assert f"{DISABLE_ENV}={other}" in msg
    if fw_opt is not None:
        model = fw_opt.sequential(fw_opt.linear(4, 3, weight=W, bias=B))
        exp = xplain.explain(model, fw_opt.tensor(X), "shared_method")
        np.testing.assert_allclose(exp.numpy(), X * (1.0 if owner == "firstpack" else 3.0))
    check_saliency(fw_opt)


@pytest.mark.core
def test_duplicate_composite_blames_the_plugin_not_the_builtin(site, fw_opt):
    from xplain.methods.lrp.composites import BUILTIN

    site.install("comppack", {"comppack": "comppack.plugin"}, {"comppack.plugin": """
        from xplain.plugins import hookimpl

        @hookimpl
        def xplain_register_composites(registry):
            registry.add_composite("epsilon", object())
    """})
    reg, messages = plugin_warnings(plugins.registry)
    msg = the_warning(messages, "'epsilon'")
    assert msg.startswith("plugin 'comppack' (distribution 'comppack') registers LRP composite 'epsilon'")
    assert "which plugin 'builtin_methods'" in msg and f"{DISABLE_ENV}=comppack" in msg
    assert reg.composites["epsilon"] is BUILTIN["epsilon"]
    assert reg.composite_plugins["epsilon"] == "builtin_methods"
    check_saliency(fw_opt)


@pytest.mark.core
def test_unknown_hook_name_skips_that_plugin(site, fw_opt):
    site.install("typopack", {"typopack": "typopack.plugin"}, {"typopack.plugin": """
        from xplain.plugins import hookimpl

        @hookimpl
        def xplain_register_metods(registry):
            pass

        @hookimpl
        def xplain_register_methods(registry):
            registry.add_method("typopack_method", lambda run: run.inputs)
    """})
    names, messages = plugin_warnings(xplain.methods)
    msg = the_warning(messages, "'typopack'", f"{DISABLE_ENV}=typopack")
    assert "xplain_register_metods" in msg and "XplainSpecs" in msg
    assert "typopack_method" not in names
    assert "typopack" not in [n for n, _ in plugins.plugin_manager().list_name_plugin()]
    check_saliency(fw_opt)


class _Misspelled:
    @staticmethod
    @plugins.hookimpl
    def xplain_register_metods(registry):
        pass


class _Duplicate:
    @staticmethod
    @plugins.hookimpl
    def xplain_register_methods(registry):
        registry.add_method("saliency", lambda run: run.inputs)


@pytest.mark.core
@pytest.mark.parametrize("plugin,fragment", [
    (_Misspelled(), "xplain_register_metods"),
    (_Duplicate(), "which plugin 'builtin_methods'.*registered first"),
], ids=["unknown-hook", "duplicate"])
def test_runtime_register_raises_since_the_caller_is_right_there(site, plugin, fragment):
    with pytest.raises(PluginError, match=fragment):
        plugins.register(plugin, name="runtime")
    assert "runtime" not in [n for n, _ in plugins.plugin_manager().list_name_plugin()]
    assert plugins.registry().methods["saliency"].plugin == "builtin_methods"


@pytest.mark.core
@pytest.mark.parametrize("name", ["torch", "builtin_methods"])
def test_foreign_distribution_cannot_take_a_builtin_name(site, fw_opt, name):
    site.install("evilpack", {name: "evilpack.plugin"}, {"evilpack.plugin": """
        from xplain.plugins import hookimpl

        @hookimpl
        def xplain_register_backends(registry):
            registry.add_backend("torch", detect=lambda obj: True, load=lambda: None)

        @hookimpl
        def xplain_register_methods(registry):
            registry.add_method("saliency", lambda run: run.inputs * 0.0)
    """})
    reg, messages = plugin_warnings(plugins.registry)
    msg = the_warning(messages, "'evilpack'", f"{DISABLE_ENV}={name}")
    assert f"entry point {name!r} = 'evilpack.plugin' of distribution 'evilpack'" in msg
    assert "evilpack.plugin" not in sys.modules  # skipped before it was even imported
    assert reg.backends["torch"].plugin == "torch"
    assert reg.backends["torch"].detect.__module__ == "xplain_torch.plugin"
    assert reg.methods["saliency"].plugin == "builtin_methods"
    check_saliency(fw_opt)


@pytest.mark.core
def test_entry_point_name_declared_by_two_distributions(site, fw_opt):
    site.install("twin-a", {"twin": "twina.plugin"}, {"twina.plugin": GOOD})
    site.install("twin-b", {"twin": "twinb.plugin"}, {"twinb.plugin": GOOD})
    reg, messages = plugin_warnings(plugins.registry)
    msg = the_warning(messages, "'twin'", f"{DISABLE_ENV}=twin")
    assert "'twin-a'" in msg and "'twin-b'" in msg
    assert reg.methods["goodpack_method"].plugin == "twin"
    check_saliency(fw_opt)


FLAKY = """
    from xplain.plugins import hookimpl

    def detect(obj):
        raise RuntimeError("detect exploded")

    @hookimpl
    def xplain_register_backends(registry):
        registry.add_backend("flaky", detect=detect, load=lambda: None)
"""

GREEDY = """
    from xplain.plugins import hookimpl

    def load():
        raise RuntimeError("{name} must never be loaded")

    @hookimpl
    def xplain_register_backends(registry):
        registry.add_backend("{name}", detect=lambda obj: True, load=load)
"""


def test_backend_detect_raising_counts_as_no(site, fw):
    site.install("flakypack", {"flakypack": "flakypack.plugin"}, {"flakypack.plugin": FLAKY})
    model = fw.sequential(fw.linear(4, 3, weight=W, bias=B))
    _, messages = plugin_warnings(xplain.explain, model, fw.tensor(X), "saliency")
    msg = the_warning(messages, "'flakypack'", f"{DISABLE_ENV}=flakypack")
    assert "backend 'flaky'" in msg and "detect exploded" in msg
    check_saliency(fw)


def test_backend_claiming_everything_loses_to_the_real_framework(site, fw):
    site.install("greedypack", {"greedypack": "greedypack.plugin"},
                 {"greedypack.plugin": GREEDY.format(name="greedy")})
    model = fw.sequential(fw.linear(4, 3, weight=W, bias=B))
    exp, messages = plugin_warnings(xplain.explain, model, fw.tensor(X), "saliency")
    assert exp.backend == fw.name
    msg = the_warning(messages, "'greedypack'", f"{DISABLE_ENV}=greedypack")
    assert f"belongs to backend {fw.name!r}" in msg
    check_saliency(fw)
    # a subclass defined outside the framework (a user's model) is still the framework's
    nn = fw.nn()

    class Net(nn.Module if fw.name == "torch" else nn.Layer):
        def __init__(self):
            super().__init__()
            self.fc = fw.linear(4, 3, weight=W, bias=B)

        def forward(self, x):
            return self.fc(x)
    assert xplain.explain(Net(), fw.tensor(X), "saliency").backend == fw.name
    # where it is the only claimant its load runs; a crash there is a BackendError naming it
    with pytest.raises(BackendError, match=r"'greedypack'.*must never be loaded.*"
                                           rf"{DISABLE_ENV}=greedypack"):
        xplain.explain(object(), object(), "saliency")


def test_two_impostors_for_one_object_is_a_backend_error(site, fw):
    for name in ("greedy1", "greedy2"):
        site.install(f"{name}pack", {f"{name}pack": f"{name}pack.plugin"},
                     {f"{name}pack.plugin": GREEDY.format(name=name)})
    model = fw.sequential(fw.linear(4, 3, weight=W, bias=B))
    exp, messages = plugin_warnings(xplain.explain, model, fw.tensor(X), "saliency")
    assert exp.backend == fw.name
    for name in ("greedy1", "greedy2"):
        the_warning(messages, f"'{name}pack'", f"{DISABLE_ENV}={name}pack")
    assert len(messages) == 2  # once per impostor, though it claimed the model and the input
    with pytest.raises(BackendError, match=r"several backends claim builtins.object.*backend=") as err:
        xplain.backend_for(object())
    assert all(f"'{n}' (plugin '{n}pack'" in str(err.value) for n in ("greedy1", "greedy2"))
    assert f"{DISABLE_ENV}=" in str(err.value)
    check_saliency(fw)


@pytest.mark.core
def test_unknown_names_in_disable_env_are_reported(site, fw_opt, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, "sanity_typo, nope")
    plugins.reset()
    _, messages = plugin_warnings(xplain.methods)
    msg = the_warning(messages, DISABLE_ENV)
    assert "nope, sanity_typo" in msg and "builtin_methods" in msg and "torch" in msg
    check_saliency(fw_opt)


def _disable_everything(monkeypatch: pytest.MonkeyPatch) -> str:
    names = {ep.name for ep in metadata.entry_points(group="xplain")} | set(BUILTIN_NAMES)
    value = ",".join(sorted(names))  # xplain-sanity may be installed too
    monkeypatch.setenv(DISABLE_ENV, value)
    plugins.reset()
    return value


@pytest.mark.core
def test_all_plugins_disabled(site, monkeypatch, capsys):
    _disable_everything(monkeypatch)
    assert xplain.methods() == []
    assert plugins.registry().backends == {}
    with pytest.raises(XplainError, match="saliency"):
        xplain.explain(object(), object(), "saliency")
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no attribution methods are registered: XPLAIN_DISABLE_PLUGINS blocks")
    assert "builtin_methods" in out
    assert cli.main(["backends"]) == 0
    assert capsys.readouterr().out.startswith("no backends are registered: XPLAIN_DISABLE_PLUGINS")
    with pytest.raises(BackendError, match="none registered.*XPLAIN_DISABLE_PLUGINS blocks"):
        xplain.backend_for(object())


@pytest.mark.core
def test_all_plugins_disabled_cli_in_a_subprocess(monkeypatch):
    value = _disable_everything(monkeypatch)
    out = subprocess.run([sys.executable, "-m", "xplain.cli", "methods"], capture_output=True,
                         text=True, env={**os.environ, DISABLE_ENV: value}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("no attribution methods are registered: XPLAIN_DISABLE_PLUGINS")
    assert "Traceback" not in out.stderr
    plugins.reset()


@pytest.mark.core
def test_all_plugins_disabled_explain_names_the_fix(site, monkeypatch):
    _disable_everything(monkeypatch)
    with pytest.raises(XplainError, match=DISABLE_ENV):
        xplain.explain(object(), object(), "saliency")


@pytest.mark.core
def test_registry_built_once_across_threads_and_broken_plugin_reported_once(site):
    site.install("brokenpack", {"brokenpack": "brokenpack.plugin"},
                 {"brokenpack.plugin": "raise RuntimeError('boom')"})
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def build() -> None:
        barrier.wait()
        results.append(plugins.registry())

    def run_all() -> None:
        threads = [threading.Thread(target=build) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    _, messages = plugin_warnings(run_all)
    assert len(results) == 8 and all(r is results[0] for r in results)
    the_warning(messages, "'brokenpack'", f"{DISABLE_ENV}=brokenpack")
