"""Class prototypes (activation maximisation) on a small model trained in the test.

The model learns four well-separated synthetic classes (a bright quadrant each, 1×8×8); the
synthesised input of every class must be classified as that class with probability > 0.9,
stay near the class mean image when the pull is strong, and leave the model untouched.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import OptionError


def dataset(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0.0, 0.3, size=(n, 1, 8, 8)).astype(np.float32)
    for c, (r, q) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
        x[y == c, 0, r:r + 4, q:q + 4] += 1.0
    return x, y


def trained_model(fw):
    x, y = dataset()
    model = fw.sequential(fw.flatten(), fw.linear(64, 32), fw.relu(), fw.linear(32, 4))
    if fw.name == "torch":
        import torch

        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        xt, yt = torch.as_tensor(x), torch.as_tensor(y)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt), yt).backward()
            opt.step()
    else:
        import paddle

        opt = paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters())
        xt, yt = paddle.to_tensor(x), paddle.to_tensor(y)
        for _ in range(150):
            loss = paddle.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            opt.clear_grad()
    model.eval()
    acc = (fw.numpy(model(fw.tensor(x))).argmax(1) == y).mean()
    assert acc > 0.97
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    return model, means


@pytest.fixture(scope="module")
def trained(fw):
    return trained_model(fw)


def test_prototypes_are_classified_as_their_class(fw, trained):
    model, means = trained
    before = [fw.numpy(p).copy() for p in model.parameters()]
    start = fw.tensor(np.zeros((4, 1, 8, 8)))
    exp = xplain.explain(model, start, "prototype", target=[0, 1, 2, 3], mean_images=means,
                         steps=100, lr=0.05, l2=0.01)
    protos = exp.numpy()
    probs = fw.numpy(fw.B.softmax(model(fw.tensor(protos)), axis=1))
    assert (probs[np.arange(4), [0, 1, 2, 3]] > 0.9).all(), probs
    np.testing.assert_allclose(fw.numpy(exp.probabilities), probs[np.arange(4), [0, 1, 2, 3]], rtol=1e-4)
    # each prototype is brightest in its own class's quadrant
    quads = [protos[c, 0, r:r + 4, q:q + 4].mean() for c, (r, q) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)])]
    others = [np.delete(protos[c, 0].reshape(2, 4, 2, 4).mean((1, 3)).ravel(), c).max() for c in range(4)]
    assert all(a > b for a, b in zip(quads, others))
    assert all(np.array_equal(a, fw.numpy(b)) for a, b in zip(before, model.parameters()))


def test_stronger_pull_stays_closer_to_the_mean(fw, trained):
    model, means = trained
    start = fw.tensor(np.zeros((2, 1, 8, 8)))
    dist = []
    for l2 in (0.0, 1.0):
        p = xplain.explain(model, start, "prototype", target=[1, 3], mean_images=means, steps=60,
                           lr=0.05, l2=l2).numpy()
        dist.append(np.abs(p - means[[1, 3]]).sum())
    assert dist[1] < 0.5 * dist[0]


def test_adam_first_step_moves_by_lr(fw, trained):
    """Adam's first step is lr · sign(gradient) (bias-corrected m/√v = ±1), from the inputs
    when no mean images are given."""
    model, _ = trained
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
    p = xplain.explain(model, fw.tensor(x), "prototype", target=[0, 2], steps=1, lr=0.1).numpy()
    g = xplain.explain(model, fw.tensor(x), "saliency", target=[0, 2], mode="raw").numpy()
    np.testing.assert_allclose(p - x, 0.1 * np.sign(g) * (np.abs(g) > 1e-6), atol=1e-5)


def test_bad_mean_images(fw, trained):
    model, means = trained
    with pytest.raises(OptionError, match="mean_images"):
        xplain.explain(model, fw.tensor(np.zeros((1, 1, 8, 8))), "prototype", target=0,
                       mean_images=means[:, :, :4])
    with pytest.raises(OptionError, match="classes"):
        xplain.explain(model, fw.tensor(np.zeros((1, 1, 8, 8))), "prototype", target=3,
                       mean_images=means[:2])
