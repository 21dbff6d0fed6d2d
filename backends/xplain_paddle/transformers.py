"""Vision transformers built from ``paddle.nn`` layers, for xplain's tests and examples.

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
