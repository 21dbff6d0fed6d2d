"""LRP against Zennit (torch only; XPLAIN_PEERS=1): the same composite gives the same relevance.

Zennit's EpsilonPlusFlat (flat first layer, z⁺ on convolutions, ε on linear layers) with its
torchvision canonizers (BatchNorm merging, ResNet residual sums) against xplain's
``epsilon_plus_flat``, which needs no canonizer: cosine similarity > 0.999 per sample.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain


def _zennit_epsilon_plus_flat(model, x, targets, name):
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizer = ResNetCanonizer() if name.startswith("resnet") else VGGCanonizer()
    composite = EpsilonPlusFlat(canonizers=[canonizer])

    def start(out):  # relevance at the output = the target logit, as in xplain
        onehot = torch.zeros_like(out)
        onehot[range(len(targets)), targets] = 1.0
        return out * onehot

    with Gradient(model=model, composite=composite) as attributor:
        _, relevance = attributor(x.clone().requires_grad_(True), start)
    return relevance.detach().numpy()


@pytest.mark.peer
@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_epsilon_plus_flat_matches_zennit(fw, name):
    pytest.importorskip("zennit")
    if fw.name != "torch":
        pytest.skip("Zennit is torch-only")
    model = fw.model(name)
    x = fw.tensor(np.random.default_rng(5).standard_normal((2, 3, 64, 64)))
    targets = [3, 11]
    ours = xplain.explain(model, x, method="lrp", target=targets, composite="epsilon_plus_flat").numpy()
    theirs = _zennit_epsilon_plus_flat(model, x, targets, name)
    for n in range(2):
        a, b = ours[n].ravel(), theirs[n].ravel()
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        print(f"{name} sample {n}: cosine with Zennit {cos:.7f}")
        assert cos > 0.999, f"{name} sample {n}: cosine {cos}"
