"""Backend selection for the one test suite.

``XPLAIN_BACKEND`` (set by each tox env) picks what runs:

* ``torch`` / ``paddle`` — the whole suite on that backend (the ``fw`` fixture);
* ``cross`` — only tests marked ``cross``, which compare both backends on identical weights;
* ``none`` — only tests marked ``core`` (no framework installed).

``XPLAIN_BROWSER=1`` (tox env ``report``) selects only tests marked ``browser`` (a report opened
in headless Chromium).

``XPLAIN_RAY=1`` (tox env ``ray``) selects only tests marked ``ray`` (folder jobs on a local Ray
instance), on the backend ``XPLAIN_BACKEND`` names.

``XPLAIN_PEERS=1`` (tox env ``peers``) selects only tests marked ``peer``: equality with Captum,
Zennit and pytorch-grad-cam, which are installed in that env alone.

An unknown value stops the run at once; unset means ``torch``.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

CHOICES = ("torch", "paddle", "cross", "none")
SELECTED = os.environ.get("XPLAIN_BACKEND", "torch").strip().lower()
PEERS = os.environ.get("XPLAIN_PEERS", "") == "1"
BROWSER = os.environ.get("XPLAIN_BROWSER", "") == "1"
RAY = os.environ.get("XPLAIN_RAY", "") == "1"


def pytest_configure(config: pytest.Config) -> None:
    if SELECTED not in CHOICES:
        raise pytest.UsageError(f"XPLAIN_BACKEND={SELECTED!r} is unknown; use one of {CHOICES}")
    for marker, text in (("core", "pure-core test: runs without any framework"),
                         ("cross", "compares the torch and paddle backends"),
                         ("peer", "compares with Captum/Zennit/pytorch-grad-cam (XPLAIN_PEERS=1)"),
                         ("browser", "opens a report in headless Chromium (XPLAIN_BROWSER=1)"),
                         ("ray", "a folder job on a local Ray instance (XPLAIN_RAY=1)"),
                         ("slow", "large model; still run in CI")):
        config.addinivalue_line("markers", f"{marker}: {text}")
    if SELECTED == "paddle":
        import paddle

        paddle.set_device("cpu")


#: cross-only modules that import the paddle backend's porter at import time: where paddle is not
#: installed (the core, torch, peers, report envs) they are not collected at all, as their tests
#: would be deselected there anyway
_NEED_PADDLE_TO_IMPORT = {"test_cross_foundation.py", "test_ports_cross.py"}


def pytest_ignore_collect(collection_path: Any, config: pytest.Config) -> bool | None:
    import importlib.util

    if collection_path.name in _NEED_PADDLE_TO_IMPORT and importlib.util.find_spec("paddle") is None:
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        is_core = item.get_closest_marker("core") is not None
        is_cross = item.get_closest_marker("cross") is not None
        is_peer = item.get_closest_marker("peer") is not None
        is_browser = item.get_closest_marker("browser") is not None
        is_ray = item.get_closest_marker("ray") is not None
        if is_peer != PEERS or is_browser != BROWSER or is_ray != RAY:
            ok = False
        elif SELECTED == "none":
            ok = is_core
        elif SELECTED == "cross":
            ok = is_cross
        else:
            ok = not is_cross
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


class Framework:
    """What a test needs of the backend under test, in framework-neutral words."""

    def __init__(self, name: str) -> None:
        from xplain.backends import load_backend

        self.name = name
        if name == "torch":
            import torch

            torch.manual_seed(0)
            self.module = torch
        else:
            import paddle

            paddle.seed(0)
            self.module = paddle
        self.B = load_backend(name)

    def tensor(self, array: Any, dtype: str = "float32") -> Any:
        """A framework tensor holding ``array`` (numpy/list) with numpy-style ``dtype``."""
        a = np.asarray(array, dtype=dtype)
        if self.name == "torch":
            return self.module.as_tensor(a.copy())
        return self.module.to_tensor(a)

    def numpy(self, t: Any) -> np.ndarray:
        return self.B.to_numpy(t)

    def model(self, name: str, *, seed: int = 0, num_classes: int | None = None) -> Any:
        """A zoo model (see :mod:`xplain.testing.zoo`) with deterministic weights."""
        from xplain.testing.zoo import build

        return build(name, self.name, seed=seed, num_classes=num_classes)

    def nn(self) -> Any:
        """The framework's ``nn`` module (``torch.nn`` / ``paddle.nn``)."""
        return self.module.nn

    def sequential(self, *layers: Any) -> Any:
        return self.module.nn.Sequential(*layers)

    def conv2d(self, cin: int, cout: int, k: int, **kw: Any) -> Any:
        """A conv layer; ``weight``/``bias`` numpy arrays in (out, in, kh, kw) layout if given."""
        weight, bias = kw.pop("weight", None), kw.pop("bias", None)
        cls = self.module.nn.Conv2d if self.name == "torch" else self.module.nn.Conv2D
        layer = cls(cin, cout, k, **kw)
        self._set(layer, weight, bias, transpose=False)
        return layer

    def linear(self, fin: int, fout: int, *, weight: Any = None, bias: Any = None) -> Any:
        """A linear layer; ``weight`` numpy array in the neutral (out, in) layout if given."""
        layer = self.module.nn.Linear(fin, fout)
        self._set(layer, weight, bias, transpose=self.name == "paddle")
        return layer

    def relu(self) -> Any:
        return self.module.nn.ReLU()

    def flatten(self) -> Any:
        return self.module.nn.Flatten()

    def hook_count(self, model: Any) -> int:
        """Forward (pre-)hooks registered anywhere in ``model``."""
        if self.name == "torch":
            return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
        return sum(len(m._forward_post_hooks) + len(m._forward_pre_hooks)
                   for _, m in model.named_sublayers(include_self=True))

    def model_state(self, model: Any) -> tuple:
        """Everything the borrowed-model guard promises to keep: the bytes of every parameter
        and buffer, gradient flags, train/eval flags, hook count, and whether ``.grad`` is set.
        Compare two with :meth:`assert_same_state`."""
        tensors = {k: self.numpy(v).copy() for k, v in model.state_dict().items()}
        params = list(model.parameters())
        if self.name == "torch":
            flags = [p.requires_grad for p in params]
            modes = [m.training for m in model.modules()]
        else:
            flags = [p.stop_gradient for p in params]
            modes = [m.training for _, m in model.named_sublayers(include_self=True)]
        return tensors, flags, modes, self.hook_count(model), [p.grad is None for p in params]

    @staticmethod
    def assert_same_state(before: tuple, after: tuple) -> None:
        t0, *rest0 = before
        t1, *rest1 = after
        assert t0.keys() == t1.keys()
        for k in t0:
            assert t0[k].tobytes() == t1[k].tobytes(), f"{k} changed"
        assert rest0 == rest1, "flags, modes, hooks or .grad changed"

    def _set(self, layer: Any, weight: Any, bias: Any, transpose: bool) -> None:
        for attr, value in (("weight", weight), ("bias", bias)):
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float32)
            if transpose and value.ndim == 2:
                value = value.T
            param = getattr(layer, attr)
            if self.name == "torch":
                with self.module.no_grad():
                    param.copy_(self.module.as_tensor(value))
            else:
                param.set_value(np.ascontiguousarray(value))


@pytest.fixture(scope="session")
def fw() -> Framework:
    """The backend under test (``XPLAIN_BACKEND``)."""
    if SELECTED not in ("torch", "paddle"):
        pytest.fail(f"test needs a framework but XPLAIN_BACKEND={SELECTED}; mark it core/cross")
    return Framework(SELECTED)


@pytest.fixture(scope="session")
def both() -> tuple[Framework, Framework]:
    """(torch, paddle) for cross-backend tests."""
    return Framework("torch"), Framework("paddle")
