"""LRP through transformer blocks: LayerNorm (σ constant), attention (cp, attnlrp), layer scale,
position embeddings and class tokens, on both backends.

Oracles: a numpy reference written in explicit relevance form (each rule's redistribution
formula, not the gradient trick the implementation uses) on a one-block transformer; the
conservation ledger; refusals where a layer is not what it claims to be.
"""
from __future__ import annotations

import copy
import numpy as np
import pytest

import xplain
from xplain.errors import InputError, LayerError

from transformer_zoo import paddleclas_vit, swin, tiny_maxvit, tiny_vit

RNG = np.random.default_rng(11)
L, E, HEADS, CLASSES = 5, 8, 2, 3
EPS = 1e-6


def _params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape, s=0.5):
        return (rng.standard_normal(shape) * s).astype(np.float32)
    return {"ln_w": 1 + r(E, s=0.2), "ln_b": r(E, s=0.2), "wq": r(E, E), "wk": r(E, E), "wv": r(E, E),
            "bq": r(E, s=0.1), "bk": r(E, s=0.1), "bv": r(E, s=0.1), "wo": r(E, E), "bo": r(E, s=0.1),
            "wh": r(CLASSES, L * E), "bh": r(CLASSES, s=0.1)}


def _block(fw, P, mask=None):
    """LayerNorm(E) → self-attention (HEADS heads, ``mask`` boolean ``(L, L)``: True = not
    allowed) → flatten → linear: the framework's own layers, loaded with ``P``."""
    if fw.name == "torch":
        import torch
        from torch import nn

        class Attend(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)

            def forward(self, x):
                m = None if mask is None else torch.tensor(mask)
                return self.attn(x, x, x, need_weights=False, attn_mask=m)[0]

        ln, att = nn.LayerNorm(E), Attend()
        with torch.no_grad():
            ln.weight.copy_(torch.tensor(P["ln_w"]))
            ln.bias.copy_(torch.tensor(P["ln_b"]))
            a = att.attn
            a.in_proj_weight.copy_(torch.tensor(np.concatenate([P["wq"], P["wk"], P["wv"]])))
            a.in_proj_bias.copy_(torch.tensor(np.concatenate([P["bq"], P["bk"], P["bv"]])))
            a.out_proj.weight.copy_(torch.tensor(P["wo"]))
            a.out_proj.bias.copy_(torch.tensor(P["bo"]))
        model = nn.Sequential(ln, att, nn.Flatten(), fw.linear(L * E, CLASSES, weight=P["wh"], bias=P["bh"]))
        return model.eval()
    import paddle
    from paddle import nn

    class Attend(nn.Layer):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiHeadAttention(E, HEADS)

        def forward(self, x):
            m = None if mask is None else paddle.to_tensor(~mask)  # paddle: True = allowed
            return self.attn(x, attn_mask=m)

    ln, att = nn.LayerNorm(E), Attend()
    ln.weight.set_value(P["ln_w"])
    ln.bias.set_value(P["ln_b"])
    a = att.attn
    for name, w, b in (("q_proj", "wq", "bq"), ("k_proj", "wk", "bk"), ("v_proj", "wv", "bv"),
                       ("out_proj", "wo", "bo")):
        getattr(a, name).weight.set_value(P[w].T.copy())
        getattr(a, name).bias.set_value(P[b])
    model = nn.Sequential(ln, att, nn.Flatten(), fw.linear(L * E, CLASSES, weight=P["wh"], bias=P["bh"]))
    model.eval()
    return model


def _stab(z):
    return z + EPS * np.where(z >= 0, 1.0, -1.0)


def np_block_lrp(x, P, targets, rule, mask=None):
    """Relevance at ``x`` (N, L, E) of the one-block model, by each rule's redistribution
    formula in float64: ε on the head, LRP-0 on the attention's projections and through the centring of a
    LayerNorm with σ constant; attention ``cp`` (A constant: R_v = v ⊙ Aᵀ(R_ctx / ctx)) or
    ``attnlrp`` (each product's term relevance split half-half between its factors; the
    softmax's input gets ``P ⊙ (R_A − A·Σ R_A)``)."""
    x = x.astype(np.float64)
    P = {k: v.astype(np.float64) for k, v in P.items()}
    n, d = x.shape[0], E // HEADS
    mu = x.mean(-1, keepdims=True)
    sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    a = (x - mu) / sd * P["ln_w"] + P["ln_b"]
    q, k, v = (a @ P[w].T + P[b] for w, b in (("wq", "bq"), ("wk", "bk"), ("wv", "bv")))

    def split(t):
        return t.reshape(n, L, HEADS, d).transpose(0, 2, 1, 3)

    def merge(t):
        return t.transpose(0, 2, 1, 3).reshape(n, L, E)
    qh, kh, vh = split(q), split(k), split(v)
    qk = qh @ kh.transpose(0, 1, 3, 2)
    s = qk * d ** -0.5 + (0.0 if mask is None else np.where(mask, -np.inf, 0.0))
    A = np.exp(s - s.max(-1, keepdims=True))
    A /= A.sum(-1, keepdims=True)
    ctx = A @ vh
    o = merge(ctx) @ P["wo"].T + P["bo"]
    f = o.reshape(n, L * E)
    y = f @ P["wh"].T + P["bh"]
    Ry = np.zeros_like(y)
    Ry[np.arange(n), targets] = y[np.arange(n), targets]
    Rf = f * ((Ry / _stab(y)) @ P["wh"])
    Ro = Rf.reshape(n, L, E)
    Rctx = split(merge(ctx) * ((Ro / o) @ P["wo"]))
    share = Rctx / ctx  # LRP-0 over the terms A_ij v_jd of ctx_id
    half = 0.5 if rule == "attnlrp" else 1.0
    Rv = half * vh * np.einsum("nhij,nhid->nhjd", A, share)
    Rq = np.zeros_like(qh)
    Rk = np.zeros_like(kh)
    if rule == "attnlrp":
        RA = 0.5 * A * np.einsum("nhid,nhjd->nhij", share, vh)
        Rp = qk * d ** -0.5 * (RA - A * RA.sum(-1, keepdims=True))  # the mask's share is absorbed
        frac = Rp / qk  # the scaling is linear: the product QKᵀ carries Rp
        Rq = 0.5 * qh * np.einsum("nhij,nhjd->nhid", frac, kh)
        Rk = 0.5 * kh * np.einsum("nhij,nhid->nhjd", frac, qh)
    Ra = a * sum((merge(R) / z) @ P[w] for R, z, w in ((Rq, q, "wq"), (Rk, k, "wk"), (Rv, v, "wv")))
    u = P["ln_w"] * (Ra / a) / sd  # LRP-0 through a = M x + b, M = diag(w / σ)·centring
    return x * (u - u.mean(-1, keepdims=True))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("rule", ["cp", "attnlrp"])
def test_one_block_equals_numpy_reference(fw, rule, masked):
    P = _params()
    mask = np.triu(np.ones((L, L), bool), 1) if masked else None
    model = _block(fw, P, mask)
    x = RNG.standard_normal((3, L, E)).astype(np.float32)
    targets = [0, 2, 1]
    exp = xplain.explain(model, fw.tensor(x), method="lrp", target=targets, epsilon=EPS,
                         composite="cp_lrp" if rule == "cp" else "attn_lrp")
    want = np_block_lrp(x, P, targets, rule, mask)
    got = fw.numpy(exp.attributions)
    # float32 through one block (~30 ops per value) against float64: 1e-4 of the map's scale;
    # the two rules differ by the whole map (checked below)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert exp.conservation.balanced.all()
    other = np_block_lrp(x, P, targets, "attnlrp" if rule == "cp" else "cp", mask)
    assert np.abs(other - want).max() > 0.05 * np.abs(want).max()


def test_cp_conserves_with_biases_zero(fw):
    P = {k: (np.zeros_like(v) if k.startswith("b") or k == "ln_b" else v) for k, v in _params(1).items()}
    model = _block(fw, P)
    x = RNG.standard_normal((2, L, E)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x), method="lrp", composite="cp_lrp", epsilon=EPS)
    rsum, logit = fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output)
    # only ε = 1e-6 absorbs: float32 sums over 40 terms
    np.testing.assert_allclose(rsum, logit, rtol=1e-4)


def test_default_composite_for_attention_is_attn_lrp(fw):
    model = _block(fw, _params())
    x = fw.tensor(RNG.standard_normal((2, L, E)))
    rules = xplain.explain(model, x, method="lrp").extras["rules"]
    assert [r for n, r in rules.items() if "attn" in n] == ["attnlrp(softmax=taylor)"]
    assert rules["0"] == "constant_std"


def test_layernorm_that_is_not_one_is_refused(fw):
    """A LayerNorm subclass whose forward doubles the output: the re-evaluation does not
    reproduce it, so the constant-σ rule would explain another function."""
    nn = fw.nn()
    base = nn.LayerNorm

    class Doubled(base):
        def forward(self, x):
            return super().forward(x) * 2

    model = fw.sequential(Doubled(E), fw.flatten(), fw.linear(L * E, CLASSES))
    x = fw.tensor(RNG.standard_normal((2, L, E)))
    with pytest.raises(LayerError, match=r"'0' \(Doubled\) does not compute a standard LayerNorm"):
        xplain.explain(model, x, method="lrp", composite="cp_lrp")


def test_wrong_rule_on_layernorm_is_refused(fw):
    model = fw.sequential(fw.nn().LayerNorm(E), fw.flatten(), fw.linear(L * E, CLASSES))
    x = fw.tensor(RNG.standard_normal((2, L, E)))
    with pytest.raises(LayerError, match="layernorm layer.*constant_std"):
        xplain.explain(model, x, method="lrp", rules={"0": "epsilon"})


def test_layer_scale_is_proven_and_exact(fw):
    """A container multiplying a sub-layer's output by a parameter of its own (ConvNeXt's layer
    scale) plus its input: proven by the observation, and linear, so LRP-0 on this ReLU-free
    bias-free net is input × gradient (the framework's autodiff)."""
    nn = fw.nn()
    torch_like = fw.name == "torch"
    base = nn.Module if torch_like else nn.Layer
    scale = RNG.standard_normal(4).astype(np.float32)

    class Scaled(base):
        def __init__(self):
            super().__init__()
            self.fc = fw.linear(4, 4, weight=RNG.standard_normal((4, 4)), bias=np.zeros(4))
            if torch_like:
                import torch

                self.gamma = nn.Parameter(torch.tensor(scale))
            else:
                self.gamma = self.create_parameter([4])
                self.gamma.set_value(scale)

        def forward(self, x):
            return x + self.gamma * self.fc(x)

    model = fw.sequential(Scaled(), fw.linear(4, 2, weight=RNG.standard_normal((2, 4)), bias=np.zeros(2)))
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    exp = xplain.explain(model, fw.tensor(x), method="lrp", composite="zero", target=[0, 1, 0])
    grad = xplain.explain(model, fw.tensor(x), method="input_x_gradient", target=[0, 1, 0])
    np.testing.assert_allclose(fw.numpy(exp.attributions), fw.numpy(grad.attributions), rtol=1e-5, atol=1e-6)


def test_vit_conserves_and_balances(fw):
    """With biases, class token and position embedding zero, cp_lrp conserves; with them kept,
    every composite's report balances (the class token and the position embedding are booked
    as constants, the softmax's share under attn_lrp measured at the attention layers)."""
    x = fw.tensor(np.random.default_rng(4).standard_normal((2, 3, 32, 32)))
    exp = xplain.explain(tiny_vit(fw, zero_constants=True), x, method="lrp", composite="cp_lrp")
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output), rtol=1e-4)
    model = tiny_vit(fw)
    for composite in ("cp_lrp", "attn_lrp", "epsilon_plus_flat"):
        exp = xplain.explain(model, x, method="lrp", composite=composite)
        c = exp.conservation
        assert c.balanced.all(), (composite, c.error)
        assert np.abs(c.layers["class_token"]).max() > 0
        assert np.abs(c.layers["encoder.pos_embedding"]).max() > 0


@pytest.mark.cross
def test_vit_lrp_equal_across_frameworks(both):
    t, p = both
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for composite in ("cp_lrp", "attn_lrp"):
        a = t.numpy(xplain.explain(tiny_vit(t), t.tensor(x), method="lrp", composite=composite,
                                   target=[1, 3]).attributions)
        b = p.numpy(xplain.explain(tiny_vit(p), p.tensor(x), method="lrp", composite=composite,
                                   target=[1, 3]).attributions)
        # the same float32 function in two frameworks (different kernels): 1e-5 of the scale
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


_LXT_SCRIPT = r'''
import sys
from functools import partial

import numpy as np
import torch
from torchvision.models import vision_transformer as tv
from lxt.efficient import monkey_patch
from lxt.efficient.patches import layer_norm_forward, non_linear_forward, patch_method
from lxt.efficient.rules import divide_gradient

sys.path.insert(0, sys.argv[1])
from transformer_zoo import paddleclas_vit, swin, tiny_maxvit, tiny_vit


def attnlrp_forward(self, q, k, v, *args, **kwargs):
    return self.original_forward(divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2),
                                 *args, **kwargs)


if sys.argv[3] == "attnlrp":
    monkey_patch(tv, {tv.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
                      tv.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                      tv.nn.MultiheadAttention: partial(patch_method, attnlrp_forward, keep_original=True)})
else:
    monkey_patch(tv)  # LXT's own map for torchvision's ViT: CP-LRP


class Torch:
    name = "torch"


model = tiny_vit(Torch, image_size=48)
for p in model.parameters():
    p.requires_grad_(False)
x = torch.tensor(np.load(sys.argv[2])).requires_grad_(True)
out = model(x)
out[torch.arange(2), torch.tensor([1, 3])].sum().backward()
np.save(sys.argv[2] + ".lxt.npy", (x * x.grad).detach().numpy())
'''


@pytest.mark.peer
@pytest.mark.parametrize("rule", ["attnlrp", "cp"])
def test_equal_to_lxt_on_torchvision_vit(rule, tmp_path):
    """LXT 2.1 (AttnLRP / CP-LRP through its patches of torchvision's ViT; conv and linear
    layers by the plain gradient) against xplain with the same rules: LRP-0 on conv and linear
    layers and GELU's identity rule with LXT's stabiliser (1e-10). LXT patches torch's own
    classes for the whole process, so it runs in a subprocess."""
    pytest.importorskip("lxt")
    import subprocess
    import sys
    from pathlib import Path

    from xplain.methods.lrp import Composite

    class Torch:
        name = "torch"

        @staticmethod
        def tensor(a):
            import torch
            return torch.tensor(np.asarray(a, dtype=np.float32))
    x = np.random.default_rng(8).standard_normal((2, 3, 48, 48)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    script = tmp_path / "lxt_run.py"
    script.write_text(_LXT_SCRIPT)
    subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(path), rule], check=True)
    want = np.load(str(path) + ".lxt.npy")
    comp = Composite({"conv": "zero", "linear": "zero", "activation": "pass", "layernorm": "constant_std",
                      "attention": rule})
    got = xplain.explain(tiny_vit(Torch, image_size=48), Torch.tensor(x), method="lrp", composite=comp,
                         stabilizer=1e-10, target=[1, 3]).numpy()
    # float32, the same rules through two implementations (LXT: custom autograd functions;
    # xplain: output replacements): 1e-4 of the map's scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_conserves_and_balances(fw, name):
    """Swin's shifted-window attention is re-evaluated (window partition, cyclic shift and its
    mask, relative position bias, V2's cosine attention) and checked against the model's own
    output (torchvision's, or the paddle test zoo's port of it); at 96 px the first stage pads
    its 24x24 map to whole windows and the last has a window larger than its 3x3 map (no
    shift)."""
    x = fw.tensor(np.random.default_rng(9).standard_normal((2, 3, 96, 96)).astype(np.float32))
    exp = xplain.explain(swin(fw, name, zero_constants=True), x, method="lrp", composite="cp_lrp")
    # only ε = 1e-6 on the MLPs absorbs: float32 sums
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output), rtol=1e-4)
    exp = xplain.explain(swin(fw, name), x, method="lrp")
    assert exp.conservation.balanced.all(), exp.conservation.error
    assert any("attnlrp" in r for r in exp.extras["rules"].values())


@pytest.mark.parametrize("composite", ["cp_lrp", "attn_lrp"])
def test_swin_once_checked_runs_its_own_attention_on_one_token(fw, composite):
    """The first explanation at an input size checks each window attention's re-evaluation
    against its own output and keeps that output's value; later ones hand the layer's own
    forward a (1, 1, 1, C) corner (its output is replaced anyway) and return the re-evaluation:
    the same relevance to float rounding, still balanced."""
    model = swin(fw, "swin_t", tiny=True)
    x = fw.tensor(np.random.default_rng(16).standard_normal((2, 3, 40, 40)).astype(np.float32))
    first = xplain.explain(model, x, method="lrp", composite=composite, target=[1, 2])
    seen = []
    attn = dict(model.named_modules() if fw.name == "torch" else model.named_sublayers())["features.1.1.attn"]
    # a post-hook sees the input the layer's forward was given (after xplain's pre-hooks)
    register = attn.register_forward_hook if fw.name == "torch" else attn.register_forward_post_hook
    handle = register(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    second = xplain.explain(model, x, method="lrp", composite=composite, target=[1, 2])
    handle.remove()
    assert (1, 1, 1, 16) in seen
    a, b = fw.numpy(first.attributions), fw.numpy(second.attributions)
    # the re-evaluated attention output differs from the layer's own by float32 rounding
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())
    assert second.conservation.balanced.all()
    np.testing.assert_allclose(fw.numpy(second.target_output), fw.numpy(first.target_output), rtol=1e-5)


def _detached_softmax_and_sigma(fw, model, monkeypatch):
    """The model's own softmax outputs and LayerNorm normalisers made constants of the gradient
    (a functional softmax patched, LayerNorm outputs replaced by hooks); returns the hooks."""
    if fw.name == "torch":
        import torch
        import torchvision.models.swin_transformer as swin_module

        original = swin_module.F.softmax
        monkeypatch.setattr(swin_module.F, "softmax", lambda t, dim: original(t, dim=dim).detach())

        def ln_detached(m, inputs, out):
            a = inputs[0]
            c = a - a.mean(-1, keepdim=True)
            sd = (c.detach().pow(2).mean(-1, keepdim=True) + m.eps).sqrt()
            return c / sd * m.weight + m.bias
        return [m.register_forward_hook(ln_detached) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    import paddle

    original = paddle.nn.functional.softmax
    monkeypatch.setattr(paddle.nn.functional, "softmax", lambda t, axis=-1: original(t, axis=axis).detach())

    def ln_detached_paddle(m, inputs, out):
        a = inputs[0]
        c = a - a.mean(-1, keepdim=True)
        sd = (c.detach().pow(2).mean(-1, keepdim=True) + m._epsilon).sqrt()
        return c / sd * m.weight + m.bias
    return [m.register_forward_post_hook(ln_detached_paddle) for m in model.sublayers()
            if isinstance(m, paddle.nn.LayerNorm)]


def test_swin_cp_equals_autodiff_with_weights_and_sigma_detached(fw, monkeypatch):
    """LRP-0 everywhere, GELU by its gradient, LayerNorm σ and the attention weights constant:
    the relevance is input × the gradient of the model's own Swin (torchvision's, or the paddle
    test zoo's) with its softmax outputs and LayerNorm normalisers detached."""
    from xplain.methods.lrp import Composite

    model = swin(fw, "swin_t")
    x = np.random.default_rng(10).standard_normal((2, 3, 96, 96)).astype(np.float32)
    comp = Composite({"conv": "zero", "linear": "zero", "activation": "zero", "layernorm": "constant_std",
                      "attention": "cp"})
    got = fw.numpy(xplain.explain(model, fw.tensor(x), method="lrp", composite=comp, target=[2, 5]).attributions)
    hooks = _detached_softmax_and_sigma(fw, model, monkeypatch)
    g = _input_gradient(fw, model, x, [2, 5])
    for h in hooks:
        h.remove()
    want = x * g
    # float32 through 12 blocks, two implementations of the same gradient: 1e-4 of the scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def _input_gradient(fw, model, x, targets):
    """d(Σ_i out[i, targets[i]]) / dx by the framework's own autodiff."""
    if fw.name == "torch":
        import torch

        xg = torch.tensor(x, requires_grad=True)
        out = model(xg)
        (g,) = torch.autograd.grad(out[list(range(len(targets))), targets].sum(), xg)
        return g.numpy()
    import paddle

    xg = paddle.to_tensor(x, stop_gradient=False)
    out = model(xg)
    picked = paddle.stack([out[i, t] for i, t in enumerate(targets)]).sum()
    (g,) = paddle.grad(picked, xg)
    return g.numpy()


def test_swin_gradient_mode_restored_when_the_forward_raises(fw):
    """Swin's own attention forward runs without a graph (its output is replaced by the
    re-evaluation); a forward that raises inside it leaves the framework's gradient mode on."""
    model = swin(fw, "swin_t", tiny=True)
    attn = dict(model.named_modules() if fw.name == "torch" else model.named_sublayers())["features.1.0.attn"]

    def grad_enabled():
        if fw.name == "torch":
            import torch
            return torch.is_grad_enabled()
        import paddle
        return paddle.is_grad_enabled()

    own = attn.get_relative_position_bias

    def boom():
        if not grad_enabled():  # the layer's own forward under LRP (not the input check's)
            raise RuntimeError("boom")
        return own()
    # called inside the layer's forward, after the hook that turns gradients off
    object.__setattr__(attn, "get_relative_position_bias", boom)
    x = fw.tensor(np.random.default_rng(3).standard_normal((1, 3, 40, 40)).astype(np.float32))
    with pytest.raises(InputError, match="boom"):  # the model's forward failed, named
        xplain.explain(model, x, method="lrp")
    object.__delattr__(attn, "get_relative_position_bias")
    assert grad_enabled()
    assert fw.hook_count(model) == 0
    exp = xplain.explain(model, x, method="lrp")
    assert exp.conservation.balanced.all()


@pytest.mark.cross
@pytest.mark.parametrize("name", ["swin_t", "swin_v2_t"])
def test_swin_equal_across_frameworks(both, name):
    """torchvision's Swin (a small one: padded and shifted windows, an odd patch merging; every
    parameter drawn so it matters) ported into the paddle test zoo's: LRP with both attention
    rules, Grad-CAM and saliency agree."""
    t, p = both
    x = np.random.default_rng(5).standard_normal((2, 3, 40, 40)).astype(np.float32)
    _assert_methods_agree(both, swin(t, name, tiny=True), swin(p, name, tiny=True), x)


def _assert_methods_agree(both, tm, pm, x):
    """LRP with both attention rules, Grad-CAM and saliency equal on the torch model ``tm`` and
    its paddle port ``pm``."""
    t, p = both
    for method, opts in (("lrp", {"composite": "cp_lrp"}), ("lrp", {"composite": "attn_lrp"}),
                         ("gradcam", {}), ("saliency", {})):
        a = t.numpy(xplain.explain(tm, t.tensor(x), method, target=[1, 2], **opts).attributions)
        b = p.numpy(xplain.explain(pm, p.tensor(x), method, target=[1, 2], **opts).attributions)
        # the same float32 function in two frameworks through a few blocks (measured ≤ 1.2e-5
        # of the scale; LRP's ratios amplify rounding where outputs are near 0): 1e-4
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max(), err_msg=f"{method} {opts}")


def test_maxvit_packed_attention_conserves(fw):
    """MaxViT's attention computes its query, key and value with one projection module: the rule
    sits on that module's output (query and key parts detached under cp), the block and grid
    partitions are reshapes; with biases zero cp conserves (torchvision's MaxViT-T, or the
    paddle test zoo's)."""
    from xplain.testing import classifiers

    model = classifiers.build("maxvit_t", fw.name, zero_biases=True, batches=1, batch=2)
    x = fw.tensor(np.random.default_rng(12).standard_normal((1, 3, 224, 224)).astype(np.float32))
    exp = xplain.explain(model, x, method="lrp", composite="cp_lrp", target=3)
    # ε = 1e-6 on the MLPs and the classifier absorbs: float32 sums
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output), rtol=2e-3)
    with pytest.raises(LayerError, match="MaxViT.s window and grid attention"):
        xplain.explain(model, x, method="attention_rollout")


def test_maxvit_balances_with_biases(fw):
    """A small MaxViT with every bias, BatchNorm statistic and position table drawn: the report
    balances under both attention rules (its stem conv feeds a BatchNorm and a shortcut, so the
    BatchNorm is not merged into it)."""
    model = tiny_maxvit(fw)
    x = fw.tensor(np.random.default_rng(13).standard_normal((2, 3, 32, 32)).astype(np.float32))
    for composite in ("cp_lrp", "attn_lrp"):
        exp = xplain.explain(model, x, method="lrp", composite=composite, target=[1, 2])
        assert exp.conservation.balanced.all(), (composite, exp.conservation.error)
        assert "merged" not in exp.rules["stem.1.0"]


@pytest.mark.cross
def test_maxvit_equal_across_frameworks(both):
    """torchvision's MaxViT (small, every parameter drawn) ported into the paddle test zoo's:
    LRP with both attention rules, Grad-CAM and saliency agree."""
    t, p = both
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    _assert_methods_agree(both, tiny_maxvit(t), tiny_maxvit(p), x)


def _timm(name):
    timm = pytest.importorskip("timm")
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    with torch.no_grad():  # timm starts these at zero or tiny: drawn, so their booking shows
        for pname, p in model.named_parameters():
            if pname in ("cls_token", "dist_token", "pos_embed"):
                p.normal_(0.0, 0.5)
    return model


@pytest.mark.peer
@pytest.mark.parametrize("name,constants", [("vit_tiny_patch16_224", "cls_token+pos_embed"),
                                            ("deit_tiny_distilled_patch16_224", "cls_token+dist_token+pos_embed")])
def test_timm_vit_and_deit(name, constants):
    """timm's ViT and DeiT (a test dependency of the peers env): its Attention takes the rule on
    its packed qkv projection; the class (and distillation) token concatenated in front of the
    patch embedding and the position embedding added to all tokens are proven by the
    observation and booked as one constant; with every bias and those constants zero, cp
    conserves; Grad-CAM's default layer reads the tokens after the prefix (1 or 2)."""
    import torch

    model = _timm(name)
    x = torch.as_tensor(np.random.default_rng(13).standard_normal((2, 3, 224, 224)).astype(np.float32))
    exp = xplain.explain(model, x, method="lrp", target=[1, 2])
    assert exp.conservation.balanced.all(), exp.conservation.error
    assert np.abs(exp.conservation.layers[constants]).max() > 0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or pname in ("cls_token", "dist_token", "pos_embed"):
                p.zero_()
    exp = xplain.explain(model, x, method="lrp", composite="cp_lrp", target=[1, 2])
    # only ε = 1e-6 on the MLPs and the head absorbs: float32 sums
    np.testing.assert_allclose(exp.relevance_sum.numpy(), exp.target_output.numpy(), rtol=1e-4)
    cam = xplain.explain(model, x, method="gradcam", target=[1, 2])
    assert cam.layers == ["blocks.11.norm1"]
    prefix = 2 if "distilled" in name else 1
    listed = {s.name: s.layout for s in xplain.layers(model, (1, 3, 224, 224))}
    assert listed["blocks.11.norm1"] == f"tokens:{prefix}:14x14"


@pytest.mark.peer
def test_timm_deit3_layer_scale_and_late_class_token():
    """timm's DeiT III: the position embedding is added to the patch tokens before the class
    token is put in front (``[cls | u + pos]``, proven as one embedding), and each block scales
    its attention and MLP outputs by a learned ``LayerScale`` (a leaf proven to compute
    ``γ ⊙ x``, so its gradient is its LRP-0 rule). Oracle: the same model with every γ folded
    into the linear layer before it (``diag(γ)·W``, ``γ·b``; γ then 1) is the same function
    and gets the same relevance; the report balances; with biases zero cp conserves."""
    timm = pytest.importorskip("timm")
    import torch

    torch.manual_seed(0)
    model = timm.create_model("deit3_small_patch16_224", pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("gamma"):
                p.copy_(torch.randn_like(p))
            elif pname in ("cls_token", "pos_embed"):
                p.normal_(0.0, 0.5)
    x = torch.as_tensor(np.random.default_rng(15).standard_normal((2, 3, 224, 224)).astype(np.float32))
    exp = xplain.explain(model, x, method="lrp", target=[1, 2])
    assert exp.conservation.balanced.all(), exp.conservation.error
    assert np.abs(exp.conservation.layers["cls_token+pos_embed"]).max() > 0
    folded = copy.deepcopy(model)
    with torch.no_grad():
        for block in folded.blocks:
            for scale, linear in ((block.ls1, block.attn.proj), (block.ls2, block.mlp.fc2)):
                linear.weight.mul_(scale.gamma[:, None])
                linear.bias.mul_(scale.gamma)
                scale.gamma.fill_(1.0)
    np.testing.assert_allclose(folded(x).detach().numpy(), model(x).detach().numpy(), rtol=0, atol=1e-4)
    # LRP-0 on the linear layers (ε's share would move with γ where it folds in), float64
    from xplain.methods.lrp import Composite

    comp = Composite({"conv": "zero", "linear": "zero", "activation": "pass",
                      "layernorm": "constant_std", "attention": "attnlrp"})
    got = xplain.explain(copy.deepcopy(model).double(), x.double(), method="lrp", target=[1, 2],
                         composite=comp).numpy()
    want = xplain.explain(folded.double(), x.double(), method="lrp", target=[1, 2], composite=comp).numpy()
    # the scaling applied before or after the sums through 12 blocks (measured 7e-6 of the
    # scale in float64, 2e-4 in float32): 1e-4
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("bias") or pname in ("cls_token", "pos_embed"):
                p.zero_()
    exp = xplain.explain(model, x, method="lrp", composite="cp_lrp", target=[1, 2])
    np.testing.assert_allclose(exp.relevance_sum.numpy(), exp.target_output.numpy(), rtol=1e-4)


@pytest.mark.cross
def test_convnext_equal_across_frameworks(both):
    """torchvision's ConvNeXt-T ported into xplain's paddle ConvNeXt (LayerNorm2d over channels,
    permutes, layer scale), LayerNorm weights and layer scales drawn so they matter: LRP,
    Grad-CAM and saliency agree."""
    import torch
    import torchvision
    from xplain_paddle.port import torch_to_paddle
    from xplain_paddle.transformers import ConvNeXt

    t, p = both
    torch.manual_seed(0)
    tm = torchvision.models.convnext_tiny(num_classes=10).eval()
    with torch.no_grad():
        for name, prm in tm.named_parameters():
            if "layer_scale" in name:
                prm.copy_(torch.rand_like(prm) + 0.5)
            elif prm.ndim == 1:
                prm.copy_(torch.randn_like(prm) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    pm = torch_to_paddle(tm, ConvNeXt(num_classes=10))
    x = np.random.default_rng(14).standard_normal((2, 3, 64, 64)).astype(np.float32)
    for method, opts in (("lrp", {}), ("lrp", {"composite": "epsilon"}), ("gradcam", {}), ("saliency", {})):
        a = t.numpy(xplain.explain(tm, t.tensor(x), method, target=[1, 2], **opts).attributions)
        b = p.numpy(xplain.explain(pm, p.tensor(x), method, target=[1, 2], **opts).attributions)
        # the same float32 function in two frameworks through 18 blocks; LRP's ε ratios amplify
        # rounding where outputs are near 0: 5e-4 of the scale (measured 8e-5)
        np.testing.assert_allclose(b, a, rtol=0, atol=5e-4 * np.abs(a).max(), err_msg=f"{method} {opts}")


def test_paddleclas_style_vit_is_recognised(fw):
    """PaddleClas's ViT (``ppcls.arch.backbone.model_zoo.vision_transformer``: its own ``Identity``
    for drop paths, an ``Attention`` with one packed ``qkv`` projection, class token and position
    embedding in the root's forward) is recognised by the paddle backend by package and class
    name (:func:`transformer_zoo.paddleclas_vit`, a replica of its source): LRP conserves with
    biases zero and balances with them, Grad-CAM takes the last block's first LayerNorm."""
    if fw.name != "paddle":
        pytest.skip("PaddleClas is a paddle library")
    model = paddleclas_vit()
    rng = np.random.default_rng(1)
    x = fw.tensor(rng.standard_normal((2, 3, 48, 48)).astype(np.float32))
    exp = xplain.explain(model, x, method="lrp", target=[1, 3])
    assert exp.conservation.balanced.all(), exp.conservation.error
    assert exp.rules["blocks.1.attn"].startswith("attnlrp")
    cam = xplain.explain(model, x, method="gradcam", target=[1, 3])
    assert cam.layers == ["blocks.1.norm1"]
    for name, p in model.named_parameters():
        if name.endswith("bias") or name in ("pos_embed", "cls_token"):
            p.set_value(np.zeros(p.shape, np.float32))
    exp = xplain.explain(model, x, method="lrp", composite="cp_lrp", target=[1, 3])
    # ε = 1e-6 on the MLPs absorbs: float32 sums
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output), rtol=1e-4)


def test_sequence_first_layers_are_refused(fw):
    """torch's ``nn.MultiheadAttention(batch_first=False)`` and the layers around it compute on
    (L, N, E) tensors whose rows are tokens, not samples: LRP's per-sample report cannot book
    them, so LRP refuses, naming the first such layer and the fix; gradient methods run."""
    if fw.name != "torch":
        pytest.skip("paddle's MultiHeadAttention is always batch-first")
    import torch
    from torch import nn

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 8, 4, stride=4)
            self.norm = nn.LayerNorm(8)
            self.attn = nn.MultiheadAttention(8, 2)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.patch(x).flatten(2).permute(2, 0, 1)  # (L, N, E)
            t = t + self.attn(*(self.norm(t),) * 3, need_weights=False)[0]
            return self.head(t.mean(0))

    torch.manual_seed(0)
    model = SeqFirst().eval()
    x = torch.as_tensor(np.random.default_rng(17).standard_normal((3, 3, 12, 12)).astype(np.float32))
    with pytest.raises(LayerError, match="'norm' computes on a sequence-first.*batch_first=True"):
        xplain.explain(model, x, method="lrp", target=[0, 1, 2])
    assert np.isfinite(xplain.explain(model, x, method="saliency", target=[0, 1, 2]).numpy()).all()


def test_windows_folded_into_the_batch_book_per_sample(fw):
    """PaddleClas's Swin cuts each sample into windows before its ``WindowAttention`` (input
    ``(N·windows, T, C)``, batch-major as every window partition): the rule sits on its packed
    ``qkv`` output and the report books the windows of each sample to it (a replica of its
    layers, in its package). Balanced with biases; with biases zero cp conserves per sample."""
    if fw.name != "paddle":
        pytest.skip("PaddleClas is a paddle library")
    import paddle
    from paddle import nn

    class WindowAttention(nn.Layer):
        def __init__(self, dim, heads, tokens):
            super().__init__()
            self.num_heads, self.scale = heads, (dim // heads) ** -0.5
            self.relative_position_bias_table = self.create_parameter([heads, tokens, tokens])
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.softmax = nn.Softmax(axis=-1)

        def forward(self, x, mask=None):
            b, n, c = x.shape
            qkv = self.qkv(x).reshape([b, n, 3, self.num_heads, c // self.num_heads]).transpose((2, 0, 3, 1, 4))
            attn = paddle.mm(qkv[0] * self.scale, qkv[1].transpose([0, 1, 3, 2]))
            attn = self.softmax(attn + self.relative_position_bias_table.unsqueeze(0))
            return self.proj(paddle.mm(attn, qkv[2]).transpose([0, 2, 1, 3]).reshape([b, n, c]))

    class SwinLike(nn.Layer):
        def __init__(self, dim=8, window=2):
            super().__init__()
            self.window = window
            self.patch = nn.Conv2D(3, dim, 4, stride=4)
            self.norm1 = nn.LayerNorm(dim)
            self.attn = WindowAttention(dim, 2, window * window)
            self.head = nn.Linear(dim, 3)

        def forward(self, x):
            t = self.patch(x).transpose([0, 2, 3, 1])  # (N, H, W, C)
            n, h, w, c = t.shape
            s = self.window
            windows = t.reshape([n, h // s, s, w // s, s, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([-1, s * s, c])
            y = self.attn(self.norm1(windows))
            y = y.reshape([n, h // s, w // s, s, s, c]).transpose([0, 1, 3, 2, 4, 5]).reshape([n, h, w, c])
            return self.head((t + y).mean(axis=[1, 2]))

    for cls in (WindowAttention, SwinLike):
        cls.__module__ = "ppcls.arch.backbone.legendary_models.swin_transformer"
    model = SwinLike()
    rng = np.random.default_rng(18)
    for p in model.parameters():
        p.set_value((rng.standard_normal(p.shape) * (0.2 if len(p.shape) == 1 else 0.5)).astype("float32"))
    model.eval()
    x = fw.tensor(rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    exp = xplain.explain(model, x, method="lrp", target=[0, 1, 2])
    assert exp.conservation.balanced.all(), exp.conservation.error
    assert exp.conservation.layers["attn"].shape == (3,)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.set_value(np.zeros(p.shape, np.float32))
    exp = xplain.explain(model, x, method="lrp", composite="cp_lrp", target=[0, 1, 2])
    np.testing.assert_allclose(fw.numpy(exp.relevance_sum), fw.numpy(exp.target_output), rtol=1e-4)
