"""LRP conserves or refuses on every classifier of torchvision.models and paddle.vision.models
(issue 13). Random weights, BatchNorm statistics calibrated on random batches
(:mod:`xplain.testing.classifiers`), biases and BatchNorm shifts zeroed: a bias-free network,
where LRP-ε and the default composite must return the target logit as the relevance sum.

Before this issue: efficientnet_b0 3e15 off, mobilenet_v3 9e6, regnet_y 3e13, mobilenet_v2 with
``ReLU6(inplace=True)`` 1.57, densenet (ε composite, real statistics) 2.7e26. A model on
:data:`~xplain.testing.classifiers.LRP_REFUSED` must raise a LayerError instead.

The default run covers the smallest constructor of every family (``FAMILIES``); with
``XPLAIN_ZOO=all`` every constructor (the README's zoo table is made by
``benchmarks/zoo_table.py`` over all of them).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import xplain
from conftest import SELECTED
from xplain.errors import LayerError
from xplain.testing import classifiers

#: |Σ R − logit| / |logit| per sample. float32 sums over ~1e5–1e6 terms add ~1e-6 relative
#: each; measured on both zoos (ε = 1e-9, see :data:`EPS`): typically 1e-6–3e-5. A lost gate or
#: a wrong in-place rule is off by O(1) or far more.
CONSERVATION_RTOL = 1e-3

#: The stabilisers absorb ε/(|z| + ε) of each output's relevance. At random init with zero
#: biases AlexNet's activations shrink to ~1e-3 deep in the net, where the default ε = 1e-6
#: absorbs 1.6e-3 of the logit (measured, paddle) — the stabiliser doing its job, not a rule
#: losing relevance. ε = 1e-9 keeps that absorption below 1e-5 on every model.
EPS = {"epsilon": 1e-9, "stabilizer": 1e-9}


def _names() -> list:
    if SELECTED not in ("torch", "paddle"):
        return []
    try:
        every = classifiers.names(SELECTED)
    except ImportError:
        return []
    chosen = every if os.environ.get("XPLAIN_ZOO") == "all" else [
        n for n in every if n in classifiers.FAMILIES[SELECTED]]
    return chosen


def _output(fw, name):
    # paddle's GoogLeNet returns (logits, aux1, aux2) also in evaluation
    return {"output": 0} if fw.name == "paddle" and name == "googlenet" else {}


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat"])
@pytest.mark.parametrize("name", _names())
def test_lrp_conserves_or_refuses(fw, name, composite):
    model = classifiers.build(name, fw.name, zero_biases=True)
    size = classifiers.input_size(name, fw.name)
    x = fw.tensor(np.random.default_rng(1).standard_normal((2, 3, size, size)))
    why = classifiers.lrp_refusal(name)
    if why is not None:
        with pytest.raises(LayerError, match="parameters of its own"):
            xplain.explain(model, x, method="lrp", composite=composite, **_output(fw, name))
        return
    exp = xplain.explain(model, x, method="lrp", composite=composite, **EPS, **_output(fw, name))
    rsum, logit = fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output)
    assert np.all(np.isfinite(exp.numpy()))
    err = np.abs(rsum - logit) / np.abs(logit)
    assert err.max() < CONSERVATION_RTOL, f"{name} {composite}: relevance {rsum} vs logit {logit}"


@pytest.mark.parametrize("name", [n for n in _names() if classifiers.lrp_refusal(n) is None])
def test_conservation_report_balances_with_biases(fw, name):
    """Biases, BatchNorm shifts and the default ε kept: the target output equals the relevance
    plus what biases and stabilisers absorbed (``exp.conservation``, read in the same backward
    pass), within its stated tolerance, and no ConservationWarning is raised."""
    import warnings

    model = classifiers.build(name, fw.name)
    size = classifiers.input_size(name, fw.name)
    x = fw.tensor(np.random.default_rng(2).standard_normal((2, 3, size, size)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", xplain.ConservationWarning)
        exp = xplain.explain(model, x, method="lrp", **_output(fw, name))
    c = exp.conservation
    np.testing.assert_allclose(c.target, fw.numpy(exp.target_output), rtol=1e-6)
    assert c.balanced.all(), f"{name}: error {c.error}, target {c.target}, relevance {c.relevance}"
