"""CAM on transformer layers: token sequences (N, T, C) read as their patch grid (prefix tokens
dropped), channels-last Swin maps, refusals where a layer cannot show evidence.

Oracles: the framework's own autodiff at the layer (captured activations and gradients,
reshaped by hand as pytorch-grad-cam's documented ``reshape_transform`` does); the other
backend on a ported ViT; pytorch-grad-cam itself (peers env).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import xplain
from xplain.errors import LayerError

from test_cam import np_gradcam
from test_cam_zoo import capture, tokens_to_grid
from transformer_zoo import tiny_vit

SIZE = 48  # 6x6 patches of 8 px + a class token: 37 tokens, one way to split them


def _grid(t):
    return tokens_to_grid(t)


def test_default_layer_is_last_blocks_first_norm_and_exact(fw):
    """The last layer whose grid tokens reach the scores is the last block's first LayerNorm
    (the last attention mixes them into the class token); Grad-CAM there equals the reference."""
    model = tiny_vit(fw, image_size=SIZE)
    x = fw.tensor(np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)))
    exp = xplain.explain(model, x, "gradcam", target=[1, 3], relu=False, normalize=False)
    name = "encoder.layers.encoder_layer_1.ln_1"
    assert exp.layers == [name]
    A, G = capture(fw, model, name, x, [1, 3])  # paddle: with its LayerNorm gradient fixed
    want = np_gradcam(_grid(A), _grid(G))
    got = fw.numpy(exp.layer_maps[name])
    # float32 gradients summed over 16 channels: 1e-5 of the map's scale
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert np.abs(want).max() > 0
    listed = {s.name: s.layout for s in xplain.layers(model, (1, 3, SIZE, SIZE))}
    assert listed[name] == "tokens:1:6x6"


def test_block_output_after_last_attention_is_refused(fw):
    model = tiny_vit(fw, image_size=SIZE)
    x = fw.tensor(np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)))
    with pytest.raises(LayerError, match="do not depend on the grid tokens.*encoder_layer_1'"):
        xplain.explain(model, x, "gradcam", layer="encoder.layers.encoder_layer_1")
    exp = xplain.explain(model, x, "layercam", layer="encoder.layers.encoder_layer_0", layout="tokens")
    assert exp.numpy().shape == (1, SIZE, SIZE) and np.abs(exp.numpy()).max() > 0


def test_token_layouts_refused_where_they_do_not_apply(fw):
    model = tiny_vit(fw, image_size=SIZE)
    x = fw.tensor(np.random.default_rng(1).standard_normal((1, 3, SIZE, SIZE)))
    with pytest.raises(LayerError, match="layout='channels_last' is for 4-D maps.*layout='tokens'"):
        xplain.explain(model, x, "gradcam", layer="encoder.layers.encoder_layer_0", layout="channels_last")
    with pytest.raises(LayerError, match="layout='tokens' is for token sequences"):
        xplain.explain(model, x, "gradcam", layer="conv_proj", layout="tokens")
    with pytest.raises(LayerError, match="Ablation-CAM"):
        xplain.explain(model, x, "ablationcam", layer="encoder.layers.encoder_layer_1.ln_1")
    # at 32 px, 17 tokens split as 1 + 4x4 or 8 + 3x3: refused, not guessed
    small = tiny_vit(fw, image_size=32)
    xs = fw.tensor(np.random.default_rng(1).standard_normal((1, 3, 32, 32)))
    with pytest.raises(LayerError, match="more than one way"):
        xplain.explain(small, xs, "gradcam", layer="encoder.layers.encoder_layer_1.ln_1")


def _functional_attention_vit(fw):
    """A one-block ViT whose attention is computed from module calls in its own forward (timm's
    non-fused path, PaddleClas's ViT): ``qkv`` Linear, a functional softmax, ``attn_drop`` on
    the (N, heads, T, T) weights, ``proj``; 8x8 patches of 8 px + a class token (65 tokens)."""
    nn = fw.nn()
    torch_like = fw.name == "torch"
    base = nn.Module if torch_like else nn.Layer
    B = fw.B

    class Attention(base):
        def __init__(self):
            super().__init__()
            self.qkv, self.attn_drop, self.proj = fw.linear(8, 24), nn.Dropout(0.0), fw.linear(8, 8)

        def forward(self, x):
            n, t, c = B.shape(x)
            qkv = B.permute_dims(B.reshape(self.qkv(x), (n, t, 3, 2, c // 2)), (2, 0, 3, 1, 4))
            a = B.softmax(B.matmul(qkv[0], B.permute_dims(qkv[1], (0, 1, 3, 2))) * (c // 2) ** -0.5, axis=-1)
            y = B.matmul(self.attn_drop(a), qkv[2])
            return self.proj(B.reshape(B.permute_dims(y, (0, 2, 1, 3)), (n, t, c)))

    class ViT(base):
        def __init__(self):
            super().__init__()
            self.patch = fw.conv2d(3, 8, 8, stride=8)
            self.norm1, self.attn, self.head = nn.LayerNorm(8), Attention(), fw.linear(8, 3)

        def forward(self, x):
            p = self.patch(x)
            n = B.shape(p)[0]
            tokens = B.permute_dims(B.reshape(p, (n, 8, 64)), (0, 2, 1))
            tokens = B.concat([B.zeros_like(tokens[:, :1]), tokens], axis=1)
            tokens = tokens + self.attn(self.norm1(tokens))
            return self.head(tokens[:, 0])

    model = ViT()
    model.eval()
    return model


def test_attention_weights_are_not_a_map(fw):
    """Attention weights (N, heads, T, T) that pass through a module (a dropout) look like a map
    by their size alone (65x65 lies on a 64 px grid at some scale); they follow 65-token
    sequences, so they are not read as one; the default layer is the last token sequence whose
    grid tokens reach the scores (here the projection inside the attention, which this model's
    unrecognised attention does not make one unit as torch's and paddle's attention layers
    are)."""
    model = _functional_attention_vit(fw)
    listed = {s.name: s for s in xplain.layers(model, (1, 3, 64, 64))}
    assert listed["attn.attn_drop"].layout is None
    assert "attention weights" in listed["attn.attn_drop"].layout_reason
    x = fw.tensor(np.random.default_rng(2).standard_normal((2, 3, 64, 64)))
    exp = xplain.explain(model, x, "gradcam", target=[0, 1])
    assert exp.layers == ["attn.qkv"]
    with pytest.raises(LayerError, match="attention weights"):
        xplain.explain(model, x, "gradcam", target=[0, 1], layer="attn.attn_drop")


@pytest.mark.cross
def test_vit_cam_equal_across_frameworks(both):
    t, p = both
    x = np.random.default_rng(2).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    for method in ("gradcam", "gradcam++", "layercam", "scorecam"):
        a = t.numpy(xplain.explain(tiny_vit(t, image_size=SIZE), t.tensor(x), method, target=[0, 2],
                                   relu=False, normalize=False).attributions)
        b = p.numpy(xplain.explain(tiny_vit(p, image_size=SIZE), p.tensor(x), method, target=[0, 2],
                                   relu=False, normalize=False).attributions)
        # the same float32 function in two frameworks: 1e-4 of the map's scale
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * np.abs(a).max(), err_msg=method)


@pytest.mark.peer
def test_vit_equal_to_pytorch_grad_cam_with_reshape_transform():
    pgc = pytest.importorskip("pytorch_grad_cam")
    torch = pytest.importorskip("torch")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class Torch:
        name = "torch"
    model = tiny_vit(Torch, image_size=SIZE)
    x = torch.as_tensor(np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32))
    layer = model.encoder.layers.encoder_layer_1.ln_1

    def reshape_transform(t):
        return torch.as_tensor(_grid(t.detach().numpy()))
    for method, cls in (("gradcam", "GradCAM"), ("layercam", "LayerCAM")):
        with getattr(pgc, cls)(model=model, target_layers=[layer], reshape_transform=reshape_transform) as peer:
            want = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (1, 3)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = xplain.explain(model, x, method, target=[1, 3], layer=layer).numpy()
        np.testing.assert_allclose(got, want, atol=2e-4, err_msg=method)


@pytest.mark.peer
def test_swin_equal_to_pytorch_grad_cam_with_reshape_transform():
    """Swin's blocks output (N, h, w, C); pytorch-grad-cam needs a permute to read them, xplain
    finds the layout itself."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    x = torch.as_tensor(np.random.default_rng(4).standard_normal((2, 3, 96, 96)).astype(np.float32))
    layer = model.features[7][1].norm1
    with pgc.GradCAM(model=model, target_layers=[layer],
                     reshape_transform=lambda t: t.permute(0, 3, 1, 2)) as peer:
        want = peer(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in (2, 5)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = xplain.explain(model, x, "gradcam", target=[2, 5], layer="features.7.1.norm1").numpy()
    np.testing.assert_allclose(got, want, atol=2e-4)
