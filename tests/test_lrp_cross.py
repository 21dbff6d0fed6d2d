"""LRP gives the same relevance in torch and paddle on identical weights (zoo resnet18/vgg16).

Compared in float64 (:mod:`cross_oracles`): LRP relevance is continuous in the activations at
ReLU kinks (a unit at z ≈ 0 carries a ≈ 0), but not at max-pool winners (vgg16: the whole
relevance of a window moves to the runner-up; in float32 the nearest top-2 gap is 1.3e-6 of
the scale and the frameworks differ by 3e-7), nor at the sign of z in the ε stabiliser
``z + ε·sign(z)`` of sums that feed no ReLU (the residual branches). In float64 the frameworks
differ by ≤ 3e-12 of the scale, ~1e5 below the nearest of those kinks (asserted for the ReLU
inputs and max-pool windows; the other sums are as densely spread and as far away).
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from cross_oracles import F64_RTOL, assert_close, assert_no_kink_within_reach, zoo_pair
from xplain.methods.lrp import BUILTIN

_CHECKED: set = set()


def _pair64(both, name, x):
    """The float64 (torch, paddle) zoo pair, once shown to have no kink within reach at ``x``."""
    pair = zoo_pair(both, name, "float64")
    key = (name, x.tobytes())
    if key not in _CHECKED:
        assert_no_kink_within_reach(both, pair, x, "float64")
        _CHECKED.add(key)
    return pair


@pytest.mark.cross
@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
@pytest.mark.parametrize("composite", sorted(BUILTIN))
def test_every_composite_same_in_torch_and_paddle(both, name, composite):
    """Before: float32 maps at 1e-4 of the max (vgg16: 2–4e-5 here, a max-pool winner switch
    away from failing). Now: float64 maps and relevance sums at :data:`F64_RTOL`."""
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    # ε = 1e-6 on every conv of a ResNet is at the float32 rounding level of pre-activations that
    # feed the residual stream, where |y|/(|y|+ε) then differs between frameworks (up to 1.6e-4
    # of the max at 4 of 6144 pixels here); a ε of 0.01 is a usual LRP-ε value and stable.
    kw = {"target": [2, 9], "composite": composite, "low": -6.0, "high": 6.0, "epsilon": 0.01}
    rt, rp = (xplain.explain(m, fw.tensor(x, dtype="float64"), method="lrp", **kw)
              for fw, m in zip(both, _pair64(both, name, x)))
    a, b = rt.numpy(), rp.numpy()
    assert np.abs(a).max() > 0
    assert_close(b, a, F64_RTOL, f"{name} {composite} float64 relevance, paddle vs torch")
    tfw, pfw = both
    assert_close(pfw.numpy(rp.relevance_sum), tfw.numpy(rt.relevance_sum), F64_RTOL,
                 f"{name} {composite} float64 relevance sums, paddle vs torch")


@pytest.mark.cross
def test_layer_relevance_same_in_torch_and_paddle(both):
    """Before: float32 layer relevance at 1e-4 of the max. Now: float64 at :data:`F64_RTOL`."""
    tfw, pfw = both
    x = np.random.default_rng(4).standard_normal((1, 3, 32, 32)).astype(np.float32)
    kw = {"target": 1, "composite": "epsilon_gamma_box", "low": -6.0, "high": 6.0, "layer": "layer3"}
    a, b = (fw.numpy(xplain.explain(m, fw.tensor(x, dtype="float64"), method="lrp", **kw).layer_relevance)
            for fw, m in zip(both, _pair64(both, "resnet18", x)))
    assert_close(b, a, F64_RTOL, "resnet18 layer3 float64 relevance, paddle vs torch")
