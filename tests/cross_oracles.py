"""What the cross-backend tests (``XPLAIN_BACKEND=cross``) may compare, and how tightly.

Not a test module (no ``test_`` prefix): helpers shared by every test marked ``cross``.

Why not "the float32 maps agree to 1e-4": torch and paddle sum in different orders (and in a
different order again with another thread count or CPU), so a float32 pre-activation differs
between them by ~1e-7–1e-6 of its layer's scale. A deep random ReLU net evaluated on a few
images has ~1e5–1e6 pre-activations and max-pool windows; the closest of them to a ReLU kink
(|z| = 0) or to a max-pool tie is then ~1e-7 of the scale (measured: vgg16 at 32×32, one ReLU
at 1.4e-7 while paddle's error there was 1.3e-6; smallest max-pool gap 1.3e-6). That unit's
gradient mask flips in one framework, and the whole input-gradient map moves by a few percent
(the fresh-clone failure: 3.9 % relative L2). Nothing is wrong with either backend; the
comparison is ill-conditioned. So each cross test compares only what is well conditioned:

* **float64, full maps** (:func:`float64_pair`): with unit roundoff 1.1e-16 the frameworks'
  pre-activations differ by ~1e-15–1e-12 of the scale, while the nearest kink stays ~1e-7
  away; :func:`assert_no_kink_within_reach` measures both and demands a 1e3 safety factor, so
  no mask or max-pool winner can differ. The maps are then the same piecewise-linear
  function's value, equal to rounding: :data:`F64_RTOL` (:data:`F64_F32_CONSTANT_RTOL` where
  a kernel or xplain itself uses a float32 constant). This is the check that a backend
  computes the *same method*: a sign error or a missing ReLU mask changes O(1) of the map;
  subtler bugs too (an LRP stabiliser added without the sign of z, in paddle only, passed the
  old float32 comparison at 1e-4 and fails this one).
* **float32, each framework against its own autodiff** (:func:`autodiff_gradient`): the same
  batch through the same kernels, so the same masks; the map must equal the gradient to a few
  ulp of its largest entry: :data:`F32_SAME_FRAMEWORK_ATOL`.
* **float32, across frameworks, continuous quantities only**: logits (:data:`F32_LOGIT_ATOL`),
  and outputs of forward-only methods bounded through them; maps of shallow nets only after
  :func:`assert_no_kink_within_reach` has shown that no float32 kink is within reach.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

#: float32 logits, torch vs paddle, as a fraction of the batch's largest |logit|. Each layer
#: adds a relative rounding error of about u·√n (u = 2⁻²⁴ ≈ 6e-8, n = fan-in ≤ 25088 in vgg's
#: classifier, √n ≈ 160 → 1e-5) and depth accumulates a few such terms; measured: ≤ 3.6e-6
#: (vgg16), ≤ 1e-6 (resnet18) at 1 and 2 threads. 1e-4 leaves a ≥ 25× margin and is still
#: ~1e4 below what a real difference (a wrong weight layout, a missing layer) produces.
F32_LOGIT_ATOL = 1e-4

#: float64 maps (and logits), torch vs paddle, as a fraction of the largest |entry|, when no
#: kink is within reach. Measured: ≤ 3e-15 (vgg16), ≤ 3e-12 (resnet18: paddle keeps BatchNorm's
#: ε as a float32 attribute, 1e-5 → 9.99999975e-6, a 2.5e-14 shift of every normalisation).
#: 1e-9 is 300× above the worst of these and 60× below float32's unit roundoff, so a backend
#: that silently computed in float32 would still be caught.
F64_RTOL = 1e-9

#: float64, where a float32 constant enters the float64 computation. Paddle's kernels keep some
#: for float64 tensors: the avg-pool backward's 1/(window size) (measured 2.05e-8 off for
#: 1/196) and bilinear interpolation's weights (1.2e-7 off for a 4 → 40 resize; torch's are
#: exact to 2e-16). xplain itself rounds Integrated Gradients' and GradientSHAP's α and
#: quadrature weights to float32 (``methods/_batching.lead``; 3e-9 of the map here). Each such
#: constant is off by ≤ u = 6e-8 of its value and enters the result linearly; 1e-6 allows ~16
#: of them in a row, and is still 1e4 below a flipped mask.
F64_F32_CONSTANT_RTOL = 1e-6

#: float32 map vs the same framework's own autodiff on the same batch: the same kernels in the
#: same order, so in practice bit-identical; allow 8 ulp of the largest entry (8 · 2⁻²³ ≈ 1e-6)
#: for a mathematically equal but differently ordered final reduction (e.g. target selection).
F32_SAME_FRAMEWORK_ATOL = 1e-6

#: required ratio between the nearest kink (ReLU input |z|, max-pool top-2 gap) and the largest
#: cross-framework difference of those same values, both relative to the layer's scale.
MARGIN_SAFETY = 1e3

_CACHE: dict = {}


# ---- models and tensors ---------------------------------------------------------------------
def zoo_pair(both: Any, name: str, dtype: str = "float32", **kw: Any) -> tuple[Any, Any]:
    """(torch, paddle) zoo model ``name`` with identical weights, cached for the session (a
    vgg16 pair takes ~10 s to draw), in ``dtype``."""
    key = (name, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = {"float32": tuple(fw.model(name, **kw) for fw in both)}
    entry = _CACHE[key]
    if dtype not in entry:
        entry[dtype] = tuple(cast(fw, m, dtype) for fw, m in zip(both, entry["float32"]))
    return entry[dtype]


def forget(name: str) -> None:
    """Drop every cached pair of zoo model ``name`` (a vgg16 pair in float32 and float64 holds
    3.3 GB; keep only those several test modules share)."""
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]


def float64_pair(both: Any, pair: tuple[Any, Any]) -> tuple[Any, Any]:
    """float64 copies of a (torch, paddle) model pair (float32 → float64 is exact)."""
    return tuple(cast(fw, m, "float64") for fw, m in zip(both, pair))


def cast(fw: Any, model: Any, dtype: str) -> Any:
    m = copy.deepcopy(model)
    if fw.name == "torch":
        return m.to(getattr(fw.module, dtype)).eval()
    m.to(dtype=dtype)
    m.eval()
    return m


def logits(fw: Any, model: Any, x: np.ndarray, dtype: str = "float32") -> np.ndarray:
    out = model(fw.tensor(x, dtype=dtype))
    return fw.numpy(out.detach() if fw.name == "torch" else out).astype(np.float64)


def autodiff_gradient(fw: Any, model: Any, x: np.ndarray, targets: Any,
                      dtype: str = "float32") -> np.ndarray:
    """d(Σᵢ out[i, targetᵢ]) / dx by the framework's own autodiff, whole batch in one pass."""
    xt = fw.tensor(x, dtype=dtype)
    if fw.name == "torch":
        xt.requires_grad_(True)
    else:
        xt.stop_gradient = False
    out = model(xt)
    onehot = np.zeros(tuple(int(s) for s in out.shape), dtype=dtype)
    onehot[np.arange(onehot.shape[0]), np.asarray(targets)] = 1.0
    score = (out * fw.tensor(onehot, dtype=dtype)).sum()
    if fw.name == "torch":
        (g,) = fw.module.autograd.grad(score, xt)
        return g.detach().numpy().astype(np.float64)
    (g,) = fw.module.grad([score], [xt])
    return g.numpy().astype(np.float64)


# ---- comparisons ----------------------------------------------------------------------------
def rel_max_error(a: Any, b: Any) -> float:
    """max |a − b| / max |a|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-300))


def assert_close(actual: Any, desired: Any, rtol: float, what: str) -> None:
    """max |actual − desired| ≤ rtol · max |desired| (elementwise, scale of the whole array)."""
    err = rel_max_error(desired, actual)
    assert np.abs(np.asarray(desired)).max() > 0, f"{what}: all zero, nothing compared"
    assert err <= rtol, f"{what}: max |difference| = {err:.3g} of max |value| > {rtol:g}"


def assert_argmax_out_of_reach(lt: np.ndarray, lp: np.ndarray, safety: float = MARGIN_SAFETY) -> None:
    """Each sample's top-2 logit gap is ``safety`` times the frameworks' largest logit
    difference: a method that explains the argmax class explains the same class in both."""
    top2 = -np.partition(-lt, 1, axis=1)[:, :2]
    gap = float((top2[:, 0] - top2[:, 1]).min())
    err = float(np.abs(lt - lp).max())
    assert gap > safety * err, f"top-2 logit gap {gap:.3g} is within {safety:g}× of the " \
                               f"frameworks' logit difference {err:.3g}: the argmax may differ"


# ---- kinks ----------------------------------------------------------------------------------
def kink_inputs(fw: Any, model: Any, x: np.ndarray, dtype: str) -> list[tuple[str, Any, np.ndarray]]:
    """Inputs of every ReLU and max-pool layer call in one forward pass of ``x``, in call order:
    ``(kind, pool geometry or None, array)``."""
    nn = fw.module.nn
    if fw.name == "torch":
        mods = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.MaxPool2d))]
        pool = nn.MaxPool2d
    else:
        mods = [m for _, m in model.named_sublayers(include_self=True)
                if isinstance(m, (nn.ReLU, nn.MaxPool2D))]
        pool = nn.MaxPool2D
    rec: list = []

    def hook(m: Any, inputs: tuple) -> None:
        z = inputs[0]
        z = z.detach().numpy() if fw.name == "torch" else z.numpy()
        geo = None
        if isinstance(m, pool):
            if fw.name == "torch":
                geo = (m.kernel_size, m.stride, m.padding)
            else:
                geo = (m.ksize, m.stride if m.stride is not None else m.ksize, m.padding)
        rec.append(("maxpool" if geo else "relu", geo, np.array(z, dtype=np.float64, copy=True)))

    handles = [m.register_forward_pre_hook(hook) for m in mods]
    try:
        with fw.module.no_grad():
            model(fw.tensor(x, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    return rec


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _pool_gaps(z: np.ndarray, geo: tuple) -> np.ndarray:
    """top-1 minus top-2 of every max-pool window of ``z`` (N, C, H, W); exact ties (both top
    values equal — dead ReLU outputs, identical in every framework) are left out."""
    (kh, kw), (sh, sw), (ph, pw) = (_pair(g) for g in geo)
    zp = np.pad(z, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(zp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    win = win.reshape(win.shape[:4] + (kh * kw,))
    top2 = -np.partition(-win, 1, axis=-1)[..., :2]
    gap = top2[..., 0] - top2[..., 1]
    return gap[gap > 0]


def assert_no_kink_within_reach(both: Any, models: tuple[Any, Any], x: np.ndarray,
                                dtype: str, safety: float = MARGIN_SAFETY) -> dict:
    """Every ReLU input and max-pool winner is ``safety`` times farther from its kink (|z| = 0,
    a top-2 tie) than the two frameworks' values of it differ, each relative to the layer's
    largest |value|: so no mask, no winner can differ between them, and maps that are
    piecewise-linear in those values are compared on the same piece.

    Returns ``{"margin": smallest distance, "error": largest difference}`` (relative).
    """
    rt, rp = (kink_inputs(fw, m, x, dtype) for fw, m in zip(both, models))
    assert [(k, g is None) for k, g, _ in rt] == [(k, g is None) for k, g, _ in rp], \
        "the frameworks ran different ReLU/max-pool layers"
    margin, error, where = np.inf, 0.0, None
    for i, ((kind, geo, a), (_, _, b)) in enumerate(zip(rt, rp)):
        assert a.shape == b.shape, f"call {i} ({kind}): shapes {a.shape} vs {b.shape}"
        scale = np.abs(a).max()
        if scale == 0:
            continue
        error = max(error, float(np.abs(a - b).max() / scale))
        if kind == "relu":  # an input exactly 0 in both is the same in both (dead padding)
            near = np.abs(a[(a != 0) | (b != 0)]).min(initial=np.inf) / scale
        else:
            near = _pool_gaps(a, geo).min(initial=np.inf) / scale
        if near < margin:
            margin, where = float(near), f"call {i} ({kind}, shape {a.shape})"
    assert margin > safety * error, (
        f"{dtype}: a kink is within reach of rounding: nearest at {margin:.3g} of the layer "
        f"scale ({where}) but the frameworks differ by up to {error:.3g}; maps may differ by a "
        f"flipped mask — compare in float64 or on other inputs")
    return {"margin": margin, "error": error}
