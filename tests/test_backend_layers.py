"""Layer enumeration, hooks, model-state snapshot/restore on the backend under test."""
import numpy as np
import pytest


def test_layer_kinds_and_neutral_params(fw):
    B = fw.B
    model = fw.model("small_cnn")
    infos = {i.name: i for i in B.layers(model)}
    assert infos[""].kind == "container"
    kinds = [infos[str(k)].kind for k in range(9)]
    assert kinds == ["conv", "batchnorm", "relu", "maxpool", "conv", "relu", "adaptive_avgpool",
                     "flatten", "linear"]
    conv = infos["0"]
    assert conv.attrs["stride"] == (1, 1) and conv.attrs["padding"] == (1, 1)
    assert conv.attrs["groups"] == 1 and conv.attrs["dilation"] == (1, 1)
    assert B.shape(conv.params["weight"]) == (8, 1, 3, 3)
    assert B.shape(infos["8"].params["weight"]) == (10, 16)  # neutral (out, in) in both frameworks
    bn = infos["1"]
    assert set(bn.params) == {"weight", "bias", "running_mean", "running_var"}
    assert bn.attrs["eps"] == pytest.approx(1e-5)


def test_neutral_linear_weight_reproduces_layer(fw):
    B = fw.B
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    layer = fw.linear(3, 2, weight=w, bias=[1.0, -1.0])
    info = B.layers(layer)[0]
    x = fw.tensor(np.ones((1, 3)))
    np.testing.assert_allclose(fw.numpy(B.linear(x, info.params["weight"], info.params["bias"])),
                               fw.numpy(layer(x)))
    np.testing.assert_allclose(fw.numpy(layer(x)), [[4.0, 11.0]])


def test_forward_hook_replaces_output_and_is_removed(fw):
    B = fw.B
    relu = fw.relu()
    model = fw.sequential(fw.linear(2, 2, weight=np.eye(2), bias=[0, 0]), relu)
    x = fw.tensor([[1.0, -1.0]])
    handle = B.add_forward_hook(relu, lambda layer, inputs, out: out * 3)
    np.testing.assert_allclose(fw.numpy(model(x)), [[3.0, 0.0]])
    handle.remove()
    np.testing.assert_allclose(fw.numpy(model(x)), [[1.0, 0.0]])
    pre = B.add_forward_pre_hook(relu, lambda layer, inputs: (inputs[0] * -1,))
    np.testing.assert_allclose(fw.numpy(model(x)), [[0.0, 1.0]])
    pre.remove()


def test_snapshot_restore_flags_and_hooks(fw):
    B = fw.B
    model = fw.model("small_cnn")
    model.train()
    snap = B.snapshot(model)
    B.prepare(model)
    assert not model.training
    h = B.add_forward_hook(model[2], lambda *a: None)
    B.restore(model, snap)
    assert model.training and all(m.training for m in model.sublayers()) if fw.name == "paddle" \
        else all(m.training for m in model.modules())
    assert B.changed(model, snap) == []
    assert fw.hook_count(model) == 0
    del h


def test_restore_puts_back_every_changed_buffer_bit_for_bit(fw):
    """BatchNorm statistics of every dtype (torch's int64 ``num_batches_tracked`` too), changed
    in place where no version counter sees it, come back exactly; untouched ones stay as they
    are. Oracle: the state's bytes before the change."""
    B = fw.B
    model = fw.model("small_cnn")
    before = fw.model_state(model)
    snap = B.snapshot(model)
    bn = B.layers(model)[2]
    if fw.name == "torch":
        import torch

        with torch.no_grad():
            bn.module.running_mean.add_(1.5)
            bn.module.num_batches_tracked.add_(7)
            bn.module.running_var.copy_(torch.full_like(bn.module.running_var, float("nan")))
    else:
        import paddle

        bn.module._mean.set_value(paddle.full_like(bn.module._mean, 1.5))
        bn.module._variance.set_value(paddle.full_like(bn.module._variance, float("nan")))
    with pytest.raises(AssertionError):
        fw.assert_same_state(before, fw.model_state(model))
    B.restore(model, snap)
    fw.assert_same_state(before, fw.model_state(model))


def test_changed_detects_in_place_parameter_edit(fw):
    B = fw.B
    model = fw.model("small_cnn")
    snap = B.snapshot(model)
    w = B.layers(model)[1].params["weight"]
    if fw.name == "torch":
        import torch

        with torch.no_grad():
            w.add_(1.0)
    else:  # an in-place op; paddle's set_value() bypasses the version counter (documented)
        import paddle

        with paddle.no_grad():
            w.add_(paddle.ones_like(w))
    problems = B.changed(model, snap)
    assert problems and "0.weight" in problems[0]


def test_layernorm_input_gradient_is_the_formulas(fw):
    """Input × gradient through a LayerNorm with weights other than 1 equals the analytic
    gradient. paddle 3.3's own layer_norm backward gets it wrong (on CPU, float32 and float64,
    every shape tried: off by the whole gradient); the paddle backend routes it through the same
    function built from primitive ops while xplain differentiates."""
    import xplain

    rng = np.random.default_rng(0)
    E, L = 8, 3
    w, b = rng.standard_normal(E), rng.standard_normal(E)
    head = rng.standard_normal((2, L * E))
    ln = fw.nn().LayerNorm(E)
    if fw.name == "torch":
        import torch

        with torch.no_grad():
            ln.weight.copy_(torch.tensor(w))
            ln.bias.copy_(torch.tensor(b))
    else:
        ln.weight.set_value(w.astype("float32"))
        ln.bias.set_value(b.astype("float32"))
    model = fw.sequential(ln, fw.flatten(), fw.linear(L * E, 2, weight=head, bias=np.zeros(2)))
    x = rng.standard_normal((2, L, E))
    got = fw.numpy(xplain.explain(model, fw.tensor(x), method="input_x_gradient", target=[0, 1]).attributions)
    mu = x.mean(-1, keepdims=True)
    sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    xh = (x - mu) / sd
    gy = head[[0, 1]].reshape(2, L, E) * w
    gx = (gy - gy.mean(-1, keepdims=True) - xh * (gy * xh).mean(-1, keepdims=True)) / sd
    # float32 against float64: 1e-5 of the scale
    np.testing.assert_allclose(got, x * gx, rtol=0, atol=1e-5 * np.abs(x * gx).max())
