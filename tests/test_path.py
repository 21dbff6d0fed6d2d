"""Integrated Gradients, GradientSHAP and DeepLIFT (rescale): numbers against oracles.

Oracles: the analytic IG of a linear model, completeness (the reported delta shrinks with
steps), a slow reference (one explicit gradient call per step), DeepLIFT's summation-to-delta
and a hand-computed two-layer DeepLIFT, GradientSHAP's expectation with the same draws.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import OptionError
from xplain.methods.path import INTEGRATION, integration_points

W = np.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, -1.0, 2.0], [2.0, 2.0, -3.0, -0.5]], np.float32)
X = np.array([[1.0, 2.0, -1.0, 0.5], [-0.5, 0.3, 2.0, 1.0]], np.float32)


def linear_model(fw):
    return fw.sequential(fw.linear(4, 3, weight=W, bias=np.array([0.1, -0.2, 0.3])))


def mlp(fw, seed=0, reuse=False):
    """4 -> 6 -> 5 -> 3 ReLU net with fixed random weights; ``reuse`` calls one ReLU layer
    twice (in-place on torch), as torchvision's BasicBlock does."""
    rng = np.random.default_rng(seed)
    w1, w2, w3 = rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(3, 5))
    b1, b2, b3 = rng.normal(size=6) * 0.3, rng.normal(size=5) * 0.3, rng.normal(size=3) * 0.3
    if reuse:
        r = fw.nn().ReLU(inplace=True) if fw.name == "torch" else fw.relu()
        r1 = r2 = r
    else:
        r1, r2 = fw.relu(), fw.relu()
    model = fw.sequential(fw.linear(4, 6, weight=w1, bias=b1), r1,
                          fw.linear(6, 5, weight=w2, bias=b2), r2,
                          fw.linear(5, 3, weight=w3, bias=b3))
    return model, (w1, b1, w2, b2, w3, b3)


def params(fw, model):
    return [fw.numpy(p).copy() for p in model.parameters()]


@pytest.mark.parametrize("rule", INTEGRATION)
def test_integration_points_integrate_polynomials(rule):
    a, w = integration_points(rule, 8)
    assert np.isclose(w.sum(), 1.0)
    assert abs((w * a).sum() - 0.5) < 1e-12 or rule in ("riemann_left", "riemann_right")
    if rule == "gausslegendre":  # exact up to degree 15
        assert np.isclose((w * a**7).sum(), 1 / 8)


@pytest.mark.parametrize("rule", INTEGRATION)
def test_ig_linear_model_is_analytic(fw, rule):
    model = linear_model(fw)
    x0 = np.array([[0.5, -1.0, 0.0, 2.0]], np.float32)
    exp = xplain.explain(model, fw.tensor(X), "integrated_gradients", target=[0, 2],
                         baseline=fw.tensor(x0), integration=rule, steps=7, return_delta=True)
    expected = (X - x0) * W[[0, 2]]
    np.testing.assert_allclose(exp.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fw.numpy(exp.delta), 0.0, atol=1e-5)


def test_ig_matches_slow_reference(fw):
    """IG with the right Riemann rule = (x − x′) ⊙ mean of the gradients at the k/n points,
    each gradient from an independent saliency call."""
    model, _ = mlp(fw)
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    x0 = np.full_like(x, 0.2)
    steps = 5
    grads = 0
    for k in range(1, steps + 1):
        pt = x0 + k / steps * (x - x0)
        grads = grads + xplain.explain(model, fw.tensor(pt), "saliency", target=[1, 2], mode="raw").numpy()
    exp = xplain.explain(model, fw.tensor(x), "integrated_gradients", target=[1, 2], baseline=0.2,
                         integration="riemann_right", steps=steps)
    np.testing.assert_allclose(exp.numpy(), (x - x0) * grads / steps, rtol=1e-5, atol=1e-6)


def test_ig_completeness_delta_shrinks_with_steps(fw):
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 1, 28, 28)))
    deltas = {}
    for steps in (2, 8, 64):
        exp = xplain.explain(model, x, "integrated_gradients", steps=steps,
                             integration="riemann_trapezoid", return_delta=True)
        d = fw.numpy(exp.delta)
        # the reported delta is Σ attr − (f(x) − f(0))
        out = fw.numpy(model(x))[np.arange(2), exp.targets]
        out0 = fw.numpy(model(fw.tensor(np.zeros((2, 1, 28, 28)))))[np.arange(2), exp.targets]
        np.testing.assert_allclose(d, exp.numpy().reshape(2, -1).sum(1) - (out - out0), atol=1e-4)
        deltas[steps] = np.abs(d).max()
    assert deltas[64] < deltas[8] < deltas[2]
    assert deltas[64] < 0.02 * abs(out - out0).max()


def test_ig_chunking_does_not_change_result_and_batches(fw):
    """200 steps under a small memory budget: passes run in equal batches of the budget's
    chunk size (never one sample at a time), and the result equals an unbounded run."""
    model = fw.model("small_cnn")
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 1, 28, 28)))
    sizes = []
    h = fw.B.add_forward_hook(model, lambda m, i, o: sizes.append(fw.B.shape(i[0])[0]))
    try:
        small = xplain.explain(model, x, "integrated_gradients", steps=200, memory_budget="2MB")
    finally:
        h.remove()
    grads = sizes[2:]  # the first two forwards resolve targets and probe the memory need
    assert sum(grads) == 400 and min(grads[:-1]) > 1 and len(set(grads[:-1])) == 1
    assert len(grads) > 2  # the budget really split the work
    big = xplain.explain(model, x, "integrated_gradients", steps=200, max_batch=400)
    np.testing.assert_allclose(small.numpy(), big.numpy(), rtol=1e-4,
                               atol=1e-4 * np.abs(big.numpy()).max())


def test_memory_budget_gives_large_batches_at_224(fw):
    """The plan for IG with 200 steps on a 224² ImageNet model under 2 GB: many samples per
    pass, as many as keep each layer output under CPU_TENSOR_BYTES on CPU (ResNet-18 here to
    keep the suite fast; VGG16's plan is checked in the benchmark)."""
    from xplain.backends import load_backend
    from xplain.run import CPU_TENSOR_BYTES, Run

    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.zeros((1, 3, 224, 224)))
    run = Run(load_backend(fw.name), model, x, np.zeros(1, np.int64), memory_budget="2GB")
    need = run.per_sample_bytes()
    assert 20e6 < need < 500e6  # activations + their gradients of one 224² sample
    largest = 64 * 112 * 112 * 4  # the stem's output, per sample
    assert run._largest_bytes == largest
    assert 2**31 // need > CPU_TENSOR_BYTES // largest  # the budget alone would allow more
    assert run.chunk_size() == run.chunk_size(backward=False) == CPU_TENSOR_BYTES // largest == 10
    roomy = Run(load_backend(fw.name), model, x, np.zeros(1, np.int64), memory_budget="200MB")
    assert roomy.chunk_size() == 200 * 2**20 // need < 10  # the budget binds first


def test_baselines_named_and_invalid(fw):
    model = linear_model(fw)
    x = fw.tensor(X)
    black = xplain.explain(model, x, "integrated_gradients", target=0, baseline="black")
    np.testing.assert_allclose(black.numpy(), X * W[0], rtol=1e-5)
    u1 = xplain.explain(model, x, "integrated_gradients", target=0, baseline="uniform", seed=3)
    u2 = xplain.explain(model, x, "integrated_gradients", target=0, baseline="uniform", seed=3)
    u3 = xplain.explain(model, x, "integrated_gradients", target=0, baseline="uniform", seed=4)
    b = fw.numpy(u1.baseline)
    assert (b >= X.min(1, keepdims=True) - 1e-6).all() and (b <= X.max(1, keepdims=True) + 1e-6).all()
    np.testing.assert_array_equal(u1.numpy(), u2.numpy())
    assert not np.allclose(u1.numpy(), u3.numpy())
    np.testing.assert_allclose(u1.numpy(), (X - b) * W[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(OptionError, match="baseline"):
        xplain.explain(model, x, "integrated_gradients", baseline="grey")
    with pytest.raises(OptionError, match="shape"):
        xplain.explain(model, x, "integrated_gradients", baseline=fw.tensor(np.zeros((3, 4))))
    with pytest.raises(OptionError, match="integration"):
        xplain.explain(model, x, "integrated_gradients", integration="simpson")
    with pytest.raises(OptionError, match="image"):
        xplain.explain(model, x, "integrated_gradients", baseline="blur")


def test_blur_baseline_is_gaussian_blur(fw):
    import cv2

    model = fw.model("small_cnn")
    a = np.random.default_rng(0).normal(size=(1, 1, 28, 28)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(a), "integrated_gradients", baseline="blur",
                         blur_sigma=2.0, steps=4)
    ref = cv2.GaussianBlur(a[0, 0], (0, 0), 2.0, borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(fw.numpy(exp.baseline)[0, 0], ref, atol=1e-6)


def test_deeplift_equals_ig_on_linear_model(fw):
    model = linear_model(fw)
    x0 = np.array([[0.5, -1.0, 0.0, 2.0]], np.float32)
    dl = xplain.explain(model, fw.tensor(X), "deeplift", target=[1, 2], baseline=fw.tensor(x0))
    ig = xplain.explain(model, fw.tensor(X), "integrated_gradients", target=[1, 2],
                        baseline=fw.tensor(x0))
    np.testing.assert_allclose(dl.numpy(), ig.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dl.numpy(), (X - x0) * W[[1, 2]], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reuse", [False, True])
def test_deeplift_hand_computed_and_summation_to_delta(fw, reuse):
    model, (w1, b1, w2, b2, w3, b3) = mlp(fw, seed=2, reuse=reuse)
    before = params(fw, model)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    x0 = rng.normal(size=(1, 4)).astype(np.float32)
    t = np.array([0, 1, 2])
    exp = xplain.explain(model, fw.tensor(x), "deeplift", target=t, baseline=fw.tensor(x0),
                         return_delta=True)
    # explicit rescale rule, layer by layer
    relu = lambda z: np.maximum(z, 0)  # noqa: E731
    z1, z01 = x @ w1.T + b1, x0 @ w1.T + b1
    a1, a01 = relu(z1), relu(z01)
    z2, z02 = a1 @ w2.T + b2, a01 @ w2.T + b2
    m1 = np.where(np.abs(z1 - z01) > 1e-7, (a1 - a01) / np.where(z1 == z01, 1, z1 - z01), z1 > 0)
    m2 = np.where(np.abs(z2 - z02) > 1e-7, (relu(z2) - relu(z02)) / np.where(z2 == z02, 1, z2 - z02), z2 > 0)
    g = ((w3[t] * m2) @ w2 * m1) @ w1
    np.testing.assert_allclose(exp.numpy(), (x - x0) * g, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fw.numpy(exp.delta), 0.0, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(before, params(fw, model)))


def test_deeplift_summation_to_delta_on_cnn(fw):
    """Conv, BatchNorm, ReLU and average pooling only: summation-to-delta is exact."""
    nn = fw.nn()
    conv = fw.conv2d(1, 4, 3, padding=1)
    bn = nn.BatchNorm2d(4) if fw.name == "torch" else nn.BatchNorm2D(4)
    pool = nn.AdaptiveAvgPool2d(2) if fw.name == "torch" else nn.AdaptiveAvgPool2D(2)
    model = fw.sequential(conv, bn, fw.relu(), fw.conv2d(4, 6, 3, padding=1), nn.Sigmoid(),
                          pool, fw.flatten(), fw.linear(24, 5), nn.Tanh(), fw.linear(5, 3))
    model.eval()
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 1, 8, 8)))
    exp = xplain.explain(model, x, "deeplift", baseline=0.3, return_delta=True)
    out = fw.numpy(model(x))[np.arange(2), exp.targets]
    out0 = fw.numpy(model(fw.tensor(np.full((2, 1, 8, 8), 0.3))))[np.arange(2), exp.targets]
    np.testing.assert_allclose(exp.numpy().reshape(2, -1).sum(1), out - out0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fw.numpy(exp.delta), 0.0, atol=1e-5)


def test_deeplift_resnet18_close_to_delta(fw):
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    exp = xplain.explain(model, x, "deeplift", return_delta=True)
    out = fw.numpy(model(x))[np.arange(2), exp.targets]
    out0 = fw.numpy(model(fw.tensor(np.zeros((2, 3, 32, 32)))))[np.arange(2), exp.targets]
    # max-pooling passes the plain gradient, so the sum is close but not exact by design
    np.testing.assert_allclose(exp.numpy().reshape(2, -1).sum(1), out - out0, rtol=0.05, atol=0.05)


def test_gradient_shap_linear_model_expectation(fw):
    """Linear model: the gradient is W[t] everywhere, so the attribution is
    W[t] ⊙ mean over draws of (x + ε − x′_drawn); draws replayed from the same seed."""
    model = linear_model(fw)
    refs = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
    samples, stdev, seed = 6, 0.3, 11
    exp = xplain.explain(model, fw.tensor(X), "gradient_shap", target=[0, 1],
                         baselines=fw.tensor(refs), samples=samples, stdev=stdev, seed=seed)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 5, size=(samples, 2))
    rng.uniform(0.0, 1.0, size=(samples, 2))
    eps = rng.standard_normal((samples * 2, 4)).astype(np.float32).reshape(samples, 2, 4) * np.float32(stdev)
    diff = (X[None] + eps - refs[idx]).mean(0)
    np.testing.assert_allclose(exp.numpy(), diff * W[[0, 1]], rtol=1e-4, atol=1e-5)
    # same seed, smaller batches: identical numbers
    again = xplain.explain(model, fw.tensor(X), "gradient_shap", target=[0, 1], max_batch=1,
                           baselines=fw.tensor(refs), samples=samples, stdev=stdev, seed=seed)
    np.testing.assert_allclose(again.numpy(), exp.numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_shap_single_baseline_approximates_ig(fw):
    model, _ = mlp(fw)
    x = fw.tensor(np.random.default_rng(3).normal(size=(2, 4)))
    gs = xplain.explain(model, x, "gradient_shap", samples=4000, baselines=0.0, max_batch=8000)
    ig = xplain.explain(model, x, "integrated_gradients", steps=200)
    np.testing.assert_allclose(gs.numpy(), ig.numpy(), atol=0.05 * np.abs(ig.numpy()).max())


@pytest.mark.peer
def test_peer_captum_integrated_gradients_and_gradient_shap(fw, monkeypatch):
    captum = pytest.importorskip("captum.attr")
    import torch

    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    for rule in INTEGRATION:
        ours = xplain.explain(model, x, "integrated_gradients", target=[1, 4], steps=20,
                              integration=rule)
        ref = captum.IntegratedGradients(model).attribute(x, target=[1, 4], n_steps=20, method=rule)
        # Captum's trapezoid weights are 1/n (ends halved) on n points spanning [0, 1]: they
        # sum to (n-1)/n, so its result is ours scaled by (n-1)/n (ours is the trapezoid rule)
        scale = 19 / 20 if rule == "riemann_trapezoid" else 1.0
        np.testing.assert_allclose(ours.numpy() * scale, ref.detach().numpy(), rtol=1e-3,
                                   atol=1e-5 * np.abs(ref.detach().numpy()).max())
    # GradientSHAP: hand Captum the α we draw (Captum draws them with np.random.uniform)
    refs = torch.as_tensor(np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32))
    samples, seed = 4, 5
    rng = np.random.default_rng(seed)
    rng.integers(0, 1, size=(samples, 2))
    alphas = rng.uniform(0.0, 1.0, size=(samples, 2))
    # Captum orders draws sample-major (input i, draw s) -> index i * samples + s
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, n: alphas.T.reshape(-1)[:n])
    ref = captum.GradientShap(model).attribute(x, baselines=refs, target=[1, 4], n_samples=samples)
    monkeypatch.undo()
    ours = xplain.explain(model, x, "gradient_shap", target=[1, 4], baselines=refs,
                          samples=samples, seed=seed)
    np.testing.assert_allclose(ours.numpy(), ref.detach().numpy(), rtol=1e-3,
                               atol=1e-5 * np.abs(ref.detach().numpy()).max())
