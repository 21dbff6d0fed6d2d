"""SmoothGrad, SmoothGrad² and VarGrad: any registered method averaged over noisy inputs.

``xplain.explain(model, x, method="smoothgrad", base="lrp", samples=32, stdev=0.15,
base_options={...})`` runs the ``base`` method on ``samples`` noisy copies of every input and
reduces the attributions per sample. The noisy copies are explained in batches under the run's
memory budget (a wrapped multi-pass method chunks again inside); the noise is drawn from the
run's seed, so the same seed gives the same result on every backend.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Tensor
from ..errors import OptionError
from ..plugins import registry
from ..options import NonNegativeFloat, PositiveInt, check_options
from ..run import MethodResult, Run
from ._batching import Accumulator, blocks, tile

_WRAPPERS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def noisy_moments(run: Run, *, base: str, samples: int, stdev: float, relative: bool,
                  base_options: dict[str, Any] | None, second: bool) -> tuple[Tensor, Tensor | None]:
    """Mean (and mean of squares if ``second``) of the ``base`` method's attributions over
    ``samples`` noisy copies ``x + ε`` of each input, ``ε ~ N(0, σ²)`` with
    ``σ = stdev · (max x − min x)`` per sample when ``relative`` else ``σ = stdev``."""
    B = run.backend
    methods = registry().methods
    if base not in methods:
        raise OptionError(f"base={base!r} is not a registered method; use one of the available: "
                          f"{', '.join(sorted(methods))}")
    if base in _WRAPPERS:
        raise OptionError(f"base={base!r} is itself a noise wrapper; pass the method to smooth "
                          f"(e.g. 'saliency', 'integrated_gradients', 'lrp')")
    entry = methods[base]
    opts = dict(base_options or {})
    if not entry.accepts_any_option:
        unknown = sorted(set(opts) - set(entry.options))
        if unknown:
            raise OptionError(f"base method {base!r} has no option(s) {unknown}; use its options "
                              f"{list(entry.options) or '(none)'}")
    check_options(base, entry.fn, opts)
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise OptionError(f"samples={samples!r} must be a positive int (e.g. 16-50)")
    if not stdev >= 0:
        raise OptionError(f"stdev={stdev!r} must be >= 0")
    x = run.inputs
    shape = B.shape(x)
    n, sub = shape[0], shape[1:]
    if relative:  # the paper's noise level: a fraction of each sample's value range
        flat = B.reshape(x, (n, -1))
        rng_ = B.max(flat, axis=1) - B.min(flat, axis=1)
        sigma = B.reshape(rng_, (n,) + (1,) * len(sub)) * float(stdev)
    else:
        sigma = B.zeros_like(x[:, :1]) + float(stdev)
    t = run.targets
    mean, sq = Accumulator(run), Accumulator(run)
    for blk in blocks(run, n, samples):
        K, m = blk.k1 - blk.k0, blk.i1 - blk.i0
        eps = B.asarray(run.rng.standard_normal((K * m,) + sub).astype(np.float32), like=x)
        noisy = tile(run, x[blk.i0:blk.i1], K) + eps * tile(run, sigma[blk.i0:blk.i1], K)
        result = entry.fn(run.derive(noisy, np.tile(t[blk.i0:blk.i1], K)), **opts)
        a = result.attributions if isinstance(result, MethodResult) else result
        ashape = B.shape(a)
        a = B.reshape(a, (K, m) + ashape[1:])
        mean.add(blk.i0, blk.i1, B.sum(a, axis=0))
        if second:
            sq.add(blk.i0, blk.i1, B.sum(a * a, axis=0))
    return mean.result() / float(samples), (sq.result() / float(samples) if second else None)


def smoothgrad(run: Run, *, base: str = "saliency", samples: PositiveInt = 16, stdev: NonNegativeFloat = 0.15,
               relative: bool = True, base_options: dict[str, Any] | None = None) -> Tensor:
    """SmoothGrad: the mean of ``base``'s attributions over noisy copies of the input.

    Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise"
    (ICML workshop 2017).

    Args:
        base: any registered method name (``"saliency"``, ``"integrated_gradients"``, ...).
        samples: noisy copies per input (explained in batches).
        stdev: noise standard deviation; with ``relative=True`` (default) a fraction of each
            sample's ``max − min`` (the paper's "noise level", 10–20 % works well), else in
            input units (Captum's ``stdevs``).
        base_options: options passed to the base method.

    Returns:
        Attributions shaped like the base method's, in its units. Targets are resolved on the
        clean input and kept for every noisy copy.
    """
    return noisy_moments(run, base=base, samples=samples, stdev=stdev, relative=relative,
                         base_options=base_options, second=False)[0]


def smoothgrad_sq(run: Run, *, base: str = "saliency", samples: PositiveInt = 16, stdev: NonNegativeFloat = 0.15,
                  relative: bool = True, base_options: dict[str, Any] | None = None) -> Tensor:
    """SmoothGrad²: the mean of the *squared* base attributions over noisy copies.

    Hooker, Erhan, Kindermans & Kim, "A Benchmark for Interpretability Methods in Deep Neural
    Networks" (NeurIPS 2019). Options as :func:`smoothgrad`; units are the base's squared.
    """
    return noisy_moments(run, base=base, samples=samples, stdev=stdev, relative=relative,
                         base_options=base_options, second=True)[1]


def vargrad(run: Run, *, base: str = "saliency", samples: PositiveInt = 16, stdev: NonNegativeFloat = 0.15,
            relative: bool = True, base_options: dict[str, Any] | None = None) -> Tensor:
    """VarGrad: the variance of the base attributions over noisy copies, ``E[a²] − E[a]²``.

    Adebayo, Gilmer, Goodfellow & Kim, "Local Explanation Methods for Deep Neural Networks
    Lack Sensitivity to Parameter Values" (ICLR workshop 2018). Options as :func:`smoothgrad`.
    """
    mean, sq = noisy_moments(run, base=base, samples=samples, stdev=stdev, relative=relative,
                             base_options=base_options, second=True)
    return sq - mean * mean


METHODS = {"smoothgrad": smoothgrad, "smoothgrad_sq": smoothgrad_sq, "vargrad": vargrad}
