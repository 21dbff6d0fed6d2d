"""CAM family: hand-computed maps on tiny fixed-weight models, behaviour on zoo models.

Oracles: every method's map computed here with numpy from the tiny model's weights (its target
layer is a ReLU at input resolution, so no upsampling is involved unless tested on purpose),
CAM == Grad-CAM on GAP + linear heads, per-sample targets == separate runs, fusion == mean of
single-layer maps.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import xplain
from xplain.errors import LayerError, OptionError, TargetError

RNG = np.random.default_rng(42)
X = RNG.standard_normal((2, 1, 4, 4)).astype(np.float32)
W1 = np.array([1.0, -1.0, 0.0, 0.0], dtype=np.float32)  # channels 2, 3 are constant maps
B1 = np.array([0.0, 0.5, 0.3, -1.0], dtype=np.float32)
W2 = np.array([0.7, -0.4, 0.5, 0.9], dtype=np.float32)
B2 = np.array([0.1], dtype=np.float32)
L = RNG.standard_normal((3, 16)).astype(np.float32)
BL = np.array([0.2, -0.1, 0.3], dtype=np.float32)
T = np.array([0, 2])


def tiny(fw):
    """conv 1x1 (1→4) → ReLU [layer "1"] → conv 1x1 (4→1) → flatten → linear (16→3)."""
    return fw.sequential(
        fw.conv2d(1, 4, 1, weight=W1.reshape(4, 1, 1, 1), bias=B1), fw.relu(),
        fw.conv2d(4, 1, 1, weight=W2.reshape(1, 4, 1, 1), bias=B2), fw.flatten(),
        fw.linear(16, 3, weight=L, bias=BL))


def np_forward(x):
    pre = W1[None, :, None, None] * x + B1[None, :, None, None]
    A = np.maximum(pre, 0)
    z = (W2[None, :, None, None] * A).sum(1) + B2[0]
    return pre, A, z.reshape(len(x), 16) @ L.T + BL


def np_grad(n=2, t=T):
    """dS_t / dA: L[t, p] * W2[k] (N, 4, 4, 4)."""
    return L[t].reshape(n, 1, 4, 4) * W2[None, :, None, None]


def explain(fw, model, method, **kw):
    kw.setdefault("target", T.tolist())
    return xplain.explain(model, fw.tensor(X), method=method, **kw)


def norm(m):
    lo = m.min(axis=(1, 2), keepdims=True)
    rng = m.max(axis=(1, 2), keepdims=True) - lo
    return np.where(rng > 0, (m - lo) / np.where(rng > 0, rng, 1), 0)


# ---- hand-computed maps --------------------------------------------------------------------
def expected(method, relu=True):
    _, A, _ = np_forward(X)
    G = np_grad()
    if method == "gradcam":
        m = (G.mean((2, 3))[:, :, None, None] * A).sum(1)
    elif method == "gradcam++":
        g2, g3 = G**2, G**3
        den = 2 * g2 + A.sum((2, 3), keepdims=True) * g3
        alpha = np.where(den != 0, g2 / np.where(den != 0, den, 1), 0)
        m = ((alpha * np.maximum(G, 0)).sum((2, 3))[:, :, None, None] * A).sum(1)
    elif method == "xgradcam":
        s = A.sum((2, 3), keepdims=True)
        w = np.where(s != 0, A * G / np.where(s != 0, s, 1), 0).sum((2, 3))
        m = (w[:, :, None, None] * A).sum(1)
    elif method == "layercam":
        m = (np.maximum(G, 0) * A).sum(1)
    elif method == "hirescam":
        m = (G * A).sum(1)
    return np.maximum(m, 0) if relu else m


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
@pytest.mark.parametrize("relu", [True, False])
def test_gradient_cams_hand_computed(fw, method, relu):
    exp = explain(fw, tiny(fw), method, layer="1", relu=relu, normalize=False)
    want = expected(method, relu)
    np.testing.assert_allclose(exp.numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["1"]), want, rtol=1e-4, atol=1e-5)
    # default normalisation: per-image min-max
    exp = explain(fw, tiny(fw), method, layer="1", relu=relu)
    np.testing.assert_allclose(exp.numpy(), norm(want), rtol=1e-4, atol=1e-5)


def test_scorecam_hand_computed_with_dedup(fw):
    _, A, S = np_forward(X)
    spread = A.max((2, 3)) - A.min((2, 3))
    scores = np.zeros((2, 4))
    for i in range(2):
        for k in range(4):
            mask = (A[i, k] - A[i, k].min()) / spread[i, k] if spread[i, k] > 0 else 0 * A[i, k]
            scores[i, k] = np_forward(X[i:i + 1] * mask)[2][0, T[i]]
    w = np.exp(scores - scores.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    want = np.maximum((w[:, :, None, None] * A).sum(1), 0)
    exp = explain(fw, tiny(fw), "scorecam", layer="1", normalize=False, batch_size=3)
    np.testing.assert_allclose(exp.numpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fw.numpy(exp.weights["1"]), w, rtol=1e-4, atol=1e-6)
    # channels 2 (0.3 everywhere) and 3 (dead) are constant: one shared forward serves them
    assert exp.skipped_channels["1"].tolist() == [2, 2]
    assert exp.forwards["1"] == 2 * 2 + 1


def test_ablationcam_hand_computed(fw, monkeypatch):
    _, A, S = np_forward(X)
    s = S[np.arange(2), T]
    w = np.zeros((2, 4))
    for k in range(4):
        Ak = A.copy()
        Ak[:, k] = 0
        z = (W2[None, :, None, None] * Ak).sum(1) + B2[0]
        sk = (z.reshape(2, 16) @ L.T + BL)[np.arange(2), T]
        w[:, k] = (s - sk) / s
    want = np.maximum((w[:, :, None, None] * A).sum(1), 0)
    exp = explain(fw, tiny(fw), "ablationcam", layer="1", normalize=False, batch_size=3)
    assert exp.ablation_mode["1"] == "after_layer"
    np.testing.assert_allclose(exp.numpy(), want, rtol=1e-4, atol=1e-5)
    # the full-model path (used when the model is not separable at the layer) agrees
    from xplain.methods.cam import score

    monkeypatch.setattr(score, "_after_layer_only", lambda *a: False)
    full = explain(fw, tiny(fw), "ablationcam", layer="1", normalize=False, batch_size=3)
    assert full.ablation_mode["1"] == "full_model"
    np.testing.assert_allclose(full.numpy(), want, rtol=1e-4, atol=1e-5)


def test_eigencam_hand_computed(fw):
    _, A, _ = np_forward(X)
    want = []
    for a in A:
        O = a.reshape(4, 16).T.astype(np.float64)
        v = np.linalg.svd(O)[2][0]
        p = O @ v
        want.append((p if p.sum() >= 0 else -p).reshape(4, 4))
    exp = explain(fw, tiny(fw), "eigencam", layer="1", normalize=False)
    np.testing.assert_allclose(exp.numpy(), np.array(want), rtol=1e-4, atol=1e-5)


def test_guided_gradcam_hand_computed(fw):
    pre, A, _ = np_forward(X)
    G = np_grad()
    gb = (W1[None, :, None, None] * np.maximum(G, 0) * (pre > 0)).sum(1, keepdims=True)
    want = gb * norm(expected("gradcam"))[:, None]
    exp = explain(fw, tiny(fw), "guided_gradcam", layer="1")
    assert exp.numpy().shape == X.shape
    np.testing.assert_allclose(exp.numpy(), want, rtol=1e-4, atol=1e-6)


# ---- CAM (classifier weights) ---------------------------------------------------------------
WC = RNG.standard_normal((3, 4)).astype(np.float32)


def gap_model(fw, stride=1, wc=WC):
    nn = fw.nn()
    gap = nn.AdaptiveAvgPool2d(1) if fw.name == "torch" else nn.AdaptiveAvgPool2D(1)
    return fw.sequential(fw.conv2d(1, 4, 1, stride=stride, weight=W1.reshape(4, 1, 1, 1), bias=B1),
                         fw.relu(), gap, fw.flatten(), fw.linear(4, 3, weight=wc, bias=BL))


def test_cam_hand_computed_and_top_k(fw):
    _, A, _ = np_forward(X)
    want = (WC[T][:, :, None, None] * A).sum(1)
    exp = explain(fw, gap_model(fw), "cam", normalize=False)
    assert exp.layers == ["1"]  # found automatically: the last spatial layer before the GAP
    np.testing.assert_allclose(exp.numpy(), want, rtol=1e-5, atol=1e-6)
    keep = np.zeros_like(WC[T])
    np.put_along_axis(keep, np.argsort(-WC[T], axis=1)[:, :2], 1, axis=1)
    want2 = (WC[T][:, :, None, None] * keep[:, :, None, None] * A).sum(1)
    exp2 = explain(fw, gap_model(fw), "cam", normalize=False, top_k=2)
    np.testing.assert_allclose(exp2.numpy(), want2, rtol=1e-5, atol=1e-6)
    with pytest.raises(OptionError, match="top_k"):
        explain(fw, gap_model(fw), "cam", top_k=0)


def test_cam_equals_gradcam_on_gap_head_tiny(fw):
    cam = explain(fw, gap_model(fw), "cam", normalize=False, relu=False)
    grad = explain(fw, gap_model(fw), "gradcam", normalize=False, relu=False)
    np.testing.assert_allclose(grad.numpy(), cam.numpy() / 16, rtol=1e-5, atol=1e-7)  # 1/(h w)


def test_upsampling_is_bilinear_half_pixel(fw):
    import cv2

    xs = X[:, :, ::2, ::2]
    A = np.maximum(W1[None, :, None, None] * xs + B1[None, :, None, None], 0)  # (2, 4, 2, 2)
    m = (WC[T][:, :, None, None] * A).sum(1)
    exp = explain(fw, gap_model(fw, stride=2), "cam", normalize=False)
    np.testing.assert_allclose(fw.numpy(exp.layer_maps["1"]), m, rtol=1e-5, atol=1e-6)
    want = np.stack([cv2.resize(mi, (4, 4), interpolation=cv2.INTER_LINEAR) for mi in m])
    np.testing.assert_allclose(exp.numpy(), want, rtol=1e-5, atol=1e-5)


def test_all_zero_map_warns_and_returns_zeros(fw):
    neg = -np.abs(WC)  # every class weight negative, activations >= 0: no positive evidence
    with pytest.warns(RuntimeWarning, match="sample"):
        exp = explain(fw, gap_model(fw, wc=neg), "gradcam")
    out = exp.numpy()
    assert np.isfinite(out).all() and (out == 0).all()


def test_target_length_mismatch_is_an_error(fw):
    with pytest.raises(TargetError, match="3 entries"):
        explain(fw, tiny(fw), "gradcam", layer="1", target=[0, 1, 2])


def test_bad_options(fw):
    with pytest.raises(OptionError):
        explain(fw, tiny(fw), "gradcam", layer="1", relu="yes")
    with pytest.raises(OptionError, match="batch_size"):
        explain(fw, tiny(fw), "scorecam", layer="1", batch_size=0)
    with pytest.raises(LayerError, match="4-D"):
        explain(fw, tiny(fw), "gradcam", layer="3")  # flatten: (N, 16)
    with pytest.raises(LayerError, match="global average pool"):
        explain(fw, tiny(fw), "cam", layer="1")  # no GAP head


# ---- zoo models ----------------------------------------------------------------------------
_MODELS: dict = {}


def zoo(fw, name, **kw):
    """Zoo models are slow to build (VGG: 130M drawn weights); build each once per backend."""
    key = (fw.name, name, tuple(sorted(kw.items())))
    if key not in _MODELS:
        _MODELS[key] = fw.model(name, **kw)
    return _MODELS[key]


def zoo_input(fw, n=2, size=64, seed=0):
    return fw.tensor(np.random.default_rng(seed).standard_normal((n, 3, size, size)))


def test_resnet18_every_method_model_unchanged(fw):
    model = zoo(fw, "resnet18")
    before = fw.model_state(model)
    x = zoo_input(fw, 2, size=32)
    for method in ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam",
                   "ablationcam", "eigencam", "guided_gradcam"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            exp = xplain.explain(model, x, method=method, target=[3, 7], batch_size=256) \
                if method in ("scorecam", "ablationcam") else \
                xplain.explain(model, x, method=method, target=[3, 7])
        out = exp.numpy()
        want = (2, 3, 32, 32) if method == "guided_gradcam" else (2, 32, 32)
        assert out.shape == want and np.isfinite(out).all(), method
        assert exp.layers == ["layer3"]  # layer4 is 1x1 at 32 px: not spatial
        assert tuple(exp.layer_maps["layer3"].shape) == (2, 2, 2)
    # CAM's map is the one the head pools, layer4, which is 1x1 here: one constant per image.
    # The automatic choice refuses (the spatial default, layer3, is not pooled by the head) ...
    with pytest.raises(LayerError, match=r"1x1 at this input size \(from 'layer4.0.conv1' on\)"
                                         r".*use larger inputs"):
        xplain.explain(model, x, method="cam", target=[3, 7])
    # ... a named 1x1 layer is explained: exactly constant (the upsampling is clipped to the
    # map's range, so no rounding pattern is stretched to [0, 1]), hence zeros and a warning
    with pytest.warns(RuntimeWarning, match="constant"):
        exp = xplain.explain(model, x, method="cam", target=[3, 7], layer="layer4")
    assert exp.layers == ["layer4"] and (exp.numpy() == 0).all()
    raw = xplain.explain(model, x, method="cam", target=[3, 7], layer="layer4", normalize=False)
    out = raw.numpy()
    assert (out == out[:, :1, :1]).all() and (out[:, 0, 0] != 0).all()
    fw.assert_same_state(before, fw.model_state(model))


def test_cam_equals_gradcam_on_resnet_head(fw):
    x = zoo_input(fw)
    model = zoo(fw, "resnet18")
    cam = xplain.explain(model, x, method="cam", target=[1, 0])
    grad = xplain.explain(model, x, method="gradcam", target=[1, 0], relu=False)
    np.testing.assert_allclose(cam.numpy(), grad.numpy(), atol=2e-4)


def test_cam_on_densenet_with_two_classes(fw):
    """torchvision's DenseNet applies a functional ReLU between ``features`` and the pooling
    (detected: CAM uses relu(features(x))); paddle's fuses it into its last BatchNorm. Either
    way the map is the 2-class classifier's row times the pooled (non-negative) features."""
    model = zoo(fw, "densenet121", num_classes=2)
    x = zoo_input(fw)
    cam = xplain.explain(model, x, method="cam", target=[1, 0], normalize=False)
    (name,) = cam.layers
    if fw.name == "torch":
        assert "ReLU" in cam.head and name == "features"
    got = []
    layer = dict(model.named_modules() if fw.name == "torch" else model.named_sublayers())[name]
    h = fw.B.add_forward_hook(layer, lambda _m, _i, o: got.append(fw.numpy(o)))
    try:
        model(x)
    finally:
        h.remove()
    A = np.maximum(got[0], 0)
    head = model.classifier if fw.name == "torch" else model.out
    W = fw.numpy(head.weight)
    W = W if fw.name == "torch" else W.T
    want = (W[[1, 0]][:, :, None, None] * A).sum(1)
    np.testing.assert_allclose(fw.numpy(cam.layer_maps[name]), want, rtol=1e-4, atol=1e-4)


def test_cam_refuses_vgg_head(fw):
    with pytest.raises(LayerError, match="gradcam"):
        xplain.explain(zoo(fw, "vgg11"), zoo_input(fw, 1, size=32), method="cam",
                       layer="features.15")


@pytest.mark.parametrize("name", ["vgg11", "densenet121", "squeezenet1_0"])
def test_zoo_architectures_auto_layer(fw, name):
    kw = {"num_classes": 2} if name == "densenet121" else {}
    model = zoo(fw, name, **kw)
    exp = xplain.explain(model, zoo_input(fw, 1), method="gradcam", relu=False)
    out = exp.numpy()
    assert out.shape == (1, 64, 64) and np.isfinite(out).all()
    assert out.max() == pytest.approx(1.0) and out.min() == pytest.approx(0.0)
    want = {"vgg11": "features", "densenet121": "features" if fw.name == "torch" else "batch_norm"}
    if name in want:
        assert exp.layers == [want[name]]


def test_per_sample_targets_equal_separate_runs(fw):
    model = zoo(fw, "resnet18")
    x = zoo_input(fw)
    both = xplain.explain(model, x, method="gradcam++", target=[5, 9], layer="layer3").numpy()
    for i, t in enumerate([5, 9]):
        one = xplain.explain(model, x[i:i + 1], method="gradcam++", target=t, layer="layer3").numpy()
        np.testing.assert_allclose(both[i], one[0], atol=1e-5)
    chunked = xplain.explain(model, x, method="gradcam++", target=[5, 9], layer="layer3",
                             max_batch=1).numpy()
    np.testing.assert_allclose(chunked, both, atol=1e-5)


def test_layer_specs(fw):
    model = zoo(fw, "resnet18")
    x = zoo_input(fw, 1)
    ref = xplain.explain(model, x, method="gradcam", layer="layer3", target=1).numpy()
    for spec in (model.layer3, "layer3", " layer3 "):
        np.testing.assert_allclose(
            xplain.explain(model, x, method="gradcam", layer=spec, target=1).numpy(), ref)
    a = xplain.explain(model, x, method="gradcam", layer="layer4[-1]", target=1)
    assert a.layers == ["layer4.1"]
    vgg = zoo(fw, "vgg11")
    e = xplain.explain(vgg, x, method="gradcam", layer="features[15]", target=1)
    assert e.layers == ["features.15"]
    with pytest.raises(LayerError, match="layer4"):
        xplain.explain(model, x, method="gradcam", layer="layer5")
    with pytest.raises(LayerError, match="more than once"):
        xplain.explain(model, x, method="gradcam", layer="layer4.1.relu")
    with pytest.raises(LayerError, match="not part of this model"):
        xplain.explain(model, x, method="gradcam", layer=vgg.features)


def test_fused_layers_mean_of_normalised_maps(fw):
    model = zoo(fw, "resnet18")
    x = zoo_input(fw)
    one = [xplain.explain(model, x, method="layercam", layer=name, target=[1, 2]).numpy()
           for name in ("layer3", "layer4")]
    fused = xplain.explain(model, x, method="layercam", layer=["layer3", "layer4"], target=[1, 2])
    np.testing.assert_allclose(fused.numpy(), norm((one[0] + one[1]) / 2), atol=1e-5)
    assert sorted(fused.layer_maps) == ["layer3", "layer4"]


def test_ablation_modes_on_resnet(fw):
    model = zoo(fw, "resnet18")
    x = zoo_input(fw, 1, size=32)
    a = xplain.explain(model, x, method="ablationcam", layer="layer3", target=1, batch_size=128)
    assert a.ablation_mode["layer3"] == "after_layer"
    b = xplain.explain(model, x, method="ablationcam", layer="layer3.1.conv1", target=1,
                       batch_size=128)
    assert b.ablation_mode["layer3.1.conv1"] == "full_model"  # the skip connection crosses it


def test_layers_listing(fw):
    model = zoo(fw, "resnet18")
    plain = xplain.layers(model)
    assert [s.name for s in plain][:4] == ["conv1", "bn1", "relu", "maxpool"]
    assert all(s.output_shape is None for s in plain)
    probed = {s.name: s for s in xplain.layers(model, (1, 3, 64, 64))}
    assert probed["layer4"].output_shape == (1, 512, 2, 2) and probed["layer4"].spatial
    assert probed["layer4.1.relu"].calls == 2 and not probed["layer4.1.relu"].spatial
    assert not probed["avgpool"].spatial and probed["fc"].kind == "linear"


# ---- channels-last layers ------------------------------------------------------------------
def permute(fw, *axes):
    """A parameter-free layer that permutes its input's axes (as torchvision's ``Permute``)."""
    base = fw.nn().Module if fw.name == "torch" else fw.nn().Layer

    class Permute(base):
        def forward(self, x):
            return fw.B.permute_dims(x, axes)

    return Permute()


def swinlike(fw, c):
    """conv 3→c [0] → to (N, h, w, c) [1] → LayerNorm(c) [2] → linear c→5 [3] → ReLU [4] → back to
    (N, 5, h, w) [5] → global average pool [6] → flatten [7] → linear 5→3 [8]: layers 1-4 are
    channels-last, as in Swin and ConvNeXt's blocks."""
    rng = np.random.default_rng(7)
    nn = fw.nn()
    pool = nn.AdaptiveAvgPool2d(1) if fw.name == "torch" else nn.AdaptiveAvgPool2D(1)
    return fw.sequential(
        fw.conv2d(3, c, 3, padding=1, weight=rng.normal(size=(c, 3, 3, 3)), bias=rng.normal(size=c)),
        permute(fw, 0, 2, 3, 1), nn.LayerNorm(c),
        fw.linear(c, 5, weight=rng.normal(size=(5, c)), bias=rng.normal(size=5) * 0.1), fw.relu(),
        permute(fw, 0, 3, 1, 2), pool, fw.flatten(),
        fw.linear(5, 3, weight=rng.normal(size=(3, 5)), bias=[0.0, 0.1, -0.1]))


def cl_input(fw, size=8):
    return fw.tensor(np.random.default_rng(3).standard_normal((2, 3, size, size)))


def np_gradcam(A, G):
    """Signed Grad-CAM of channels-first ``A``, ``G``: ``sum_k mean_hw(G_k) A_k``."""
    return (G.mean(axis=(2, 3), keepdims=True) * A).sum(1)


def reference(fw, model, layer, x, targets, channels_last):
    """Grad-CAM at ``layer`` by the framework's autodiff, the capture read as channels-last
    (transposed to (N, C, h, w)) or not."""
    from test_cam_zoo import capture

    A, G = capture(fw, model, layer, x, targets)
    if channels_last:
        A, G = A.transpose(0, 3, 1, 2), G.transpose(0, 3, 1, 2)
    return A, G


# The same float32 ops run in the same framework on both sides; the gradients may differ in
# their last bits (frozen parameters), summed over at most 16 channels: 1e-5 of the map's
# largest value, far below what a transposed reading changes (the whole map).
def assert_map(got, want):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 0


@pytest.mark.parametrize("layer,kind", [("1", "permute"), ("2", "LayerNorm"), ("3", "linear"),
                                        ("4", "ReLU after a linear")])
def test_channels_last_layer_is_detected_and_transposed(fw, layer, kind):
    model, x = swinlike(fw, 16), cl_input(fw)
    exp = xplain.explain(model, x, "gradcam", target=[1, 2], layer=layer, relu=False,
                         normalize=False)
    A, G = reference(fw, model, layer, x, [1, 2], channels_last=True)
    assert_map(exp.numpy(), np_gradcam(A, G))  # 8x8 maps at an 8x8 input: no upsampling
    assert tuple(exp.weights[layer].shape) == (2, A.shape[1])  # one weight per channel
    with pytest.raises(LayerError, match=r"layout='channels_first' contradicts.*channels_last"):
        xplain.explain(model, x, "gradcam", target=[1, 2], layer=layer, layout="channels_first")


def test_channels_last_listing_and_default_layer(fw):
    model, x = swinlike(fw, 16), cl_input(fw)
    listed = {s.name: s for s in xplain.layers(model, (1, 3, 8, 8))}
    assert [listed[n].layout for n in "012345"] == ["channels_first"] + ["channels_last"] * 4 + [
        "channels_first"]
    assert listed["2"].map_size == (8, 8) and listed["2"].spatial
    assert "linear layer acts on the last axis" in listed["3"].layout_reason
    # the default is the last spatial map feeding the scores: the transpose back, layer 5
    exp = xplain.explain(model, x, "gradcam", target=[1, 2], relu=False, normalize=False)
    assert exp.layers == ["5"]
    A, G = reference(fw, model, "5", x, [1, 2], channels_last=False)
    assert_map(exp.numpy(), np_gradcam(A, G))


def test_channels_last_gradient_free_cams(fw):
    """Eigen-CAM reads the transposed activations; Ablation-CAM substitutes its ablated copies
    in the layer's own (channels-last) layout, in both of its modes."""
    model, x = swinlike(fw, 16), cl_input(fw)
    A, _ = reference(fw, model, "3", x, [1, 2], channels_last=True)
    eig = xplain.explain(model, x, "eigencam", layer="3", normalize=False)
    want = []
    for a in A.astype(np.float64):
        O = a.reshape(a.shape[0], -1).T
        p = O @ np.linalg.svd(O)[2][0]
        want.append((p if p.sum() >= 0 else -p).reshape(a.shape[1:]))
    # float32 SVD against float64: the first singular vector to ~1e-5 of the map's scale
    np.testing.assert_allclose(eig.numpy(), np.array(want), rtol=0, atol=1e-4 * np.abs(want).max())
    # Ablation-CAM: w_k = (y - y_k) / y with channel k of layer 3 zeroed, by framework hooks
    y = fw.numpy(model(x))[[0, 1], [1, 2]]
    w = np.zeros((2, 5))
    for k in range(5):
        keep = fw.tensor(np.arange(5) != k)
        h = fw.B.add_forward_hook(model[3], lambda _m, _i, out, keep=keep: out * keep)
        try:
            w[:, k] = (y - fw.numpy(model(x))[[0, 1], [1, 2]]) / y
        finally:
            h.remove()
    want = (w[:, :, None, None] * A).sum(1)
    abl = xplain.explain(model, x, "ablationcam", target=[1, 2], layer="3", relu=False,
                         normalize=False, batch_size=4)
    assert abl.ablation_mode["3"] == "after_layer"
    # weights are differences of float32 logits (~1e-7 of them) divided by y: 1e-5 of the map
    np.testing.assert_allclose(abl.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())
    from xplain.methods.cam import score

    orig = score._after_layer_only
    try:
        score._after_layer_only = lambda *a: False
        full = xplain.explain(model, x, "ablationcam", target=[1, 2], layer="3", relu=False,
                              normalize=False, batch_size=4)
    finally:
        score._after_layer_only = orig
    assert full.ablation_mode["3"] == "full_model"
    np.testing.assert_allclose(full.numpy(), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_ambiguous_layout_is_refused_until_given(fw):
    """8 channels on an 8x8 map: (N, 8, 8, 8) reads either way, and the parameter-free permute
    does not tell them apart — refused. The LayerNorm (normalising the last axis) and the linear
    layer after it are proven channels-last by their kinds: layout= agrees or is refused."""
    model, x = swinlike(fw, 8), cl_input(fw)
    with pytest.raises(LayerError, match=r"cannot tell.*\(N, 8, 8, 8\).*pass layout="):
        xplain.explain(model, x, "gradcam", target=[1, 2], layer="1")
    exp = xplain.explain(model, x, "gradcam", target=[1, 2], layer="2", relu=False, normalize=False)
    A, G = reference(fw, model, "2", x, [1, 2], channels_last=True)
    assert_map(exp.numpy(), np_gradcam(A, G))
    exp = xplain.explain(model, x, "gradcam", target=[1, 2], layer="2", layout="channels_last",
                         relu=False, normalize=False)
    A, G = reference(fw, model, "2", x, [1, 2], channels_last=True)
    assert_map(exp.numpy(), np_gradcam(A, G))
    with pytest.raises(LayerError, match="contradicts layer '2'.*normalises axis 3"):
        xplain.explain(model, x, "gradcam", target=[1, 2], layer="2", layout="channels_first")
    exp = xplain.explain(model, x, "gradcam", target=[1, 2], layer="3", relu=False, normalize=False)
    A, G = reference(fw, model, "3", x, [1, 2], channels_last=True)
    assert_map(exp.numpy(), np_gradcam(A, G))
    with pytest.raises(OptionError, match="one of 'channels_first', 'channels_last'"):
        xplain.explain(model, x, "gradcam", layer="3", layout="NHWC")


def test_swin_channels_last_layers(fw):
    """Swin-T (torchvision's, or the paddle test zoo's port of it) at 96 px: its blocks output
    (N, 3, 3, 768). A LayerNorm inside the last block is channels-last (its 768 weights sit on
    axis 3); the default layer is the final permute back to (N, 768, 3, 3)."""
    from transformer_zoo import swin

    model = swin(fw, "swin_t")
    x = cl_input(fw, 96)
    for layer, channels_last in (("features.7.1.norm1", True), ("features.7", True),
                                 (None, False)):
        exp = xplain.explain(model, x, "gradcam", target=[1, 2], layer=layer, relu=False,
                             normalize=False)
        name = exp.layers[0]
        A, G = reference(fw, model, name, x, [1, 2], channels_last=channels_last)
        assert A.shape[1:] == (768, 3, 3), (name, A.shape)
        # float32 gradients through 12 attention blocks summed over 768 channels: 1e-4
        np.testing.assert_allclose(fw.numpy(exp.layer_maps[name]), np_gradcam(A, G), rtol=0,
                                   atol=1e-4 * np.abs(np_gradcam(A, G)).max())
    assert name == "permute"
    with pytest.raises(LayerError, match="768 match axis 3"):
        xplain.explain(model, x, "gradcam", layer="features.7.1.norm1", layout="channels_first")
