"""Gradient-free CAMs that weigh channels by forward passes: Score-CAM and Ablation-CAM.

Both need one forward pass per (sample, channel). They run as batches of ``batch_size``
such passes — work for several samples is packed into one batch — never one pass per channel.
"""
from __future__ import annotations

import warnings
from typing import Any
from collections.abc import Iterator

import numpy as np

from ...backend import LayerInfo, Tensor
from ...errors import OptionError
from ...options import PositiveInt
from ...run import MethodResult, Run
from .maps import concat0, finish, input_size, weighted_sum
from .target import Layout, captured, from_channels_first, resolve_layers, to_channels_first

Pieces = list[tuple[int, np.ndarray]]


def _batch_size(run: Run, batch_size: Any) -> int:
    if batch_size is None:
        return run.chunk_size(backward=False)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise OptionError(f"batch_size={batch_size!r} must be a positive int (forward passes "
                          f"per batch), or None to size batches by memory_budget")
    return int(batch_size)


def pieces(per_sample: list[np.ndarray], size: int) -> Iterator[Pieces]:
    """Pack ``(sample, channels)`` work into batches of at most ``size`` channels in total."""
    chunk: Pieces = []
    room = size
    for i, ks in enumerate(per_sample):
        start = 0
        while start < len(ks):
            take = min(room, len(ks) - start)
            chunk.append((i, ks[start:start + take]))
            start += take
            room -= take
            if room == 0:
                yield chunk
                chunk, room = [], size
    if chunk:
        yield chunk


def layer_activations(run: Run, info: LayerInfo, layout: str | None = None) -> tuple[Tensor, Tensor]:
    """``(A, outputs)``: the layer's activation ``(N, K, h, w)`` (transposed from a
    channels-last layer) and the model's outputs, from no-grad forward passes in chunks."""
    B = run.backend
    acts, outs = [], []
    n = B.shape(run.inputs)[0]
    with B.no_grad():
        for sl in ([slice(0, 1)] if n == 1 else run.chunks(n, backward=False)):
            with captured(run, [info], grad=False) as rec:
                outs.append(run.forward(run.inputs[sl]))
            acts.append(rec["act"][info.name])
    return to_channels_first(run, info, concat0(B, acts), layout), concat0(B, outs)


def _gather_channels(B: Any, a: Tensor, ks: np.ndarray) -> Tensor:
    """``a[ks]`` for ``a`` of shape ``(K, h, w)`` → ``(m, h, w)`` (take_along_axis: no
    framework-specific fancy indexing)."""
    k, h, w = B.shape(a)
    if len(ks) == k and np.array_equal(ks, np.arange(k)):
        return a
    idx = np.ascontiguousarray(np.broadcast_to(ks.reshape(-1, 1), (len(ks), h * w)))
    flat = B.take_along_axis(B.reshape(a, (k, h * w)), B.asarray(idx, like=a, dtype="int64"), axis=0)
    return B.reshape(flat, (len(ks), h, w))


def _target_scores(run: Run, out: Tensor, rows: np.ndarray) -> np.ndarray:
    return run.backend.to_numpy(run.target_outputs(out, rows)).astype(np.float64)


# ---- Score-CAM --------------------------------------------------------------------------------
def _score_layer(run: Run, info: LayerInfo, size: int, targets: np.ndarray,
                 A: Tensor) -> tuple[Tensor, Tensor, np.ndarray, int]:
    B = run.backend
    x = run.inputs
    n, k = B.shape(A)[:2]
    H, W = input_size(run)
    spread = B.to_numpy(B.max(A, axis=(2, 3)) - B.min(A, axis=(2, 3)))
    const = spread == 0  # bilinear upsampling keeps a map constant, and a varying map varying
    scores = np.zeros((n, k), dtype=np.float64)
    if const.any():
        # every constant channel normalises to an all-zero mask: the masked input is 0 for all
        # of them (and all samples) — one forward pass instead of one per channel
        with B.no_grad():
            out0 = run.forward(B.zeros_like(x[:1]))
        base = B.to_numpy(out0)[0].astype(np.float64)
        for i in range(n):
            scores[i, const[i]] = base[targets[i]]
    todo = [np.flatnonzero(~const[i]) for i in range(n)]
    forwards = int(const.any())
    for chunk in run.progress(list(pieces(todo, size)), desc=f"{run.method} {info.name}"):
        masked = []
        for i, ks in chunk:
            m = _gather_channels(B, A[i], ks)
            up = B.reshape(B.interpolate(B.reshape(m, (len(ks), 1) + B.shape(m)[1:]), (H, W)),
                           (len(ks), 1, H, W))
            lo = B.min(up, axis=(2, 3), keepdims=True)
            hi = B.max(up, axis=(2, 3), keepdims=True)
            masked.append(x[i:i + 1] * ((up - lo) / (hi - lo)))
        batch = masked[0] if len(masked) == 1 else B.concat(masked, axis=0)
        rows = np.concatenate([np.full(len(ks), targets[i]) for i, ks in chunk])
        with B.no_grad():
            got = _target_scores(run, run.forward(batch), rows)
        forwards += B.shape(batch)[0]
        pos = 0
        for i, ks in chunk:
            scores[i, ks] = got[pos:pos + len(ks)]
            pos += len(ks)
    weights = B.softmax(B.asarray(scores, like=A), axis=1)
    skipped = const.sum(axis=1).astype(np.int64)
    return weighted_sum(B, weights, A), weights, skipped, forwards


def scorecam(run: Run, *, layer: Any = None, batch_size: PositiveInt | None = None, relu: bool = True,
             normalize: bool = True, layout: Layout | None = None) -> MethodResult:
    """Score-CAM: each channel weighted by the model's target score on the input masked by
    that channel's upsampled, min-max normalised activation map.

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks" (CVPR workshops 2020), Algorithm 1: ``s_k = S_c(x ⊙ norm(up(A_k)))`` (logit),
    ``w = softmax_k(s)``, map ``relu(sum_k w_k A_k)``. (The paper's baseline term
    ``- S_c(x_b)`` is the same for every channel and cancels in the softmax.)

    Channels whose map is constant have no defined min-max normalisation; they get the all-zero
    mask (the limit pytorch-grad-cam's ``+1e-8`` also gives), hence the same masked input —
    the zero image — for every such channel and sample: one forward pass serves them all.
    ``extras["skipped_channels"]`` counts them per sample, ``extras["forwards"]`` the masked
    forward passes actually run. Masks are upsampled with half-pixel centres
    (``align_corners=False``, as all other CAM upsampling here); pytorch-grad-cam uses
    ``align_corners=True`` for this step only, so its masks differ slightly.

    Args:
        layer, layout: as in :func:`xplain.methods.cam.gradient.gradcam`.
        batch_size: masked forward passes per batch (default: as many as ``memory_budget``
            allows without gradients).
        relu, normalize: as in Grad-CAM.

    Returns:
        ``(N, H, W)`` maps; extras ``layer_maps``, ``weights`` ``{layer: (N, K)}``,
        ``skipped_channels`` ``{layer: int64[N]}``, ``forwards`` ``{layer: int}``.
    """
    B = run.backend
    size = _batch_size(run, batch_size)
    input_size(run)
    infos = resolve_layers(run, layer)
    raw, weights, skipped, forwards = {}, {}, {}, {}
    for info in infos:
        A, out = layer_activations(run, info, layout)
        targets = run.resolve_targets(out)
        raw[info.name], weights[info.name], skipped[info.name], forwards[info.name] = (
            _score_layer(run, info, size, targets, A))
    del B
    return finish(run, raw, relu=relu, normalize=normalize,
                  extras={"weights": weights, "skipped_channels": skipped, "forwards": forwards})


# ---- Ablation-CAM -----------------------------------------------------------------------------
def _after_layer_only(run: Run, info: LayerInfo, A: Tensor, out: Tensor, size: int) -> bool:
    """Can the part of the model after ``info`` run alone? Feed a zero image of batch 1 and
    substitute the real activations of up to ``size`` samples at the layer: if the outputs
    reproduce the real ones, nothing after the layer reads anything computed before it except
    through the layer (no skip connection around it), so the ablated batches can run with the
    layers before it on a batch-1 dummy instead of the full batch."""
    B = run.backend
    m = min(size, B.shape(A)[0])
    try:
        with B.no_grad(), captured(run, [info], grad=False,
                                   replace={info.name: from_channels_first(run, info, A[:m])}):
            got = run.forward(B.zeros_like(run.inputs[:1]), rows=m)
    except Exception:  # noqa: BLE001 - e.g. a batch mismatch where a skip joins: not separable
        return False
    ref = B.to_numpy(out[:m])
    got_np = B.to_numpy(got)
    if got_np.shape != ref.shape:
        return False
    scale = float(np.abs(ref).max()) + 1e-12
    return bool(np.allclose(got_np, ref, rtol=1e-4, atol=1e-5 * scale))


def _ablation_layer(run: Run, info: LayerInfo, size: int, targets: np.ndarray, A: Tensor,
                    out: Tensor) -> tuple[Tensor, Tensor, str, int]:
    B = run.backend
    n, k = B.shape(A)[:2]
    base = _target_scores(run, out, targets)
    shortcut = _after_layer_only(run, info, A, out, size)
    eye = np.eye(k, dtype=np.float32)
    ablated = np.zeros((n, k), dtype=np.float64)
    forwards = 0
    for chunk in run.progress(list(pieces([np.arange(k)] * n, size)), desc=f"{run.method} {info.name}"):
        acts, xs = [], []
        for i, ks in chunk:
            keep = B.asarray((1.0 - eye[ks]).reshape(len(ks), k, 1, 1), like=A)
            acts.append(A[i:i + 1] * keep)  # channel ks[j] set to 0 in copy j (the paper's ablation)
            if not shortcut:
                xs.append(B.broadcast_to(run.inputs[i:i + 1],
                                         (len(ks),) + B.shape(run.inputs)[1:]))
        batch = acts[0] if len(acts) == 1 else B.concat(acts, axis=0)
        if shortcut:
            x = B.zeros_like(run.inputs[:1])
        else:
            x = xs[0] if len(xs) == 1 else B.concat(xs, axis=0)
        rows = np.concatenate([np.full(len(ks), targets[i]) for i, ks in chunk])
        with B.no_grad(), captured(run, [info], grad=False,
                                   replace={info.name: from_channels_first(run, info, batch)}):
            got = _target_scores(run, run.forward(x, rows=len(rows)), rows)
        forwards += len(rows)
        pos = 0
        for i, ks in chunk:
            ablated[i, ks] = got[pos:pos + len(ks)]
            pos += len(ks)
    zero = base == 0
    if zero.any():
        warnings.warn(f"ablationcam: the target score of sample(s) {np.flatnonzero(zero).tolist()} "
                      f"is exactly 0, so the relative drop (y - y_k) / y is undefined; their "
                      f"weights are set to 0", RuntimeWarning, stacklevel=4)
    w = np.where(zero[:, None], 0.0, (base[:, None] - ablated) / np.where(zero, 1.0, base)[:, None])
    weights = B.asarray(w, like=A)
    return weighted_sum(B, weights, A), weights, "after_layer" if shortcut else "full_model", forwards


def ablationcam(run: Run, *, layer: Any = None, batch_size: PositiveInt | None = None, relu: bool = True,
                normalize: bool = True, layout: Layout | None = None) -> MethodResult:
    """Ablation-CAM: channel weight = relative drop of the target score when the channel's
    activation map is set to zero, ``w_k = (y_c - y_c^k) / y_c``; map ``relu(sum_k w_k A_k)``.

    Desai & Ramaswamy, "Ablation-CAM: Visual Explanations for Deep Convolutional Network via
    Gradient-free Localization" (WACV 2020). Ablation sets the channel to 0 as in the paper
    (pytorch-grad-cam uses ``min - 1e7`` instead when the layer's minimum is not 0, e.g. before
    a ReLU; both agree on post-ReLU layers).

    Cost: the layer's activations are computed once; each batch of ablated activations is
    substituted at the layer by a forward hook. When the model is *separable* at the layer
    (checked once: a zero image with the real activations substituted reproduces the real
    outputs — false for a layer inside a residual block), the layers before it run on a
    batch-1 dummy image only, so each ablation batch costs the part after the layer plus one
    batch-1 pass of the part before it. Otherwise the full model runs on the repeated
    input. ``extras["ablation_mode"]`` says which (``"after_layer"``/``"full_model"``).

    Args:
        layer, layout, relu, normalize: as in Grad-CAM (a channels-last layer's ablated
            activations are substituted in its own layout).
        batch_size: ablated activations per forward pass (default: by ``memory_budget``).

    Returns:
        ``(N, H, W)`` maps; extras ``layer_maps``, ``weights``, ``ablation_mode``, ``forwards``.
    """
    size = _batch_size(run, batch_size)
    input_size(run)
    infos = resolve_layers(run, layer)
    raw, weights, modes, forwards = {}, {}, {}, {}
    for info in infos:
        A, out = layer_activations(run, info, layout)
        targets = run.resolve_targets(out)
        raw[info.name], weights[info.name], modes[info.name], forwards[info.name] = (
            _ablation_layer(run, info, size, targets, A, out))
    return finish(run, raw, relu=relu, normalize=normalize,
                  extras={"weights": weights, "ablation_mode": modes, "forwards": forwards})
