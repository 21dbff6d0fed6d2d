"""Small vision transformers with identical weights in both frameworks, for the transformer
tests: torchvision's ``VisionTransformer`` and its paddle port (``xplain_paddle.transformers``,
loaded by ``xplain_paddle.port.torch_to_paddle``)."""
from __future__ import annotations

from typing import Any


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
