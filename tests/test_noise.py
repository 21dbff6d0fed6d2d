"""SmoothGrad / SmoothGrad² / VarGrad around any registered method: numbers against oracles.

Oracles: zero noise gives the base method; on a linear model the gradient is constant, so the
mean is the base, the mean square its square and the variance zero; input × gradient on a
linear model averages the replayed noise exactly; chunking and the seed fix the numbers.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import OptionError

W = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0], [2.0, 2.0, -3.0, -0.5]], np.float32)
X = np.array([[1.0, 2.0, -1.0, 0.5], [-0.5, 0.3, 2.0, 1.0]], np.float32)


def linear_model(fw):
    return fw.sequential(fw.linear(4, 3, weight=W, bias=np.array([0.1, -0.2, 0.3])))


def test_zero_noise_is_the_base_method(fw):
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 1, 28, 28)))
    base = xplain.explain(model, x, "integrated_gradients", steps=8)
    sg = xplain.explain(model, x, "smoothgrad", base="integrated_gradients", samples=3, stdev=0.0,
                        base_options={"steps": 8})
    np.testing.assert_allclose(sg.numpy(), base.numpy(), rtol=1e-4, atol=1e-6)


def test_linear_model_moments(fw):
    model = linear_model(fw)
    x = fw.tensor(X)
    kw = dict(target=[0, 2], samples=7, stdev=0.5, base_options={"mode": "raw"})
    sg = xplain.explain(model, x, "smoothgrad", **kw)
    sq = xplain.explain(model, x, "smoothgrad_sq", **kw)
    var = xplain.explain(model, x, "vargrad", **kw)
    np.testing.assert_allclose(sg.numpy(), W[[0, 2]], rtol=1e-6)
    np.testing.assert_allclose(sq.numpy(), W[[0, 2]] ** 2, rtol=1e-6)
    np.testing.assert_allclose(var.numpy(), 0.0, atol=1e-5)


def test_input_x_gradient_averages_the_replayed_noise(fw):
    """mean over s of (x + σ ε_s) ⊙ W[t], σ = stdev · (max x − min x) per sample; the noise
    is the run's seeded stream, variant-major (copy s of sample i at row s·N + i)."""
    model = linear_model(fw)
    samples, stdev, seed = 5, 0.2, 9
    exp = xplain.explain(model, fw.tensor(X), "smoothgrad", base="input_x_gradient", target=[0, 1],
                         samples=samples, stdev=stdev, seed=seed)
    eps = np.random.default_rng(seed).standard_normal((samples * 2, 4)).astype(np.float32)
    sigma = stdev * (X.max(1) - X.min(1))
    noisy = X[None] + eps.reshape(samples, 2, 4) * sigma[None, :, None]
    np.testing.assert_allclose(exp.numpy(), noisy.mean(0) * W[[0, 1]], rtol=1e-5, atol=1e-6)
    var = xplain.explain(model, fw.tensor(X), "vargrad", base="input_x_gradient", target=[0, 1],
                         samples=samples, stdev=stdev, seed=seed)
    np.testing.assert_allclose(var.numpy(), (noisy * W[[0, 1]]).var(0), rtol=1e-3, atol=1e-5)
    absolute = xplain.explain(model, fw.tensor(X), "smoothgrad", base="input_x_gradient",
                              target=[0, 1], samples=samples, stdev=stdev, relative=False, seed=seed)
    noisy = X[None] + eps.reshape(samples, 2, 4) * stdev
    np.testing.assert_allclose(absolute.numpy(), noisy.mean(0) * W[[0, 1]], rtol=1e-5, atol=1e-6)


def test_seed_and_chunking_fix_the_numbers(fw):
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    a = xplain.explain(model, x, "smoothgrad", samples=6, seed=1)
    b = xplain.explain(model, x, "smoothgrad", samples=6, seed=1, max_batch=3)
    c = xplain.explain(model, x, "smoothgrad", samples=6, seed=2)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4 * np.abs(a.numpy()).max())
    assert not np.allclose(a.numpy(), c.numpy())
    # targets are the clean input's, for every noisy copy
    np.testing.assert_array_equal(a.targets, xplain.explain(model, x, "saliency").targets)


def test_wraps_a_wrapped_multipass_method_with_targets(fw):
    """A base with its own options and passes (IG) inside the noise loop, explicit targets."""
    model = linear_model(fw)
    exp = xplain.explain(model, fw.tensor(X), "smoothgrad", base="integrated_gradients",
                         target=[2, 1], samples=4, stdev=0.0,
                         base_options={"steps": 3, "baseline": 1.0})
    np.testing.assert_allclose(exp.numpy(), (X - 1.0) * W[[2, 1]], rtol=1e-5, atol=1e-6)


def test_bad_options(fw):
    model = linear_model(fw)
    x = fw.tensor(X)
    with pytest.raises(OptionError, match="not a registered method"):
        xplain.explain(model, x, "smoothgrad", base="nope")
    with pytest.raises(OptionError, match="no option"):
        xplain.explain(model, x, "smoothgrad", base="saliency", base_options={"steps": 3})
    with pytest.raises(OptionError, match="noise wrapper"):
        xplain.explain(model, x, "vargrad", base="smoothgrad")
    with pytest.raises(OptionError, match="samples"):
        xplain.explain(model, x, "smoothgrad", samples=0)
