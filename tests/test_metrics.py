"""Faithfulness metrics against analytic curves on a linear model (both backends)."""
import numpy as np
import pytest

import xplain
from xplain import metrics


def _linear(fw, c=3, h=4, w=4, seed=0):
    """f(x) = W x + b on flattened (c, h, w) inputs, 2 classes; returns model, W, b, x."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(2, c * h * w)).astype(np.float32)
    b = np.array([0.5, -0.25], np.float32)
    model = fw.sequential(fw.flatten(), fw.linear(c * h * w, 2, weight=W, bias=b))
    x = rng.normal(size=(2, c, h, w)).astype(np.float32)
    return model, W, b, x


def _analytic_deletion(W, b, x, order, steps, target=0):
    """Logit of class ``target`` after zeroing the first round(k P / steps) ranked pixels."""
    contrib = (W[target].reshape(x.shape) * x).sum(axis=0).ravel()  # per pixel, channels summed
    p = contrib.size
    return np.array([b[target] + contrib[np.sort(order[int(round(k * p / steps)):])].sum()
                     for k in range(steps + 1)])


def test_deletion_equals_analytic_and_ideal_order_is_steepest(fw):
    model, W, b, x = _linear(fw)
    wx = W[0].reshape(1, *x.shape[1:]) * x                  # the ideal attribution for class 0
    res = metrics.deletion(model, fw.tensor(x), wx, target=0, steps=16, score="logit")
    for i in range(2):
        order = np.argsort(-wx[i].sum(axis=0).ravel(), kind="stable")
        np.testing.assert_allclose(res.curve[i], _analytic_deletion(W, b, x[i], order, 16),
                                   rtol=1e-5, atol=1e-5)
    rnd = np.random.default_rng(1).normal(size=x.shape)
    worse = metrics.deletion(model, fw.tensor(x), rnd, target=0, steps=16, score="logit")
    flipped = metrics.deletion(model, fw.tensor(x), -wx, target=0, steps=16, score="logit")
    assert np.all(res.auc < worse.auc) and np.all(worse.auc < flipped.auc)
    assert np.all(res.aopc > worse.aopc)
    # the end point is the baseline (all pixels removed): only the bias is left
    np.testing.assert_allclose(res.curve[:, -1], b[0], atol=1e-5)
    np.testing.assert_allclose(res.fractions, np.arange(17) / 16)


def test_insertion_prefers_ideal_order_and_chunking_is_invisible(fw):
    model, W, b, x = _linear(fw)
    wx = W[1].reshape(1, *x.shape[1:]) * x
    rnd = np.random.default_rng(2).normal(size=x.shape)
    kw = dict(target=1, steps=10, baseline=0.0, score="probability")
    good = metrics.insertion(model, fw.tensor(x), wx, **kw)
    bad = metrics.insertion(model, fw.tensor(x), rnd, **kw)
    assert np.all(good.auc > bad.auc)
    small = metrics.insertion(model, fw.tensor(x), wx, batch_size=3, **kw)
    np.testing.assert_allclose(small.curve, good.curve, rtol=1e-6, atol=1e-7)
    # start: baseline 0 -> softmax of the bias; end: the clean input
    logits = x.reshape(2, -1) @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(good.curve[:, -1], p[:, 1], rtol=1e-5)
    pb = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
    np.testing.assert_allclose(good.curve[:, 0], pb[1], rtol=1e-5)


def test_pixel_flipping_patches_and_aopc(fw):
    model, W, b, x = _linear(fw, c=1, h=6, w=6)
    wx = W[0].reshape(1, 1, 6, 6) * x
    kw = dict(target=0, patch=3, steps=4, perturbation=0.0)
    good = metrics.pixel_flipping(model, fw.tensor(x), wx, **kw)
    # four 3x3 regions, flipped in order of summed w*x: the analytic AOPC
    for i in range(2):
        reg = wx[i, 0].reshape(2, 3, 2, 3).sum(axis=(1, 3)).ravel()
        ranked = np.sort(reg)[::-1]
        f0 = reg.sum() + b[0]
        curve = f0 - np.concatenate([[0.0], np.cumsum(ranked)])
        np.testing.assert_allclose(good.curve[i], curve, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(good.aopc[i], (f0 - curve).mean(), rtol=1e-5, atol=1e-5)
    rnd = metrics.pixel_flipping(model, fw.tensor(x), -wx, **kw)
    assert np.all(good.aopc > rnd.aopc)
    # uniform perturbation is seeded: same numbers twice
    a = metrics.pixel_flipping(model, fw.tensor(x), wx, target=0, steps=6, seed=3)
    c = metrics.pixel_flipping(model, fw.tensor(x), wx, target=0, steps=6, seed=3)
    np.testing.assert_array_equal(a.curve, c.curve)


def test_metrics_on_cnn_with_explanation_and_cam_sized_maps(fw):
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 1, 28, 28)))
    exp = xplain.explain(model, x, method="input_x_gradient")
    res = metrics.deletion(model, x, exp, steps=7, baseline="mean")
    assert res.curve.shape == (2, 8)
    np.testing.assert_array_equal(res.targets, exp.targets)
    probs = fw.numpy(fw.B.softmax(model(x), axis=1))
    np.testing.assert_allclose(res.curve[:, 0], probs[np.arange(2), exp.targets], rtol=1e-4)
    small_maps = np.random.default_rng(0).random((2, 7, 7))        # e.g. a CAM at layer size
    assert metrics.insertion(model, x, small_maps, steps=5).curve.shape == (2, 6)
    with pytest.raises(xplain.InputError, match="do not fit"):
        metrics.deletion(model, x, np.zeros((3, 28, 28)))
    with pytest.raises(xplain.OptionError, match="score"):
        metrics.deletion(model, x, exp, score="prob")


def test_sensitivity_max_linear_saliency_is_zero(fw):
    model, W, b, x = _linear(fw)
    s = metrics.sensitivity_max(model, fw.tensor(x), "saliency", target=0, samples=4, mode="raw")
    np.testing.assert_allclose(s, 0.0, atol=1e-6)     # gradient of a linear model is constant
    s2 = metrics.sensitivity_max(model, fw.tensor(x), "input_x_gradient", target=0, samples=4)
    assert np.all(s2 > 0) and np.all(s2 < 0.2)


@pytest.mark.cross
def test_metrics_and_summary_agree_across_backends(both):
    """Deletion and pixel-flipping curves are target logits of perturbed inputs, ranked by the
    given (numpy, hence identical) attributions and perturbed with the same seeded values: the
    only cross-framework difference is float32 logit rounding, a continuous function of the
    inputs (no kink, no argmax). Bound: the float32 logit tolerance of the harness,
    F32_LOGIT_ATOL · max|logit(x)| (the perturbed inputs' logits are smaller: 7.7 for the
    all-zero end point against 97 for x). Measured ≤ 1.1e-6 · max|logit(x)|. Before: rtol 1e-4
    plus atol 1e-4 · max|curve|, the same order, unexplained."""
    from cross_oracles import F32_LOGIT_ATOL, logits

    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    attr = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    curves, totals, scales = [], [], []
    for f in both:
        model = f.model("resnet18")
        res = metrics.deletion(model, f.tensor(x), attr, target=[1, 2], steps=6, score="logit")
        pf = metrics.pixel_flipping(model, f.tensor(x), attr, target=[1, 2], patch=4, steps=4, seed=0)
        curves.append((res.curve, pf.curve))
        scales.append(np.abs(logits(f, model, x)).max())
        s = xplain.summary(model, (1, 3, 64, 64))
        totals.append((s.total_params, s.total_mult_adds, [r.output_shape for r in s.rows]))
    assert totals[0] == totals[1] and totals[0][0] == 11_689_512
    for a, b in zip(*curves):
        np.testing.assert_allclose(b, a, rtol=0, atol=F32_LOGIT_ATOL * scales[0])
