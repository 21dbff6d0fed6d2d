"""Attention-based maps for vision transformers: attention rollout and its gradient-weighted
variant.

Both read the softmax weights ``A`` (N, heads, T, T) of every self-attention layer (kind
``"attention"``: torch's ``nn.MultiheadAttention``, paddle's ``MultiHeadAttention``; timm's and
PaddleClas's ViT attention from their packed ``qkv`` projection's output) in execution order,
re-evaluated from the layer's parameters and inputs (:mod:`xplain.methods._attention`; the
first call per layer and token count also rebuilds the output and checks it against the
layer's own, so a layer that is not what it claims is refused; window attention is refused). The map is the class token's row of the rolled-out matrix over the patch tokens, laid
out on their grid (prefix tokens found as for CAM, :func:`xplain.layout.token_layout`) and
upsampled bilinearly to the input size, as the CAM family does.
"""
from __future__ import annotations

import weakref
from typing import Annotated, Any, Literal

import numpy as np

from ..backend import Tensor
from ..errors import LayerError
from ..layout import parse_tokens, token_layout
from ..options import Range
from ..run import MethodResult, Run
from ._attention import (attention_weights, check_reevaluation, packed_attention, packed_weights,
                         reevaluate_attention, same_value, weights_of_projections)
from .cam.maps import finish

#: (layer module) → token counts at which its re-evaluation was checked against its output.
_CHECKED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def _attention_layers(run: Run) -> list[Any]:
    infos = [i for i in run.layers() if i.kind == "attention"]
    if not infos:
        raise LayerError(f"{run.method} reads the attention weights of multi-head attention layers "
                         f"(torch nn.MultiheadAttention, paddle nn.MultiHeadAttention), and this "
                         f"model has none; use a CAM method or LRP")
    for info in infos:
        packed = "packed_qkv" in info.attrs and info.attrs.get("packed_scale") is not None
        if "read_call" not in info.attrs and not packed:
            how = ("attends within windows or grids (Swin), so its weights do not chain into one "
                   "token-to-token flow" if "window_size" in info.attrs else
                   "computes its attention inside one module with a position bias and its own "
                   "scaling (MaxViT's window and grid attention, PaddleClas's Swin), which "
                   "xplain does not re-evaluate")
            raise LayerError(f"layer {info.name!r} ({info.type_name}) {how}; {run.method} reads "
                             f"global self-attention layers (torch nn.MultiheadAttention, paddle "
                             f"nn.MultiHeadAttention, timm's and PaddleClas's ViT attention). Use "
                             f"Grad-CAM (layout found automatically) or LRP")
        if info.attrs.get("unsupported"):
            raise LayerError(f"layer {info.name!r} ({info.type_name}) uses "
                             f"{info.attrs['unsupported']}, which {run.method} does not re-evaluate")
    return infos


def _weights_leaf(B: Any) -> tuple[list, Any]:
    """``(leaf, as_leaf)``: ``as_leaf(w)`` returns ``w``'s value as a new gradient leaf and
    keeps it in ``leaf[0]`` (the weights whose gradient is ``∇A``)."""
    leaf: list[Tensor] = []

    def as_leaf(w: Tensor) -> Tensor:
        leaf.append(B.with_grad(B.stop_gradient(w)))
        return leaf[0]
    return leaf, as_leaf


def _weights_pass(run: Run, x: Tensor, infos: list[Any], *, grad: bool) -> tuple[Tensor, list[Tensor]]:
    """One forward pass on ``x`` that records every attention layer's softmax weights, in call
    order: ``(model output, [A (N, heads, T, S)])``. With ``grad`` the layers' outputs are
    rebuilt from the recorded weights as leaves (same value), so the target score's gradient at
    them is ``∇A``. Without, a layer that can return its weights itself is asked to (torch's
    ``need_weights``); otherwise they are re-evaluated, the whole layer checked once per size."""
    B = run.backend
    seen: list[Tensor] = []
    handles = []

    def fast(info: Any) -> bool:
        return not grad and "weights_call" in info.attrs

    def projected(info: Any) -> bool:  # checked at this size before: weights from its q/k layers
        return (not grad and "projections" in info.attrs and "weights_call" not in info.attrs
                and bool(_CHECKED.get(info.module)))

    def capture(store: dict, which: str) -> Any:
        def hook(_layer: Any, _inputs: tuple, output: Any) -> None:
            store[which] = output
        return hook

    def pre_for(info: Any, asked: list) -> Any:
        def pre(_layer: Any, args: tuple, kwargs: dict) -> tuple:
            args, kwargs, what = info.attrs["weights_call"](args, kwargs)
            asked.append(what)
            return args, kwargs
        return pre

    def hook_for(info: Any, asked: list) -> Any:
        def hook(_layer: Any, args: tuple, kwargs: dict, output: Any) -> Any:
            if fast(info):
                a, output = info.attrs["split_weights"](output, asked.pop())
                seen.append(a)
                return output
            query, key, value, mask = info.attrs["read_call"](args, kwargs)
            y = output[0] if isinstance(output, (tuple, list)) else output
            checked = _CHECKED.setdefault(info.module, set())
            shape = tuple(B.shape(query))
            if grad:  # the weights as a leaf: the score's gradient at them is ∇A
                leaf, as_leaf = _weights_leaf(B)
                mine, _ = reevaluate_attention(B, info, query, key, value, mask, weights=as_leaf)
                check_reevaluation(B, info, y, mine, "multi-head attention")
                seen.append(leaf[0])
                return info.attrs["write_output"](output, same_value(B, y, mine))
            if shape not in checked:
                mine, a = reevaluate_attention(B, info, query, key, value, mask)
                check_reevaluation(B, info, y, mine, "multi-head attention")
                checked.add(shape)
            elif info.name in projections and {"q", "k"} <= set(projections[info.name]):
                got = projections[info.name]  # the layer's own projections, this call's
                a = weights_of_projections(B, info, got.pop("q"), got.pop("k"), mask)
            else:  # checked before at this size: the weights alone (no values, no output)
                a = attention_weights(B, info, query, key, mask)
            seen.append(a)
            return None
        return hook

    def packed_hook_for(info: Any, store: dict) -> Any:
        def hook(_layer: Any, _inputs: tuple, output: Any) -> Any:
            t = store.pop("qkv", None)
            if t is None or len(B.shape(t)) != 3:
                raise LayerError(f"layer {info.name!r} ({info.type_name}): its packed projection's "
                                 f"output is not one token sequence (N, T, 3E) per call; "
                                 f"{run.method} needs self-attention over the image's tokens")
            checked = _CHECKED.setdefault(info.module, set())
            shape = tuple(B.shape(t))
            if grad:  # the weights as a leaf: the score's gradient at them is ∇A
                leaf, as_leaf = _weights_leaf(B)
                mine, _ = packed_attention(B, info, t, weights=as_leaf)
                check_reevaluation(B, info, output, mine, "multi-head attention")
                seen.append(leaf[0])
                return same_value(B, output, mine)
            if shape not in checked:
                mine, a = packed_attention(B, info, t)
                check_reevaluation(B, info, output, mine, "multi-head attention")
                checked.add(shape)
            else:  # checked before at this size: the weights alone
                a = packed_weights(B, info, t)
            seen.append(a)
            return None
        return hook

    projections: dict[str, dict] = {}
    try:
        for info in infos:
            asked: list = []
            if "read_call" not in info.attrs:  # packed: q | k | v from its projection's output
                store: dict = {}
                handles.append(B.add_forward_hook(info.attrs["packed_qkv"], capture(store, "qkv")))
                handles.append(B.add_forward_hook(info.module, packed_hook_for(info, store)))
                continue
            if projected(info):
                store = projections.setdefault(info.name, {})
                for which, layer in info.attrs["projections"].items():
                    handles.append(B.add_forward_hook(layer, capture(store, which)))
            if fast(info):
                handles.append(B.add_forward_pre_hook(info.module, pre_for(info, asked), with_kwargs=True))
            handles.append(B.add_forward_hook(info.module, hook_for(info, asked), with_kwargs=True))
        out = run.forward(x)
    finally:
        for h in handles:
            h.remove()
        for info in infos:  # a layer asked for its weights by a flag gets it back, also on error
            info.attrs.get("weights_reset", lambda: None)()
    if not seen:
        raise LayerError(f"no attention layer of this model ran in the forward pass; {run.method} "
                         f"needs self-attention over the image's tokens")
    return out, seen


def _grid_of(run: Run, a: Tensor) -> tuple[int, tuple[int, int]]:
    """Prefix tokens and patch grid of the attention's token axis."""
    B = run.backend
    shape = B.shape(run.inputs)
    t, s = B.shape(a)[-2:]
    if t != s:
        raise LayerError(f"{run.method} needs self-attention (as many keys as queries); an "
                         f"attention layer attends from {t} to {s} tokens")
    layout, reason = token_layout((1, t, 1), (shape[2], shape[3]) if len(shape) == 4 else None)
    if layout is None:
        raise LayerError(f"{run.method}: the attention's {t} tokens cannot be laid out on the "
                         f"input's grid: {reason}")
    return parse_tokens(layout)


def _fuse(B: Any, a: Tensor, head_fusion: str) -> Tensor:
    if head_fusion == "mean":
        return B.mean(a, axis=1)
    return B.max(a, axis=1) if head_fusion == "max" else B.min(a, axis=1)


def _discard(B: Any, fused: Tensor, ratio: float) -> Tensor:
    """Zero the smallest ``ratio`` of each sample's fused attention entries, never the class
    token's attention to itself (as in Gildenblat's rollout, which popularised the option)."""
    if ratio <= 0:
        return fused
    n, t, _ = B.shape(fused)
    flat = B.to_numpy(fused).reshape(n, -1)
    k = int(flat.shape[1] * ratio)
    keep = np.ones_like(flat, dtype=bool)
    order = np.argsort(flat, axis=1, kind="stable")[:, :k]
    np.put_along_axis(keep, order, False, axis=1)
    keep[:, 0] = True
    return fused * B.asarray(keep.reshape(n, t, t).astype(np.float32), like=fused)


def _to_map(run: Run, joint: Tensor, prefix: int, grid: tuple[int, int]) -> Tensor:
    """The class token's row over the patch tokens, as ``(N, h, w)``."""
    B = run.backend
    n = B.shape(joint)[0]
    return B.reshape(joint[:, 0, prefix:], (n, grid[0], grid[1]))


def attention_rollout(run: Run, *, head_fusion: Literal["mean", "max", "min"] = "mean",
                      discard_ratio: Annotated[float, Range(0.0, 1.0)] = 0.0,
                      normalize: bool = True) -> MethodResult:
    """Attention rollout: how much each patch token flows into the class token through all
    layers' attention, the residual connections counted as identity.

    Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020): per layer
    ``Â = ½·A + ½·I`` (heads fused), rows renormalised, ``Â_L ⋯ Â_1``. Class-agnostic: the map
    is the same for every target.

    Args:
        head_fusion: how the heads' weights are fused per layer (``mean`` as in the paper;
            ``max``/``min`` as in common implementations).
        discard_ratio: fraction of each layer's smallest fused weights set to 0 before the
            residual is added (0: none, the paper's rollout).
        normalize: min-max normalise each map to [0, 1].

    Returns:
        ``(N, H, W)`` maps (the class token's rollout over the patch grid, upsampled
        bilinearly); ``layer_maps["rollout"]`` at grid resolution.
    """
    B = run.backend
    infos = _attention_layers(run)
    parts, argmax = [], []
    for sl in run.chunks(B.shape(run.inputs)[0], backward=False):
        with B.no_grad():
            out, weights = _weights_pass(run, run.inputs[sl], infos, grad=False)
        argmax.append(B.to_numpy(B.argmax(out, axis=1)).astype(np.int64))
        prefix, grid = _grid_of(run, weights[0])
        t = B.shape(weights[0])[-1]
        eye = B.asarray(np.eye(t, dtype=np.float32), like=weights[0])
        joint = None
        for a in weights:
            fused = _discard(B, _fuse(B, a, head_fusion), discard_ratio)
            step = (fused + eye) * 0.5
            step = step / B.sum(step, axis=-1, keepdims=True)
            joint = step if joint is None else B.matmul(step, joint)
        parts.append(_to_map(run, joint, prefix, grid))
    if run.given_targets is None:  # class-agnostic: the targets reported are the predictions
        run.record_argmax_targets(np.concatenate(argmax))
    raw = parts[0] if len(parts) == 1 else B.concat(parts, axis=0)
    return finish(run, {"rollout": raw}, relu=False, normalize=normalize,
                  extras={"head_fusion": head_fusion, "discard_ratio": discard_ratio})


def gradient_attention_rollout(run: Run, *, normalize: bool = True) -> MethodResult:
    """Gradient-weighted attention rollout for the target class.

    Chefer, Gur & Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
    Encoder-Decoder Transformers" (ICCV 2021), self-attention case: ``R = I``; per layer
    ``Ā = mean_heads((∇A ⊙ A)⁺)`` with ``∇A`` the target score's gradient at the softmax
    weights, ``R ← R + Ā·R``. The map is the class token's row of ``R`` over the patch tokens.

    Returns:
        ``(N, H, W)`` maps for the target class, upsampled bilinearly;
        ``layer_maps["rollout"]`` at grid resolution.
    """
    B = run.backend
    infos = _attention_layers(run)
    parts, argmax = [], []
    explicit = run.given_targets
    for sl in run.chunks(B.shape(run.inputs)[0], backward=True):
        with B.enable_grad():
            out, weights = _weights_pass(run, run.inputs[sl], infos, grad=True)
            if explicit is None:
                t = B.to_numpy(B.argmax(out, axis=1)).astype(np.int64)
                argmax.append(t)
            else:
                t = run.resolve_targets(out)[sl]
            grads = B.grad(run.target_score(out, t), weights)
        prefix, grid = _grid_of(run, weights[0])
        tokens = B.shape(weights[0])[-1]
        joint = B.asarray(np.broadcast_to(np.eye(tokens, dtype=np.float32),
                                          (B.shape(weights[0])[0], tokens, tokens)).copy(),
                          like=weights[0])
        for a, g in zip(weights, grads):
            cam = B.mean(B.relu(B.stop_gradient(a) * g), axis=1)
            joint = joint + B.matmul(cam, joint)
        parts.append(_to_map(run, joint, prefix, grid))
    if explicit is None:
        run.record_argmax_targets(np.concatenate(argmax))
    raw = parts[0] if len(parts) == 1 else B.concat(parts, axis=0)
    return finish(run, {"rollout": raw}, relu=False, normalize=normalize)


#: what :func:`xplain.methods` checks a model for
attention_rollout.needs_layers = gradient_attention_rollout.needs_layers = ("attention",)  # type: ignore[attr-defined]

METHODS = {"attention_rollout": attention_rollout,
           "gradient_attention_rollout": gradient_attention_rollout}
