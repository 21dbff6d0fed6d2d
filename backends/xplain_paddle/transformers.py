"""Vision transformers and ConvNeXt built from ``paddle.nn`` layers, for xplain's tests and
examples (paddle.vision has neither).

paddle.vision has no ViT. :class:`VisionTransformer` is torchvision's ``VisionTransformer``
(Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021) layer for layer and name for
name — ``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_{i}.{ln_1, self_attention, ln_2, mlp}``, ``encoder.ln``,
``heads.head`` — with ``paddle.nn.MultiHeadAttention`` (separate ``q_proj``/``k_proj``/``v_proj``
where torch packs ``in_proj_weight``), ``LayerNorm`` and exact-erf ``GELU``, so torchvision
weights port into it (``xplain_paddle.port.torch_to_paddle``) and both compute the same function.
"""
from __future__ import annotations

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
