"""Small vision transformers with identical weights in both frameworks, for the transformer
tests: torchvision's ``VisionTransformer`` and its paddle port (``xplain_paddle.transformers``,
loaded by ``xplain_paddle.port.torch_to_paddle``)."""
from __future__ import annotations

from typing import Any

import numpy as np


def tiny_vit(fw: Any, zero_constants: bool = False, image_size: int = 32) -> Any:
    """torchvision's ViT at ``image_size`` px (patches of 8, 2 blocks of 2 heads, width 16, 4
    classes), random weights (seeded), or the paddle test zoo's port of it (same names, same
    function; where torch is not installed, the paddle model with its own seeded random
    weights). ``zero_constants``: biases, class token and position embedding 0."""
    import importlib.util

    cfg = dict(image_size=image_size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16,
               mlp_dim=32, num_classes=4)
    if fw.name == "paddle" and importlib.util.find_spec("torch") is None:
        return _paddle_vit(cfg, zero_constants)
    import torch
    import torchvision

    torch.manual_seed(0)
    tm = torchvision.models.VisionTransformer(**cfg).eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3)
            if zero_constants and (name.endswith("bias") or name in ("class_token", "encoder.pos_embedding")):
                p.zero_()
    if fw.name == "torch":
        return tm
    from xplain_paddle.port import torch_to_paddle
    from xplain_paddle.transformers import VisionTransformer

    return torch_to_paddle(tm, VisionTransformer(**cfg))


def _paddle_vit(cfg: dict, zero_constants: bool) -> Any:
    import numpy as np
    from xplain_paddle.transformers import VisionTransformer

    model = VisionTransformer(**cfg)
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        value = rng.standard_normal(p.shape).astype("float32") * 0.3
        if zero_constants and (name.endswith("bias") or name in ("class_token", "encoder.pos_embedding")):
            value[...] = 0
        p.set_value(value)
    model.eval()
    return model


#: A small Swin (torchvision's ``SwinTransformer`` arguments): at 40 px its first stage pads its
#: 10x10 map to whole 4x4 windows and shifts them, its patch merging pads an odd 5x5 map.
TINY_SWIN = dict(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                 num_classes=4)


def swin(fw: Any, name: str = "swin_t", *, zero_constants: bool = False, tiny: bool = False) -> Any:
    """torchvision's Swin-T (``swin_t``) or Swin-V2-T (``swin_v2_t``), 10 classes, seeded random
    weights (``tiny``: :data:`TINY_SWIN`, every parameter drawn so biases, tables and scales
    matter), or the paddle test zoo's port of it; where torch is not installed, the paddle model
    with its own seeded weights. ``zero_constants``: every bias 0."""
    import importlib.util

    v2 = name == "swin_v2_t"
    window = [8, 8] if v2 and not tiny else TINY_SWIN["window_size"] if tiny else [7, 7]
    paddle_cfg = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=4) if tiny else \
        dict(num_classes=10)
    paddle_cfg.update(window_size=tuple(window), v2=v2)
    if fw.name == "paddle" and importlib.util.find_spec("torch") is None:
        import paddle
        from xplain_paddle.transformers import SwinTransformer

        paddle.seed(0)
        model = SwinTransformer(**paddle_cfg)
        if zero_constants:
            for pname, p in model.named_parameters():
                if pname.endswith("bias"):
                    p.set_value(paddle.zeros_like(p))
        model.eval()
        return model
    import torch
    import torchvision
    from torchvision.models import swin_transformer as tv_swin

    torch.manual_seed(0)
    if tiny:
        extra = dict(block=tv_swin.SwinTransformerBlockV2, downsample_layer=tv_swin.PatchMergingV2) if v2 else {}
        tm = torchvision.models.SwinTransformer(**{**TINY_SWIN, "window_size": window}, **extra).eval()
        with torch.no_grad():
            for pname, p in tm.named_parameters():
                if pname.endswith("logit_scale"):
                    p.copy_(torch.rand_like(p) + 1.5)
                elif p.ndim == 1 and pname.endswith("weight"):  # LayerNorm scales around 1
                    p.copy_(1 + torch.randn_like(p) * 0.2)
                else:
                    p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.3))
    else:
        tm = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    if zero_constants:
        with torch.no_grad():
            for pname, p in tm.named_parameters():
                if pname.endswith("bias"):
                    p.zero_()
    if fw.name == "torch":
        return tm
    from xplain_paddle.port import torch_to_paddle
    from xplain_paddle.transformers import SwinTransformer

    return torch_to_paddle(tm, SwinTransformer(**paddle_cfg))


#: A small MaxViT (torchvision's ``MaxVit`` arguments) at 32 px: two blocks, partitions of 2.
TINY_MAXVIT = dict(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[8, 16],
                   block_layers=[1, 2], head_dim=4, num_classes=4)


def tiny_maxvit(fw: Any) -> Any:
    """torchvision's MaxViT at :data:`TINY_MAXVIT`, every parameter and BatchNorm statistic
    drawn (seeded) so biases, the stem's shortcut and the position tables matter, or the paddle
    test zoo's port of it; where torch is not installed, the paddle model with its own seeded
    weights."""
    import importlib.util

    if fw.name == "paddle" and importlib.util.find_spec("torch") is None:
        import paddle
        from xplain_paddle.transformers import MaxVit

        model = MaxVit(**TINY_MAXVIT)
        rng = np.random.default_rng(0)
        for name, t in model.state_dict().items():
            if name.endswith("_variance"):
                t.set_value(rng.uniform(0.5, 1.5, t.shape).astype("float32"))
            elif t.dtype == paddle.float32:
                scale = 0.1 if name.endswith("_mean") or len(t.shape) == 1 else 0.3
                t.set_value((rng.standard_normal(t.shape) * scale).astype("float32"))
        return model.eval()
    import torch
    import torchvision

    torch.manual_seed(0)
    tm = torchvision.models.MaxVit(stochastic_depth_prob=0.0, **TINY_MAXVIT).eval()
    with torch.no_grad():
        for p in tm.parameters():
            p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.3))
        for name, b in tm.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    if fw.name == "torch":
        return tm
    from xplain_paddle.port import torch_to_paddle
    from xplain_paddle.transformers import MaxVit

    return torch_to_paddle(tm, MaxVit(**TINY_MAXVIT))


def paddleclas_vit(seed: int = 0) -> Any:
    """A small ViT written as PaddleClas writes its ViT/DeiT (``ppcls.arch.backbone.model_zoo.
    vision_transformer``: its own ``Identity`` for drop paths, an ``Attention`` with one packed
    ``qkv`` projection computed from module calls, a ``PatchEmbed`` container, class token and
    position embedding in the root's forward), its classes placed in that package so the paddle
    backend recognises them as it does PaddleClas's own. PaddleClas itself pins NumPy 1.24 and
    OpenCV ≤ 4.6 and does not install beside Paddle 3.3. 48 px, patches of 8, 2 blocks of 2
    heads, width 16, 4 classes; every parameter drawn (seeded)."""
    import paddle
    from paddle import nn

    class Identity(nn.Layer):
        def forward(self, x):
            return x

    class Attention(nn.Layer):
        def __init__(self, dim, num_heads):
            super().__init__()
            self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
            self.qkv, self.attn_drop = nn.Linear(dim, 3 * dim), nn.Dropout(0.0)
            self.proj, self.proj_drop = nn.Linear(dim, dim), nn.Dropout(0.0)

        def forward(self, x):
            n, c = x.shape[1:]
            qkv = self.qkv(x).reshape((-1, n, 3, self.num_heads, c // self.num_heads)).transpose((2, 0, 3, 1, 4))
            attn = nn.functional.softmax(qkv[0].matmul(qkv[1].transpose((0, 1, 3, 2))) * self.scale, axis=-1)
            x = self.attn_drop(attn).matmul(qkv[2]).transpose((0, 2, 1, 3)).reshape((-1, n, c))
            return self.proj_drop(self.proj(x))

    class Block(nn.Layer):
        def __init__(self, dim, heads):
            super().__init__()
            self.norm1, self.attn, self.drop_path = nn.LayerNorm(dim), Attention(dim, heads), Identity()
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))

    class PatchEmbed(nn.Layer):
        def __init__(self, dim):
            super().__init__()
            self.proj = nn.Conv2D(3, dim, 8, stride=8)

        def forward(self, x):
            return self.proj(x).flatten(2).transpose((0, 2, 1))

    class VisionTransformer(nn.Layer):
        def __init__(self, dim=16, depth=2, heads=2, classes=4):
            super().__init__()
            self.patch_embed = PatchEmbed(dim)
            self.pos_embed = self.create_parameter([1, 37, dim])
            self.cls_token = self.create_parameter([1, 1, dim])
            self.pos_drop = nn.Dropout(0.0)
            self.blocks = nn.LayerList([Block(dim, heads) for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

        def forward(self, x):
            x = self.patch_embed(x)
            x = paddle.concat((self.cls_token.expand((x.shape[0], -1, -1)), x), axis=1)
            x = self.pos_drop(x + self.pos_embed)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x)[:, 0])

    for cls in (Identity, Attention, Block, PatchEmbed, VisionTransformer):
        cls.__module__ = "ppcls.arch.backbone.model_zoo.vision_transformer"
    model = VisionTransformer()
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.set_value((rng.standard_normal(p.shape) * (0.1 if len(p.shape) == 1 else 0.3)).astype("float32"))
    model.eval()
    return model
