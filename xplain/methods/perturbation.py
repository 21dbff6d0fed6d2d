"""Perturbation methods: occlusion (sliding windows) and RISE (random masks).

Both only run the model forward: the perturbed copies of every input are pushed through in
batches as large as the memory budget allows (no backward pass, so about twice as many as for
gradient methods), and the per-window/per-mask scores are folded back into a map with one
matrix product per batch.
"""
from __future__ import annotations

import itertools
from typing import Any
from collections.abc import Sequence

import numpy as np

from ..errors import OptionError
from ..options import PositiveInt, Probability
from ..run import MethodResult, Run
from ._batching import Accumulator, blocks, tile


def _per_dim(value: Any, ndim: int, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * ndim
    if isinstance(value, (str, bytes)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value):
        raise OptionError(f"{name}={value!r} needs ints (sizes are never rounded), one per "
                          f"non-batch input dimension, e.g. (3, 15, 15) for (C, H, W) inputs")
    value = tuple(int(v) for v in value)
    if len(value) != ndim or min(value) < 1:
        raise OptionError(f"{name}={value!r} needs {ndim} positive ints, one per non-batch "
                          f"input dimension: pass e.g. (3, 15, 15) for (C, H, W) inputs")
    return value


def window_origins(shape: Sequence[int], window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, ...]]:
    """Window start positions, as in Captum's ``Occlusion``: per dimension
    ``ceil((D − w) / s) + 1`` starts ``0, s, 2s, ...``; the last window may be clipped at the
    border, so every position is covered."""
    counts = [int(np.ceil((d - w) / s)) + 1 for d, w, s in zip(shape, window, strides)]
    return [tuple(i * s for i, s in zip(idx, strides))
            for idx in itertools.product(*[range(c) for c in counts])]


def occlusion(run: Run, *, sliding_window_shapes: PositiveInt | Sequence[PositiveInt] | None = None,
              strides: PositiveInt | Sequence[PositiveInt] = 1, baselines: Any = 0.0) -> MethodResult:
    """Occlusion: how much the target score drops when a window of the input is replaced by
    the baseline, averaged over all windows covering each feature.

    Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks" (ECCV 2014);
    windows, strides and averaging as in Captum's ``Occlusion``.

    Args:
        sliding_window_shapes: window size per non-batch dimension, e.g. ``(3, 45, 45)``.
        strides: step per dimension (an int applies to all), e.g. ``(3, 9, 9)``.
        baselines: value put into the window: a number, or a tensor broadcastable to the
            input (``(N, ...)``, ``(1, ...)`` or ``(...)``).

    Returns:
        Attributions of the input's shape in score units: ``f(x) − f(x with window occluded)``
        averaged over the windows covering each feature. Extras: ``windows`` (count).
    """
    from .path import resolve_baseline

    B = run.backend
    x = run.inputs
    shape = B.shape(x)
    n, sub = shape[0], shape[1:]
    if sliding_window_shapes is None:
        raise OptionError("occlusion needs sliding_window_shapes, one size per non-batch "
                          "dimension: pass e.g. sliding_window_shapes=(3, 15, 15) with strides=(3, 8, 8)")
    window = _per_dim(sliding_window_shapes, len(sub), "sliding_window_shapes")
    stride = _per_dim(strides, len(sub), "strides")
    if any(w > d for w, d in zip(window, sub)):
        raise OptionError(f"sliding_window_shapes={window} exceed the input's sample shape "
                          f"{sub}; use windows no larger than the input")
    if any(s > w and w < d for s, w, d in zip(stride, window, sub)):
        raise OptionError(f"strides={stride} larger than sliding_window_shapes={window} would "
                          f"leave features never occluded; use strides <= window sizes")
    x0 = resolve_baseline(run, baselines, name="baselines")
    origins = window_origins(sub, window, stride)
    # dimensions every window covers entirely stay size 1 in the masks (broadcast later)
    mshape = tuple(1 if w == d else d for w, d in zip(window, sub))
    count = np.zeros(mshape, dtype=np.float32)
    for o in origins:
        count[_window(o, window, mshape)] += 1.0
    t = run.targets
    with B.no_grad():
        clean = run.target_outputs(run.forward(x), t)
    acc = Accumulator(run)
    chunks = list(blocks(run, n, len(origins), backward=False))
    for blk in run.progress(chunks, total=len(chunks), desc="occlusion"):
        K, m = blk.k1 - blk.k0, blk.i1 - blk.i0
        masks = np.zeros((K,) + mshape, dtype=np.float32)
        for j, o in enumerate(origins[blk.k0:blk.k1]):
            masks[(j,) + _window(o, window, mshape)] = 1.0
        mk = B.asarray(masks.reshape((K, 1) + mshape), like=x)
        xs = B.reshape(x[blk.i0:blk.i1], (1, m) + sub)
        bs = B.reshape(x0[blk.i0:blk.i1], (1, m) + sub)
        occluded = B.reshape(xs + mk * (bs - xs), (K * m,) + sub)
        with B.no_grad():
            scores = run.target_outputs(run.forward(occluded), np.tile(t[blk.i0:blk.i1], K))
        drop = tile(run, clean[blk.i0:blk.i1], K) - scores
        # Σ_k drop[k, i] · mask_k as one (m, K) @ (K, P) product
        dk = B.permute_dims(B.reshape(drop, (K, m)), (1, 0))
        acc.add(blk.i0, blk.i1, B.matmul(dk, B.reshape(mk, (K, -1))))
    total = B.reshape(acc.result(), (n,) + mshape) / B.asarray(count[None], like=x)
    return MethodResult(B.broadcast_to(total, shape) + 0.0, {"windows": len(origins)})


def _window(origin: Sequence[int], window: Sequence[int], mshape: Sequence[int]) -> tuple:
    return tuple(slice(None) if m == 1 else slice(o, o + w)
                 for o, w, m in zip(origin, window, mshape))


def rise(run: Run, *, masks: PositiveInt = 2000, cells: PositiveInt = 7, p: Probability = 0.5,
         probabilities: bool = True) -> MethodResult:
    """RISE: the expected target score over random smooth masks, per pixel.

    Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box
    Models" (BMVC 2018). Each mask is a ``cells × cells`` grid of Bernoulli(``p``) cells,
    bilinearly upsampled to ``(cells + 1)`` cell sizes and cropped at a random shift; the map is
    ``Σ_i f_c(x ⊙ M_i) M_i / (masks · p)``.

    Args:
        masks: number of random masks (all inputs share them; batched forwards only).
        cells: grid resolution of a mask.
        p: probability that a cell is kept.
        probabilities: score with the softmax probability of the target (the paper) rather
            than its logit.

    Returns:
        Maps of shape ``(N, H, W)`` (like CAM maps) for ``(N, C, H, W)`` inputs; grids, shifts
        and so the maps are fixed by the run's ``seed``.
    """
    B = run.backend
    x = run.inputs
    shape = B.shape(x)
    if len(shape) != 4:
        raise OptionError(f"rise needs image inputs (N, C, H, W), got shape {shape}")
    if not isinstance(masks, (int, np.integer)) or masks < 1:
        raise OptionError(f"masks={masks!r} must be a positive int (e.g. 2000-8000)")
    if not isinstance(cells, (int, np.integer)) or cells < 1:
        raise OptionError(f"cells={cells!r} must be a positive int (e.g. 7)")
    if not 0 < p <= 1:
        raise OptionError(f"p={p!r} must be in (0, 1]")
    n, c, h, w = shape
    ch, cw = -(-h // cells), -(-w // cells)  # cell size, rounded up
    up = ((cells + 1) * ch, (cells + 1) * cw)
    grids = (run.rng.random((masks, 1, cells, cells)) < p).astype(np.float32)
    shifts = np.stack([run.rng.integers(0, ch, masks), run.rng.integers(0, cw, masks)], axis=1)
    t = run.targets
    acc = Accumulator(run)
    chunks = list(blocks(run, n, masks, backward=False))
    for blk in run.progress(chunks, total=len(chunks), desc="rise"):
        K, m = blk.k1 - blk.k0, blk.i1 - blk.i0
        big = B.interpolate(B.asarray(grids[blk.k0:blk.k1], like=x), up, mode="bilinear")
        mk = B.concat([big[j:j + 1, :, dy:dy + h, dx:dx + w]
                       for j, (dy, dx) in enumerate(shifts[blk.k0:blk.k1])], axis=0)
        xs = B.reshape(x[blk.i0:blk.i1], (1, m, c, h, w))
        masked = B.reshape(xs * B.reshape(mk, (K, 1, 1, h, w)), (K * m, c, h, w))
        with B.no_grad():
            out = run.forward(masked)
            if probabilities:
                out = B.softmax(out, axis=1)
            scores = run.target_outputs(out, np.tile(t[blk.i0:blk.i1], K))
        sk = B.permute_dims(B.reshape(scores, (K, m)), (1, 0))
        acc.add(blk.i0, blk.i1, B.matmul(sk, B.reshape(mk, (K, h * w))))
    sal = B.reshape(acc.result(), (n, h, w)) / float(masks * p)
    return MethodResult(sal, {"masks": masks})


METHODS = {"occlusion": occlusion, "rise": rise}
