"""Backend conformance suite: each op of :class:`xplain.backend.Backend` against numpy, and each
LRP kernel (:mod:`xplain.methods.lrp.kernels`) against numpy and against the reference.

Any backend, built-in or third-party, can be checked with::

    from xplain.testing.conformance import check_backend
    check_backend(my_backend)          # raises AssertionError naming the failing op

Checks are plain functions ``check(B, T)`` where ``T(array)`` makes a backend tensor. LRP kernel
checks are ``check(B, K, T)``, run on the reference kernels and on the backend's registered
ones; :func:`check_overrides_match_reference` compares every override with the reference on
random inputs, values and gradients.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable

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
    """A CPU float32 tensor of ``B``'s framework (what ``asarray`` takes as ``like``), made by
    the backend's model kit."""
    from ..modelkit import kit

    return kit(B.name).to_tensor(np.zeros(1, np.float32))


#: LRP kernel checks ``check(B, K, T)`` by kernel name.
KERNEL_CHECKS: dict[str, Callable[[Any, Any, Callable[[Any], Any]], None]] = {}

#: The kernel sets a kernel check runs on: the reference alone, and what LRP uses on the
#: backend (its registered overrides, the reference for the rest).
KERNEL_SETS = ("reference", "registered")


def kernel_check(fn: Callable[[Any, Any, Callable[[Any], Any]], None]) -> Callable:
    KERNEL_CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def kernels(B: Any, which: str) -> Any:
    """The LRP kernels ``which`` (one of :data:`KERNEL_SETS`) of backend ``B``."""
    from ..methods.lrp.kernels import ReferenceKernels, kernels_for

    return ReferenceKernels(B) if which == "reference" else kernels_for(B)


def run_check(B: Any, name: str) -> None:
    CHECKS[name](B, _tensor_maker(B))


def run_kernel_check(B: Any, name: str, which: str) -> None:
    KERNEL_CHECKS[name](B, kernels(B, which), _tensor_maker(B))


def check_backend(B: Any) -> None:
    for name in sorted(CHECKS):
        run_check(B, name)
    for name in sorted(KERNEL_CHECKS):
        for which in KERNEL_SETS:
            run_kernel_check(B, name, which)


def close(actual: Any, expected: Any, B: Any, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(B.to_numpy(actual) if B.is_tensor(actual) else actual,
                               expected, rtol=rtol, atol=atol)


@check
def check_sum(B, T):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    close(B.sum(T(a)), a.sum(), B)
    close(B.sum(T(a), axis=1), a.sum(1), B)
    close(B.sum(T(a), axis=(1, 2), keepdims=True), a.sum((1, 2), keepdims=True), B)


@check
def check_reductions(B, T):
    a = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    for op, ref in (("mean", np.mean), ("max", np.max), ("min", np.min)):
        close(getattr(B, op)(T(a)), ref(a), B)
        close(getattr(B, op)(T(a), axis=2), ref(a, axis=2), B)
        close(getattr(B, op)(T(a), axis=(0, 2), keepdims=True), ref(a, axis=(0, 2), keepdims=True), B)
    np.testing.assert_array_equal(B.to_numpy(B.argmax(T(a), axis=1)), a.argmax(1))


@check
def check_elementwise(B, T):
    a = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]], dtype=np.float32)
    b = np.array([[1.0, -1.0, 2.0, 0.25, 4.0]], dtype=np.float32)
    close(B.abs(T(a)), np.abs(a), B)
    close(B.sign(T(a)), np.sign(a), B)
    close(B.sqrt(T(np.abs(a))), np.sqrt(np.abs(a)), B)
    close(B.exp(T(a)), np.exp(a), B)
    close(B.maximum(T(a), T(b)), np.maximum(a, b), B)
    close(B.minimum(T(a), 0.0), np.minimum(a, 0.0), B)
    close(B.where(T(a > 0), T(a), 0.0), np.where(a > 0, a, 0.0), B)
    close(B.where(T(a > 0), 1.0, T(b)), np.where(a > 0, 1.0, b), B)
    close(B.clip(T(a), min=-1.0, max=1.0), np.clip(a, -1, 1), B)
    close(B.clip(T(a), min=0.0), np.clip(a, 0, None), B)
    close(B.relu(T(a)), np.maximum(a, 0), B)
    e = np.exp(a - a.max())
    close(B.softmax(T(a), axis=-1), e / e.sum(), B)
    close(T(a) * T(b) + T(a) / T(b) - T(b) ** 2, a * b + a / b - b**2, B)


@check
def check_isfinite_all(B, T):
    a = np.array([1.0, np.nan, np.inf, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(B.to_numpy(B.isfinite(T(a))), np.isfinite(a))
    assert B.all(B.isfinite(T(a[[0, 3]]))) is True
    assert B.all(B.isfinite(T(a))) is False


@check
def check_shapes(B, T):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert B.shape(T(a)) == (2, 3, 4)
    assert all(isinstance(s, int) for s in B.shape(T(a)))
    close(B.reshape(T(a), (6, 4)), a.reshape(6, 4), B)
    close(B.reshape(T(a), (-1,)), a.reshape(-1), B)
    close(B.permute_dims(T(a), (2, 0, 1)), a.transpose(2, 0, 1), B)
    close(B.broadcast_to(T(a[:1]), (3, 3, 4)), np.broadcast_to(a[:1], (3, 3, 4)), B)
    close(B.concat([T(a), T(a)], axis=1), np.concatenate([a, a], 1), B)
    close(B.stack([T(a), T(a)], axis=0), np.stack([a, a], 0), B)
    close(B.zeros_like(T(a)), np.zeros_like(a), B)
    close(B.ones_like(T(a)), np.ones_like(a), B)
    close(T(a)[1, :, 2:], a[1, :, 2:], B)


@check
def check_is_cpu(B, T):
    assert B.is_cpu(T(np.zeros(2, np.float32))) is True  # T makes host tensors


@check
def check_linear_algebra(B, T):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 5)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    close(B.matmul(T(x), T(w.T)), x @ w.T, B, rtol=1e-5, atol=1e-5)
    close(B.linear(T(x), T(w), T(b)), x @ w.T + b, B, rtol=1e-5, atol=1e-5)
    close(B.linear(T(x), T(w)), x @ w.T, B, rtol=1e-5, atol=1e-5)
    idx = np.array([[2], [0], [1], [2]])
    close(B.take_along_axis(T(x), T(idx), axis=1), np.take_along_axis(x, idx, 1), B)



@check
def check_svd(B, T):
    x = np.random.default_rng(7).standard_normal((2, 6, 4)).astype(np.float32)
    u, s, vh = (B.to_numpy(t) for t in B.svd(T(x)))
    assert u.shape == (2, 6, 4) and s.shape == (2, 4) and vh.shape == (2, 4, 4)
    np.testing.assert_allclose(s, np.linalg.svd(x, compute_uv=False), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((u * s[:, None, :]) @ vh, x, rtol=1e-4, atol=1e-4)


def _conv_ref(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), dtype=np.float64)
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg,
                           i * stride[0]: i * stride[0] + dilation[0] * (kh - 1) + 1: dilation[0],
                           j * stride[1]: j * stride[1] + dilation[1] * (kw - 1) + 1: dilation[1]]
                out[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3))
    if b is not None:
        out += b[None, :, None, None]
    return out


@check
def check_conv(B, T):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    for stride, padding, dilation, groups in (((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 1), 2),
                                              ((1, 2), (2, 1), (2, 1), 4)):
        w = rng.standard_normal((4, 4 // groups, 3, 2)).astype(np.float32)
        b = rng.standard_normal(4).astype(np.float32)
        got = B.conv(T(x), T(w), T(b), stride=stride, padding=padding, dilation=dilation, groups=groups)
        close(got, _conv_ref(x, w, b, stride, padding, dilation, groups), B, rtol=1e-4, atol=1e-4)
        _check_conv_gradients(B, T, x, w, b, dict(stride=stride, padding=padding, dilation=dilation,
                                                    groups=groups), rng)
    for stride in ((2, 2), (3, 1)):  # 1x1 strided kernels (ResNet downsample), which backends
        w = rng.standard_normal((5, 4, 1, 1)).astype(np.float32)  # may evaluate subsampled
        b = rng.standard_normal(5).astype(np.float32)
        got = B.conv(T(x), T(w), T(b), stride=stride, padding=(0, 0))
        close(got, _conv_ref(x, w, b, stride, (0, 0), (1, 1), 1), B, rtol=1e-4, atol=1e-4)
        _check_conv_gradients(B, T, x, w, b, dict(stride=stride, padding=(0, 0), dilation=(1, 1),
                                                    groups=1), rng)


def _check_conv_gradients(B, T, x, w, b, attrs, rng) -> None:
    """Gradients of ``sum(conv(x, w, b) · r)``: the bias gets ``sum(r)`` per channel; input and
    weight through linearity, ``<dx, x> = <dw, w> = sum((out − b) · r)``; a constant bias (which
    a backend may add another way) leaves the value and the input gradient unchanged."""
    with B.enable_grad():
        xt, wt, bt = B.with_grad(T(x)), B.with_grad(T(w)), B.with_grad(T(b))
        out = B.conv(xt, wt, bt, **attrs)
        r = rng.standard_normal(B.shape(out)).astype(np.float32)
        gx, gw, gb = B.grad(B.sum(out * T(r)), [xt, wt, bt])
    close(gb, r.sum(axis=(0, 2, 3)), B, rtol=1e-4, atol=1e-4)
    out = B.to_numpy(B.stop_gradient(out))
    lin = float(np.sum((out - b.reshape(1, -1, 1, 1)) * r))
    assert abs(float(np.sum(B.to_numpy(gx) * x)) - lin) <= 1e-3 * max(1.0, abs(lin))
    assert abs(float(np.sum(B.to_numpy(gw) * w)) - lin) <= 1e-3 * max(1.0, abs(lin))
    with B.enable_grad():
        xt = B.with_grad(T(x))
        out2 = B.conv(xt, T(w), T(b), **attrs)
        (gx2,) = B.grad(B.sum(out2 * T(r)), xt)
    close(B.stop_gradient(out2), out, B, rtol=1e-6, atol=1e-6)
    close(gx2, B.to_numpy(gx), B, rtol=1e-5, atol=1e-5)


@check
def check_interpolate(B, T):
    # bilinear, align_corners=False (half-pixel centres), as OpenCV's INTER_LINEAR for upsampling
    import cv2

    a = np.random.default_rng(3).standard_normal((1, 1, 4, 5)).astype(np.float32)
    got = B.to_numpy(B.interpolate(T(a), (8, 10)))[0, 0]
    ref = cv2.resize(a[0, 0], (10, 8), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    near = B.to_numpy(B.interpolate(T(a), (8, 10), mode="nearest"))[0, 0]
    np.testing.assert_allclose(near, np.repeat(np.repeat(a[0, 0], 2, 0), 2, 1))


@check
def check_grad(B, T):
    a = np.array([[1.0, -2.0, 3.0]], dtype=np.float32)
    with B.enable_grad():
        x = B.with_grad(T(a))
        y = B.sum(x * x * x)
        (g,) = B.grad(y, x)
    close(g, 3 * a**2, B)
    with B.enable_grad():
        x = B.with_grad(T(a))
        z = B.with_grad(T(a))
        y = x * T([[1.0, 2.0, 3.0]])
        gx, gz = B.grad(y, [x, z], T([[1.0, 1.0, 2.0]]))
    close(gx, [[1.0, 2.0, 6.0]], B)
    close(gz, np.zeros_like(a), B)  # unused input: zeros, never None
    with B.enable_grad():
        x = B.with_grad(T(a))
        y = B.sum(B.stop_gradient(x) * x)
        (g,) = B.grad(y, x)
    close(g, a, B)  # d/dx (c * x) with c = stop_gradient(x)
    with B.no_grad():
        assert B.shape(T(a) * 2) == (1, 3)


@check
def check_scale_gradient(B, T):
    a = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
    s = np.array([[0.5, 2.0, 0.0, -1.0]], dtype=np.float32)
    w = np.array([[1.0, 3.0, -2.0, 4.0]], dtype=np.float32)
    with B.enable_grad():  # a non-leaf (the usual case: a layer's output)
        x = B.with_grad(T(a))
        y = B.scale_gradient(x * 2.0, T(s))
        z = B.sum(y * T(w))
        (g,) = B.grad(z, x)
    close(y, 2.0 * a, B)  # value unchanged
    close(g, 2.0 * s * w, B)
    with B.enable_grad():  # a leaf: the gradient reported for it is scaled too
        x = B.with_grad(T(a))
        y = B.scale_gradient(x, T(s[:, :1]))  # broadcast scale
        (g,) = B.grad(B.sum(y * T(w)), x)
    close(y, a, B)
    close(g, s[:, :1] * w, B)
    with B.enable_grad():  # a later op (here a ReLU) is differentiated, then the scale applies
        x = B.with_grad(T(a))
        y = B.relu(B.scale_gradient(x + 0.0, T(s)))
        (g,) = B.grad(B.sum(y * T(w)), x)
    close(g, (a > 0) * s * w, B)
    with B.no_grad():  # no graph: the value only
        close(B.scale_gradient(T(a), T(s)), a, B)


@kernel_check
def check_damp_gradient(B, K, T):
    a = np.array([[1.0, -2.0, 0.0, 3e-6, -1e-6]], dtype=np.float32)
    w = np.array([[1.0, 3.0, -2.0, 4.0, 0.5]], dtype=np.float32)
    eps = 1e-6
    want = 2.0 * w * np.abs(2.0 * a) / (np.abs(2.0 * a) + eps)
    with B.enable_grad():  # a non-leaf, differentiated through a later ReLU-like op
        x = B.with_grad(T(a))
        y = K.damp_gradient(x * 2.0, eps)
        (g,) = B.grad(B.sum(y * T(w)), x)
    close(y, 2.0 * a, B)
    np.testing.assert_allclose(B.to_numpy(g), want, rtol=1e-6, atol=1e-6 * np.abs(w).max())
    with B.enable_grad():  # a leaf
        x = B.with_grad(T(a))
        (g,) = B.grad(B.sum(K.damp_gradient(x, eps) * T(w)), x)
    np.testing.assert_allclose(B.to_numpy(g), w * np.abs(a) / (np.abs(a) + eps), rtol=1e-6,
                               atol=1e-6 * np.abs(w).max())
    with B.no_grad():
        close(K.damp_gradient(T(a), eps), a, B)
    # the stabiliser's share, per sample: eps Σ g·x/(|x| + eps), with a large eps
    b = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -0.25]], dtype=np.float32)
    wb = np.array([[2.0, 1.0, -1.0], [4.0, -0.5, 3.0]], dtype=np.float32)
    for leaf in (False, True):
        got = []
        with B.enable_grad():
            x = B.with_grad(T(b))
            y = K.damp_gradient(x if leaf else x * 1.0, 0.5, got.append)
            (g,) = B.grad(B.sum(y * T(wb)), x)
        assert len(got) == 1, "on_absorbed must be called once per backward"
        np.testing.assert_allclose(B.to_numpy(got[0]), 0.5 * (wb * b / (np.abs(b) + 0.5)).sum(1), rtol=1e-6)
        np.testing.assert_allclose(B.to_numpy(g), wb * np.abs(b) / (np.abs(b) + 0.5), rtol=1e-6)


@check
def check_batch_dot(B, T):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    b = rng.standard_normal((3, 4, 5, 2)).astype(np.float32)
    got = B.to_numpy(B.batch_dot(T(a), T(b)))
    want = (a.astype(np.float64) * b).reshape(3, -1).sum(1)
    assert got.shape == (3,), f"batch_dot must return (N,), got {got.shape}"
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a large one (backends may switch strategy by size): float32 sums of 2^20 terms per sample
    big = rng.standard_normal((2, 1 << 20)).astype(np.float32)
    got = B.to_numpy(B.batch_dot(T(big), T(big[::-1].copy())))
    want = (big.astype(np.float64) * big[::-1]).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-2 * np.sqrt(big.shape[1]))


@check
def check_watch_gradient_and_alias(B, T):
    a = np.array([[1.0, -2.0, 0.5]], dtype=np.float32)
    w = np.array([[2.0, 3.0, -1.0]], dtype=np.float32)
    seen = []
    with B.enable_grad():
        x = B.with_grad(T(a))
        y = x * 3.0
        alias = B.alias(y)
        B.watch_gradient(alias, lambda g: seen.append(B.to_numpy(g)))
        # y is used twice: through the alias (gradient w) and directly (gradient 1)
        (g,) = B.grad(B.sum(alias * T(w)) + B.sum(y), x)
    close(alias, 3.0 * a, B)
    assert len(seen) == 1, "watch_gradient must call fn once per backward"
    np.testing.assert_allclose(seen[0], w, rtol=1e-6)  # only the alias' own use
    np.testing.assert_allclose(B.to_numpy(g), 3.0 * (w + 1.0), rtol=1e-6)  # gradient unchanged


@kernel_check
def check_replace_gradient(B, K, T):
    v = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
    a = np.array([[0.5, 1.0, -1.0, 2.0]], dtype=np.float32)
    s1 = np.array([[0.5, 2.0, 0.0, -1.0]], dtype=np.float32)
    s2 = np.array([[1.0, -1.0, 3.0, 0.25]], dtype=np.float32)
    w = np.array([[1.0, 3.0, -2.0, 4.0]], dtype=np.float32)
    with B.enable_grad():
        x = B.with_grad(T(a))
        val = B.with_grad(T(v))  # its own gradient is the incoming one
        # the scales are handed over (the backward may overwrite them): fresh copies
        y = K.replace_gradient(val, [(x * 2.0, T(s1.copy())), (x * x, T(s2.copy()))])
        y = B.relu(y)  # a later op, differentiated as usual
        gx, gv = B.grad(B.sum(y * T(w)), [x, val])
    close(y, np.maximum(v, 0), B)
    g = w * (v > 0)
    close(gv, g, B)
    close(gx, g * s1 * 2.0 + g * s2 * 2.0 * a, B)
    with B.enable_grad():  # one scale tensor for two routes: not overwritten by the first
        x = B.with_grad(T(a))
        st = T(s1.copy())
        y = K.replace_gradient(T(v), [(x * 2.0, st), (x * x, st)])
        (gx,) = B.grad(B.sum(y * T(w)), x)
    close(gx, w * s1 * 2.0 + w * s1 * 2.0 * a, B)
    with B.no_grad():
        close(K.replace_gradient(T(v), [(T(a), T(s1))]), v, B)


@kernel_check
def check_stabilized_ratio(B, K, T):
    num = np.array([[1.0, -2.0, 0.0, 3.0, -1e-7]], dtype=np.float32)
    den = np.array([[2.0, -4.0, 0.0, -1e-7, 5.0]], dtype=np.float32)
    eps = 1e-6
    with B.no_grad():  # den is handed over: a fresh copy
        close(K.stabilized_ratio(T(num), T(den.copy()), eps), num / (np.abs(den) + eps), B, rtol=1e-6)


@kernel_check
def check_gamma_ratios(B, K, T):
    y = np.array([[1.5, -2.0, 0.0, -1e-3, 4.0]], dtype=np.float32)
    q = np.array([[0.5, 1.0, 0.0, 2.0, 0.0]], dtype=np.float32)
    gamma, eps = 0.25, 1e-6
    u = np.maximum(y, -(1.0 + gamma) * y)
    d = u + q + eps
    with B.no_grad():
        first, second = K.gamma_ratios(T(y), T(q.copy()), gamma, eps)
        close(first, u / d, B, rtol=1e-6)
        close(second, y / d, B, rtol=1e-6)
        first, second = K.gamma_ratios(T(y), T(q + eps), gamma, 0.0)  # ε already in q
        close(first, u / d, B, rtol=1e-6)
        close(second, y / d, B, rtol=1e-6)


@check
def check_version(B, T):
    x = T(np.array([1.0, -2.0], dtype=np.float32))
    before = B.version(x)
    assert B.version(x) == before, "version must not change without an in-place op"
    x.add_(T(np.array([1.0, 1.0], dtype=np.float32)))  # both frameworks name it add_
    assert B.version(x) != before, "version must change with an in-place op"


@kernel_check
def check_signed_ratio(B, K, T):
    num = np.array([[1.0, -2.0, 3.0, 3.0, -1.0, 2.0]], dtype=np.float32)
    den = np.array([[2.0, -4.0, 0.0, -0.0, -1e-7, 1e-7]], dtype=np.float32)
    eps = 1e-3
    want = num / (den + eps * np.where(np.signbit(den), -1.0, 1.0))  # the sign bit: sign(−0) = −1
    with B.no_grad():
        d = T(den)
        close(K.signed_ratio(T(num), d, eps), want, B, rtol=1e-6)
        assert np.array_equal(np.signbit(B.to_numpy(d)), np.signbit(den)), "den must only be read"
        close(d, den, B, rtol=0)


@kernel_check
def check_floored_ratio(B, K, T):
    num = np.array([[1.0, -2.0, 0.0, 3.0, 4.0]], dtype=np.float32)
    den = np.array([[2.0, 4.0, 1e-7, -1.0, 0.5]], dtype=np.float32)
    with B.no_grad():  # den is handed over: fresh copies
        close(K.floored_ratio(T(num), T(den.copy()), 1e-3), num / np.maximum(den, 1e-3), B, rtol=1e-6)
        close(K.floored_ratio(T(num[:, :3]), T(den[:, :3].copy()), None), num[:, :3] / den[:, :3], B,
              rtol=1e-6)


@kernel_check
def check_scaled_leaky_relu(B, K, T):
    w = np.array([[[-1.5, 2.0], [0.0, 3.0]], [[4.0, -0.5], [-2.0, 1.0]]], dtype=np.float32)
    scale = np.array([2.0, -0.5], dtype=np.float32).reshape(2, 1, 1)  # one per output channel
    x = T(w)
    for slope in (0.0, 0.8, 1.0, 1.25):
        ws = w * scale
        close(K.scaled_leaky_relu(x, T(scale), slope), np.where(ws > 0, ws, slope * ws), B, rtol=1e-6)
    close(K.scaled_leaky_relu(x, 1.25, 0.8), np.where(w > 0, 1.25 * w, w), B, rtol=1e-6)
    close(x, w, B, rtol=0)  # the input is left as it was


@kernel_check
def check_route_to_input(B, K, T):
    """``Σ_k W_kᵀ(s_k ⊙ g)`` by its adjoint: ``<gx, x'> = Σ_k <s_k ⊙ g, layer(x', W_k)>`` for
    any ``x'`` (numpy reference convolution), for 3x3, 1x1 and strided 1x1 kernels and linear."""
    rng = np.random.default_rng(5)
    cases = [((2, 3, 6, 5), (4, 3, 3, 3), {"stride": (2, 1), "padding": (1, 1), "dilation": (1, 1),
                                          "groups": 1}),
             ((2, 3, 4, 4), (5, 3, 1, 1), {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
                                          "groups": 1}),
             ((2, 3, 5, 4), (5, 3, 1, 1), {"stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
                                          "groups": 1}),
             ((3, 6), (4, 6), None)]
    for x_shape, w_shape, conv in cases:
        x = rng.standard_normal(x_shape).astype(np.float32)
        ws = [rng.standard_normal(w_shape).astype(np.float32) for _ in range(2)]

        def layer(inp, w, conv=conv):
            if conv is None:
                return inp @ w.T
            return _conv_ref(inp, w, np.zeros(w.shape[0], np.float32), conv["stride"], conv["padding"],
                             conv["dilation"], 1)

        out_shape = layer(x, ws[0]).shape
        value = rng.standard_normal(out_shape).astype(np.float32)
        scales = [rng.standard_normal(out_shape).astype(np.float32) for _ in ws]
        up = rng.standard_normal(out_shape).astype(np.float32)
        # distinct scales; one scale tensor passed twice (not overwritten by the first route)
        for variant in ("plain", "shared"):
            with B.enable_grad():
                xt = B.with_grad(T(x))
                vt = T(value)
                if variant == "plain":
                    routes, want_scales = [(T(w), T(s.copy())) for w, s in zip(ws, scales)], scales
                else:
                    st = T(scales[0].copy())
                    routes, want_scales = [(T(w), st) for w in ws], [scales[0]] * 2
                y = K.route_to_input(vt, xt, routes, conv)
                (gx,) = B.grad(B.sum(y * T(up)), xt)
            close(B.stop_gradient(y), value, B)
            close(vt, value, B)
            gx = B.to_numpy(gx)
            for _ in range(3):
                other = rng.standard_normal(x_shape).astype(np.float32)
                want = sum(float(np.sum(s * up * layer(other, w))) for w, s in zip(ws, want_scales))
                got = float(np.sum(gx * other))
                assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (conv, variant, got, want)
    with B.no_grad():
        x = T(np.ones((1, 3), np.float32))
        close(K.route_to_input(T(np.ones((1, 2), np.float32)), x, [(T(np.ones((2, 3), np.float32)),
                                                                      T(np.ones((1, 2), np.float32)))],
                               None), np.ones((1, 2)), B)


@kernel_check
def check_tripwire(B, K, T):
    a = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
    w = np.array([[1.0, 3.0, -2.0, 4.0]], dtype=np.float32)
    for used in (False, True):
        calls = []
        with B.enable_grad():
            x = B.with_grad(T(a))
            wire = K.tripwire(B.stop_gradient(x * 2.0), x, lambda calls=calls: calls.append(1))
            close(B.stop_gradient(wire), 2.0 * a, B)
            loss = B.sum(x * T(w)) + (B.sum(wire * T(w)) if used else 0.0)
            (g,) = B.grad(loss, x)
        assert len(calls) == int(used), f"tripwire called {len(calls)} times, used={used}"
        close(g, w, B)  # no gradient through the wire
    with B.no_grad():  # an anchor that needs no gradient: the value itself
        v = T(a)
        close(K.tripwire(v, T(a), lambda: None), a, B)


@check
def check_custom_vjp(B, T):
    def fwd(x):
        return B.relu(x)

    def bwd(inputs, out, g):  # guided-backprop style: pass only positive gradients
        return (B.relu(g) * B.astype(out > 0, "float32"),)

    f = B.custom_vjp(fwd, bwd)
    a = np.array([[1.0, -1.0, 2.0, 3.0]], dtype=np.float32)
    with B.enable_grad():
        x = B.with_grad(T(a))
        y = f(x)
        (g,) = B.grad(y, x, T([[1.0, 1.0, -1.0, 2.0]]))
    close(y, np.maximum(a, 0), B)
    close(g, [[1.0, 0.0, 0.0, 2.0]], B)


@check
def check_custom_vjp_frees_its_output(B, T):
    """A custom function's output is freed once the caller drops it: a backend that saves the
    output on its own autograd node makes a cycle that some frameworks never collect (paddle
    kept the whole graph of every guided-backprop call alive)."""
    import gc
    import weakref

    fn = B.custom_vjp(lambda x: B.relu(x), lambda inputs, out, g: (B.where(out > 0, g, B.zeros_like(g)),))
    with B.enable_grad():
        x = B.with_grad(T(np.ones((2, 3), dtype=np.float32)))
        h = x * 3.0
        y = fn(h)
        ref = weakref.ref(y)
        (g,) = B.grad(B.sum(y), x)
    close(g, np.full((2, 3), 3.0), B)
    del y, h
    gc.collect()
    assert ref() is None, "custom_vjp's output outlived the call (a reference cycle through the graph)"


@check
def check_dtypes(B, T):
    a = np.array([1.5, 2.5], dtype=np.float32)
    assert B.dtype_name(T(a)) == "float32"
    assert B.dtype_name(B.astype(T(a), "float64")) == "float64"
    assert B.dtype_name(T(np.array([1, 2]))) == "int64"
    np.testing.assert_array_equal(B.to_numpy(B.astype(T(a), "int64")), [1, 2])
    assert isinstance(B.to_numpy(T(a)), np.ndarray)


@check
def check_device_and_grad_flags(B, T):
    a, b = T([1.0, 2.0]), T([3.0])
    assert isinstance(B.device(a), str) and B.device(a) == B.device(b)
    assert not B.requires_grad(a)
    with B.enable_grad():
        x = B.with_grad(a)
        assert B.requires_grad(x) and B.requires_grad(x * 2.0)
        assert not B.requires_grad(B.stop_gradient(x * 2.0))
    assert B.gradients_unavailable(a) is None


@check
def check_grad_required(B, T):
    from ..errors import ModelError

    with B.enable_grad():
        x, unused = B.with_grad(T([1.0, 2.0])), B.with_grad(T([5.0]))
        (g0, g1) = B.grad(B.sum(x * x), [x, unused], retain_graph=True)
        close(g0, [2.0, 4.0], B)
        close(g1, [0.0], B)  # not required: an input the output ignores gets zeros
        try:
            B.grad(B.sum(x * x), [unused, x], required=1)
        except ModelError:
            pass
        else:
            raise AssertionError("grad(required=1) gave zeros for an input the output ignores")


@check
def check_gradient_lock_reentrant(B, T):
    with B.gradient_lock():
        with B.gradient_lock():  # explain() may run inside explain() (SmoothGrad's base method)
            close(T([1.0]) + 1.0, [2.0], B)


@check
def check_bfloat16_to_numpy(B, T):
    # numpy has no bfloat16: widened to float32, exactly (these values are representable)
    a = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    got = B.to_numpy(B.astype(T(a), "bfloat16"))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a)


# ---- registered LRP kernels against the reference ---------------------------------------------
def _kernel_cases(B: Any, T: Callable[[Any], Any], rng: np.random.Generator) -> dict[str, Callable]:
    """Per kernel: ``run(K) -> list of numpy arrays`` (values, and gradients at a leaf for the
    kernels that route gradients) on fixed random inputs; fresh tensors per call, as arguments
    are handed over."""
    x4 = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    den = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    den[0, 0, 0, :3] = [0.0, -0.0, 1e-8]
    num = rng.standard_normal(den.shape).astype(np.float32)
    w3 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    up = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    conv3 = {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "groups": 1}
    lin_w = rng.standard_normal((5, 6)).astype(np.float32)
    lin_x = rng.standard_normal((3, 6)).astype(np.float32)
    lin_up = rng.standard_normal((3, 5)).astype(np.float32)

    def grad_at(make: Callable[[Any], Any], a: np.ndarray, w: np.ndarray) -> list:
        with B.enable_grad():
            x = B.with_grad(T(a))
            y = make(x)
            (g,) = B.grad(B.sum(y * T(w)), x)
        return [B.to_numpy(B.stop_gradient(y)), B.to_numpy(g)]

    def route(K: Any, x_arr: np.ndarray, weights: list, up_arr: np.ndarray, conv: Any) -> list:
        scales = [np.abs(up_arr) + 0.5, up_arr * 0.25]
        value = up_arr * 3.0
        return grad_at(lambda x: K.route_to_input(T(value), x, [(T(w), T(s.copy()))
                                                               for w, s in zip(weights, scales)], conv),
                       x_arr, up_arr)

    def damp(K: Any) -> list:
        absorbed: list = []
        out = grad_at(lambda x: K.damp_gradient(x * 2.0, 1e-2, absorbed.append), x4[:, :, :4, :3], up[:, :3])
        return out + [B.to_numpy(a) for a in absorbed]

    def tripwire(K: Any) -> list:
        calls: list[int] = []
        out = grad_at(lambda x: B.relu(x) + K.tripwire(B.stop_gradient(x * 2.0), x, lambda: calls.append(1)),
                      x4[:, :, :4, :3], up[:, :3])
        return out + [np.array(len(calls))]

    return {
        "scaled_leaky_relu": lambda K: [B.to_numpy(K.scaled_leaky_relu(T(w3), T(np.abs(w1[:, :1]) + 0.1), 0.3))],
        "damp_gradient": lambda K: damp(K),
        "replace_gradient": lambda K: grad_at(
            lambda x: K.replace_gradient(B.stop_gradient(x * 3.0), [(x * x, T(num[:, :3, :4, :3].copy())),
                                                                     (x * 2.0, T(den[:, :3, :4, :3].copy()))]),
            x4[:, :, :4, :3], up[:, :3]),
        "stabilized_ratio": lambda K: [B.to_numpy(K.stabilized_ratio(T(num), T(den.copy()), 1e-3))],
        "signed_ratio": lambda K: [B.to_numpy(K.signed_ratio(T(num), T(den.copy()), 1e-3))],
        "floored_ratio": lambda K: [B.to_numpy(K.floored_ratio(T(num), T(np.abs(den)), 1e-3)),
                                    B.to_numpy(K.floored_ratio(T(num), T(np.abs(den) + 0.1), None))],
        "gamma_ratios": lambda K: [B.to_numpy(t) for t in K.gamma_ratios(T(num), T(np.abs(den)), 0.25, 1e-6)],
        "route_to_input": lambda K: (route(K, x4[:, :, :7, :6], [w3, w3 * 0.5], up, conv3)
                                     + route(K, x4[:, :, :4, :3], [w1, -w1], up[:, :, :4, :3], {**conv3, "stride": (1, 1), "padding": (0, 0)})
                                     + route(K, lin_x, [lin_w, lin_w * lin_w], lin_up, None)),
        "tripwire": tripwire,
    }


@check
def check_overrides_match_reference(B, T):
    """Every kernel the backend overrides gives the reference's values and gradients (float32:
    fused formulas reorder a few operations, so up to a few ulps of the largest value)."""
    from ..methods.lrp.kernels import ReferenceKernels, kernels_for

    registered, reference = kernels_for(B), ReferenceKernels(B)
    cases = _kernel_cases(B, T, np.random.default_rng(11))
    for name in registered.overridden:
        got, want = cases[name](registered), cases[name](reference)
        assert len(got) == len(want), name
        for g, w in zip(got, want):
            scale = max(1.0, float(np.max(np.abs(w)))) if w.size else 1.0
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale,
                                       err_msg=f"LRP kernel {name!r} of backend {B.name!r} differs "
                                               f"from the reference")
