"""Cross-backend equality (torch vs paddle, identical zoo weights) for the path, noise,
guided, perturbation and prototype methods — deterministic ones and seeded random ones."""
from __future__ import annotations

import numpy as np
import pytest

import xplain

pytestmark = pytest.mark.cross

CASES = [
    ("integrated_gradients", {"steps": 16}),
    ("integrated_gradients", {"steps": 8, "baseline": "uniform", "integration": "riemann_middle"}),
    ("integrated_gradients", {"steps": 8, "baseline": "blur", "blur_sigma": 3.0}),
    ("deeplift", {"baseline": 0.1}),
    ("guided_backprop", {}),
    ("deconvnet", {}),
    ("gradient_shap", {"samples": 4, "stdev": 0.1}),
    ("smoothgrad", {"samples": 4}),
    ("vargrad", {"samples": 3, "base": "input_x_gradient"}),
    ("occlusion", {"sliding_window_shapes": (3, 8, 8), "strides": (3, 6, 6)}),
    ("rise", {"masks": 24, "cells": 4}),
    ("prototype", {"steps": 4, "lr": 0.05}),
]


#: measured cross-backend gaps above the default 1e-4 (relative L2), by (case index, arch): the
#: uniform/blur baselines' paths cross ReLU kinks at float32-rounding distance, so one unit's
#: gradient flips at one path point in one framework (measured 1.7e-3 and 4.6e-4; every single
#: path point's gradient agrees to 1e-6 when evaluated alone)
TOLERANCE = {(1, "resnet18"): 5e-3, (1, "vgg16"): 5e-3, (2, "resnet18"): 2e-3, (2, "vgg16"): 2e-3}


@pytest.fixture(scope="module")
def models(both):
    tf, pf = both
    return {name: (tf.model(name, num_classes=10), pf.model(name, num_classes=10))
            for name in ("resnet18", "vgg16")}


@pytest.mark.parametrize("arch,batch", [("resnet18", 2), ("vgg16", 1)])
@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_same_numbers_on_both_backends(both, models, arch, batch, case):
    method, options = CASES[case]
    tf, pf = both
    tm, pm = models[arch]
    x = np.random.default_rng(0).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    et = xplain.explain(tm, tf.tensor(x), method, seed=7, **options)
    ep = xplain.explain(pm, pf.tensor(x), method, seed=7, **options)
    np.testing.assert_array_equal(et.targets, ep.targets)
    a, b = et.numpy(), ep.numpy()
    # relative L2 error: float32 rounding differs between the frameworks, and a path point that
    # lands within rounding of a ReLU kink flips that unit's gradient in one of them
    err = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert err < TOLERANCE.get((case, arch), 1e-4), err
