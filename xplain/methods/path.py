"""Path methods: Integrated Gradients, GradientSHAP and DeepLIFT (rescale rule).

All three attribute ``f(x) − f(x′)`` to the input features along the way from a baseline
``x′`` to the input ``x``. Their many passes (integration steps, baseline draws) run as large
batches chunked under the run's memory budget (:mod:`._batching`).
"""
from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from ..backend import LayerInfo, Tensor
from ..errors import ModelError, OptionError
from ..options import PositiveFloat, PositiveInt, NonNegativeFloat
from ..run import MethodResult, Run
from ._activations import activation_layers, replaced_outputs
from ._batching import Accumulator, blocks, lead, tile

Integration = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle",
                      "riemann_trapezoid"]
INTEGRATION: tuple[str, ...] = get_args(Integration)
NAMED_BASELINES = ("black", "blur", "uniform")


def integration_points(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points ``α_k ∈ [0, 1]`` and weights ``w_k`` with ``∫₀¹ g(α) dα ≈ Σ_k w_k g(α_k)``.

    Riemann sums over ``steps`` equal intervals (left/right/middle point, or the trapezoid rule
    on ``steps`` points including both ends), or Gauss–Legendre quadrature with ``steps``
    nodes, exact for polynomials of degree ``2·steps − 1``.
    """
    if rule not in INTEGRATION:
        raise OptionError(f"integration={rule!r} is unknown; use one of {INTEGRATION}")
    if not isinstance(steps, (int, np.integer)) or steps < 1 or (rule == "riemann_trapezoid" and steps < 2):
        raise OptionError(f"steps={steps!r} must be a positive int (at least 2 for the trapezoid "
                          f"rule); 50 is a good default, raise it if the delta is large")
    n = int(steps)
    if rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * w
    if rule == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, n)
        w = np.full(n, 1.0 / (n - 1))
        w[[0, -1]] *= 0.5
        return alphas, w
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


def resolve_baseline(run: Run, baseline: Any, *, blur_sigma: float = 5.0, name: str = "baseline") -> Tensor:
    """The baseline as a tensor of the input's shape.

    ``baseline`` may be a number (every feature that value), ``"black"`` (zeros: black in the
    input's own units — for normalised images pass the normalised black as a tensor),
    ``"blur"`` (each channel Gaussian-blurred with ``blur_sigma`` pixels, computed once on the
    host with OpenCV), ``"uniform"`` (noise uniform in each sample's ``[min, max]``, drawn from
    the run's seed), or a tensor/array of shape ``(N, ...)``, ``(1, ...)`` or ``(...)``.
    """
    B = run.backend
    x = run.inputs
    shape = B.shape(x)
    if baseline is None:
        baseline = 0.0
    if isinstance(baseline, str):
        if baseline == "black":
            return B.zeros_like(x)
        if baseline == "uniform":
            a = B.to_numpy(x).reshape(shape[0], -1)
            lo, hi = a.min(axis=1), a.max(axis=1)
            u = run.rng.uniform(size=(shape[0], a.shape[1]))
            return B.asarray((lo[:, None] + u * (hi - lo)[:, None]).reshape(shape), like=x)
        if baseline == "blur":
            return B.asarray(gaussian_blur(B.to_numpy(x), blur_sigma), like=x)
        raise OptionError(f"{name}={baseline!r} is unknown; use a number, a tensor, or one of "
                          f"{NAMED_BASELINES}")
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, (bool, np.bool_)):
        if not np.isfinite(float(baseline)):
            raise OptionError(f"{name}={baseline!r} is not finite; pass a finite number or tensor")
        return B.zeros_like(x) + float(baseline)
    if not B.is_tensor(baseline):
        if isinstance(baseline, np.ndarray):
            baseline = B.asarray(baseline, like=x)
        else:
            raise OptionError(f"{name} of type {type(baseline).__name__} is not usable; pass a "
                              f"number, a {B.name} tensor/numpy array, or one of {NAMED_BASELINES}")
    bshape = B.shape(baseline)
    if bshape == shape[1:]:
        baseline = B.reshape(baseline, (1,) + bshape)
        bshape = (1,) + bshape
    if len(bshape) != len(shape) or bshape[1:] != shape[1:] or bshape[0] not in (1, shape[0]):
        raise OptionError(f"{name} has shape {bshape} but the inputs have shape {shape}; pass "
                          f"one baseline per sample {shape}, one for all {(1,) + shape[1:]}, or "
                          f"a number")
    baseline = B.asarray(baseline, like=x)
    if not B.all(B.isfinite(baseline)):
        raise OptionError(f"{name} contains NaN or Inf; pass finite values (the attributions "
                          f"would be NaN or meaningless)")
    return B.broadcast_to(baseline, shape) + 0.0


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Each ``(H, W)`` plane of an ``(N, C, H, W)`` array blurred with a Gaussian of ``sigma``
    pixels (reflecting borders)."""
    if a.ndim != 4:
        raise OptionError(f"baseline='blur' needs image inputs (N, C, H, W), got shape {a.shape};"
                          f" pass a numeric or tensor baseline instead")
    if not sigma > 0:
        raise OptionError(f"blur_sigma={sigma!r} must be > 0 (pixels)")
    import cv2

    out = np.empty_like(a, dtype=np.float32)
    for n in range(a.shape[0]):
        for c in range(a.shape[1]):
            out[n, c] = cv2.GaussianBlur(a[n, c].astype(np.float32), (0, 0), float(sigma),
                                         borderType=cv2.BORDER_REFLECT)
    return out


def endpoint_delta(run: Run, attributions: Tensor, x: Tensor, x0: Tensor) -> Tensor:
    """Completeness gap ``Σ attr − (f(x) − f(x′))`` per sample, in score units, shape ``(N,)``."""
    B = run.backend
    n = B.shape(x)[0]
    t = run.targets
    with B.no_grad():
        out = run.forward(B.concat([x, x0], axis=0))
    scores = run.target_outputs(out, np.concatenate([t, t]))
    total = B.sum(B.reshape(attributions, (n, -1)), axis=1)
    return total - (scores[:n] - scores[n:])


def path_gradients(run: Run, x0: Tensor, diff: Tensor, alphas: np.ndarray,
                   weights: np.ndarray) -> Tensor:
    """``Σ_k w_k ∇f(x′ + α_k (x − x′))`` per sample, batched over steps and samples."""
    B = run.backend
    shape = B.shape(x0)
    n = shape[0]
    t = run.targets
    acc = Accumulator(run)
    for blk in blocks(run, n, len(alphas)):
        K = blk.k1 - blk.k0
        sub = shape[1:]
        a = lead(run, alphas[blk.k0:blk.k1], x0, len(shape) + 1)
        pts = B.reshape(x0[blk.i0:blk.i1], (1, blk.i1 - blk.i0) + sub) + a * B.reshape(
            diff[blk.i0:blk.i1], (1, blk.i1 - blk.i0) + sub)
        pts = B.reshape(pts, (K * (blk.i1 - blk.i0),) + sub)
        g, _ = run.input_gradient(pts, np.tile(t[blk.i0:blk.i1], K))
        g = B.reshape(g, (K, blk.i1 - blk.i0) + sub)
        w = lead(run, weights[blk.k0:blk.k1], g, len(shape) + 1)
        acc.add(blk.i0, blk.i1, B.sum(g * w, axis=0))
    return acc.result()


def integrated_gradients(run: Run, *, baseline: Any = 0.0, steps: PositiveInt = 50,
                         integration: Integration = "gausslegendre", return_delta: bool = False,
                         blur_sigma: PositiveFloat = 5.0) -> MethodResult:
    """Integrated Gradients: ``(x − x′) ⊙ ∫₀¹ ∇f(x′ + α(x − x′)) dα``.

    Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks" (ICML 2017).

    Args:
        baseline: the reference ``x′`` (see :func:`resolve_baseline`): a number, a tensor,
            ``"black"``, ``"blur"`` or ``"uniform"`` (random, from the run's ``seed``).
        steps: number of integration points; all run as batches under the memory budget.
        integration: ``"gausslegendre"`` (default) or ``"riemann_left"``, ``"riemann_right"``,
            ``"riemann_middle"``, ``"riemann_trapezoid"``.
        return_delta: also report the completeness gap ``Σ attr − (f(x) − f(x′))`` per sample
            as ``extras["delta"]`` (one extra forward pass); it shrinks as ``steps`` grows.
        blur_sigma: Gaussian width in pixels for ``baseline="blur"``.

    Returns:
        Attributions of the input's shape, in score units (they sum to ≈ ``f(x) − f(x′)``).
    """
    alphas, weights = integration_points(integration, steps)
    x = run.inputs
    x0 = resolve_baseline(run, baseline, blur_sigma=blur_sigma)
    diff = x - x0
    attr = diff * path_gradients(run, x0, diff, alphas, weights)
    extras: dict[str, Any] = {"baseline": x0}
    if return_delta:
        extras["delta"] = endpoint_delta(run, attr, x, x0)
    return MethodResult(attr, extras)


def gradient_shap(run: Run, *, baselines: Any = 0.0, samples: PositiveInt = 5,
                  stdev: NonNegativeFloat = 0.0) -> Tensor:
    """GradientSHAP: expected ``(x̃ − x′) ⊙ ∇f(x′ + α(x̃ − x′))`` over random baselines ``x′``
    (drawn uniformly from ``baselines``), ``α ~ U(0, 1)`` and noisy inputs ``x̃ = x + ε``,
    ``ε ~ N(0, stdev²)``.

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions" (NeurIPS 2017);
    this is the sampling estimator popularised by Captum's ``GradientShap``.

    Args:
        baselines: the baseline distribution: a tensor ``(R, ...)`` of R references shared by
            all samples (sample shape as the input; also when R = N, as in Captum), or one
            reference per sample: a number, a named baseline, or a tensor ``(...)``.
        samples: draws per input (all batched).
        stdev: standard deviation of the input noise, in input units.

    Randomness (in this order: baseline indices ``(samples, N)``, α ``(samples, N)``, noise)
    comes from the run's ``seed``.
    """
    B = run.backend
    x = run.inputs
    shape = B.shape(x)
    n, sub = shape[0], shape[1:]
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise OptionError(f"samples={samples!r} must be a positive int (e.g. 5 or 50)")
    if not stdev >= 0:
        raise OptionError(f"stdev={stdev!r} must be >= 0 (input units)")
    if isinstance(baselines, np.ndarray) and baselines.shape[1:] == sub:
        baselines = B.asarray(baselines, like=x)
    if B.is_tensor(baselines) and B.shape(baselines)[1:] == sub:
        # a distribution of R references shared by all samples (Captum's convention)
        flat_refs, own = B.reshape(B.asarray(baselines, like=x), (B.shape(baselines)[0], -1)), None
        r = B.shape(flat_refs)[0]
    else:  # one reference per sample (number, named, or a single tensor)
        flat_refs, own, r = None, resolve_baseline(run, baselines, name="baselines"), 1
    idx = run.rng.integers(0, r, size=(samples, n))
    alphas = run.rng.uniform(0.0, 1.0, size=(samples, n))
    t = run.targets
    acc = Accumulator(run)
    for blk in blocks(run, n, samples):
        K, m = blk.k1 - blk.k0, blk.i1 - blk.i0
        xs = tile(run, x[blk.i0:blk.i1], K)
        if stdev > 0:
            eps = run.rng.standard_normal((K * m,) + sub).astype(np.float32) * np.float32(stdev)
            xs = xs + B.asarray(eps, like=x)
        if own is not None:
            bl = tile(run, own[blk.i0:blk.i1], K)
        else:  # gather the drawn references with a one-hot matmul (portable, one op)
            onehot = np.zeros((K * m, r), dtype=np.float32)
            onehot[np.arange(K * m), idx[blk.k0:blk.k1, blk.i0:blk.i1].ravel()] = 1.0
            bl = B.reshape(B.matmul(B.asarray(onehot, like=x), flat_refs), (K * m,) + sub)
        a = lead(run, alphas[blk.k0:blk.k1, blk.i0:blk.i1].ravel(), x, len(shape))
        d = xs - bl
        g, _ = run.input_gradient(bl + a * d, np.tile(t[blk.i0:blk.i1], K))
        acc.add(blk.i0, blk.i1, B.sum(B.reshape(g * d, (K, m) + sub), axis=0))
    return acc.result() / float(samples)


# ---- DeepLIFT ---------------------------------------------------------------------------
_RESCALE_EPS = 1e-7


def deeplift(run: Run, *, baseline: Any = 0.0, return_delta: bool = False,
             blur_sigma: PositiveFloat = 5.0) -> MethodResult:
    """DeepLIFT with the rescale rule: ``(x − x′) ⊙ ∇*f`` where, at every element-wise
    activation layer (ReLU, sigmoid, tanh, ...), the gradient is replaced by the multiplier
    ``(y − y′)/(z − z′)`` of the layer's output and input differences between the input and
    the reference pass (the local derivative where ``|z − z′| < 1e-7``).

    Shrikumar, Greenside & Kundaje, "Learning Important Features Through Propagating
    Activation Differences" (ICML 2017); computed through the gradient as in Ancona et al.,
    "Towards better understanding of gradient-based attribution methods" (ICLR 2018).

    Summation-to-delta (``Σ attr = f(x) − f(x′)``) holds exactly when every nonlinearity is an
    activation *layer*; max-pooling passes the plain gradient (it selects, it does not
    rescale) and functional activations (``F.relu``) are invisible to hooks, so on such models
    the sum is approximate — check ``return_delta``.

    Args:
        baseline: the reference ``x′``, as for :func:`integrated_gradients`.
        return_delta: report ``Σ attr − (f(x) − f(x′))`` per sample as ``extras["delta"]``.
        blur_sigma: Gaussian width in pixels for ``baseline="blur"``.
    """
    B = run.backend
    x = run.inputs
    x0 = resolve_baseline(run, baseline, blur_sigma=blur_sigma)
    infos = activation_layers(run, ("relu", "activation"))
    t = run.targets
    parts = [_rescaled_gradient(run, infos, x[sl], x0[sl], t[sl])
             for sl in run.chunks(B.shape(x)[0])]
    grad = parts[0] if len(parts) == 1 else B.concat(parts, axis=0)
    attr = (x - x0) * grad
    extras: dict[str, Any] = {"baseline": x0}
    if return_delta:
        extras["delta"] = endpoint_delta(run, attr, x, x0)
    return MethodResult(attr, extras)


def _rescaled_gradient(run: Run, infos: list[LayerInfo], x: Tensor, x0: Tensor,
                       t: np.ndarray) -> Tensor:
    """The gradient of the target score at ``x`` with the rescale rule at ``infos``: one
    reference pass on ``x0`` records every activation call's input and output, matched to
    the input pass's calls by order (so a layer called twice gets both calls right)."""
    B = run.backend
    refs: dict[int, list[tuple[Tensor, Tensor]]] = {}
    used: dict[int, int] = {}

    def record(info: LayerInfo, z: Tensor, y: Tensor) -> Tensor:
        refs.setdefault(id(info.module), []).append((z, y))
        return y

    def rescale(info: LayerInfo, z: Tensor, y: Tensor) -> Tensor:
        key = id(info.module)
        k = used.get(key, 0)
        used[key] = k + 1
        if k >= len(refs.get(key, ())):
            raise ModelError(f"layer {info.name!r} ran more often on the input than on the "
                             f"baseline; DeepLIFT needs the same computation path for both")
        z0, y0 = refs[key][k]
        dz = z - z0
        big = B.abs(dz) > _RESCALE_EPS
        m = B.stop_gradient((y - y0) / B.where(big, dz, 1.0))
        # value y; gradient m where the input moved, the layer's own derivative elsewhere
        return B.where(big, z * m + B.stop_gradient(y - z * m), y)

    with B.no_grad(), replaced_outputs(run, infos, record):
        run.forward(x0)
    with replaced_outputs(run, infos, rescale):
        g, _ = run.input_gradient(x, t)
    if sum(used.values()) != sum(len(v) for v in refs.values()):
        raise ModelError("activation layers ran fewer times on the input than on the "
                         "baseline; DeepLIFT needs the same computation path for both")
    return g


METHODS = {"integrated_gradients": integrated_gradients, "gradient_shap": gradient_shap,
           "deeplift": deeplift}
