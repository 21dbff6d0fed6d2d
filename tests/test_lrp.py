"""LRP against oracles, on the backend under test (``fw``).

* per rule: a slow explicit reference in matrix form (contribution matrix ``C[j, i]``,
  ``R_i = Σ_j C[j, i] / stab(z_j) · R_j``) on a small linear and a small conv layer;
* conservation: bias-free zoo networks with ε → 0 give relevance sums equal to the logit;
  with biases, the missing relevance equals the bias relevance ``Σ b·∂f/∂b``;
* LRP-0 on ReLU networks equals input × gradient;
* the model is left exactly as found, also when a rule raises;
* errors name the layer and the fix.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import LayerError, OptionError

RNG = np.random.default_rng(7)
_MODELS: dict = {}


def zoo(fw, name, *, bias_free=False):
    """Zoo model, built once per session (building vgg16's 138M weights is slow); models are
    borrowed by xplain, and test_model_unchanged checks that it leaves them as found."""
    key = (fw.name, name, bias_free)
    if key not in _MODELS:
        model = fw.model(name)
        _MODELS[key] = zero_biases(fw, model) if bias_free else model
    return _MODELS[key]


# ---- numpy references ----------------------------------------------------------------------------
def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def reference(rule, M, b, x, Ry, *, epsilon=1e-6, gamma=0.25, alpha=2.0, beta=1.0, low=None, high=None,
              mask=None):
    """Relevance of input ``x`` (flat, float64) of the affine map ``M x + b``, given output
    relevance ``Ry``; ``mask`` marks the receptive fields (for flat)."""
    eps = epsilon
    M, b, x, Ry = (np.asarray(a, np.float64) for a in (M, b, x, Ry))
    pos, neg = np.maximum, np.minimum
    y = M @ x + b

    def spread(C, bias, R, sel=None):  # R_i = Σ_j C[j,i]/stab(z_j) R_j
        z = C.sum(1) + bias
        r = R / _stab(z, eps)
        if sel is not None:
            r = r * sel
        return (C * r[:, None]).sum(0)

    xp, xn = pos(x, 0), neg(x, 0)
    if rule == "epsilon":
        return spread(M * x[None], b, Ry)
    if rule == "zero":
        return spread(M * x[None], b, Ry) if eps == 0 else None
    if rule in ("zplus", "alphabeta"):
        cp = pos(M, 0) * xp[None] + neg(M, 0) * xn[None]
        cn = neg(M, 0) * xp[None] + pos(M, 0) * xn[None]
        a, bt = (1.0, 0.0) if rule == "zplus" else (alpha, beta)
        out = a * spread(cp, pos(b, 0), Ry)
        if bt:
            out = out - bt * spread(cn, neg(b, 0), Ry)
        return out
    if rule == "gamma":
        gp, gn = M + gamma * pos(M, 0), M + gamma * neg(M, 0)
        cp = gp * xp[None] + gn * xn[None]
        cn = gn * xp[None] + gp * xn[None]
        return (spread(cp, b + gamma * pos(b, 0), Ry, y > 0)
                + spread(cn, b + gamma * neg(b, 0), Ry, y < 0))
    if rule == "flat":
        return spread(mask.astype(np.float64), 0.0, Ry)
    if rule == "wsquare":
        return spread(M ** 2, b ** 2, Ry)
    if rule == "zbox":
        C = M * x[None] - pos(M, 0) * low[None] - neg(M, 0) * high[None]
        return spread(C, b - pos(b, 0) - neg(b, 0), Ry)
    raise KeyError(rule)


def conv_matrix(W, cin, H, Wd, pad, stride):
    """Dense matrix of a 2-D convolution (out_flat × in_flat) and its receptive-field mask."""
    cout, _, kh, kw = W.shape
    Ho, Wo = (H + 2 * pad - kh) // stride + 1, (Wd + 2 * pad - kw) // stride + 1
    M = np.zeros((cout * Ho * Wo, cin * H * Wd))
    mask = np.zeros_like(M, dtype=bool)
    for o in range(cout):
        for i in range(Ho):
            for j in range(Wo):
                row = (o * Ho + i) * Wo + j
                for c in range(cin):
                    for u in range(kh):
                        for v in range(kw):
                            yy, xx = i * stride + u - pad, j * stride + v - pad
                            if 0 <= yy < H and 0 <= xx < Wd:
                                col = (c * H + yy) * Wd + xx
                                M[row, col] = W[o, c, u, v]
                                mask[row, col] = True
    return M, mask, (Ho, Wo)


RULES = [
    ("epsilon", {"epsilon": 0.1}), ("epsilon", {"epsilon": 1e-6}), ("zplus", {}),
    ("alphabeta", {"alpha": 2.0, "beta": 1.0}), ("alphabeta", {"alpha": 1.0, "beta": 0.0}),
    ("gamma", {"gamma": 0.25}), ("gamma", {"gamma": 1.0}), ("flat", {}), ("wsquare", {}), ("zbox", {}),
]


def _rule_spec(rule, params, cin):
    if rule == "zbox":
        # the box must hold the standard-normal inputs: z^B refuses inputs outside it
        low = -5.0 - 0.5 * np.arange(cin)
        high = 5.0 + 0.25 * np.arange(cin)
        return ("zbox", {"low": low, "high": high}), low, high
    return (rule, params), None, None


@pytest.mark.parametrize("nonneg", [False, True], ids=["mixed", "nonneg"])
@pytest.mark.parametrize("rule,params", RULES, ids=[f"{r}-{p}" for r, p in RULES])
def test_rule_matches_reference_linear(fw, rule, params, nonneg):
    fin, fout, classes = 6, 5, 3
    W1, b1 = RNG.standard_normal((fout, fin)), RNG.standard_normal(fout) * 0.5
    W2 = RNG.standard_normal((classes, fout))
    model = fw.sequential(fw.linear(fin, fout, weight=W1, bias=b1),
                          fw.linear(fout, classes, weight=W2, bias=np.zeros(classes)))
    x = RNG.standard_normal((2, fin)).astype(np.float32)
    if nonneg:
        x = np.abs(x)
    spec, low, high = _rule_spec(rule, params, 1)
    targets = [0, 2]
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=targets, composite=None,
                         rules={"0": spec})
    W1, b1 = W1.astype(np.float32), b1.astype(np.float32)  # the numbers the layer really holds
    for n, t in enumerate(targets):
        y = W1.astype(np.float64) @ x[n] + b1
        Ry = y * W2.astype(np.float32)[t]  # LRP-0 at the last layer
        lo = None if low is None else np.full(fin, low[0])
        hi = None if high is None else np.full(fin, high[0])
        ref = reference(rule, W1, b1, x[n], Ry, low=lo, high=hi, mask=np.ones_like(W1, dtype=bool),
                        **params)
        got = exp.numpy()[n]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("nonneg", [False, True], ids=["mixed", "nonneg"])
@pytest.mark.parametrize("rule,params", RULES, ids=[f"{r}-{p}" for r, p in RULES])
def test_rule_matches_reference_conv(fw, rule, params, nonneg):
    cin, cout, H, pad, stride, classes = 2, 3, 5, 1, 2, 4
    W1 = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    b1 = (RNG.standard_normal(cout) * 0.5).astype(np.float32)
    M, mask, (Ho, Wo) = conv_matrix(W1, cin, H, H, pad, stride)
    W2 = RNG.standard_normal((classes, cout * Ho * Wo)).astype(np.float32)
    model = fw.sequential(fw.conv2d(cin, cout, 3, padding=pad, stride=stride, weight=W1, bias=b1),
                          fw.flatten(), fw.linear(cout * Ho * Wo, classes, weight=W2, bias=np.zeros(classes)))
    x = RNG.standard_normal((2, cin, H, H)).astype(np.float32)
    if nonneg:
        x = np.abs(x)
    spec, low, high = _rule_spec(rule, params, cin)
    targets = [1, 3]
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=targets, composite=None,
                         rules={"0": spec})
    bflat = np.repeat(b1, Ho * Wo)
    for n, t in enumerate(targets):
        xf = x[n].reshape(-1)
        Ry = (M @ xf + bflat) * W2[t]
        lo = None if low is None else np.repeat(low, H * H)
        hi = None if high is None else np.repeat(high, H * H)
        ref = reference(rule, M, bflat, xf, Ry, low=lo, high=hi, mask=mask, **params)
        got = exp.numpy()[n].reshape(-1)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("relu", [True, False], ids=["relu-after", "bn-out"])
@pytest.mark.parametrize("nonneg", [False, True], ids=["mixed", "nonneg"])
@pytest.mark.parametrize("rule,params", [("gamma", {"gamma": 0.25}), ("zplus", {}), ("epsilon", {"epsilon": 0.1}),
                                         ("alphabeta", {"alpha": 2.0, "beta": 1.0})])
def test_rule_matches_reference_with_batchnorm_merged(fw, rule, params, nonneg, relu):
    """conv → BatchNorm (scales of both signs) [→ ReLU]: the rule sees the merged affine map
    (modified weights are one scaled leaky ReLU of the conv weight, see lrp.params.layer_param).
    With the ReLU, γ takes the optimistic plan; without, the two-sided one on non-negative input."""
    cin, cout, H, classes = 2, 4, 5, 3
    W1 = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    b1 = (RNG.standard_normal(cout) * 0.5).astype(np.float32)
    gamma_bn = np.array([1.5, -0.7, 0.4, -2.0], np.float32)
    beta_bn = (RNG.standard_normal(cout) * 0.3).astype(np.float32)
    mean, var = (RNG.standard_normal(cout) * 0.2).astype(np.float32), np.array([0.5, 2.0, 1.0, 0.8], np.float32)
    M, _, (Ho, Wo) = conv_matrix(W1, cin, H, H, 1, 1)
    W2 = RNG.standard_normal((classes, cout * Ho * Wo)).astype(np.float32)
    nn = fw.nn()
    bn = nn.BatchNorm2d(cout) if fw.name == "torch" else nn.BatchNorm2D(cout)
    mod = fw.module
    for name, value in (("weight", gamma_bn), ("bias", beta_bn)):
        getattr(bn, name).set_value(value) if fw.name == "paddle" else getattr(bn, name).data.copy_(
            mod.tensor(value))
    stats = (("running_mean", "_mean"), ("running_var", "_variance"))
    for (tname, pname), value in zip(stats, (mean, var)):
        getattr(bn, pname).set_value(value) if fw.name == "paddle" else getattr(bn, tname).copy_(
            mod.tensor(value))
    eps_bn = 1e-5
    layers = [fw.conv2d(cin, cout, 3, padding=1, weight=W1, bias=b1), bn] + ([fw.relu()] if relu else [])
    model = fw.sequential(*layers, fw.flatten(),
                          fw.linear(cout * Ho * Wo, classes, weight=W2, bias=np.zeros(classes)))
    x = RNG.standard_normal((2, cin, H, H)).astype(np.float32)
    if nonneg:
        x = np.abs(x)
    targets = [0, 2]
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=targets, composite=None,
                         rules={"0": (rule, params)})
    assert "merged" in exp.rules["0"]
    scale = gamma_bn.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps_bn)
    Mm = M * np.repeat(scale, Ho * Wo)[:, None]
    bm = np.repeat(b1 * scale + beta_bn - mean * scale, Ho * Wo)
    for n, t in enumerate(targets):
        xf = x[n].reshape(-1).astype(np.float64)
        y = Mm @ xf + bm
        Ry = (np.maximum(y, 0) if relu else y) * W2[t]  # LRP-0 at the last layer, ReLU's gradient
        ref = reference(rule, Mm, bm, xf, Ry, **params)
        got = exp.numpy()[n].reshape(-1)
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_pass_rule_on_activation(fw):
    W1, W2 = RNG.standard_normal((5, 4)), RNG.standard_normal((3, 5))
    nn = fw.nn()
    model = fw.sequential(fw.linear(4, 5, weight=W1, bias=np.zeros(5)), nn.Sigmoid(),
                          fw.linear(5, 3, weight=W2, bias=np.zeros(3)))
    x = RNG.standard_normal((1, 4)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=2, composite=None,
                         rules={"1": "pass"})
    h = W1 @ x[0]
    s = 1 / (1 + np.exp(-h))
    # LRP-0 at the last layer; pass: the sigmoid's input gets its output relevance less the
    # share of the offset sigmoid(0) = 1/2, absorbed like a bias: R_h = (s − 1/2)·g
    Rh = (s - 0.5) * W2[2]
    ref = reference("epsilon", W1, np.zeros(5), x[0], Rh, epsilon=1e-6)
    np.testing.assert_allclose(exp.numpy()[0], ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(exp.numpy().sum(), (s * W2[2]).sum() - 0.5 * W2[2].sum(), rtol=1e-4)


# ---- conservation ----------------------------------------------------------------------------------
def zero_biases(fw, model):
    """The model with every bias, BatchNorm shift and running mean set to zero (a bias-free net)."""
    sd = model.state_dict()
    new = {}
    for k, v in sd.items():
        leaf = k.rsplit(".", 1)[-1]
        arr = fw.numpy(v) if fw.name == "paddle" else v.detach().cpu().numpy()
        if leaf in ("bias", "running_mean", "_mean"):
            arr = np.zeros_like(arr)
        new[k] = arr
    if fw.name == "torch":
        import torch

        model.load_state_dict({k: torch.as_tensor(v) for k, v in new.items()})
    else:
        model.set_state_dict(new)
    return model


CONSERVATION = [("tutorial_cnn", 32), ("resnet18", 32), ("vgg16", 32), ("vgg16_bn", 32),
                pytest.param("resnet50", 32, marks=pytest.mark.slow),
                pytest.param("densenet121", 64, marks=pytest.mark.slow)]


def _input(fw, size, batch=2, channels=3, seed=0):
    return fw.tensor(np.random.default_rng(seed).standard_normal((batch, channels, size, size)))


@pytest.mark.parametrize("name,size", CONSERVATION)
def test_conservation_bias_free(fw, name, size):
    model = zoo(fw, name, bias_free=True)
    x = _input(fw, size)
    for composite, opts in (("epsilon", {"epsilon": 1e-9}), ("zero", {})):
        exp = xplain.explain(model, x, method="lrp", target=[3, 7], composite=composite, **opts)
        rs, out = fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output)
        np.testing.assert_allclose(rs, out, rtol=1e-4, atol=1e-4 * np.abs(out).max(),
                                   err_msg=f"{name} {composite}")


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box",
                                       "epsilon_plus"])
def test_conservation_composites_bias_free_vgg(fw, composite):
    """Every built-in composite conserves relevance on a bias-free network without residuals
    (z⁺, αβ with α−β=1, γ, flat and z^B are all conservative without biases)."""
    model = zoo(fw, "vgg16", bias_free=True)
    x = _input(fw, 32)
    exp = xplain.explain(model, x, method="lrp", target=[0, 5], composite=composite, low=-6.0, high=6.0)
    rs, out = fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output)
    np.testing.assert_allclose(rs, out, rtol=1e-3)


def _bias_relevance(fw, model, x, targets):
    """``Σ_l b_l · ∂f_t/∂b_l`` by plain autodiff (for nets of linear layers + ReLU/max-pooling,
    ``f = x·∇_x f + Σ b·∂f/∂b`` exactly): the relevance LRP-0 leaves in the biases."""
    if fw.name == "torch":
        import torch

        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        for p in biases:
            p.requires_grad_(True)
        out = model(x)
        onehot = torch.zeros_like(out)
        onehot[range(len(targets)), targets] = 1
        grads = torch.autograd.grad((out * onehot).sum(), biases)
        for p in biases:
            p.requires_grad_(False)
        return sum(float((p * g).sum()) for p, g in zip(biases, grads))
    import paddle

    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    for p in biases:
        p.stop_gradient = False
    out = model(x)
    oh = np.zeros(out.shape, np.float32)
    oh[range(len(targets)), targets] = 1
    grads = paddle.grad((out * paddle.to_tensor(oh)).sum(), biases)
    for p in biases:
        p.stop_gradient = True
    return sum(float((p * g).sum()) for p, g in zip(biases, grads))


@pytest.mark.parametrize("name", ["tutorial_cnn", "vgg16"])
def test_bias_relevance_accounts_for_difference(fw, name):
    """With biases kept, LRP-0's relevance sum misses exactly the relevance absorbed by biases."""
    model = zoo(fw, name)
    x = _input(fw, 32, batch=1)
    exp = xplain.explain(model, x, method="lrp", target=4, composite="zero")
    diff = float(fw.numpy(exp.target_output).sum() - fw.numpy(exp.relevance_sum).sum())
    bias_rel = _bias_relevance(fw, model, x, [4])
    print(f"{name}: logit - relevance sum = {diff:.6f}, bias relevance = {bias_rel:.6f}")
    assert abs(diff) > 1e-3  # biases do absorb relevance ...
    np.testing.assert_allclose(diff, bias_rel, rtol=1e-3, atol=1e-4)  # ... exactly this much


# ---- LRP-0 = input x gradient -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tutorial_cnn", "resnet18", "vgg16_bn"])
def test_lrp0_equals_input_times_gradient(fw, name):
    model = zoo(fw, name)
    x = _input(fw, 32)
    ixg = fw.numpy(xplain.explain(model, x, method="input_x_gradient", target=[1, 2]).attributions)
    for kw in ({"composite": "zero"}, {"composite": None, "rules": {"conv": "zero", "linear": "zero"}},
               {"composite": "epsilon", "epsilon": 1e-12}):
        lrp = xplain.explain(model, x, method="lrp", target=[1, 2], **kw).numpy()
        np.testing.assert_allclose(lrp, ixg, rtol=1e-4, atol=1e-5 * np.abs(ixg).max(), err_msg=str(kw))


# ---- API, options, layer relevance --------------------------------------------------------------------
def test_default_and_documented_calls(fw):
    model = zoo(fw, "resnet18")
    x = _input(fw, 32)
    exp = xplain.explain(model, x, method="lrp", target=[0, 1])
    assert exp.numpy().shape == (2, 3, 32, 32)
    assert exp.rules["conv1"].startswith("flat") and "merged with bn1" in exp.rules["conv1"]
    assert exp.rules["layer1.0.conv1"].startswith("zplus") and exp.rules["fc"].startswith("epsilon")
    assert fw.numpy(exp.relevance_sum).shape == (2,) and fw.numpy(exp.target_output).shape == (2,)
    exp = xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box", low=-6.0, high=6.0)
    assert exp.rules["conv1"].startswith("zbox") and exp.rules["layer2.0.conv2"].startswith("gamma")
    assert np.all(np.isfinite(exp.numpy()))
    exp = xplain.explain(model, x, method="lrp", rules={"conv1": "zbox", "conv": "gamma", "linear": "epsilon"},
                         low=[-6.0, -6.1, -5.8], high=[6.2, 6.4, 6.6], gamma=0.5)
    assert exp.rules["conv1"].startswith("zbox") and exp.rules["layer3.1.conv1"] == "gamma(gamma=0.5) (merged with layer3.1.bn1)"
    exp = xplain.explain(model, x, method="lrp", rules={"layer4.*": ("epsilon", {"epsilon": 0.5})})
    assert exp.rules["layer4.0.conv1"].startswith("epsilon(epsilon=0.5)")
    assert exp.rules["layer3.0.conv1"].startswith("zplus")


def test_tutorial_cnn_unmodified(fw):
    model = zoo(fw, "tutorial_cnn")
    x = _input(fw, 32)
    exp = xplain.explain(model, x, method="lrp", target=5)
    assert exp.numpy().shape == (2, 3, 32, 32) and np.all(np.isfinite(exp.numpy()))
    rel = fw.numpy(exp.relevance_sum)
    assert np.all(np.abs(rel - fw.numpy(exp.target_output)) < 0.5 * np.abs(fw.numpy(exp.target_output)) + 0.1)


def test_layer_relevance_conserved(fw):
    model = zoo(fw, "resnet18", bias_free=True)
    x = _input(fw, 32)
    exp = xplain.explain(model, x, method="lrp", target=[3, 4], composite="epsilon", epsilon=1e-9,
                         layer="layer3")
    lr = fw.numpy(exp.layer_relevance)
    assert lr.shape == (2, 256, 2, 2)
    np.testing.assert_allclose(lr.reshape(2, -1).sum(1), fw.numpy(exp.target_output), rtol=1e-4)
    # a merged conv's relevance is read after its BatchNorm
    exp = xplain.explain(model, x, method="lrp", target=[3, 4], composite="zero", layer="layer4.1.conv2")
    assert fw.numpy(exp.layer_relevance).shape == (2, 512, 1, 1)


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_pass_leaves_nothing_alive(fw, composite):
    """After a call, no per-pass state survives: a reference cycle through the framework's
    autograd nodes (e.g. a backward callback reaching the pass state, which holds the graph)
    is invisible to Python's collector in paddle and kept a ResNet-50's whole graph alive per
    call."""
    import gc

    from xplain.methods.lrp.hooks import PassState

    model = zoo(fw, "resnet18")
    for _ in range(2):
        xplain.explain(model, _input(fw, 64), method="lrp", composite=composite, low=-6.0, high=6.0)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is PassState]
    assert not alive, f"{len(alive)} LRP pass states are still alive after the calls"


def test_batch_chunking_gives_same_relevance(fw):
    model = zoo(fw, "resnet18")
    x = _input(fw, 32, batch=3)
    a = xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box", low=-6, high=6).numpy()
    b = xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box", low=-6, high=6,
                       max_batch=2)
    np.testing.assert_allclose(a, b.numpy(), rtol=1e-5, atol=1e-6 * np.abs(a).max())
    # each chunk explained its own argmax, and reports it without another forward pass
    logits = fw.numpy(model(x))
    np.testing.assert_array_equal(b.targets, logits.argmax(1))
    calls = fw.hook_count(model)
    with pytest.raises(xplain.TargetError, match="out of range"):
        xplain.explain(model, x, method="lrp", target=[0, 1, 1000], max_batch=2)
    assert fw.hook_count(model) == calls


def test_standalone_batchnorm_gets_its_own_rule(fw):
    nn = fw.nn()
    bn = nn.BatchNorm2d(4) if fw.name == "torch" else nn.BatchNorm2D(4)
    model = fw.sequential(fw.conv2d(3, 4, 3, padding=1), fw.relu(), bn, fw.conv2d(4, 2, 3), fw.flatten(),
                          fw.linear(2 * 6 * 6, 3))
    from xplain.testing.zoo import fill_paddle, fill_torch

    (fill_torch if fw.name == "torch" else fill_paddle)(model)
    model = zero_biases(fw, model)
    x = _input(fw, 8)
    exp = xplain.explain(model, x, method="lrp", target=[0, 1], composite="epsilon_plus")
    # the BatchNorm after a ReLU cannot be merged: ε on it as the affine map it is; the conv
    # after it reads a signed input, so z⁺ is replaced by ε there
    assert exp.rules["2"].startswith("epsilon") and "merged" not in exp.rules["3"]
    assert exp.rules["3"].startswith("epsilon") and exp.rules["0"].startswith("epsilon")
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output), rtol=1e-3)


def _stem_with_shortcut(fw):
    """conv (with bias) whose output feeds both a BatchNorm → conv branch and an average-pool →
    conv shortcut, the two added (MaxViT's stem and first MBConv), then a linear head; float64."""
    nn = fw.nn()
    rng = np.random.default_rng(4)
    torch_like = fw.name == "torch"
    base = nn.Module if torch_like else nn.Layer

    class Stem(base):
        def __init__(self):
            super().__init__()
            self.stem = fw.conv2d(3, 4, 3, padding=1, weight=rng.normal(size=(4, 3, 3, 3)), bias=rng.normal(size=4))
            self.norm = nn.BatchNorm2d(4) if torch_like else nn.BatchNorm2D(4)
            self.branch = fw.conv2d(4, 4, 1, weight=rng.normal(size=(4, 4, 1, 1)), bias=rng.normal(size=4))
            self.pool = nn.AvgPool2d(3, 1, 1) if torch_like else nn.AvgPool2D(3, 1, 1, exclusive=False)
            self.shortcut = fw.conv2d(4, 4, 1, weight=rng.normal(size=(4, 4, 1, 1)), bias=rng.normal(size=4))
            self.flatten = fw.flatten()
            self.head = fw.linear(4 * 8 * 8, 3, weight=rng.normal(size=(3, 256)) * 0.1, bias=[0.1, 0.0, -0.1])

        def forward(self, x):
            a = self.stem(x)
            return self.head(self.flatten(self.branch(self.norm(a)) + self.shortcut(self.pool(a))))

    model = Stem()
    stats = {"running_mean": rng.normal(size=4), "running_var": rng.uniform(0.5, 2, size=4),
             "weight": rng.normal(size=4), "bias": rng.normal(size=4)}
    _set_bn(fw, model.norm, stats)
    model.eval()
    return model.double() if torch_like else _paddle_float64(model)


def _set_bn(fw, bn, stats):
    if fw.name == "torch":
        import torch
        with torch.no_grad():
            for k, v in stats.items():
                getattr(bn, k).copy_(torch.as_tensor(v))
        return
    import paddle
    for k, v in stats.items():
        t = getattr(bn, {"running_mean": "_mean", "running_var": "_variance"}.get(k, k))
        t.set_value(paddle.to_tensor(v.astype("float32")))


def _paddle_float64(model):
    model.to(dtype="float64")
    return model


def test_batchnorm_not_merged_into_a_layer_whose_output_has_another_reader(fw):
    """A conv whose output feeds a BatchNorm and a shortcut (MaxViT's stem): merging the
    BatchNorm into the conv would leave the shortcut's relevance to the conv's plain gradient
    and its bias share unbooked. Not merged, every rule conserves and the report balances
    (float64, so only the ledger's bookkeeping can make it fail)."""
    model = _stem_with_shortcut(fw)
    x = fw.tensor(np.random.default_rng(6).standard_normal((2, 3, 8, 8)), dtype="float64")
    exp = xplain.explain(model, x, method="lrp", composite="epsilon", target=[0, 2])
    assert "merged" not in exp.rules["stem"] and exp.rules["norm"].startswith("epsilon")
    assert exp.conservation.balanced.all(), exp.conservation.error
    # the merged rule was off by ~0.4 of the output here; float64 leaves ≤ 1e-9 (paddle)
    np.testing.assert_allclose(exp.conservation.error, 0, atol=1e-7)


def _scaled_mlp(fw, gamma, *, in_place=False, folded=False):
    """linear 5→6, a leaf layer of xplain-unknown class computing ``γ ⊙ x`` (timm's
    ``LayerScale``), ReLU, linear 6→3; float64. ``folded``: γ folded into the first linear
    layer (``diag(γ)·W``, ``γ·b``) and the leaf scaling by ones: the same function."""
    nn = fw.nn()
    rng = np.random.default_rng(21)
    torch_like = fw.name == "torch"
    base = nn.Module if torch_like else nn.Layer

    class Scale(base):
        def __init__(self):
            super().__init__()
            if torch_like:
                import torch
                self.gamma = torch.nn.Parameter(torch.as_tensor(scale, dtype=torch.float32))
            else:
                self.gamma = self.create_parameter([6])
                self.gamma.set_value(np.asarray(scale, np.float32))

        def forward(self, x):
            return x.mul_(self.gamma) if in_place else x * self.gamma

    w, b = rng.normal(size=(6, 5)), rng.normal(size=6) * 0.1
    gamma = np.asarray(gamma, np.float64)
    if folded:
        w, b = w * gamma[:, None], b * gamma
    scale = np.ones(6) if folded else gamma
    model = fw.sequential(fw.linear(5, 6, weight=w, bias=b), Scale(), fw.relu(),
                          fw.linear(6, 3, weight=rng.normal(size=(3, 6)), bias=rng.normal(size=3) * 0.1))
    model.eval()
    return model.double() if torch_like else _paddle_float64(model)


def test_leaf_that_scales_by_its_parameter_is_proven(fw):
    """A leaf of unknown class with one parameter whose output is exactly its input times it is
    a bias-free linear map, proven on the values: its gradient is its LRP-0 rule. Oracle: the
    same network with γ folded into the linear layer before it (``diag(γ)·W``, ``γ·b``) gets
    the same relevance under LRP-0; an in-place scaling (its input is gone) is refused."""
    gamma = np.array([0.5, -1.5, 2.0, 0.1, 1.0, -0.3])
    model, folded = _scaled_mlp(fw, gamma), _scaled_mlp(fw, gamma, folded=True)
    x = fw.tensor(np.random.default_rng(22).standard_normal((4, 5)), dtype="float64")
    # the weights pass through float32 before the float64 cast, folded or not: 1e-5
    np.testing.assert_allclose(fw.numpy(model(x)), fw.numpy(folded(x)), rtol=1e-5)
    got = xplain.explain(model, x, method="lrp", composite="zero", target=[0, 1, 2, 0])
    want = xplain.explain(folded, x, method="lrp", composite="zero", target=[0, 1, 2, 0])
    np.testing.assert_allclose(fw.numpy(got.attributions), fw.numpy(want.attributions), rtol=1e-5, atol=1e-9)
    assert got.conservation.balanced.all()
    if fw.name == "torch":
        with pytest.raises(LayerError, match="has parameters"):
            xplain.explain(_scaled_mlp(fw, gamma, in_place=True), x, method="lrp", target=0)


# ---- the borrowed model ---------------------------------------------------------------------------------
def test_model_unchanged_also_when_a_rule_raises(fw):
    model = zoo(fw, "vgg16_bn")
    before = fw.model_state(model)
    x = _input(fw, 32)
    xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box", low=-6, high=6, layer="features.10")
    with pytest.raises(LayerError, match="pass"):  # pass on a max-pool: raises inside the forward
        xplain.explain(model, x, method="lrp", rules={"maxpool": "pass"})
    fw.assert_same_state(before, fw.model_state(model))


# ---- errors ------------------------------------------------------------------------------------------
def test_errors_name_problem_and_fix(fw):
    model = zoo(fw, "resnet18")
    x = _input(fw, 32, batch=1)
    with pytest.raises(OptionError, match="registered"):
        xplain.explain(model, x, method="lrp", composite="nope")
    with pytest.raises(OptionError, match="unknown LRP rule"):
        xplain.explain(model, x, method="lrp", rules={"conv": "fancy"})
    with pytest.raises(LayerError, match="similar names"):
        xplain.explain(model, x, method="lrp", rules={"layer1.0.conv9": "gamma"})
    with pytest.raises(LayerError, match="matches no layer"):
        xplain.explain(model, x, method="lrp", rules={"blocks.*": "gamma"})
    with pytest.raises(OptionError, match="alpha - beta = 1"):
        xplain.explain(model, x, method="lrp", composite="epsilon_alpha2_beta1", alpha=3.0, beta=1.0,
                       rules={"conv": "alphabeta"})
    with pytest.raises(OptionError, match="low= and high="):
        xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box")
    with pytest.raises(OptionError, match="per channel"):
        xplain.explain(model, x, method="lrp", composite="epsilon_gamma_box", low=[0, 1], high=[1, 2])
    with pytest.raises(LayerError, match="layer1.0.conv1.*first|read the model input"):
        xplain.explain(model, x, method="lrp", rules={"layer1.0.conv1": "flat"})
    with pytest.raises(LayerError, match="needs a conv"):
        xplain.explain(model, x, method="lrp", rules={"relu": "gamma"})
    with pytest.raises(OptionError, match="epsilon"):
        xplain.explain(model, x, method="lrp", epsilon=-1.0, composite="epsilon")
    from xplain.methods.lrp.rules import Group, Rule, Term
    odd = Rule("odd", "terms", (Group((Term("ones", "identity", None),)),))  # explicit=False
    with pytest.raises(OptionError, match="only a rule with explicit=True"):
        xplain.explain(model, x, method="lrp", rules={"layer1.0.conv1": odd})
    typo = Rule("typo", "terms", (Group((Term("hihg", "identity", None),)),), explicit=True)
    with pytest.raises(OptionError, match="unknown input modifier 'hihg'"):
        xplain.explain(model, x, method="lrp", rules={"conv1": typo})


def test_unknown_layer_with_parameters_is_refused(fw):
    nn = fw.nn()
    if fw.name == "torch":
        import torch

        class Scale(nn.Module):
            def __init__(self):
                super().__init__()
                self.s = nn.Parameter(torch.ones(4))

            def forward(self, x):
                return x * self.s + self.s  # not a proven scaling (that one is a bias-free linear map)
        scale = Scale()
    else:
        class Scale(nn.Layer):
            def __init__(self):
                super().__init__()
                self.s = self.create_parameter([4], default_initializer=nn.initializer.Constant(1.0))

            def forward(self, x):
                return x * self.s + self.s
        scale = Scale()
    model = fw.sequential(fw.linear(3, 4), scale, fw.relu(), fw.linear(4, 2))
    x = fw.tensor(RNG.standard_normal((2, 3)))
    with pytest.raises(LayerError, match=r"'1' \(Scale\).*rules=\{'1': 'pass'\}"):
        xplain.explain(model, x, method="lrp")
    exp = xplain.explain(model, x, method="lrp", rules={"1": "pass"})
    assert np.all(np.isfinite(exp.numpy()))
    # activations of the table take 'pass' also without a composite; a softmax is refused
    sig = fw.sequential(fw.linear(3, 4), nn.Sigmoid(), fw.linear(4, 2))
    assert xplain.explain(sig, x, method="lrp", composite=None).rules["1"] == "pass"
    soft = fw.sequential(fw.linear(3, 4), nn.Softmax(), fw.linear(4, 2))
    with pytest.raises(LayerError, match=r"'1' \(Softmax\) computes softmax, which is not element-wise"):
        xplain.explain(soft, x, method="lrp")


def test_user_composite_through_plugin_hook(fw):
    from xplain.methods.lrp import Composite
    from xplain.plugins import register, unregister

    class Pack:
        @staticmethod
        @xplain.hookimpl
        def xplain_register_composites(registry):
            registry.add_composite("test_gamma_only", Composite({"conv": ("gamma", {"gamma": 0.1}),
                                                                 "linear": "epsilon"}))
            registry.add_composite("test_gamma_signed", Composite({"conv": ("gamma", {"gamma": 0.1}),
                                                                   "linear": "epsilon"}, signed=None))

    register(Pack, name="lrp-test-pack")
    try:
        model = zoo(fw, "tutorial_cnn")
        exp = xplain.explain(model, _input(fw, 32, batch=1), method="lrp", composite="test_gamma_only")
        # conv2 reads a ReLU's output; conv1 reads the signed input, so it gets the composite's
        # `signed` rule (ε) unless the composite keeps γ there (signed=None)
        assert exp.rules["conv2"] == "gamma(gamma=0.1)"
        assert exp.rules["conv1"] == "epsilon(epsilon=1e-06)"
        exp = xplain.explain(model, _input(fw, 32, batch=1), method="lrp", composite="test_gamma_signed")
        assert exp.rules["conv1"] == "gamma(gamma=0.1)"
    finally:
        unregister(name="lrp-test-pack")


def _relu_and_linear_use(fw, conv, fc, twice=False):
    """``fc(flatten(relu(y)) + 0.5·flatten(y))`` with ``y = conv(x)``: the conv output feeds a ReLU
    module *and* a functional use, so γ's negative-output group must not be skipped. ``twice``:
    ``fc(flatten(relu(y)) + 0.5·flatten(relu(y)))``, the same ReLU module twice (the optimistic
    plan takes one ReLU call; the second one trips the wire)."""
    nn = fw.nn()
    relu = fw.relu()

    class Net(nn.Module if fw.name == "torch" else nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.fc = conv, relu, fc

        def forward(self, x):
            y = self.conv(x)
            return self.fc(self.relu(y).flatten(1) + 0.5 * (self.relu(y) if twice else y).flatten(1))
    return Net()


@pytest.mark.parametrize("shared", [False, True, "twice"], ids=["relu-only", "relu-and-functional",
                                                               "relu-twice"])
def test_gamma_negative_output_group_skipped_only_when_dead(fw, shared):
    cin, cout, H, classes = 2, 3, 4, 2
    W1 = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32)
    b1 = (RNG.standard_normal(cout) * 0.5).astype(np.float32)
    M, mask, (Ho, Wo) = conv_matrix(W1, cin, H, H, 1, 1)
    W2 = RNG.standard_normal((classes, cout * Ho * Wo)).astype(np.float32)
    conv = fw.conv2d(cin, cout, 3, padding=1, weight=W1, bias=b1)
    fc = fw.linear(cout * Ho * Wo, classes, weight=W2, bias=np.zeros(classes))
    model = (_relu_and_linear_use(fw, conv, fc, twice=shared == "twice") if shared
             else fw.sequential(conv, fw.relu(), fw.flatten(), fc))
    x = np.abs(RNG.standard_normal((1, cin, H, H))).astype(np.float32)
    calls = []
    handle = fw.B.add_forward_hook(conv, lambda *_: calls.append(1))
    try:
        exp = xplain.explain(model, fw.tensor(x), method="lrp", target=1, composite=None,
                             rules={"conv" if shared else "0": "gamma"}, gamma=0.5)
    finally:
        handle.remove()
    # probe + one pass; where the guess fails the pass runs again with the full rule
    assert len(calls) == (3 if shared else 2)
    y = M @ x[0].reshape(-1) + np.repeat(b1, Ho * Wo)
    Ry = y * W2[1] * ((y > 0) * (1.5 if shared == "twice" else 1.0) + (0.5 if shared is True else 0.0))
    ref = reference("gamma", M, np.repeat(b1, Ho * Wo), x[0].reshape(-1), Ry, gamma=0.5)
    assert (np.abs(ref) > 0).any()
    np.testing.assert_allclose(exp.numpy()[0].reshape(-1), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _relu_then_shift(fw, conv1, conv2, fc, shift):
    """``fc(conv2(relu(conv1(x)) − shift))`` (no subtraction for ``shift=0``)."""
    nn = fw.nn()
    relu = fw.relu()

    class Net(nn.Module if fw.name == "torch" else nn.Layer):
        def __init__(self):
            super().__init__()
            self.conv1, self.relu, self.conv2, self.fc = conv1, relu, conv2, fc

        def forward(self, x):
            a = self.relu(self.conv1(x))
            if shift:
                a = a - shift
            return self.fc(self.conv2(a).flatten(1))
    return Net()


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_relu_output_known_non_negative_without_a_pass(fw, monkeypatch, shift):
    """A rule's input that a ReLU layer returned (unchanged: an in-place change would also fail
    the ReLU's own backward) is known to be >= 0 without a min-reduction over it; any other input
    is checked, and here, shifted, has both signs (z⁺ keeps its a⁻·W⁻ part)."""
    cin, cmid, H, classes = 2, 3, 5, 2
    W1 = RNG.standard_normal((cmid, cin, 3, 3)).astype(np.float32)
    W2 = RNG.standard_normal((cmid, cmid, 3, 3)).astype(np.float32)
    Wf = RNG.standard_normal((classes, cmid * H * H)).astype(np.float32)
    x = RNG.standard_normal((1, cin, H, H)).astype(np.float32)
    conv1 = fw.conv2d(cin, cmid, 3, padding=1, weight=W1, bias=np.zeros(cmid))
    conv2 = fw.conv2d(cmid, cmid, 3, padding=1, weight=W2, bias=np.zeros(cmid))
    fc = fw.linear(cmid * H * H, classes, weight=Wf, bias=np.zeros(classes))
    model = _relu_then_shift(fw, conv1, conv2, fc, shift)
    reductions = []
    real_min = fw.B.min
    monkeypatch.setattr(fw.B, "min", lambda t, *a, **k: reductions.append(1) or real_min(t, *a, **k))
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=1, composite=None,
                         rules={"conv2": "zplus", "conv1": "zplus"})
    # per pass (probe excluded): conv1 reads the model input, conv2 a ReLU's output unless shifted
    assert len(reductions) == (2 if shift else 1)
    M1, _, _ = conv_matrix(W1, cin, H, H, 1, 1)
    M2, _, _ = conv_matrix(W2, cmid, H, H, 1, 1)
    h = M1 @ x[0].reshape(-1)
    a = np.maximum(h, 0) - shift
    assert (a < 0).any() == bool(shift)
    # slow reference: z⁺ at conv2, the ReLU's gradient, z⁺ at conv1 (mixed-sign input)
    Ra = reference("zplus", M2, np.zeros(M2.shape[0]), a, (M2 @ a) * Wf[1])
    Rh = h * (h > 0) * np.divide(Ra, a, out=np.zeros_like(Ra), where=a != 0)
    Rx = reference("zplus", M1, np.zeros(M1.shape[0]), x[0].reshape(-1), Rh)
    np.testing.assert_allclose(exp.numpy().reshape(-1), Rx, rtol=1e-4, atol=1e-5 * np.abs(Rx).max())


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"])
def test_reference_kernels_give_the_same_relevance(fw, composite):
    """The engine on the reference LRP kernels alone (plain backend ops, each kernel's defining
    formula) gives the relevance and conservation report of the backend's fused kernels: the
    oracle for every override as LRP uses it (BatchNorm merged, 1x1 routes, two-sided γ, the
    first layer's stacked terms). float32: the fused kernels reorder a few operations."""
    from xplain.methods.lrp.kernels import reference_only

    model = zoo(fw, "resnet18")
    x = _input(fw, 48)
    kw = dict(method="lrp", composite=composite, low=-6.0, high=6.0, target=3)
    fused = xplain.explain(model, x, **kw)
    with reference_only():
        ref = xplain.explain(model, x, **kw)
    a, b = fused.numpy(), ref.numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    np.testing.assert_allclose(fused.extras["conservation"].absorbed, ref.extras["conservation"].absorbed,
                               rtol=1e-4, atol=1e-5 * np.abs(fw.numpy(fused.extras["target_output"])).max())


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_reference_kernels_on_gated_networks(fw, name):
    """As above on networks with gates, in-place Hardswish/SiLU under ``pass`` and a sigmoid's
    offset absorbed: the pass rule's ratio and gradient route through the reference kernels."""
    from xplain.methods.lrp.kernels import reference_only
    from xplain.testing import classifiers

    if name not in classifiers.names(fw.name):
        pytest.skip(f"{name} is not in {fw.name}'s zoo")
    model = classifiers.build(name, fw.name)
    size = classifiers.input_size(name, fw.name)
    x = _input(fw, size)
    fused = xplain.explain(model, x, method="lrp", target=1)
    with reference_only():
        ref = xplain.explain(model, x, method="lrp", target=1)
    a, b = fused.numpy(), ref.numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    assert fused.extras["conservation"].balanced.all() and ref.extras["conservation"].balanced.all()


def test_cpu_chunks_keep_each_layer_output_small(fw, monkeypatch):
    """On CPU a chunk's largest layer output stays ≤ 16 MiB (freed memory is then reused
    between passes, not faulted in again): 5 MiB per sample → chunks of 3, 3 and 2. Oracle for
    the chunking itself: one pass over the whole batch gives the same relevance."""
    from xplain.methods.lrp import attribute

    channels, side = 80, 128  # 80·128²·4 B = 5 MiB per sample at the conv's output
    model = fw.sequential(fw.conv2d(3, channels, 3, padding=1), fw.relu(), fw.conv2d(channels, 4, 1),
                          fw.nn().AdaptiveAvgPool2d(1) if fw.name == "torch" else fw.nn().AdaptiveAvgPool2D(1),
                          fw.flatten())
    x = _input(fw, side, batch=8)
    sizes = []
    one_pass = attribute._one_pass
    monkeypatch.setattr(attribute, "_one_pass",
                        lambda run, plans, xs, *a, **k: (sizes.append(fw.B.shape(xs)[0]),
                                                         one_pass(run, plans, xs, *a, **k))[1])
    chunked = xplain.explain(model, x, method="lrp", composite="epsilon", target=1)
    assert sizes == [3, 3, 2]
    sizes.clear()
    whole = xplain.explain(model, x, method="lrp", composite="epsilon", target=1, max_batch=8)
    assert sizes == [8]
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=1e-5,
                               atol=1e-6 * np.abs(whole.numpy()).max())


def test_chunks_are_even():
    """LRP splits a batch into chunks of (nearly) equal size: 8 samples at most 6 per pass are
    two passes of 4, not 6 and 2."""
    from xplain.methods.lrp.attribute import _even

    assert [_even(8, s) for s in (1, 3, 4, 6, 8, 10)] == [1, 3, 4, 4, 8, 8]
    assert _even(7, 3) == 3 and _even(5, 2) == 2 and _even(1, 4) == 1


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "resnet18"])
def test_shared_gamma_equals_the_rule_term_by_term(fw, name, monkeypatch):
    """The two-sided γ rule from the layer's own output and ``q = γ(a⁺W⁺ + a⁻W⁻ + b⁺)``
    (emit.shared_gamma) gives what its four terms give evaluated one by one (the generic path,
    itself checked against numpy references above). mobilenet_v3_small: signed inputs after
    Hardswish and linear bottlenecks, depthwise convolutions, BatchNorm merged; resnet18:
    post-ReLU inputs and 1x1 routes. float32: the two paths sum in different orders."""
    from xplain.methods.lrp import terms
    from xplain.testing import classifiers

    model = classifiers.build(name, fw.name) if name in classifiers.names(fw.name) else zoo(fw, name)
    size = classifiers.input_size(name, fw.name) if name in classifiers.names(fw.name) else 48
    x = _input(fw, size)
    kw = dict(method="lrp", rules={"conv": "gamma", "linear": "epsilon"}, composite=None, gamma=0.25, target=2)
    seen = []
    shared = terms.shared_gamma_terms
    monkeypatch.setattr(terms, "shared_gamma_terms",
                        lambda B, K, plan, a, nonneg: (seen.append(nonneg), shared(B, K, plan, a, nonneg))[1])
    fast = xplain.explain(model, x, **kw)
    assert (False in seen) == (name == "mobilenet_v3_small") and True in seen
    monkeypatch.setattr(terms, "is_two_sided_gamma", lambda rule: False)
    slow = xplain.explain(model, x, **kw)
    a, b = fast.numpy(), slow.numpy()
    assert np.abs(b).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    assert fast.extras["conservation"].balanced.all() and slow.extras["conservation"].balanced.all()


def test_one_dimensional_adaptive_pool(fw):
    """A 1-D adaptive average pool over a sequence (PaddleClas's Swin head: (N, C, L) → (N, C,
    1)): described (paddle keeps its size under another attribute name than the 2-D pools) and
    conserving, as the linear map it is."""
    nn = fw.nn()
    pool = nn.AdaptiveAvgPool1d(1) if fw.name == "torch" else nn.AdaptiveAvgPool1D(1)
    flat = nn.Flatten(2) if fw.name == "torch" else nn.Flatten(start_axis=2)
    model = fw.sequential(fw.conv2d(3, 4, 3, padding=1), flat, pool, fw.flatten(), fw.linear(4, 2))
    model = zero_biases(fw, model)
    model.eval()
    info = {i.name: i for i in fw.B.layers(model)}["2"]
    assert info.kind == "adaptive_avgpool" and info.attrs["output_size"] == 1
    x = fw.tensor(np.random.default_rng(31).standard_normal((2, 3, 6, 6)))
    exp = xplain.explain(model, x, method="lrp", composite="zero", target=[0, 1])
    # LRP-0 throughout: float32 rounding (and the rule's 1e-9 stabiliser on outputs near 0)
    # separates the sums: 1e-4 of the largest logit
    want = fw.numpy(exp.target_output)
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), want, rtol=0, atol=1e-4 * np.abs(want).max())
