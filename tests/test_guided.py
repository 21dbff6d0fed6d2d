"""Guided backprop and deconvnet: numbers against a layer-by-layer numpy reference.

Also: a ReLU layer called twice (in place on torch) is covered on both calls; a model whose
ReLUs are functional calls is refused, not answered with the plain gradient; an affine model
(no ReLU at all) gets its exact gradient.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import ModelError


def net(fw, reuse=False, seed=0):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(6, 4)), rng.normal(size=(5, 6)), rng.normal(size=(3, 5))]
    bs = [rng.normal(size=6) * 0.5, rng.normal(size=5) * 0.5, rng.normal(size=3) * 0.5]
    if reuse:
        r = fw.nn().ReLU(inplace=True) if fw.name == "torch" else fw.relu()
        r1 = r2 = r
    else:
        r1, r2 = fw.relu(), fw.relu()
    model = fw.sequential(fw.linear(4, 6, weight=ws[0], bias=bs[0]), r1,
                          fw.linear(6, 5, weight=ws[1], bias=bs[1]), r2,
                          fw.linear(5, 3, weight=ws[2], bias=bs[2]))
    return model, ws, bs


def reference(x, t, ws, bs, rule):
    """Backward pass written out: at each ReLU, guided keeps relu(g) where z > 0; deconvnet
    keeps relu(g) everywhere."""
    z1 = x @ ws[0].T + bs[0]
    z2 = np.maximum(z1, 0) @ ws[1].T + bs[1]
    g = ws[2][t]
    g = np.maximum(g, 0) * (z2 > 0 if rule == "guided" else 1)
    g = g @ ws[1]
    g = np.maximum(g, 0) * (z1 > 0 if rule == "guided" else 1)
    return g @ ws[0]


@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("method,rule", [("guided_backprop", "guided"), ("deconvnet", "deconv")])
def test_matches_reference(fw, method, rule, reuse):
    model, ws, bs = net(fw, reuse=reuse)
    x = np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32)
    t = np.array([0, 1, 2, 1])
    before = [fw.numpy(p).copy() for p in model.parameters()]
    exp = xplain.explain(model, fw.tensor(x), method, target=t)
    np.testing.assert_allclose(exp.numpy(), reference(x, t, ws, bs, rule), rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, fw.numpy(b)) for a, b in zip(before, model.parameters()))
    # the model still computes as before (hooks gone, in-place ReLU untouched)
    sal = xplain.explain(model, fw.tensor(x), "saliency", target=t, mode="raw").numpy()
    assert not np.allclose(sal, exp.numpy())


def functional_relu_model(fw):
    rng = np.random.default_rng(0)
    l1 = fw.linear(4, 6, weight=rng.normal(size=(6, 4)), bias=np.zeros(6))
    l2 = fw.linear(6, 3, weight=rng.normal(size=(3, 6)), bias=np.zeros(3))
    base = fw.module.nn.Module if fw.name == "torch" else fw.module.nn.Layer
    F = fw.module.nn.functional

    class Functional(base):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = l1, l2

        def forward(self, x):
            return self.l2(F.relu(self.l1(x)))

    return Functional()


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_functional_relu_is_refused(fw, method):
    model = functional_relu_model(fw)
    x = fw.tensor(np.random.default_rng(2).normal(size=(3, 4)))
    with pytest.raises(ModelError, match="functional"):
        xplain.explain(model, x, method)


def test_affine_model_gets_its_gradient(fw):
    w = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    model = fw.sequential(fw.linear(4, 3, weight=w, bias=np.ones(3)))
    exp = xplain.explain(model, fw.tensor(np.ones((2, 4))), "guided_backprop", target=[0, 2])
    np.testing.assert_allclose(exp.numpy(), w[[0, 2]], rtol=1e-6)


def test_resnet18_every_relu_call_is_modified(fw):
    """ResNet-18 calls one ReLU module twice per BasicBlock: the hooks must fire on all 17
    ReLU calls; the result is chunk-independent and differs from the plain gradient (numbers
    are checked against Captum in the peer test and across backends in the cross test)."""
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    g = xplain.explain(model, x, "guided_backprop").numpy()
    g1 = xplain.explain(model, x, "guided_backprop", max_batch=1).numpy()
    sal = xplain.explain(model, x, "saliency", mode="raw").numpy()
    np.testing.assert_allclose(g, g1, rtol=1e-4, atol=1e-5 * np.abs(g).max())
    assert not np.allclose(g, sal, atol=1e-3 * np.abs(sal).max())
    # the hooks fire once per ReLU call: 1 stem + 2 per BasicBlock × 8 blocks = 17
    from xplain.backends import load_backend
    from xplain.methods._activations import activation_layers, replaced_outputs
    from xplain.run import Run

    run = Run(load_backend(fw.name), model, x, np.zeros(2, np.int64))
    with replaced_outputs(run, activation_layers(run, ("relu",)), lambda i, z, y: y) as fired:
        run.forward(x)
    assert fired[0] == 17


@pytest.mark.peer
def test_peer_captum_guided_deconv_saliency(fw):
    captum = pytest.importorskip("captum.attr")
    model, _, _ = net(fw)
    x = fw.tensor(np.random.default_rng(1).normal(size=(4, 4)))
    t = [0, 1, 2, 1]
    for ours, theirs in (("guided_backprop", captum.GuidedBackprop),
                         ("deconvnet", captum.Deconvolution), ("saliency", captum.Saliency)):
        ref = theirs(model).attribute(x, target=t).detach().numpy()
        np.testing.assert_allclose(xplain.explain(model, x, ours, target=t).numpy(), ref,
                                   rtol=1e-5, atol=1e-6)
    model = fw.model("resnet18", num_classes=10)
    x = fw.tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)))
    for ours, theirs in (("guided_backprop", captum.GuidedBackprop),
                         ("deconvnet", captum.Deconvolution), ("saliency", captum.Saliency)):
        ref = theirs(model).attribute(x, target=[3, 7]).detach().numpy()
        np.testing.assert_allclose(xplain.explain(model, x, ours, target=[3, 7]).numpy(), ref,
                                   rtol=1e-4, atol=1e-5 * np.abs(ref).max())
