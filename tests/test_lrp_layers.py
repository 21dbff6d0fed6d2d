"""LRP on the layers deployed CNNs use beyond conv/ReLU (issue 13): the activation table,
in-place activations, squeeze-and-excitation gates, BatchNorm that cannot be merged, and the
refusals. Oracles: numpy references of each rule (float64), and the framework's own autodiff
where a rule equals a plain gradient of a modified network (a detached gate)."""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import LayerError

RNG = np.random.default_rng(13)

#: class name per framework, f (numpy, float64), and constructor arguments
ACTIVATIONS = {
    "relu6": (("ReLU6", "ReLU6"), lambda h: np.clip(h, 0, 6)),
    "hardtanh": (("Hardtanh", "Hardtanh"), lambda h: np.clip(h, -1, 1)),
    "leaky_relu": (("LeakyReLU", "LeakyReLU"), lambda h: np.where(h > 0, h, 0.01 * h)),
    "elu": (("ELU", "ELU"), lambda h: np.where(h > 0, h, np.expm1(h))),
    "selu": (("SELU", "SELU"), lambda h: 1.0507009873554805 * np.where(
        h > 0, h, 1.6732632423543772 * np.expm1(h))),
    "celu": (("CELU", "CELU"), lambda h: np.where(h > 0, h, np.expm1(h))),
    "gelu": (("GELU", "GELU"), None),  # erf: compared through scipy-free identity below
    "silu": (("SiLU", "Silu"), lambda h: h / (1 + np.exp(-h))),
    "swish": ((None, "Swish"), lambda h: h / (1 + np.exp(-h))),
    "hardswish": (("Hardswish", "Hardswish"), lambda h: h * np.clip(h + 3, 0, 6) / 6),
    "mish": (("Mish", "Mish"), lambda h: h * np.tanh(np.log1p(np.exp(h)))),
    "sigmoid": (("Sigmoid", "Sigmoid"), lambda h: 1 / (1 + np.exp(-h))),
    "tanh": (("Tanh", "Tanh"), np.tanh),
    "softsign": (("Softsign", "Softsign"), lambda h: h / (1 + np.abs(h))),
    "hardsigmoid": (("Hardsigmoid", "Hardsigmoid"), lambda h: np.clip(h / 6 + 0.5, 0, 1)),
    "softplus": (("Softplus", "Softplus"), lambda h: np.log1p(np.exp(h))),
    "log_sigmoid": (("LogSigmoid", "LogSigmoid"), lambda h: -np.log1p(np.exp(-h))),
    "tanhshrink": (("Tanhshrink", "Tanhshrink"), lambda h: h - np.tanh(h)),
    "softshrink": (("Softshrink", "Softshrink"), lambda h: np.where(np.abs(h) > 0.5, h - 0.5 * np.sign(h), 0)),
    "hardshrink": (("Hardshrink", "Hardshrink"), lambda h: np.where(np.abs(h) > 0.5, h, 0)),
}


def _gelu(h):
    from math import erf

    return np.array([0.5 * v * (1 + erf(v / np.sqrt(2))) for v in h])


def _act(fw, key, **kw):
    names, _ = ACTIVATIONS[key]
    cls = names[0 if fw.name == "torch" else 1]
    if cls is None:
        pytest.skip(f"{key} is a {('paddle' if fw.name == 'torch' else 'torch')}-only layer class")
    return getattr(fw.nn(), cls)(**kw)


def _mlp(fw, act, W1, W2):
    return fw.sequential(fw.linear(W1.shape[1], W1.shape[0], weight=W1, bias=np.zeros(W1.shape[0])),
                         act, fw.linear(W2.shape[1], W2.shape[0], weight=W2, bias=np.zeros(W2.shape[0])))


def _eps_reference(W, x, Ry, eps=1e-6):
    """LRP-ε of ``y = W x`` (float64): R_x = x ⊙ Wᵀ(R_y / (y + ε·sign y))."""
    y = W @ x
    return x * (W.T @ (Ry / np.where(y >= 0, y + eps, y - eps)))


@pytest.mark.parametrize("key", sorted(ACTIVATIONS))
def test_every_activation_passes_relevance_less_its_offset(fw, key):
    """pass: R_h = (f(h) − f(0))·g at the activation (g = W2[t]: LRP-0 at the last layer), then
    ε through the first linear layer; numpy reference in float64. f(0) ≠ 0 (sigmoid, softplus,
    log-sigmoid, hard-sigmoid) is absorbed like a bias, so relevance stays bounded near 0."""
    W1 = RNG.standard_normal((6, 4)) * 2.0
    W2 = RNG.standard_normal((3, 6))
    model = _mlp(fw, _act(fw, key), W1, W2)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=[2, 0], composite="epsilon")
    assert exp.rules["1"] == "pass"
    f = ACTIVATIONS[key][1] or _gelu
    for n, t in enumerate([2, 0]):
        h = W1 @ x[n].astype(np.float64)
        f0 = float(f(np.zeros(1))[0])
        Rh = (f(h) - f0) * W2[t]
        ref = _eps_reference(W1, x[n].astype(np.float64), Rh)
        # float32 forward against a float64 reference: a few ulp of the largest entry
        np.testing.assert_allclose(exp.numpy()[n], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("key", ["relu6", "hardswish", "silu", "elu", "hardtanh", "leaky_relu"])
def test_inplace_activation_gives_the_same_relevance(fw, key):
    """Before: torch's ReLU6(inplace=True) overwrote the input the rule needs (mobilenet_v2
    lost 57 % of its relevance). Now the layer gets a copy; maps equal the out-of-place ones."""
    if fw.name != "torch":
        pytest.skip("paddle has no in-place activation layers")
    W1, W2 = RNG.standard_normal((6, 4)) * 3.0, RNG.standard_normal((3, 6))
    x = fw.tensor(RNG.standard_normal((2, 4)))
    plain = xplain.explain(_mlp(fw, _act(fw, key), W1, W2), x, method="lrp", target=1).numpy()
    inplace = xplain.explain(_mlp(fw, _act(fw, key, inplace=True), W1, W2), x, method="lrp",
                             target=1).numpy()
    np.testing.assert_array_equal(inplace, plain)


def _se_net(fw, C=4):
    """conv → squeeze-and-excitation (x * sigmoid(fc2(relu(fc1(pool(x)))))) → flatten → linear."""
    nn = fw.nn()
    torch_like = fw.name == "torch"
    base = nn.Module if torch_like else nn.Layer

    class SE(base):
        def __init__(self):
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1) if torch_like else nn.AdaptiveAvgPool2D(1)
            self.fc1 = fw.conv2d(C, 2, 1)
            self.act = fw.relu()
            self.fc2 = fw.conv2d(2, C, 1)
            self.gate = nn.Sigmoid()

        def forward(self, x):
            return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))

    class Net(base):
        def __init__(self):
            super().__init__()
            self.conv = fw.conv2d(3, C, 3, padding=1)
            self.se = SE()
            self.flat = fw.flatten()
            self.fc = fw.linear(C * 5 * 5, 3)

        def forward(self, x):
            return self.fc(self.flat(self.se(self.conv(x))))

    net = Net()
    from xplain.testing.zoo import fill_paddle, fill_torch

    (fill_torch if torch_like else fill_paddle)(net, seed=2)
    return net


def test_squeeze_excitation_gate_is_a_constant_weight(fw):
    """Before: the gate's branch took relevance too (×2 per block, 9e6 off on mobilenet_v3).
    Now the sigmoid is found as a gate: LRP-0 equals input × gradient of the same network with
    the gate detached (the framework's own autodiff), and with biases zero it conserves."""
    net = _se_net(fw)
    x = RNG.standard_normal((2, 3, 5, 5)).astype(np.float32)
    exp = xplain.explain(net, fw.tensor(x), method="lrp", target=[0, 2], composite="zero")
    assert exp.rules["se.gate"] == "gate"
    # reference: the same forward with the gate's output detached, plain autodiff
    xt = fw.tensor(x)
    if fw.name == "torch":
        import torch

        xt.requires_grad_(True)
        h = net.conv(xt)
        s = net.se.gate(net.se.fc2(net.se.act(net.se.fc1(net.se.pool(h))))).detach()
        out = net.fc(net.flat(h * s))
        score = out[0, 0] + out[1, 2]
        (g,) = torch.autograd.grad(score, xt)
        ref = (xt * g).detach().numpy()
    else:
        import paddle

        xt.stop_gradient = False
        h = net.conv(xt)
        s = net.se.gate(net.se.fc2(net.se.act(net.se.fc1(net.se.pool(h))))).detach()
        out = net.fc(net.flat(h * s))
        score = out[0, 0] + out[1, 2]
        (g,) = paddle.grad(score, xt)
        ref = (xt * g).numpy()
    # LRP-0 through linear layers is input × gradient; float32 both ways, different op order
    np.testing.assert_allclose(exp.numpy(), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_unmergeable_batchnorm_gets_epsilon_and_stays_finite(fw):
    """DenseNet's BN → ReLU → conv: the BatchNorm reads a ReLU's output, nothing to merge into.
    Before: 'pass' divided by inputs near 0 (densenet121 ε composite: 2.7e26). Now ε on the
    affine map y = s·x + t: R_x = s·x·R_y/(y ± ε), numpy reference."""
    nn = fw.nn()
    C, H = 3, 4
    bn = nn.BatchNorm2d(C) if fw.name == "torch" else nn.BatchNorm2D(C)
    model = fw.sequential(fw.conv2d(2, C, 3, padding=1), fw.relu(), bn, fw.flatten(),
                          fw.linear(C * H * H, 2))
    from xplain.testing.zoo import fill_paddle, fill_torch

    (fill_torch if fw.name == "torch" else fill_paddle)(model, seed=5)
    x = RNG.standard_normal((1, 2, H, H)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=1, composite="epsilon",
                         layer="1")
    assert exp.rules["2"].startswith("epsilon")
    sd = {k: fw.numpy(v).astype(np.float64) for k, v in model.state_dict().items()
          if "num_batches" not in k}
    mean = sd.get("2.running_mean", sd.get("2._mean"))
    var = sd.get("2.running_var", sd.get("2._variance"))
    s = sd["2.weight"] / np.sqrt(var + 1e-5)
    t = sd["2.bias"] - mean * s
    W = sd["4.weight"] if fw.name == "torch" else sd["4.weight"].T
    c = fw.numpy(model[1](model[0](fw.tensor(x)))).astype(np.float64)[0]  # the BN's input
    y = (c * s[:, None, None] + t[:, None, None]).reshape(-1)
    z = W @ y + sd["4.bias"]
    Ry = y * (W.T @ (np.eye(2)[1] * z / stab(z)))  # ε at the linear layer, from the logit
    Rc = np.repeat(s, H * H) * c.reshape(-1) * Ry / stab(y)  # ε at the BatchNorm
    got = fw.numpy(exp.layer_relevance)[0].reshape(-1)
    assert np.isfinite(got).all()
    # float32 forward against a float64 reference: a few ulp of the largest entry
    np.testing.assert_allclose(got, Rc, rtol=1e-4, atol=1e-5 * np.abs(Rc).max())


def stab(z, eps=1e-6):
    return np.where(z >= 0, z + eps, z - eps)


def test_refusals_name_the_layer_and_the_fix(fw):
    nn = fw.nn()
    # a parameter-free layer xplain does not know: its gradient is not an LRP rule in general
    base = nn.Module if fw.name == "torch" else nn.Layer

    class Cube(base):
        def forward(self, x):
            return x * x * x

    model = fw.sequential(fw.linear(3, 4), Cube(), fw.linear(4, 2))
    x = fw.tensor(RNG.standard_normal((2, 3)))
    with pytest.raises(LayerError, match=r"'1' \(Cube\) is not a layer xplain knows.*rules=\{'1': 'pass'\}"
                                         r".*add_activation"):
        xplain.explain(model, x, method="lrp")
    assert np.isfinite(xplain.explain(model, x, method="lrp", rules={"1": "pass"}).numpy()).all()
    # a container computing with parameters of its own
    torch_like = fw.name == "torch"

    class Scaled(base):
        def __init__(self):
            super().__init__()
            self.fc = fw.linear(3, 3)
            if torch_like:
                import torch

                self.scale = nn.Parameter(torch.ones(3))
            else:
                self.scale = self.create_parameter([3])

        def forward(self, x):
            return self.fc(x) * self.scale.exp()  # not a layer scale the observation can prove

    model = fw.sequential(Scaled(), fw.relu(), fw.linear(3, 2))
    with pytest.raises(LayerError, match=r"'0' \(Scaled\) computes with parameters of its own"):
        xplain.explain(model, x, method="lrp")


def test_registered_activation_is_accepted(fw):
    """A user's Swish module: refused until declared element-wise through the plugin hook."""
    from xplain.plugins import register, unregister

    nn = fw.nn()
    base = nn.Module if fw.name == "torch" else nn.Layer

    class MySwish(base):
        def forward(self, x):
            return x * (1 / (1 + (-x).exp()))

    class Pack:
        @staticmethod
        @xplain.hookimpl
        def xplain_register_layers(registry):
            registry.add_activation(MySwish, at_zero=0.0)

    W1, W2 = RNG.standard_normal((6, 4)), RNG.standard_normal((3, 6))
    model = _mlp(fw, MySwish(), W1, W2)
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    with pytest.raises(LayerError, match="MySwish"):
        xplain.explain(model, fw.tensor(x), method="lrp")
    register(Pack, name="swish-pack")
    try:
        exp = xplain.explain(model, fw.tensor(x), method="lrp", target=1, composite="epsilon")
    finally:
        unregister(name="swish-pack")
    h = W1 @ x[0].astype(np.float64)
    ref = _eps_reference(W1, x[0].astype(np.float64), (h / (1 + np.exp(-h))) * W2[1])
    np.testing.assert_allclose(exp.numpy()[0], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_functional_gate_is_caught_by_the_conservation_report(fw):
    """A gate computed with a functional sigmoid in a forward that does more than gate (no
    container to detect it by): the gate's branch takes relevance too. No rule table sees a
    functional op, so the run-time ledger must: the report is off and a ConservationWarning
    names the numbers. The SE net with a module gate balances (the oracle of the oracle)."""
    net = _se_net(fw)
    x = fw.tensor(np.random.default_rng(7).standard_normal((2, 3, 5, 5)))
    exp = xplain.explain(net, x, method="lrp", target=1)
    assert exp.conservation.balanced.all()
    mod = fw.module
    sigmoid = mod.sigmoid if fw.name == "torch" else mod.nn.functional.sigmoid

    def functional_gate(h):
        se = net.se
        return h * sigmoid(se.fc2(se.act(se.fc1(se.pool(h))))) + 0.0

    net.se.forward = functional_gate  # the gate is now a functional op inside the block
    try:
        with pytest.warns(xplain.ConservationWarning, match=r"not conserved.*exp.conservation"):
            exp = xplain.explain(net, x, method="lrp", target=1)
    finally:
        del net.se.forward
    c = exp.conservation
    assert not c.balanced.all()
    # the gate branch's share: how much it is depends on the sample (here ≥ 6e-3 of the target
    # in one of them), far above the balance of the module gate (~1e-7)
    assert np.max(np.abs(c.target - c.relevance - c.absorbed) / np.abs(c.target)) > 3e-3


def test_activation_input_changed_in_place_later(fw):
    """The ledger of ``pass`` reads the activation's input in the backward pass; a model that
    changes that input in place after the activation read it (``h.mul_(2)`` below) gets a copy
    (the probe sees the change). Oracle: the same network with the change written out of place
    (``h * 2``: a sum and a scalar product, exact under LRP) gives the same relevance, and both
    balance."""
    W1 = RNG.standard_normal((6, 4)).astype(np.float32)
    W2 = RNG.standard_normal((3, 6)).astype(np.float32)
    net = _mlp(fw, _act(fw, "silu"), W1, W2)
    first, act, last = (net[i] for i in range(3))
    x = fw.tensor(np.random.default_rng(3).standard_normal((2, 4)))

    def in_place(inp):
        h = first(inp)
        y = act(h)
        if fw.name == "torch":
            h.mul_(2.0)
        else:
            h.scale_(2.0)
        return last(y + h)

    def out_of_place(inp):
        h = first(inp)
        return last(act(h) + h * 2.0)

    maps = []
    # in-place first: the probe is cached per model structure, and the forward is swapped here
    for forward in (in_place, out_of_place):
        net.forward = forward
        try:
            exp = xplain.explain(net, x, method="lrp", composite="epsilon", target=1)
        finally:
            del net.forward
        assert exp.conservation.balanced.all()
        maps.append(exp.numpy())
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-6 * np.abs(maps[0]).max())
    # a forward swapped after the probe was cached: the change is seen in the backward, refused
    net2 = _mlp(fw, _act(fw, "silu"), W1, W2)
    first, act, last = (net2[i] for i in range(3))
    net2.forward = out_of_place
    xplain.explain(net2, x, method="lrp", composite="epsilon", target=1)
    net2.forward = in_place
    with pytest.raises(LayerError, match="changed in place after the layer read it"):
        xplain.explain(net2, x, method="lrp", composite="epsilon", target=1)
