"""Pure-core tests: run in every env, including the framework-free `core` env."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import xplain
from xplain import plugins
from xplain.errors import OptionError, PluginError, TargetError, XplainError
from xplain.run import parse_bytes
from xplain.targets import check_range, parse_targets

pytestmark = pytest.mark.core


def test_import_xplain_imports_no_framework():
    code = ("import sys, json, xplain, xplain.methods.plugin, xplain_torch.plugin, "
            "xplain_paddle.plugin; xplain.methods(); "
            "print(json.dumps([m for m in ('torch', 'paddle', 'torchvision') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_builtin_methods_registered_through_hooks():
    names = xplain.methods()
    assert {"saliency", "input_x_gradient"} <= set(names)
    reg = plugins.registry()
    assert reg.methods["saliency"].plugin == "builtin_methods"
    assert reg.methods["saliency"].options == ("mode",)


@pytest.mark.parametrize("target,expected", [
    (3, [3, 3, 3]), (np.int64(2), [2, 2, 2]), ([0, 1, 2], [0, 1, 2]),
    (np.array([4, 5, 6], dtype=np.int32), [4, 5, 6]), ((1, 1, 0), [1, 1, 0]), (np.array(7), [7, 7, 7]),
])
def test_parse_targets_accepts(target, expected):
    out = parse_targets(target, 3)
    assert out.dtype == np.int64 and out.tolist() == expected


def test_parse_targets_none_means_argmax_later():
    assert parse_targets(None, 4) is None


@pytest.mark.parametrize("target,fragment", [
    (1.0, "float"), (True, "bool"), ([1, 2], "2 entries but the batch has 3"),
    ([1.0, 2.0, 3.0], "float dtype"), ([[1, 2, 3]], "shape (1, 3)"), (["a", "b", "c"], "not a class"),
    (np.array([True, False, True]), "boolean"),
])
def test_parse_targets_refuses_with_fix(target, fragment):
    with pytest.raises(TargetError, match=None) as err:
        parse_targets(target, 3)
    assert fragment in str(err.value)
    assert isinstance(err.value, XplainError)


def test_check_range_names_sample_and_range():
    check_range(np.array([0, 9]), 10)
    with pytest.raises(TargetError, match=r"target 10 \(sample 1\).*\[0, 9\]"):
        check_range(np.array([0, 10]), 10)
    with pytest.raises(TargetError, match="-1"):
        check_range(np.array([-1]), 10)


def test_parse_bytes():
    assert parse_bytes("2GB") == 2 * 2**30
    assert parse_bytes("512 MB") == 512 * 2**20
    assert parse_bytes(1000) == 1000
    for bad in ("lots", "-1GB", 0, "2XB"):
        with pytest.raises(OptionError):
            parse_bytes(bad)


def test_unknown_method_and_option_are_refused():
    with pytest.raises(OptionError, match="unknown method 'nope'.*saliency"):
        xplain.explain(object(), object(), method="nope")
    with pytest.raises(OptionError, match=r"no option\(s\) \['colour'\].*\['mode'\]"):
        xplain.explain(object(), object(), method="saliency", colour=1)


def test_unknown_object_gets_backend_error():
    with pytest.raises(xplain.BackendError, match="no backend recognises"):
        xplain.explain(object(), object(), method="saliency")


class _Pack:
    """A third-party plugin object, registered at run time."""

    @staticmethod
    @plugins.hookimpl
    def xplain_register_methods(registry):
        def double_input(run, *, factor: float = 2.0):
            """Input times a factor (test method)."""
            return run.inputs * factor

        registry.add_method("double_input", double_input)


def test_runtime_plugin_registration_and_unregistration():
    pack = _Pack()
    plugins.register(pack, name="pack")
    try:
        assert "double_input" in xplain.methods()
        entry = plugins.registry().methods["double_input"]
        assert entry.plugin == "pack" and entry.options == ("factor",)
        assert entry.description == "Input times a factor (test method)."
    finally:
        plugins.unregister(name="pack")
    assert "double_input" not in xplain.methods()


class _Misspelled:
    @staticmethod
    @plugins.hookimpl
    def xplain_register_metods(registry):  # typo: no such hook
        pass


def test_unknown_hook_implementation_is_reported():
    with pytest.raises(PluginError, match="xplain_register_metods"):
        plugins.register(_Misspelled(), name="typo")
    assert "typo" not in [n for n, _ in plugins.plugin_manager().list_name_plugin()]


class _Duplicate:
    @staticmethod
    @plugins.hookimpl
    def xplain_register_methods(registry):
        registry.add_method("saliency", lambda run: run.inputs)


def test_duplicate_method_name_is_an_error():
    # at run time the caller is right there: the duplicate is refused and not registered, and
    # the built-in keeps its name (entry-point plugins are warned about and skipped instead)
    with pytest.raises(PluginError, match="registers method 'saliency', which plugin 'builtin_methods'"):
        plugins.register(_Duplicate(), name="dup")
    assert "dup" not in [n for n, _ in plugins.plugin_manager().list_name_plugin()]
    assert plugins.registry().methods["saliency"].plugin == "builtin_methods"
    assert "saliency" in xplain.methods()


def _in_subprocess(code: str, **env: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_disable_plugins_env_blocks_by_name():
    code = "import xplain; print('M:' + ','.join(xplain.methods()))"
    assert "saliency" in _in_subprocess(code)[2:].split(",")
    blocked = _in_subprocess(code, XPLAIN_DISABLE_PLUGINS="builtin_methods")
    assert "saliency" not in blocked[2:].split(",")
    code = "from xplain import plugins; print(sorted(plugins.registry().backends))"
    assert _in_subprocess(code, XPLAIN_DISABLE_PLUGINS="paddle, builtin_methods") == "['torch']"


def test_installed_third_party_pack_found_through_entry_points():
    """plugins/xplain_sanity is installed in the tox envs; its method appears by entry point."""
    pytest.importorskip("xplain_sanity", reason="plugins/xplain_sanity not installed")
    reg = plugins.registry()
    assert reg.methods["random_baseline"].plugin == "sanity"
    assert _in_subprocess("import xplain; print('random_baseline' in xplain.methods())",
                          XPLAIN_DISABLE_PLUGINS="sanity") == "False"
