"""Attention rollout (Abnar & Zuidema 2020) and its gradient-weighted variant (Chefer et al.
2021) on a small ViT, both backends.

Oracles: the attention weights read independently of xplain (torch's own
``need_weights=True``; for paddle, numpy on the captured queries and keys), rolled out in
numpy; for the gradient variant, ∇A from torch's autodiff through an attention written in plain
torch in this file; the other backend on the ported model.
"""
from __future__ import annotations

import numpy as np
import pytest

import xplain
from xplain.errors import LayerError

from transformer_zoo import tiny_vit

SIZE = 48
TARGETS = [1, 3]


def _inputs(fw):
    return fw.tensor(np.random.default_rng(6).standard_normal((2, 3, SIZE, SIZE)))


def _attention_weights(fw, model, x):
    """[A (N, heads, T, T)] per block, read without xplain."""
    seen = []
    blocks = [model.encoder.layers[i] for i in range(2)]
    if fw.name == "torch":
        import torch

        def hook(mod, args, kwargs, out):
            with torch.no_grad():
                seen.append(mod.forward(args[0], args[1], args[2], need_weights=True,
                                        average_attn_weights=False)[1].numpy())
        hs = [b.self_attention.register_forward_hook(hook, with_kwargs=True) for b in blocks]
        with torch.no_grad():
            model(x)
    else:
        def hook(mod, args, out):
            q = args[0].numpy().astype(np.float64)
            n, t, e = q.shape
            h = mod.num_heads
            d = e // h

            def proj(lin):
                z = q @ lin.weight.numpy().astype(np.float64) + lin.bias.numpy()
                return z.reshape(n, t, h, d).transpose(0, 2, 1, 3)
            s = proj(mod.q_proj) @ proj(mod.k_proj).transpose(0, 1, 3, 2) / np.sqrt(d)
            a = np.exp(s - s.max(-1, keepdims=True))
            seen.append(a / a.sum(-1, keepdims=True))
        hs = [b.self_attention.register_forward_post_hook(hook) for b in blocks]
        model(x)
    for h in hs:
        h.remove()
    return seen


def np_rollout(weights, fusion="mean"):
    joint = None
    for a in weights:
        fused = {"mean": a.mean(1), "max": a.max(1), "min": a.min(1)}[fusion]
        step = 0.5 * fused + 0.5 * np.eye(fused.shape[-1])
        step = step / step.sum(-1, keepdims=True)
        joint = step if joint is None else step @ joint
    n = joint.shape[0]
    return joint[:, 0, 1:].reshape(n, 6, 6)


@pytest.mark.parametrize("fusion", ["mean", "max"])
def test_rollout_equals_numpy_reference(fw, fusion):
    model, x = tiny_vit(fw, image_size=SIZE), _inputs(fw)
    exp = xplain.explain(model, x, "attention_rollout", head_fusion=fusion, normalize=False)
    want = np_rollout(_attention_weights(fw, model, x), fusion)
    # float32 softmax weights multiplied over two layers: 1e-5 of the map's scale
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["rollout"]), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())
    assert exp.numpy().shape == (2, SIZE, SIZE)
    # class-agnostic: the same map for any target
    other = xplain.explain(model, x, "attention_rollout", head_fusion=fusion, normalize=False, target=[0, 0])
    np.testing.assert_array_equal(fw.numpy(other.layer_maps["rollout"]), fw.numpy(exp.layer_maps["rollout"]))


def test_discard_ratio_zeroes_the_smallest_weights(fw):
    model, x = tiny_vit(fw, image_size=SIZE), _inputs(fw)
    weights = _attention_weights(fw, model, x)
    kept = []
    for a in weights:
        fused = a.mean(1)
        flat = fused.reshape(2, -1)
        k = int(flat.shape[1] * 0.5)
        keep = np.ones_like(flat, bool)
        np.put_along_axis(keep, np.argsort(flat, axis=1, kind="stable")[:, :k], False, axis=1)
        keep[:, 0] = True
        kept.append((fused * keep.reshape(fused.shape))[:, None])
    want = np_rollout(kept)
    exp = xplain.explain(model, x, "attention_rollout", discard_ratio=0.5, normalize=False)
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["rollout"]), want, rtol=0, atol=1e-5 * np.abs(want).max())


def _grad_weights_torch(model, x):
    import torch
    import torch.nn.functional as F

    leaves = []

    def hook(mod, args, kwargs, out):  # the attention in plain torch, its weights a leaf
        q_in = args[0]
        n, t, e = q_in.shape
        h, d = mod.num_heads, e // mod.num_heads
        q, k, v = F.linear(q_in, mod.in_proj_weight, mod.in_proj_bias).chunk(3, dim=-1)

        def heads(z):
            return z.reshape(n, t, h, d).transpose(1, 2)
        a = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / d ** 0.5, -1)
        leaf = a.detach().requires_grad_()
        leaves.append(leaf)
        ctx = (leaf @ heads(v)).transpose(1, 2).reshape(n, t, e)
        return (F.linear(ctx, mod.out_proj.weight, mod.out_proj.bias), None)
    hs = [model.encoder.layers[i].self_attention.register_forward_hook(hook, with_kwargs=True) for i in range(2)]
    out = model(x)
    grads = torch.autograd.grad(out[torch.arange(2), TARGETS].sum(), leaves)
    for hd in hs:
        hd.remove()
    return [a.detach().numpy() for a in leaves], [g.numpy() for g in grads]


def _grad_weights_paddle(model, x):
    import paddle
    from xplain_paddle.backend import _exact_layer_norm_gradient

    leaves = []

    def hook(mod, args, out):  # the attention in plain paddle, its weights a leaf
        q_in = args[0]
        n, t, e = q_in.shape
        h, d = mod.num_heads, e // mod.num_heads

        def heads(lin):
            return lin(q_in).reshape([n, t, h, d]).transpose([0, 2, 1, 3])
        a = paddle.nn.functional.softmax(heads(mod.q_proj) @ heads(mod.k_proj).transpose([0, 1, 3, 2]) / d ** 0.5, -1)
        leaf = a.detach()
        leaf.stop_gradient = False
        leaves.append(leaf)
        ctx = (leaf @ heads(mod.v_proj)).transpose([0, 2, 1, 3]).reshape([n, t, e])
        return mod.out_proj(ctx)
    hs = [model.encoder.layers[i].self_attention.register_forward_post_hook(hook) for i in range(2)]
    # paddle 3.3's LayerNorm input gradient is wrong for weights other than 1
    # (tests/test_backend_layers.py): the LayerNorms carry the primitive-op gradient here too
    hs += [m.register_forward_post_hook(_exact_layer_norm_gradient, prepend=True)
           for m in model.sublayers() if isinstance(m, paddle.nn.LayerNorm)]
    out = model(x)
    grads = paddle.grad(out[paddle.arange(2), paddle.to_tensor(TARGETS)].sum(), leaves)
    for hd in hs:
        hd.remove()
    return [a.numpy() for a in leaves], [g.numpy() for g in grads]


def test_gradient_rollout_equals_autodiff_reference(fw):
    model, x = tiny_vit(fw, image_size=SIZE), _inputs(fw)
    weights, grads = (_grad_weights_torch if fw.name == "torch" else _grad_weights_paddle)(model, x)
    joint = np.broadcast_to(np.eye(37), (2, 37, 37)).copy()
    for a, g in zip(weights, grads):
        cam = np.maximum(a * g, 0).mean(1)
        joint = joint + cam @ joint
    want = joint[:, 0, 1:].reshape(2, 6, 6)
    exp = xplain.explain(model, x, "gradient_attention_rollout", target=TARGETS, normalize=False)
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["rollout"]), want, rtol=1e-4,
                               atol=1e-6 * np.abs(want).max())
    assert np.abs(want - np.eye(37)[0, 1:].reshape(6, 6)).max() > 0


def test_models_without_attention_are_refused(fw):
    model = fw.sequential(fw.conv2d(3, 4, 3), fw.relu(), fw.flatten(), fw.linear(4 * 6 * 6, 2))
    with pytest.raises(LayerError, match="multi-head attention layers.*has none"):
        xplain.explain(model, fw.tensor(np.zeros((1, 3, 8, 8))), "attention_rollout")


@pytest.mark.cross
def test_rollouts_equal_across_frameworks(both):
    t, p = both
    x = np.random.default_rng(7).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    for method in ("attention_rollout", "gradient_attention_rollout"):
        a = t.numpy(xplain.explain(tiny_vit(t, image_size=SIZE), t.tensor(x), method, target=TARGETS,
                                   normalize=False).layer_maps["rollout"])
        b = p.numpy(xplain.explain(tiny_vit(p, image_size=SIZE), p.tensor(x), method, target=TARGETS,
                                   normalize=False).layer_maps["rollout"])
        # the same float32 function in two frameworks: 1e-5 of the scale
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max(), err_msg=method)


# ---- attention computed from module calls (timm's non-fused path, PaddleClas) --------------------
def _dropout_weights(fw, model, drops, x, targets):
    """The softmax weights each ``attn_drop`` module receives, and the targets' gradient at them
    (its output replaced by a leaf of the same value), by the framework's own autodiff."""
    leaves = []
    if fw.name == "torch":
        import torch

        def hook(_mod, _args, out):
            leaf = out.detach().requires_grad_()
            leaves.append(leaf)
            return leaf
        hs = [d.register_forward_hook(hook) for d in drops]
        out = model(x)
        grads = torch.autograd.grad(out[torch.arange(len(targets)), targets].sum(), leaves)
        weights = [a.detach().numpy() for a in leaves]
        grads = [g.numpy() for g in grads]
    else:
        import paddle
        from xplain_paddle.backend import _exact_layer_norm_gradient

        def hook_paddle(_mod, _args, out):
            leaf = out.detach()
            leaf.stop_gradient = False
            leaves.append(leaf)
            return leaf
        hs = [d.register_forward_post_hook(hook_paddle) for d in drops]
        # paddle 3.3's LayerNorm input gradient is wrong for weights other than 1
        hs += [m.register_forward_post_hook(_exact_layer_norm_gradient, prepend=True)
               for m in model.sublayers() if isinstance(m, paddle.nn.LayerNorm)]
        out = model(x)
        picked = paddle.stack([out[i, t] for i, t in enumerate(targets)]).sum()
        grads = [g.numpy() for g in paddle.grad(picked, leaves)]
        weights = [a.numpy() for a in leaves]
    for h in hs:
        h.remove()
    return weights, grads


def _check_packed_rollouts(fw, model, drops, x, targets, prefix, grid):
    weights, grads = _dropout_weights(fw, model, drops, x, targets)
    t = weights[0].shape[-1]
    joint = None
    for a in weights:
        step = 0.5 * a.mean(1) + 0.5 * np.eye(t)
        step = step / step.sum(-1, keepdims=True)
        joint = step if joint is None else step @ joint
    want = joint[:, 0, prefix:].reshape(len(targets), *grid)
    exp = xplain.explain(model, x, "attention_rollout", normalize=False)
    # float32 weights from the same projections in another operation order: 1e-5
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["rollout"]), want, rtol=0, atol=1e-5 * np.abs(want).max())
    joint = np.broadcast_to(np.eye(t), (len(targets), t, t)).copy()
    for a, g in zip(weights, grads):
        joint = joint + np.maximum(a * g, 0).mean(1) @ joint
    want = joint[:, 0, prefix:].reshape(len(targets), *grid)
    exp = xplain.explain(model, x, "gradient_attention_rollout", target=targets, normalize=False)
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["rollout"]), want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_rollouts_on_paddleclas_style_attention(fw):
    """PaddleClas's ViT attention (one packed qkv projection, its weights computed from module
    calls): both rollouts equal numpy on the weights its ``attn_drop`` receives and on the
    gradients paddle's autodiff gives there."""
    if fw.name != "paddle":
        pytest.skip("PaddleClas is a paddle library")
    from transformer_zoo import paddleclas_vit

    model = paddleclas_vit()
    x = fw.tensor(np.random.default_rng(7).standard_normal((2, 3, 48, 48)).astype(np.float32))
    _check_packed_rollouts(fw, model, [b.attn.attn_drop for b in model.blocks], x, TARGETS, 1, (6, 6))


@pytest.mark.peer
@pytest.mark.parametrize("name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)])
def test_rollouts_on_timm(name, prefix):
    """timm's ViT and DeiT (peers env): both rollouts read the weights from the packed qkv
    projection (timm's fused attention never materialises them); equal to numpy on the weights
    timm's non-fused path passes to ``attn_drop`` and to torch's gradients there; DeiT's class
    and distillation tokens are both prefix tokens."""
    timm = pytest.importorskip("timm")
    import torch

    from conftest import Framework

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.as_tensor(np.random.default_rng(8).standard_normal((2, 3, 224, 224)).astype(np.float32))
    fused = xplain.explain(model, x, "attention_rollout", normalize=False).layer_maps["rollout"].numpy()
    for block in model.blocks:
        block.attn.fused_attn = False
    _check_packed_rollouts(Framework("torch"), model, [b.attn.attn_drop for b in model.blocks], x,
                           [1, 2], prefix, (14, 14))
    unfused = xplain.explain(model, x, "attention_rollout", normalize=False).layer_maps["rollout"].numpy()
    np.testing.assert_allclose(fused, unfused, rtol=0, atol=1e-5 * np.abs(unfused).max())


def test_window_attention_is_refused(fw):
    """Swin's window attention does not chain into one token-to-token flow: refused, named."""
    from transformer_zoo import swin

    model = swin(fw, "swin_t", tiny=True)
    x = fw.tensor(np.random.default_rng(9).standard_normal((1, 3, 40, 40)).astype(np.float32))
    with pytest.raises(LayerError, match="attends within windows"):
        xplain.explain(model, x, "attention_rollout")


def test_weights_asked_of_the_layer_and_its_flag_put_back(fw):
    """The rollout takes each attention layer's own weights (torch's ``need_weights`` argument,
    paddle's ``need_weights`` flag, switched on for the call): the flag is back as built after
    the explanation, and also when the forward raised inside the layer."""
    model, x = tiny_vit(fw, image_size=SIZE), _inputs(fw)
    layers = [model.encoder.layers[i].self_attention for i in range(2)]
    want = np_rollout(_attention_weights(fw, model, x))
    exp = xplain.explain(model, x, "attention_rollout", normalize=False)
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["rollout"]), want, rtol=0, atol=1e-5 * np.abs(want).max())
    if fw.name != "paddle":
        return
    assert not any(m.need_weights for m in layers)

    def boom(*_args):
        if layers[1].need_weights:  # inside the rollout's own call, after the flag went on
            raise RuntimeError("boom")
    handle = layers[1].out_proj.register_forward_post_hook(boom)
    with pytest.raises(Exception, match="boom"):
        xplain.explain(model, x, "attention_rollout")
    handle.remove()
    assert not any(m.need_weights for m in layers)
    np.testing.assert_allclose(fw.numpy(model(x)), fw.numpy(model(x)))  # a tensor again, not a tuple
