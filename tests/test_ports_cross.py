"""torchvision weights ported into every paddle.vision architecture both zoos have
(:func:`xplain_paddle.port.torch_to_paddle`) give the same logits, saliency and Grad-CAM maps.

One constructor per family, the smallest, with random weights and BatchNorm statistics
(:func:`xplain.testing.zoo.fill_torch`), ``num_classes=10``, on two random images of a size the
paddle model computes the same function at (:func:`~xplain_paddle.port.size_mismatch`).
Compared as :mod:`cross_oracles` says is well conditioned: logits in float32 and float64, maps in
float64 only, after showing that no kink is within reach of rounding.

The kink check here records *calls*, not modules (:func:`kink_inputs`): these models apply
ReLU and max-pool functionally (torchvision's Inception3 and DenseNet head, paddle's
SqueezeNet and AlexNet), fuse ReLU into BatchNorm (paddle's DenseNet), and have
Hardswish/Hardsigmoid (MobileNetV3, kinks at ±3) and ceil-mode max-pools (SqueezeNet), none of
which :func:`cross_oracles.kink_inputs` sees.

Runs with ``XPLAIN_BACKEND=cross``.
"""
from __future__ import annotations

import copy
import inspect
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import xplain
from cross_oracles import (F32_LOGIT_ATOL, F64_F32_CONSTANT_RTOL, F64_RTOL, MARGIN_SAFETY, assert_close,
                           logits)
from xplain_paddle.port import family_of, layer_map, size_mismatch, torch_to_paddle

pytestmark = pytest.mark.cross


@dataclass(frozen=True)
class Case:
    """One family's test: ``name`` in both zoos, input ``size``, Grad-CAM at torch module
    ``cam_layer`` (its paddle name comes from :func:`layer_map`), the float64 tolerances of the
    saliency map and of Grad-CAM's layer maps (both gradients: see CASES for each exception)."""

    name: str
    size: int
    cam_layer: str
    saliency_rtol: float = F64_RTOL
    cam_rtol: float = F64_RTOL
    torch_kw: dict = field(default_factory=dict)


# Measured float64 differences, paddle vs torch, relative to the largest |value| (logits,
# saliency, Grad-CAM layer maps): densenet121 1.4e-15, 1.2e-15, 4.1e-15; mobilenet_v3_small
# 2.3e-15, 2.0e-8, 2.4e-8; squeezenet1_0 5.6e-16, 7.5e-9, 5.2e-15; shufflenet_v2_x0_5 9.3e-16,
# 1.3e-15, 4.6e-15; alexnet 7.1e-15, 2.7e-15, 6.4e-15; inception_v3 3.8e-15, 6.0e-9, 3.6e-10.
# The three exceptions are float32 constants inside float64 kernels (cross_oracles:
# F64_F32_CONSTANT_RTOL), each identified:
CASES = {c.name: c for c in (
    Case("densenet121", 64, "features.denseblock3"),
    # torch's Hardsigmoid *backward* multiplies by float32(1/6) = 0.16666667163 even for float64
    # tensors (its forward by exactly 1/6; measured), so torch's own gradient through every SE
    # gate is 3e-8 off its forward; paddle's slope is applied consistently (port.py folds it)
    Case("mobilenet_v3_small", 64, "features.8", F64_F32_CONSTANT_RTOL, F64_F32_CONSTANT_RTOL),
    # 67 px: every max-pool window fits (torch ceil_mode = paddle floor). The head averages the
    # last 3×3 map: paddle's avg-pool backward scales by float32(1/9) (7.5e-9 off, as measured
    # on the saliency); Grad-CAM's min-max normalised layer maps are invariant to that uniform
    # factor, F64_RTOL
    Case("squeezenet1_0", 67, "features.10", F64_F32_CONSTANT_RTOL),
    Case("shufflenet_v2_x0_5", 64, "stage3.7"),
    # conv5's pooled map must be 6×6 for paddle (no adaptive pool): 223–254 px
    Case("alexnet", 224, "features.10"),
    # the smallest input Inception3 takes. Its 3×3 average-pool branches: paddle's backward
    # scales by float32(1/9), as above, and not uniformly (saliency 6e-9, layer maps 3.6e-10)
    Case("inception_v3", 75, "Mixed_6e", F64_F32_CONSTANT_RTOL, F64_F32_CONSTANT_RTOL,
         {"aux_logits": True, "transform_input": False, "init_weights": False}),
)}

#: the rest of each family (float64 logits only, 32 px): 1–12 s each on a shared 2-core
#: machine, mostly building the pair
OTHERS = ("densenet161", "densenet169", "densenet201", "mobilenet_v3_large", "shufflenet_v2_x1_0",
          "shufflenet_v2_x1_5")


# ---- ported pairs ------------------------------------------------------------------------------
def _torch_model(name: str, **kw: Any) -> Any:
    import torchvision

    from xplain.testing.zoo import fill_torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's "init_weights will change" notice
        model = getattr(torchvision.models, name)(weights=None, num_classes=10, **kw)
    return fill_torch(model, seed=0)  # random weights and BatchNorm statistics (zoo.draw)


def _paddle_model(name: str, dtype: str) -> Any:
    import paddle.vision.models as pvm

    model = getattr(pvm, name)(num_classes=10)
    model.to(dtype=dtype)
    return model


@dataclass
class Ported:
    """A torch model and its paddle port, in float32 and in float64. Each dtype is ported
    separately (float64 torch → float64 paddle), so that the folds (port.py) are exact."""

    name: str
    torch: dict
    paddle: dict
    checked: dict = field(default_factory=dict)

    @classmethod
    def build(cls, name: str, dtypes: tuple[str, ...] = ("float32", "float64"), **torch_kw: Any) -> Ported:
        import torch

        t32 = _torch_model(name, **torch_kw)
        ts = {d: copy.deepcopy(t32).to(getattr(torch, d)).eval() if d != "float32" else t32
              for d in dtypes}  # float32 → float64 is exact
        return cls(name, ts, {d: torch_to_paddle(m, _paddle_model(name, d)) for d, m in ts.items()})

    def pair(self, dtype: str) -> tuple[Any, Any]:
        return self.torch[dtype], self.paddle[dtype]

    def no_kink_within_reach(self, both: Any, x: np.ndarray) -> dict:
        """:func:`assert_no_kink_within_reach` for the float64 pair at ``x``, once."""
        key = x.tobytes()
        if key not in self.checked:
            self.checked[key] = assert_no_kink_within_reach(both, self.pair("float64"), x)
        return self.checked[key]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: Any) -> Any:
    """Module-scoped and parametrized: pytest runs every test of one family before building the
    next, so at most one pair is alive (alexnet's float32 + float64 pairs hold 1.4 GB)."""
    spec = CASES[request.param]
    ported = Ported.build(spec.name, **spec.torch_kw)
    x = np.random.default_rng(7).standard_normal((2, 3, spec.size, spec.size)).astype(np.float32)
    assert size_mismatch(ported.paddle["float64"], spec.size) is None
    yield spec, ported, x


# ---- kinks, recorded per call ------------------------------------------------------------------
@dataclass
class Kink:
    """One recorded call: ``u`` is the activation's input in units where its kinks sit at
    ``points`` (max-pools: the input and the pool geometry)."""

    kind: str
    u: np.ndarray
    points: tuple[float, ...] = ()
    pool: tuple | None = None


def _np(fw: Any, t: Any) -> np.ndarray:
    return np.array(t.detach().numpy() if fw.name == "torch" else t.numpy(), dtype=np.float64, copy=True)


@contextmanager
def _recording(fw: Any, model: Any, rec: list[Kink]):
    """Patch the framework's functional ReLU, Hardswish, Hardsigmoid and max-pool (modules call
    them too) to record their inputs; paddle's ``BatchNorm(act="relu")`` gets its activation
    moved into a post-hook that calls the patched ReLU."""
    F = fw.module.nn.functional
    orig = {n: getattr(F, n) for n in ("relu", "hardswish", "hardsigmoid", "max_pool2d")}

    def relu(x, *a, **k):
        rec.append(Kink("relu", _np(fw, x), (0.0,)))
        return orig["relu"](x, *a, **k)

    def hardswish(x, *a, **k):  # x·relu6(x + 3)/6 in both (paddle's measured exact)
        rec.append(Kink("hardswish", _np(fw, x), (-3.0, 3.0)))
        return orig["hardswish"](x, *a, **k)

    def hardsigmoid(x, *a, **k):
        if fw.name == "torch":  # relu6(x + 3)/6: kinks at x = ±3
            u = _np(fw, x) / 3.0
        else:  # clip(slope·x + offset, 0, 1), slope a float32 attribute: kinks where it is 0, 1
            b = inspect.signature(orig["hardsigmoid"]).bind(x, *a, **k)
            b.apply_defaults()
            slope = float(np.float32(b.arguments["slope"]))
            u = (slope * _np(fw, x) + b.arguments["offset"] - 0.5) / 0.5
        rec.append(Kink("hardsigmoid", u, (-1.0, 1.0)))
        return orig["hardsigmoid"](x, *a, **k)

    if fw.name == "torch":
        def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                       return_indices=False):
            rec.append(Kink("maxpool", _np(fw, x), pool=(kernel_size, stride or kernel_size, padding, ceil_mode)))
            return orig["max_pool2d"](x, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                                      return_indices=return_indices)
    else:
        def max_pool2d(x, *a, **k):
            b = inspect.signature(orig["max_pool2d"]).bind(x, *a, **k)
            b.apply_defaults()
            g = b.arguments
            rec.append(Kink("maxpool", _np(fw, x),
                            pool=(g["kernel_size"], g["stride"] or g["kernel_size"], g["padding"], g["ceil_mode"])))
            return orig["max_pool2d"](x, *a, **k)

    fused, hooks = [], []
    if fw.name == "paddle":
        for _, layer in model.named_sublayers(include_self=True):
            if isinstance(layer, fw.module.nn.BatchNorm) and layer._act == "relu":
                layer._act = None
                fused.append(layer)
                hooks.append(layer.register_forward_post_hook(lambda _l, _i, out: F.relu(out)))
    for n, f in (("relu", relu), ("hardswish", hardswish), ("hardsigmoid", hardsigmoid),
                 ("max_pool2d", max_pool2d)):
        setattr(F, n, f)
    try:
        yield
    finally:
        for n, f in orig.items():
            setattr(F, n, f)
        for h in hooks:
            h.remove()
        for layer in fused:
            layer._act = "relu"


def kink_inputs(fw: Any, model: Any, x: np.ndarray, dtype: str) -> list[Kink]:
    rec: list[Kink] = []
    with _recording(fw, model, rec), fw.module.no_grad():
        model(fw.tensor(x, dtype=dtype))
    return rec


def _two(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _pool_gaps(z: np.ndarray, pool: tuple) -> np.ndarray:
    """top-1 minus top-2 of every max-pool window of ``z`` (N, C, H, W), ceil_mode included;
    exact ties (equal in every framework: dead ReLU outputs) left out."""
    kernel, stride, padding, ceil = pool
    (kh, kw), (sh, sw), (ph, pw) = _two(kernel), _two(stride), _two(padding)
    pads = []
    for n, k, s, p in ((z.shape[2], kh, sh, ph), (z.shape[3], kw, sw, pw)):
        out = (-(-(n + 2 * p - k) // s) if ceil else (n + 2 * p - k) // s) + 1
        if ceil and (out - 1) * s >= n + p:  # torch: the last window starts inside the input
            out -= 1
        pads.append((p, max(p, (out - 1) * s + k - n - p), out))
    (pt, pb, oh), (pl, pr, ow) = pads
    zp = np.pad(z, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(zp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    win = win[:, :, :oh, :ow].reshape(z.shape[:2] + (oh, ow, kh * kw))
    top2 = -np.partition(-win, 1, axis=-1)[..., :2]
    gap = top2[..., 0] - top2[..., 1]
    return gap[gap > 0]


def assert_no_kink_within_reach(both: Any, models: tuple, x: np.ndarray, dtype: str = "float64",
                                safety: float = MARGIN_SAFETY) -> dict:
    """As :func:`cross_oracles.assert_no_kink_within_reach`, over every recorded call: each
    activation input is ``safety`` times farther from its nearest kink than the frameworks'
    values of it differ, and each max-pool's top-2 gap too (all relative to the call's largest
    |value|). Returns ``{"margin", "error", "calls"}``."""
    rt, rp = (kink_inputs(fw, m, x, dtype) for fw, m in zip(both, models))
    assert [(k.kind, k.u.shape) for k in rt] == [(k.kind, k.u.shape) for k in rp], \
        "the frameworks ran different activation/max-pool calls"
    margin, error, where = np.inf, 0.0, None
    for i, (a, b) in enumerate(zip(rt, rp)):
        scale = np.abs(a.u).max()
        if scale == 0:
            continue
        error = max(error, float(np.abs(a.u - b.u).max() / scale))
        if a.kind == "maxpool":  # torch's geometry (squeezenet: ceil_mode, at a size where it is moot)
            near = _pool_gaps(a.u, a.pool).min(initial=np.inf) / scale
        else:
            live = (a.u != 0) | (b.u != 0) if a.kind == "relu" else np.ones(a.u.shape, bool)
            dist = np.min([np.abs(a.u - p) for p in a.points], axis=0)
            near = dist[live].min(initial=np.inf) / scale
        if near < margin:
            margin, where = float(near), f"call {i} ({a.kind}, shape {a.u.shape})"
    assert margin > safety * error, (
        f"{dtype}: a kink is within reach of rounding: nearest at {margin:.3g} of the call's scale "
        f"({where}) but the frameworks differ by up to {error:.3g}")
    return {"margin": margin, "error": error, "calls": len(rt)}


# ---- the checks ------------------------------------------------------------------------------
def test_float64_logits_agree(both, case):
    """float64: the same function to rounding (measured ≤ 9e-15 of the largest logit, every
    family): :data:`F64_RTOL`."""
    spec, ported, x = case
    lt, lp = (logits(fw, m, x, "float64") for fw, m in zip(both, ported.pair("float64")))
    assert_close(lp, lt, F64_RTOL, f"{spec.name} float64 logits, paddle vs torch")


def test_float32_logits_agree(both, case):
    """float32: summation order only (measured ≤ 3e-6 of the largest logit): :data:`F32_LOGIT_ATOL`.
    The folds are rounded to float32 here, one ulp of a weight (6e-8), well inside."""
    spec, ported, x = case
    lt, lp = (logits(fw, m, x, "float32") for fw, m in zip(both, ported.pair("float32")))
    assert_close(lp, lt, F32_LOGIT_ATOL, f"{spec.name} float32 logits, paddle vs torch")


def _explain(fw, model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return xplain.explain(model, fw.tensor(x, dtype="float64"), **kw)


def test_float64_saliency_agrees(both, case):
    """Saliency in float64 once no ReLU/Hardswish/Hardsigmoid/max-pool is within reach: the same
    piecewise-linear function's gradient, :data:`F64_RTOL` (or a float32 constant inside a
    float64 kernel, :data:`F64_F32_CONSTANT_RTOL`: see CASES)."""
    spec, ported, x = case
    pair = ported.pair("float64")
    ported.no_kink_within_reach(both, x)
    st, sp = (_explain(fw, m, x, method="saliency", target=[3, 8]).numpy() for fw, m in zip(both, pair))
    assert_close(sp, st, spec.saliency_rtol, f"{spec.name} float64 saliency, paddle vs torch")


def bilinear_rtol(h: int, H: int) -> float:
    """Upsampled CAM maps, ``h → H`` pixels. Paddle's bilinear kernel computes the source
    coordinate ``(dst + ½)·(h/H) − ½`` in float32 even for float64 maps (cross_oracles:
    F64_F32_CONSTANT_RTOL): the scale's rounding (≤ u = 2⁻²⁴ relative), times up to ``H``, plus
    the product's own rounding put it ≤ 2·h·u layer pixels off; a map in [0, 1] changes by at
    most 1 per layer pixel, so by ≤ 2·h·u (measured 13 → 224: 6.3e-7 ≤ 1.6e-6; 7 → 67: 2.9e-7
    ≤ 8e-7 on random maps). ×2 for the normalisation after it. Exact — :data:`F64_RTOL` —
    when ``H/h`` is a power of two (the coordinates are then exact in float32)."""
    ratio = H / h
    if ratio == int(ratio) and int(ratio) & (int(ratio) - 1) == 0:
        return F64_RTOL
    return 4 * h * 2.0 ** -24


def test_float64_gradcam_agrees(both, case):
    """Grad-CAM in float64 at the same tensor in both (the layer named through the port's map),
    no kink within reach (asserted once per family and input). The layer maps (Grad-CAM
    proper: gradients, channel weights, ReLU, normalisation) at the case's ``cam_rtol``; the
    map upsampled to the input at that or :func:`bilinear_rtol`, whichever is larger."""
    spec, ported, x = case
    tm, pm = ported.pair("float64")
    names = {t: p for p, t in layer_map(tm, pm).items()}
    assert spec.cam_layer in names, f"{spec.cam_layer} has no paddle counterpart in the map"
    ported.no_kink_within_reach(both, x)
    layers = (spec.cam_layer, names[spec.cam_layer])
    et, ep = (_explain(fw, m, x, method="gradcam", target=[3, 8], layer=layer)
              for fw, m, layer in zip(both, (tm, pm), layers))
    what = f"{spec.name} float64 Grad-CAM at {layers[0]} / {layers[1]}, paddle vs torch"
    lt, lp = (fw.numpy(e.layer_maps[layer]) for fw, e, layer in zip(both, (et, ep), layers))
    assert_close(lp, lt, spec.cam_rtol, f"{what}, layer maps")
    assert_close(ep.numpy(), et.numpy(), max(spec.cam_rtol, bilinear_rtol(lt.shape[-1], spec.size)),
                 f"{what}, upsampled")


@pytest.mark.slow
@pytest.mark.parametrize("name", OTHERS)
def test_other_constructors_float64_logits(both, name):
    """The other constructors of each family: float64 logits at :data:`F64_RTOL` (measured at
    64 px ≤ 8e-14, mobilenet_v3_large, whose random-weight logits reach 700; ≤ 3e-15 others)."""
    ported = Ported.build(name, ("float64",))
    x = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    lt, lp = (logits(fw, m, x, "float64") for fw, m in zip(both, ported.pair("float64")))
    assert_close(lp, lt, F64_RTOL, f"{name} float64 logits, paddle vs torch")


# ---- what is refused, and what still differs -------------------------------------------------
def test_mismatched_pair_is_refused():
    import torchvision
    import paddle.vision.models as pvm

    with pytest.raises(xplain.XplainError, match=r"shape mismatch for 'conv1_func\._conv\.weight': "
                                                 r"torch 'features\.conv0\.weight' \(64, 3, 7, 7\) "
                                                 r"vs paddle \(96, 3, 7, 7\) \(torch DenseNet → paddle DenseNet\)"):
        torch_to_paddle(torchvision.models.densenet121(weights=None), pvm.densenet161())


@pytest.mark.parametrize("torch_name,paddle_name,torch_kw,match", [
    ("googlenet", "googlenet", {"aux_logits": False, "init_weights": False},
     "GoogLeNet is not torchvision's.*no BatchNorm"),
    ("squeezenet1_1", "squeezenet1_1", {},
     r"conv padding differs: torch 'features\.0' \(0, 0\), paddle '_conv' \(1, 1\)"),
    ("shufflenet_v2_x2_0", "shufflenet_v2_x2_0", {}, "224 stage-2 channels, torchvision's 244"),
    ("inception_v3", "inception_v3", {"transform_input": True, "init_weights": False},
     "transform_input=True"),
    ("resnet18", "densenet121", {}, "no torch counterpart 'features.conv0.weight'.*torch ResNet → paddle DenseNet"),
], ids=["googlenet", "squeezenet1_1", "shufflenet_v2_x2_0", "inception_v3-transform_input",
        "resnet18-into-densenet121"])
def test_architectural_differences_are_refused(torch_name, paddle_name, torch_kw, match):
    import torchvision
    import paddle.vision.models as pvm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm = getattr(torchvision.models, torch_name)(weights=None, **torch_kw)
    with pytest.raises(xplain.XplainError, match=match):
        torch_to_paddle(tm, getattr(pvm, paddle_name)())


def test_paddle_dropout_that_cannot_be_folded_is_refused():
    """paddle's DenseNet(dropout=p) scales each dense layer's output by 1 − p in eval mode."""
    import torchvision
    import paddle.vision.models as pvm

    with pytest.raises(xplain.XplainError, match="downscale_in_infer"):
        torch_to_paddle(torchvision.models.densenet121(weights=None, drop_rate=0.2),
                        pvm.DenseNet(layers=121, dropout=0.2))


def test_size_dependent_difference_is_real(both):
    """squeezenet1_0 at 64 px: torch's ceil-mode pool keeps a row and column paddle's drops;
    :func:`size_mismatch` says so, and the logits do differ (by O(1), not rounding)."""
    ported = Ported.build("squeezenet1_0", ("float64",))
    assert "Fire module 3 sees height 14; torch (ceil_mode) gives 7, paddle 6" in \
        size_mismatch(ported.paddle["float64"], 64)
    assert size_mismatch(ported.paddle["float64"], 67) is None
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    lt, lp = (logits(fw, m, x, "float64") for fw, m in zip(both, ported.pair("float64")))
    assert np.abs(lt - lp).max() > 1e-3 * np.abs(lt).max()


def test_families_and_folds_are_detected():
    import paddle.vision.models as pvm

    from xplain_paddle.port import folds

    assert family_of(pvm.mobilenet_v3_large(num_classes=10)).name == "mobilenet_v3"
    assert family_of(pvm.resnet18()).name == "identical"
    assert family_of(pvm.resnet18(), "densenet").name == "densenet"
    with pytest.raises(xplain.XplainError, match="unknown family 'densnet'"):
        family_of(pvm.resnet18(), "densnet")
    assert [(f.layer, round(f.factor, 9)) for f in folds(pvm.alexnet(num_classes=10))] == \
        [("_fc6", 2.0), ("_fc7", 2.0)]
    (fold,) = folds(pvm.inception_v3(num_classes=10))
    assert fold.layer == "fc" and fold.factor == 1 / float(np.float32(1) - np.float32(0.2))
    se = folds(pvm.mobilenet_v3_small(num_classes=10))
    assert len(se) == 9 and all(abs(f.factor - 1) < 3e-7 and f.bias for f in se)
