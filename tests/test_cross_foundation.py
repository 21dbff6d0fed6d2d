"""Cross-backend harness: torchvision weights ported into paddle.vision give the same numbers."""
import numpy as np
import pytest

import xplain
from xplain.testing.port import torch_to_paddle
from xplain.testing.zoo import build

pytestmark = pytest.mark.cross


def _ported(name, seed=0):
    import paddle.vision.models as pvm
    import torch
    import torchvision

    torch.manual_seed(seed)
    tm = getattr(torchvision.models, name)(weights=None).eval()
    with torch.no_grad():  # torchvision's init leaves BN at identity: randomise its statistics
        for m in tm.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.05)
    return tm, torch_to_paddle(tm, getattr(pvm, name)())


def _logits_and_saliency(both, tm, pm, x, target):
    ft, fp = both
    lt = tm(ft.tensor(x)).detach().numpy()
    lp = pm(fp.tensor(x)).numpy()
    st = xplain.explain(tm, ft.tensor(x), "saliency", target, mode="raw").numpy()
    sp = xplain.explain(pm, fp.tensor(x), "saliency", target, mode="raw").numpy()
    return lt, lp, st, sp


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("vgg16", 32)])
def test_ported_torchvision_weights_agree_in_paddle(both, name, size):
    tm, pm = _ported(name)
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    lt, lp, st, sp = _logits_and_saliency(both, tm, pm, x, [1, 500])
    np.testing.assert_allclose(lp, lt, rtol=1e-4, atol=1e-4 * np.abs(lt).max())
    np.testing.assert_allclose(sp, st, rtol=1e-4, atol=1e-4 * np.abs(st).max())
    assert np.corrcoef(sp.ravel(), st.ravel())[0, 1] > 0.99999


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("vgg16_bn", 32), ("tutorial_cnn", 32),
                                       ("small_cnn", 28), ("mlp", 28)])
def test_zoo_builds_identical_models_in_both_frameworks(both, name, size):
    ft, fp = both
    tm, pm = build(name, "torch"), build(name, "paddle")
    channels = 3 if name not in ("small_cnn", "mlp") else 1
    x = np.random.default_rng(1).standard_normal((2, channels, size, size)).astype(np.float32)
    lt = tm(ft.tensor(x)).detach().numpy()
    lp = pm(fp.tensor(x)).numpy()
    np.testing.assert_allclose(lp, lt, rtol=1e-4, atol=1e-4 * np.abs(lt).max())
    st = xplain.explain(tm, ft.tensor(x), "input_x_gradient").numpy()
    sp = xplain.explain(pm, fp.tensor(x), "input_x_gradient").numpy()
    np.testing.assert_allclose(sp, st, rtol=1e-4, atol=1e-4 * np.abs(st).max())


def test_port_refuses_mismatched_architectures():
    import paddle.vision.models as pvm
    import torchvision

    with pytest.raises(xplain.XplainError, match="no torch counterpart|shape mismatch"):
        torch_to_paddle(torchvision.models.resnet18(weights=None), pvm.resnet34())
