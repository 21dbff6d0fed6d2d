"""Porting weights between frameworks (torchvision → paddle.vision), for cross-backend checks.

torchvision's and paddle.vision's ResNet and VGG share their module tree, so state-dict keys
match after renaming BatchNorm buffers (``running_mean`` ↔ ``_mean``, ``running_var`` ↔
``_variance``); ``Linear`` weights are transposed (torch ``(out, in)``, paddle ``(in, out)``);
``num_batches_tracked`` has no paddle counterpart and is dropped.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import XplainError
from .zoo import _paddle_linear_weights, canonical_key


def torch_to_paddle(torch_model: Any, paddle_model: Any) -> Any:
    """Copy ``torch_model``'s weights into the structurally identical ``paddle_model``.

    Raises :class:`~xplain.errors.XplainError` naming any key or shape that does not match.
    Returns the paddle model, in eval mode.
    """
    src = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    linear = _paddle_linear_weights(paddle_model)
    new: dict[str, np.ndarray] = {}
    for key, value in paddle_model.state_dict().items():
        tkey = canonical_key(key)
        if tkey not in src:
            raise XplainError(f"paddle parameter {key!r} has no torch counterpart {tkey!r}; the "
                              f"two models are not the same architecture")
        arr = src.pop(tkey)
        if key in linear:
            arr = arr.T
        want = tuple(int(s) for s in value.shape)
        if arr.shape != want:
            raise XplainError(f"shape mismatch for {key!r}: torch {arr.shape} vs paddle {want}")
        new[key] = np.ascontiguousarray(arr)
    if src:
        raise XplainError(f"torch parameters without a paddle counterpart: {sorted(src)[:5]}")
    paddle_model.set_state_dict(new)
    paddle_model.eval()
    return paddle_model
