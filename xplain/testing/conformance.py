"""Backend conformance suite: each op of :class:`xplain.backend.Backend` against numpy.

Any backend, built-in or third-party, can be checked with::

    from xplain.testing.conformance import check_backend
    check_backend(my_backend)          # raises AssertionError naming the failing op

Checks are plain functions ``check(B, T)`` where ``T(array)`` makes a backend tensor.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

CHECKS: dict[str, Callable[[Any, Callable[[Any], Any]], None]] = {}


def check(fn: Callable[[Any, Callable[[Any], Any]], None]) -> Callable:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def _tensor_maker(B: Any) -> Callable[[Any], Any]:
    like = None

    def T(a: Any, dtype: str | None = None) -> Any:
        nonlocal like
        arr = np.asarray(a)
        if like is None:
            like = _seed_tensor(B)
        if dtype is None:
            dtype = "float32" if arr.dtype.kind == "f" else ("bool" if arr.dtype.kind == "b" else "int64")
        return B.asarray(arr, like=like, dtype=dtype)

    return T


def _seed_tensor(B: Any) -> Any:
    import importlib

    mod = importlib.import_module({"torch": "torch", "paddle": "paddle"}.get(B.name, B.name))
    if B.name == "torch":
        return mod.zeros(1)
    return mod.zeros([1])


def run_check(B: Any, name: str) -> None:
    CHECKS[name](B, _tensor_maker(B))


def check_backend(B: Any) -> None:
    for name in sorted(CHECKS):
        run_check(B, name)


def close(actual: Any, expected: Any, B: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(B.to_numpy(actual) if B.is_tensor(actual) else actual,
                               expected, rtol=rtol, atol=atol)


@check
def check_sum(B, T):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    close(B.sum(T(a)), a.sum(), B)
    close(B.sum(T(a), axis=1), a.sum(1), B)
    close(B.sum(T(a), axis=(1, 2), keepdims=True), a.sum((1, 2), keepdims=True), B)
