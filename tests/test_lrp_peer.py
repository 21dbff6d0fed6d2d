"""LRP against Zennit (torch only; XPLAIN_PEERS=1): the same composite gives the same relevance.

Zennit's EpsilonPlusFlat (flat first layer, z⁺ on convolutions, ε on linear layers) and
EpsilonGammaBox (z^B first layer, γ=0.25 on convolutions, ε on linear layers) with its
torchvision canonizers (BatchNorm merging, ResNet residual sums) against xplain's composites of
the same names, which need no canonizer: cosine similarity > 0.999 per sample, and the same
relevance sum.

Zennit 1.0.0 (tox ``peers`` on Python ≥ 3.11.11) and 0.5.1 (older Pythons, which 1.0.0 does not
install on) both pass with the same code and tolerances. They differ in BatchNorm merging: 0.5.1
leaves each merged BatchNorm with its ``eps``, so the canonized network scales by 1/√(1+eps) there
(forward and relevance); 1.0.0 also zeroes ``eps`` and reproduces the original forward, as xplain
does. On resnet18 (eps=1e-5) that moves the relevance sums ~5e-5 apart under 0.5.1, ~4e-6 under
1.0.0; vgg16 has no BatchNorm and gives the same numbers with both.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import xplain
from xplain.methods.lrp import BUILTIN


def _zennit(model, x, targets, name, composite):
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizers = [ResNetCanonizer() if name.startswith("resnet") else VGGCanonizer()]
    composite = (EpsilonPlusFlat(canonizers=canonizers) if composite == "epsilon_plus_flat"
                 else EpsilonGammaBox(low=-6.0, high=6.0, canonizers=canonizers))

    def start(out):  # relevance at the output = the target logit, as in xplain
        onehot = torch.zeros_like(out)
        onehot[range(len(targets)), targets] = 1.0
        return out * onehot

    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True), start)
    return relevance.detach().numpy()


@pytest.mark.peer
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_composite_matches_zennit(fw, name, composite):
    """resnet18's γ layers before a residual sum take both output signs (the shared-convolution
    form of γ); the others feed a ReLU (the negative group skipped, verified).

    Zennit's composites put z⁺ on every convolution; xplain's built-ins put it only where it
    provably conserves (a ReLU reads the output: resnet18's convolutions before a residual sum
    get ε). ``signed=None`` gives the composite Zennit's definition for this comparison."""
    pytest.importorskip("zennit")
    if fw.name != "torch":
        pytest.skip("Zennit is torch-only")
    model = fw.model(name)
    x = fw.tensor(np.random.default_rng(5).standard_normal((2, 3, 64, 64)))
    targets = [3, 11]
    zennit_like = dataclasses.replace(BUILTIN[composite], signed=None)
    ours = xplain.explain(model, x, method="lrp", target=targets, composite=zennit_like,
                          low=-6.0, high=6.0).numpy()
    theirs = _zennit(model, x, targets, name, composite)
    for n in range(2):
        a, b = ours[n].ravel(), theirs[n].ravel()
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        print(f"{name} {composite} sample {n}: cosine with Zennit {cos:.7f}")
        assert cos > 0.999, f"{name} sample {n}: cosine {cos}"
        np.testing.assert_allclose(a.sum(), b.sum(), rtol=1e-3)
