"""LRP gives the same relevance in torch and paddle on identical weights (zoo resnet18/vgg16)."""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.methods.lrp import BUILTIN

_MODELS: dict = {}


def _model(fw, name):
    if (fw.name, name) not in _MODELS:
        _MODELS[(fw.name, name)] = fw.model(name)
    return _MODELS[(fw.name, name)]


@pytest.mark.cross
@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
@pytest.mark.parametrize("composite", sorted(BUILTIN))
def test_every_composite_same_in_torch_and_paddle(both, name, composite):
    tfw, pfw = both
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    # ε = 1e-6 on every conv of a ResNet is at the float32 rounding level of pre-activations that
    # feed the residual stream, where |y|/(|y|+ε) then differs between frameworks (up to 1.6e-4
    # of the max at 4 of 6144 pixels here); a ε of 0.01 is a usual LRP-ε value and stable.
    kw = {"target": [2, 9], "composite": composite, "low": -6.0, "high": 6.0, "epsilon": 0.01}
    rt = xplain.explain(_model(tfw, name), tfw.tensor(x), method="lrp", **kw)
    rp = xplain.explain(_model(pfw, name), pfw.tensor(x), method="lrp", **kw)
    a, b = rt.numpy(), rp.numpy()
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(a).max())
    np.testing.assert_allclose(tfw.numpy(rt.relevance_sum), pfw.numpy(rp.relevance_sum), rtol=1e-4)


@pytest.mark.cross
def test_layer_relevance_same_in_torch_and_paddle(both):
    tfw, pfw = both
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    kw = {"target": 1, "composite": "epsilon_gamma_box", "low": -6.0, "high": 6.0, "layer": "layer3"}
    a = tfw.numpy(xplain.explain(_model(tfw, "resnet18"), tfw.tensor(x), method="lrp", **kw).layer_relevance)
    b = pfw.numpy(xplain.explain(_model(pfw, "resnet18"), pfw.tensor(x), method="lrp", **kw).layer_relevance)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(a).max())
