"""Maps from activations and weights alone: CAM (classifier weights) and Eigen-CAM (SVD)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...backend import LayerInfo, Tensor
from ...errors import LayerError, OptionError
from ...layers import HEAD_POOLS
from ...options import PositiveInt
from ...run import MethodResult, Run
from .maps import finish, input_size, weighted_sum
from .score import layer_activations
from .target import Layout, resolve_layers, to_channels_first


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = float(np.abs(b).max()) + 1e-12
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))


def _head(run: Run, info: LayerInfo, layout: str | None) -> tuple[Tensor, Tensor, Tensor | None, str]:
    """Find the GAP → linear head after ``info`` by watching one forward pass.

    Returns ``(A, W, out, how)``: the feature map the head pools, ``(N, K, h, w)`` (transposed
    from a channels-last layer); the class weights ``(classes, K)``; and how it was found. The
    head is the linear layer whose output is the explained scores (``output=`` applied) — not
    simply the last linear layer to run, which may belong to an auxiliary classifier. Refuses
    with :class:`LayerError` when the scores are not ``linear(mean_hw(A))`` (nor
    ``mean_hw(A)`` itself, a conv head).
    """
    B = run.backend
    linears = [i for i in run.layers() if i.kind == "linear" and not i.has_children]
    seen: list[tuple[LayerInfo, Tensor, Tensor]] = []

    def make(li: LayerInfo) -> Any:
        def hook(_layer: Any, inputs: tuple, output: Tensor) -> None:
            seen.append((li, inputs[0], output))
        return hook

    from .target import captured

    handles = [B.add_forward_hook(li.module, make(li)) for li in linears]
    try:
        with B.no_grad(), captured(run, [info], grad=False) as rec:
            out = run.forward(run.inputs)
    finally:
        for h in handles:
            h.remove()
    A = to_channels_first(run, info, rec["act"][info.name], layout)
    out_np = B.to_numpy(out)
    # the linear layer that computed the scores (the last such call: a reused one counts once)
    head = next((h for h in reversed(seen) if _close(B.to_numpy(h[2]), out_np)), None)
    for feat, how in ((A, "the layer's output"), (B.relu(A), "ReLU of the layer's output")):
        pooled = B.to_numpy(B.mean(feat, axis=(2, 3)))
        if head is not None:
            li, fin, _ = head
            if _close(B.to_numpy(B.reshape(fin, (B.shape(fin)[0], -1))), pooled):
                return feat, li.params["weight"], out, f"{how} → global average pool → {li.name}"
        if _close(pooled, out_np):  # class maps pooled directly (SqueezeNet, NIN-style heads)
            k = B.shape(feat)[1]
            return feat, B.asarray(np.eye(k, dtype=np.float32), like=feat), out, f"{how} pooled"
    last = (f"the scores come from linear layer {head[0].name!r}" if head is not None else
            f"no linear layer computes the scores (the last to run is {seen[-1][0].name!r})"
            if seen else "it has no linear layer")
    raise LayerError(
        f"cam needs the model to end in global average pooling of layer {info.name!r} followed by "
        f"one linear layer (Zhou et al. 2016); here the output is not linear(mean(A)) of that "
        f"layer ({last}). Pass layer= the feature map the head pools, or use 'gradcam' — on "
        f"such heads it equals CAM, and it works on any head{_pooled_1x1_hint(run, info)}")


def _pooled_1x1_hint(run: Run, info: LayerInfo) -> str:
    """Why the automatic layer may not be the pooled map: every map after it that feeds the
    scores is ``1 x 1`` at this input size (a CAM map there would be one constant)."""
    found = getattr(run, "_cam_probe", None) or {}
    mine = found.get(info.name)
    later = sorted((s for s in found.values() if mine is not None and s.order > mine.order
                    and s.map_size == (1, 1) and s.feeds is not False and s.calls == 1
                    and s.kind not in HEAD_POOLS), key=lambda s: s.order)
    if not later:
        return ""
    return (f". Every map after it that feeds the scores is 1x1 at this input size (from "
            f"{later[0].name!r} on), so a CAM map of the pooled features would be one constant "
            f"value; use larger inputs")


def cam(run: Run, *, layer: Any = None, top_k: PositiveInt | None = None, relu: bool = False,
        normalize: bool = True, layout: Layout | None = None) -> MethodResult:
    """Class activation mapping: the final feature maps weighted by the classifier's weights of
    the target class, ``M_c = sum_k W[c, k] A_k`` (no bias, no gradient).

    Zhou, Khosla, Lapedriza, Oliva & Torralba, "Learning Deep Features for Discriminative
    Localization" (CVPR 2016). Works when the model ends in global average pooling of a
    feature map followed by one linear layer (ResNet, DenseNet, also with a replaced
    classifier); the head is found and *verified* by one forward pass (a functional ReLU
    between the layer and the pooling, as in torchvision's DenseNet, is detected and applied);
    any other head is refused with an error. On such a head CAM equals Grad-CAM up to the
    constant ``1 / (h w)`` (exactly, after normalisation).

    Args:
        layer: the pooled feature map (default: the last layer with a spatial output that
            feeds the scores, as for Grad-CAM; where the pooled map is ``1 x 1`` at the input's
            size the call is refused — the map would be one constant — unless it is named).
        top_k: keep only the ``top_k`` largest class weights (the CAM tutorial's variant that
            shows the few channels the class relies on most); ``None`` keeps all.
        relu: clip negative evidence (off: the paper shows the signed map, normalised).
        normalize: per-image min-max to [0, 1].
        layout: as in Grad-CAM.

    Returns:
        ``(N, H, W)`` maps; extras ``layer_maps``, ``weights`` ``{layer: (N, K)}``, ``head``.
    """
    B = run.backend
    input_size(run)
    infos = resolve_layers(run, layer)
    if len(infos) != 1:
        raise OptionError("cam uses the one feature map the classifier pools; pass a single layer")
    info = infos[0]
    A, W, out, how = _head(run, info, layout)
    t = run.resolve_targets(out)
    k = B.shape(A)[1]
    idx = np.ascontiguousarray(np.broadcast_to(t.reshape(-1, 1), (len(t), k)))
    weights = B.take_along_axis(W, B.asarray(idx, like=W, dtype="int64"), axis=0)  # W[t]
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 0 < top_k <= k:
            raise OptionError(f"top_k={top_k!r} must be an int in [1, {k}] (channels kept per "
                              f"class), or None for all")
        w_np = B.to_numpy(weights)
        keep = np.zeros_like(w_np, dtype=np.float32)
        order = np.argsort(-w_np, axis=1, kind="stable")[:, :top_k]
        np.put_along_axis(keep, order, 1.0, axis=1)
        weights = weights * B.asarray(keep, like=weights)
    raw = {info.name: weighted_sum(B, weights, A)}
    return finish(run, raw, relu=relu, normalize=normalize,
                  extras={"weights": {info.name: weights}, "head": how})


def eigencam(run: Run, *, layer: Any = None, relu: bool = False,
             normalize: bool = True, layout: Layout | None = None) -> MethodResult:
    """Eigen-CAM: the projection of the layer's activations on their first principal
    direction, ``O v_1`` with ``O`` the ``(h w, K)`` activation matrix and ``v_1`` its first
    right singular vector. Class-agnostic: the target does not change the map.

    Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components" (IJCNN
    2020). As in the paper ``O`` is not centred (pytorch-grad-cam centres it, which makes the
    map zero-mean so its ReLU keeps about half of it). The sign of a singular vector is
    arbitrary; it is fixed so the map sums to a non-negative value (for post-ReLU activations
    the map is then non-negative everywhere).

    Args:
        layer, normalize, layout: as in Grad-CAM. relu: off by default (the paper has none).

    Returns:
        ``(N, H, W)`` maps; extras ``layer_maps``, ``explained`` ``{layer: (N,)}`` (share of the
        squared singular values carried by the first one).
    """
    B = run.backend
    input_size(run)
    infos = resolve_layers(run, layer)
    raw, explained = {}, {}
    for info in infos:
        A, out = layer_activations(run, info, layout)
        run.resolve_targets(out)
        n, k, h, w = B.shape(A)
        O = B.permute_dims(B.reshape(A, (n, k, h * w)), (0, 2, 1))  # (N, hw, K)
        _, S, Vh = B.svd(O)
        proj = B.sum(O * Vh[:, 0:1, :], axis=2)  # (N, hw)
        sign = B.sign(B.sum(proj, axis=1, keepdims=True))
        sign = B.where(sign == 0, B.ones_like(sign), sign)
        raw[info.name] = B.reshape(proj * sign, (n, h, w))
        s2 = S * S
        explained[info.name] = s2[:, 0] / B.maximum(B.sum(s2, axis=1), 1e-30)
    return finish(run, raw, relu=relu, normalize=normalize, extras={"explained": explained})
