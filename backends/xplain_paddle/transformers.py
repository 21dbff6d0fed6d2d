"""Vision transformers and modern ConvNets built from ``paddle.nn`` layers, for xplain's tests and
examples (paddle.vision has none of them): each is torchvision's architecture layer for layer
and name for name, so torchvision weights port into it (``xplain_paddle.port.torch_to_paddle``,
the "identical" family) and both compute the same function.

* :class:`VisionTransformer` — torchvision's ``VisionTransformer`` (Dosovitskiy et al., "An
  Image is Worth 16x16 Words", ICLR 2021): ``conv_proj``, ``class_token``,
  ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.{ln_1, self_attention, ln_2,
  mlp}``, ``encoder.ln``, ``heads.head``, with ``paddle.nn.MultiHeadAttention`` (separate
  ``q_proj``/``k_proj``/``v_proj`` where torch packs ``in_proj_weight``), ``LayerNorm`` and
  exact-erf ``GELU``.
* :class:`ConvNeXt` — Liu et al., "A ConvNet for the 2020s", CVPR 2022.
* :class:`SwinTransformer` — Swin V1 and V2 (Liu et al., ICCV 2021 / CVPR 2022), with
  :class:`ShiftedWindowAttention` (V2: :class:`ShiftedWindowAttentionV2`), which the paddle
  backend describes to the core by class name (the core re-evaluates it for LRP).
* :class:`MaxVit` — Tu et al., "MaxViT", ECCV 2022, with
  :class:`RelativePositionalMultiHeadAttention` (query, key and value from one projection
  ``to_qkv``), also recognised by class name.
"""
from __future__ import annotations

import numpy as np
import paddle
from paddle import nn


class EncoderBlock(nn.Layer):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(·))``."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, epsilon=eps)
        self.self_attention = nn.MultiHeadAttention(hidden_dim, num_heads)
        self.dropout = nn.Dropout(0.0)
        self.ln_2 = nn.LayerNorm(hidden_dim, epsilon=eps)
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(mlp_dim, hidden_dim), nn.Dropout(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.dropout(self.self_attention(self.ln_1(x)))
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Layer):
    """Position embedding, the blocks, a final LayerNorm."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int,
                 mlp_dim: int) -> None:
        super().__init__()
        self.pos_embedding = self.create_parameter(
            [1, seq_length, hidden_dim], default_initializer=nn.initializer.Normal(std=0.02))
        self.dropout = nn.Dropout(0.0)
        self.layers = nn.Sequential(*[(f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim))
                                      for i in range(num_layers)])
        self.ln = nn.LayerNorm(hidden_dim, epsilon=1e-6)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Layer):
    """torchvision's ViT in paddle (see the module docstring); input ``(N, 3, S, S)``."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12,
                 num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.patch_size, self.hidden_dim = patch_size, hidden_dim
        self.conv_proj = nn.Conv2D(3, hidden_dim, patch_size, stride=patch_size)
        self.class_token = self.create_parameter(
            [1, 1, hidden_dim], default_initializer=nn.initializer.Constant(0.0))
        seq_length = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = nn.Sequential(("head", nn.Linear(hidden_dim, num_classes)))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n = x.shape[0]
        x = self.conv_proj(x)
        x = x.reshape([n, self.hidden_dim, -1]).transpose([0, 2, 1])
        x = paddle.concat([self.class_token.expand([n, -1, -1]), x], axis=1)
        x = self.encoder(x)
        return self.heads(x[:, 0])


class LayerNorm2D(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map (torchvision's ``LayerNorm2d``)."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return super().forward(x.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])


class Permute(nn.Layer):
    """Reorders axes (torchvision's ``ops.misc.Permute``)."""

    def __init__(self, perm: list[int]) -> None:
        super().__init__()
        self.perm = list(perm)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.transpose(self.perm)


class CNBlock(nn.Layer):
    """ConvNeXt block: depthwise 7×7, channels-last LayerNorm, MLP, layer scale, residual."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2D(dim, dim, 7, padding=3, groups=dim), Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, epsilon=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
            nn.Linear(4 * dim, dim), Permute([0, 3, 1, 2]))
        self.layer_scale = self.create_parameter(
            [dim, 1, 1], default_initializer=nn.initializer.Constant(layer_scale))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layer_scale * self.block(x) + x


class ConvNeXt(nn.Layer):
    """torchvision's ConvNeXt (Liu et al., "A ConvNet for the 2020s", CVPR 2022) in paddle, with
    its names (``features.{i}``, ``classifier``); ``dims``/``depths`` of the tiny model by
    default."""

    def __init__(self, dims: tuple[int, ...] = (96, 192, 384, 768), depths: tuple[int, ...] = (3, 3, 9, 3),
                 num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Layer] = [nn.Sequential(nn.Conv2D(3, dims[0], 4, stride=4),
                                                LayerNorm2D(dims[0], epsilon=1e-6))]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            layers.append(nn.Sequential(*[CNBlock(dim) for _ in range(depth)]))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2D(dim, epsilon=1e-6),
                                            nn.Conv2D(dim, dims[i + 1], 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.classifier = nn.Sequential(LayerNorm2D(dims[-1], epsilon=1e-6), nn.Flatten(1),
                                        nn.Linear(dims[-1], num_classes))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.classifier(self.avgpool(self.features(x)))


# ---- Swin Transformer (V1 and V2) ------------------------------------------------------------
def _pad_hw(x: paddle.Tensor, pad_b: int, pad_r: int) -> paddle.Tensor:
    """Zeros at the bottom and on the right of an ``(N, H, W, C)`` map."""
    if pad_r:
        n, h, _, c = x.shape
        x = paddle.concat([x, paddle.zeros([n, h, pad_r, c], x.dtype)], axis=2)
    if pad_b:
        n, _, w, c = x.shape
        x = paddle.concat([x, paddle.zeros([n, pad_b, w, c], x.dtype)], axis=1)
    return x


def _shift_window_mask(pad_h: int, pad_w: int, window: list[int], shift: list[int]) -> np.ndarray:
    """``(windows, L, L)``: −100 between tokens the cyclic shift brought together, else 0."""
    region = np.zeros((pad_h, pad_w), np.float32)
    count = 0
    for h in (slice(0, -window[0]), slice(-window[0], -shift[0]), slice(-shift[0], None)):
        for w in (slice(0, -window[1]), slice(-window[1], -shift[1]), slice(-shift[1], None)):
            region[h, w] = count
            count += 1
    region = region.reshape(pad_h // window[0], window[0], pad_w // window[1], window[1])
    region = region.transpose(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    diff = region[:, None, :] - region[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class ShiftedWindowAttention(nn.Layer):
    """Window multi-head self-attention with a relative position bias and an optional cyclic
    shift (Liu et al., "Swin Transformer", ICCV 2021) of an ``(N, H, W, C)`` map; torchvision's
    layer of the same name, parameter for parameter (``qkv``, ``proj``,
    ``relative_position_bias_table``, buffer ``relative_position_index``)."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int) -> None:
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = list(window_size), list(shift_size), num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.define_relative_position_bias_table()
        wh, ww = self.window_size
        coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
        rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
        index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)
        self.register_buffer("relative_position_index", paddle.to_tensor(index.reshape(-1).astype(np.int64)))

    def define_relative_position_bias_table(self) -> None:
        wh, ww = self.window_size
        self.relative_position_bias_table = self.create_parameter(
            [(2 * wh - 1) * (2 * ww - 1), self.num_heads],
            default_initializer=nn.initializer.TruncatedNormal(std=0.02))

    def _bias_from_table(self, table: paddle.Tensor) -> paddle.Tensor:
        length = self.window_size[0] * self.window_size[1]
        bias = paddle.gather(table, self.relative_position_index).reshape([length, length, -1])
        return bias.transpose([2, 0, 1]).unsqueeze(0)

    def get_relative_position_bias(self) -> paddle.Tensor:
        return self._bias_from_table(self.relative_position_bias_table)

    def _scores(self, q: paddle.Tensor, k: paddle.Tensor) -> paddle.Tensor:
        return (q * (q.shape[-1] ** -0.5)).matmul(k.transpose([0, 1, 3, 2]))

    def _qkv_bias(self) -> paddle.Tensor | None:
        return self.qkv.bias

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n, H, W, C = x.shape
        wh, ww = self.window_size
        pad_r, pad_b = (ww - W % ww) % ww, (wh - H % wh) % wh
        x = _pad_hw(x, pad_b, pad_r)
        ph, pw = H + pad_b, W + pad_r
        shift = [0 if wh >= ph else self.shift_size[0], 0 if ww >= pw else self.shift_size[1]]
        if sum(shift) > 0:
            x = paddle.roll(x, shifts=(-shift[0], -shift[1]), axis=(1, 2))
        windows, length, heads = (ph // wh) * (pw // ww), wh * ww, self.num_heads
        x = x.reshape([n, ph // wh, wh, pw // ww, ww, C]).transpose([0, 1, 3, 2, 4, 5])
        x = x.reshape([n * windows, length, C])
        qkv = nn.functional.linear(x, self.qkv.weight, self._qkv_bias())
        qkv = qkv.reshape([n * windows, length, 3, heads, C // heads]).transpose([2, 0, 3, 1, 4])
        attn = self._scores(qkv[0], qkv[1]) + self.get_relative_position_bias()
        if sum(shift) > 0:
            mask = paddle.to_tensor(_shift_window_mask(ph, pw, self.window_size, shift))
            attn = attn.reshape([n, windows, heads, length, length]) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.reshape([-1, heads, length, length])
        attn = nn.functional.softmax(attn, axis=-1)
        x = attn.matmul(qkv[2]).transpose([0, 2, 1, 3]).reshape([n * windows, length, C])
        x = self.proj(x)
        x = x.reshape([n, ph // wh, pw // ww, wh, ww, C]).transpose([0, 1, 3, 2, 4, 5]).reshape([n, ph, pw, C])
        if sum(shift) > 0:
            x = paddle.roll(x, shifts=(shift[0], shift[1]), axis=(1, 2))
        return x[:, :H, :W, :]


class ShiftedWindowAttentionV2(ShiftedWindowAttention):
    """Swin V2's window attention (Liu et al., "Swin Transformer V2", CVPR 2022): cosine scores
    scaled by a learned, clamped ``logit_scale``, a relative position bias from a small MLP
    (``cpb_mlp``) on log-spaced coordinates, no key bias; torchvision's names."""

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int) -> None:
        super().__init__(dim, window_size, shift_size, num_heads)
        self.logit_scale = self.create_parameter(
            [num_heads, 1, 1], default_initializer=nn.initializer.Constant(float(np.log(10.0))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, num_heads, bias_attr=False))

    def define_relative_position_bias_table(self) -> None:
        wh, ww = self.window_size
        h = np.arange(-(wh - 1), wh, dtype=np.float32) / (wh - 1)
        w = np.arange(-(ww - 1), ww, dtype=np.float32) / (ww - 1)
        table = np.stack(np.meshgrid(h, w, indexing="ij")).transpose(1, 2, 0)[None] * 8
        table = np.sign(table) * np.log2(np.abs(table) + 1.0) / 3.0
        self.register_buffer("relative_coords_table", paddle.to_tensor(table.astype(np.float32)))

    def get_relative_position_bias(self) -> paddle.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).reshape([-1, self.num_heads])
        return 16 * nn.functional.sigmoid(self._bias_from_table(table))

    def _scores(self, q: paddle.Tensor, k: paddle.Tensor) -> paddle.Tensor:
        q, k = nn.functional.normalize(q, axis=-1), nn.functional.normalize(k, axis=-1)
        scale = paddle.exp(paddle.clip(self.logit_scale, max=float(np.log(100.0))))
        return q.matmul(k.transpose([0, 1, 3, 2])) * scale

    def _qkv_bias(self) -> paddle.Tensor | None:
        b = self.qkv.bias
        c = b.shape[0] // 3
        return paddle.concat([b[:c], paddle.zeros_like(b[c:2 * c]), b[2 * c:]])


class SwinMLP(nn.Sequential):
    """torchvision's ``ops.MLP`` of a Swin block: Linear, GELU, Dropout, Linear, Dropout."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0))


class SwinTransformerBlock(nn.Layer):
    """``x + attn(norm1(x))``, then ``+ mlp(norm2(·))`` (V2: the norms after attention and MLP)."""

    def __init__(self, dim: int, num_heads: int, window_size: list[int], shift_size: list[int],
                 v2: bool = False) -> None:
        super().__init__()
        self.v2 = v2
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        attention = ShiftedWindowAttentionV2 if v2 else ShiftedWindowAttention
        self.attn = attention(dim, window_size, shift_size, num_heads)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mlp = SwinMLP(dim, 4 * dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.v2:
            x = x + self.norm1(self.attn(x))
            return x + self.norm2(self.mlp(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Layer):
    """Each 2×2 neighbourhood's channels concatenated (odd sizes zero-padded), a LayerNorm and a
    bias-free Linear to twice the channels (V2: the Linear first, then the norm)."""

    def __init__(self, dim: int, v2: bool = False) -> None:
        super().__init__()
        self.v2 = v2
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias_attr=False)
        self.norm = nn.LayerNorm(2 * dim if v2 else 4 * dim, epsilon=1e-5)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        H, W = x.shape[1], x.shape[2]
        x = _pad_hw(x, H % 2, W % 2)
        x = paddle.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.norm(self.reduction(x)) if self.v2 else self.reduction(self.norm(x))


class SwinTransformer(nn.Layer):
    """torchvision's ``SwinTransformer`` in paddle (``features.{i}``, ``norm``, ``permute``,
    ``avgpool``, ``flatten``, ``head``), V1 or V2; Swin-T's sizes by default."""

    def __init__(self, embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), window_size: tuple[int, int] = (7, 7),
                 patch_size: int = 4, v2: bool = False, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Layer] = [nn.Sequential(nn.Conv2D(3, embed_dim, patch_size, stride=patch_size),
                                                Permute([0, 2, 3, 1]), nn.LayerNorm(embed_dim, epsilon=1e-5))]
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2 ** i
            layers.append(nn.Sequential(*[
                SwinTransformerBlock(dim, heads, list(window_size),
                                     [0 if j % 2 == 0 else w // 2 for w in window_size], v2=v2)
                for j in range(depth)]))
            if i + 1 < len(depths):
                layers.append(PatchMerging(dim, v2=v2))
        self.features = nn.Sequential(*layers)
        features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(features, epsilon=1e-5)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.head(self.flatten(self.avgpool(self.permute(self.norm(self.features(x))))))


# ---- MaxViT ----------------------------------------------------------------------------------
def _conv_out(size: tuple[int, int], kernel: int = 3, stride: int = 2, padding: int = 1) -> tuple[int, int]:
    return tuple((s - kernel + 2 * padding) // stride + 1 for s in size)


def _conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                   norm: bool = True, act: bool = True, bias: bool | None = None) -> nn.Sequential:
    """torchvision's ``Conv2dNormActivation`` with MaxViT's BatchNorm (ε 1e-3) and GELU: a conv
    with bias only where no norm follows (unless ``bias`` says)."""
    bias = (not norm) if bias is None else bias
    layers: list[nn.Layer] = [nn.Conv2D(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2,
                                        groups=groups, bias_attr=None if bias else False)]
    if norm:
        layers.append(nn.BatchNorm2D(cout, epsilon=1e-3, momentum=0.99))
    if act:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Layer):
    """torchvision's ``ops.SqueezeExcitation`` (Hu et al. 2018) with a SiLU: ``x · σ(fc2(silu(fc1(
    mean(x)))))``."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.fc1 = nn.Conv2D(channels, squeezed, 1)
        self.fc2 = nn.Conv2D(squeezed, channels, 1)
        self.activation = nn.Silu()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x))))) * x


class MBConv(nn.Layer):
    """MaxViT's inverted-bottleneck conv (Tu et al., "MaxViT", ECCV 2022): BatchNorm, 1×1 conv,
    depthwise 3×3 (the stride), squeeze-excitation, 1×1 conv, plus a shortcut (average pool and
    1×1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: float = 4, squeeze: float = 0.25) -> None:
        super().__init__()
        if stride != 1 or cin != cout:
            proj: list[nn.Layer] = [nn.Conv2D(cin, cout, 1)]
            if stride == 2:
                # torch's average pool counts the zero padding (exclusive=False here)
                proj = [nn.AvgPool2D(3, stride=2, padding=1, exclusive=False)] + proj
            self.proj = nn.Sequential(*proj)
        else:
            self.proj = nn.Identity()
        mid, squeezed = int(cout * expansion), int(cout * squeeze)
        self.layers = nn.Sequential(
            ("pre_norm", nn.BatchNorm2D(cin, epsilon=1e-3, momentum=0.99)),
            ("conv_a", _conv_norm_act(cin, mid, 1)),
            ("conv_b", _conv_norm_act(mid, mid, 3, stride=stride, groups=mid)),
            ("squeeze_excitation", SqueezeExcitation(mid, squeezed)),
            ("conv_c", nn.Conv2D(mid, cout, 1)))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.proj(x) + self.layers(x)


class RelativePositionalMultiHeadAttention(nn.Layer):
    """Multi-head self-attention within each partition of ``(N, G, P, C)`` tokens with a learned
    relative position bias; query, key and value from one projection ``to_qkv`` (torchvision's
    layer: keys scaled by ``C^-1/2``)."""

    def __init__(self, feat_dim: int, head_dim: int, max_seq_len: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = feat_dim // head_dim, head_dim
        self.size, self.max_seq_len = int(round(max_seq_len ** 0.5)), max_seq_len
        self.to_qkv = nn.Linear(feat_dim, 3 * feat_dim)
        self.scale_factor = feat_dim ** -0.5
        self.merge = nn.Linear(feat_dim, feat_dim)
        self.relative_position_bias_table = self.create_parameter(
            [(2 * self.size - 1) ** 2, self.n_heads], default_initializer=nn.initializer.TruncatedNormal(std=0.02))
        coords = np.stack(np.meshgrid(np.arange(self.size), np.arange(self.size), indexing="ij")).reshape(2, -1)
        rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (self.size - 1)
        index = rel[..., 0] * (2 * self.size - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", paddle.to_tensor(index.astype(np.int64)))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        n, g, p, d = x.shape
        q, k, v = (t.reshape([n, g, p, self.n_heads, self.head_dim]).transpose([0, 1, 3, 2, 4])
                   for t in paddle.chunk(self.to_qkv(x), 3, axis=-1))
        bias = paddle.gather(self.relative_position_bias_table, self.relative_position_index.reshape([-1]))
        bias = bias.reshape([self.max_seq_len, self.max_seq_len, -1]).transpose([2, 0, 1]).unsqueeze(0)
        attn = nn.functional.softmax(q.matmul((k * self.scale_factor).transpose([0, 1, 2, 4, 3])) + bias, axis=-1)
        return self.merge(attn.matmul(v).transpose([0, 1, 3, 2, 4]).reshape([n, g, p, d]))


class SwapAxes(nn.Layer):
    """Swaps two axes (MaxViT's grid partition)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        perm = list(range(x.ndim))
        perm[self.a], perm[self.b] = perm[self.b], perm[self.a]
        return x.transpose(perm)


class WindowPartition(nn.Layer):
    """``(N, C, H, W)`` → ``(N, H/p · W/p, p², C)``: non-overlapping p×p windows."""

    def forward(self, x: paddle.Tensor, p: int) -> paddle.Tensor:
        n, c, h, w = x.shape
        x = x.reshape([n, c, h // p, p, w // p, p]).transpose([0, 2, 4, 3, 5, 1])
        return x.reshape([n, (h // p) * (w // p), p * p, c])


class WindowDepartition(nn.Layer):
    """The inverse of :class:`WindowPartition` for ``hp × wp`` windows."""

    def forward(self, x: paddle.Tensor, p: int, hp: int, wp: int) -> paddle.Tensor:
        n, _, _, c = x.shape
        return x.reshape([n, hp, wp, p, p, c]).transpose([0, 5, 1, 3, 2, 4]).reshape([n, c, hp * p, wp * p])


class PartitionAttentionLayer(nn.Layer):
    """Attention and MLP (pre-norm, residual) within windows (``partition_type="window"``, block
    attention) or across a sparse grid (``"grid"``) of a channels-first map."""

    def __init__(self, channels: int, head_dim: int, partition_size: int, partition_type: str,
                 grid_size: tuple[int, int], mlp_ratio: int = 4) -> None:
        super().__init__()
        self.grid_size = grid_size
        partitions = grid_size[0] // partition_size
        self.p = partition_size if partition_type == "window" else partitions
        self.partition_op, self.departition_op = WindowPartition(), WindowDepartition()
        grid = partition_type == "grid"
        self.partition_swap = SwapAxes(-2, -3) if grid else nn.Identity()
        self.departition_swap = SwapAxes(-2, -3) if grid else nn.Identity()
        self.attn_layer = nn.Sequential(
            nn.LayerNorm(channels), RelativePositionalMultiHeadAttention(channels, head_dim, partition_size ** 2),
            nn.Dropout(0.0))
        self.mlp_layer = nn.Sequential(
            nn.LayerNorm(channels), nn.Linear(channels, channels * mlp_ratio), nn.GELU(),
            nn.Linear(channels * mlp_ratio, channels), nn.Dropout(0.0))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        gh, gw = self.grid_size[0] // self.p, self.grid_size[1] // self.p
        x = self.partition_swap(self.partition_op(x, self.p))
        x = x + self.attn_layer(x)
        x = x + self.mlp_layer(x)
        return self.departition_op(self.departition_swap(x), self.p, gh, gw)


class MaxVitLayer(nn.Layer):
    """MBConv, then block attention, then grid attention."""

    def __init__(self, cin: int, cout: int, stride: int, head_dim: int, partition_size: int,
                 grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ("MBconv", MBConv(cin, cout, stride)),
            ("window_attention", PartitionAttentionLayer(cout, head_dim, partition_size, "window", grid_size)),
            ("grid_attention", PartitionAttentionLayer(cout, head_dim, partition_size, "grid", grid_size)))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layers(x)


class MaxVitBlock(nn.Layer):
    """``n_layers`` :class:`MaxVitLayer` s, the first with stride 2."""

    def __init__(self, cin: int, cout: int, head_dim: int, partition_size: int,
                 input_grid_size: tuple[int, int], n_layers: int) -> None:
        super().__init__()
        self.grid_size = _conv_out(input_grid_size)
        self.layers = nn.LayerList([
            MaxVitLayer(cin if i == 0 else cout, cout, 2 if i == 0 else 1, head_dim, partition_size, self.grid_size)
            for i in range(n_layers)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class MaxVit(nn.Layer):
    """torchvision's ``MaxVit`` (Tu et al., "MaxViT: Multi-Axis Vision Transformer", ECCV 2022)
    in paddle, with its names (``stem``, ``blocks.{i}.layers.{j}.layers.{MBconv,
    window_attention, grid_attention}``, ``classifier``); MaxViT-T's sizes by default. The input
    size is fixed at construction (the partitions depend on it)."""

    def __init__(self, input_size: tuple[int, int] = (224, 224), stem_channels: int = 64,
                 partition_size: int = 7, block_channels: tuple[int, ...] = (64, 128, 256, 512),
                 block_layers: tuple[int, ...] = (2, 2, 5, 2), head_dim: int = 32,
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_norm_act(3, stem_channels, 3, stride=2),
                                  _conv_norm_act(stem_channels, stem_channels, 3, norm=False, act=False))
        size = _conv_out(tuple(input_size))
        blocks = []
        for cin, cout, n in zip((stem_channels,) + tuple(block_channels[:-1]), block_channels, block_layers):
            blocks.append(MaxVitBlock(cin, cout, head_dim, partition_size, size, n))
            size = blocks[-1].grid_size
        self.blocks = nn.LayerList(blocks)
        last = block_channels[-1]
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2D(1), nn.Flatten(), nn.LayerNorm(last),
                                        nn.Linear(last, last), nn.Tanh(),
                                        nn.Linear(last, num_classes, bias_attr=False))

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)
