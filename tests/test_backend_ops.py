"""Backend conformance: every Backend op against a numpy reference, on the backend under test."""
import numpy as np
import pytest

from xplain.testing.conformance import CHECKS, KERNEL_CHECKS, KERNEL_SETS, kernels, run_check, run_kernel_check


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_conformance(fw, check):
    run_check(fw.B, check)


@pytest.mark.parametrize("which", KERNEL_SETS)
@pytest.mark.parametrize("check", sorted(KERNEL_CHECKS))
def test_lrp_kernel_conformance(fw, check, which):
    run_kernel_check(fw.B, check, which)


def test_backends_override_the_costly_kernels(fw):
    """The built-in backends ship a fused version of every LRP kernel (conformance checks each
    against the reference)."""
    from xplain.methods.lrp.kernels import KERNELS

    assert set(kernels(fw.B, "registered").overridden) == set(KERNELS)


@pytest.mark.parametrize("which", KERNEL_SETS)
@pytest.mark.parametrize("op", ["scale_gradient", "damp_gradient", "replace_gradient", "route_to_input"])
def test_gradient_ops_survive_in_place_ops(fw, op, which):
    """The rule's gradient applies at the value the op was given, also when the result is then
    changed in place, as torchvision's ``nn.ReLU(inplace=True)`` and ResNet's
    ``out += identity`` do to a BatchNorm output that LRP replaced or scaled."""
    B = fw.B
    K = kernels(B, which)
    a = np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)
    s = np.array([[0.5, 2.0, 0.25, -1.0]], dtype=np.float32)
    r = np.array([[0.5, 1.0, -4.0, -1.0]], dtype=np.float32)
    w = np.array([[1.0, 3.0, -2.0, 4.0]], dtype=np.float32)
    eps = 0.5
    with B.enable_grad():
        x = B.with_grad(fw.tensor(a))
        if op == "scale_gradient":
            y = B.scale_gradient(x * 2.0, fw.tensor(s))
            scale = 2.0 * s
        elif op == "damp_gradient":
            y = K.damp_gradient(x * 2.0, eps)
            scale = np.abs(2.0 * a) / (np.abs(2.0 * a) + eps) * 2.0
        elif op == "replace_gradient":  # value 2a, gradient routed into x·x with scale s
            y = K.replace_gradient(B.stop_gradient(x * 2.0), [(x * x, fw.tensor(s))])
            scale = s * 2.0 * a
        else:  # value 2a, gradient routed into x through the linear map 3·I with scale s
            eye = fw.tensor(3.0 * np.eye(4, dtype=np.float32))
            y = K.route_to_input(B.stop_gradient(x * 2.0), x, [(eye, fw.tensor(s))], None)
            scale = 3.0 * s
        y.add_(fw.tensor(r))  # out += identity
        if fw.name == "torch":
            y.relu_()
        else:
            fw.module.nn.functional.relu_(y)
        (g,) = B.grad(B.sum(y * fw.tensor(w)), x)
    np.testing.assert_allclose(fw.numpy(y), np.maximum(2.0 * a + r, 0.0))
    np.testing.assert_allclose(fw.numpy(g), scale * w * (2.0 * a + r > 0), rtol=1e-6)
