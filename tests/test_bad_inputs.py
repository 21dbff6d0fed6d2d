"""A catalogue of bad calls: each one raises the right XplainError subclass, with a message that
names the problem and the fix, and leaves the model bit-identical.

Cases are data: ``Case(name, call, error, fix)`` where ``call(ctx)`` makes the bad call on the
backend under test, ``error`` is the expected exception class and ``fix`` a regular expression
the message must match (the part that tells the user what to do). The same table runs on every
backend; a case marked ``only=`` runs on that framework alone (TorchScript, inference mode,
paddle's to_static).
"""
from __future__ import annotations

import collections
import copy
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import xplain
from xplain import plugins
from xplain.errors import (BackendError, InputError, LayerError, ModelError, OptionError, PluginError,
                           TargetError, XplainError)
from xplain.guard import ModelModifiedError

#: Words that introduce a fix in a message: every catalogue message must contain one.
FIX_WORDS = re.compile(r"\b(pass|use|convert|add|remove|move|make|fix|clean|choose|give|call|load|"
                       r"reload|install|unset|explain|block|wrap|create|flatten|index|list)\b", re.I)


@dataclass
class Ctx:
    """What a case needs: the framework, a small CNN (3 classes, 3×8×8 inputs) and its input."""

    fw: Any
    model: Any
    x: Any

    @property
    def B(self) -> Any:
        return self.fw.B

    def tensor(self, a: Any, dtype: str = "float32") -> Any:
        return self.fw.tensor(a, dtype)

    def wrapped(self, post: Callable[[Any, Any, Any], Any]) -> Any:
        """A model whose forward is ``post(inner, x, B)`` around this context's CNN."""
        return wrap(self.fw, self.model, post)


def wrap(fw: Any, inner: Any, post: Callable[[Any, Any, Any], Any]) -> Any:
    base = fw.module.nn.Module if fw.name == "torch" else fw.module.nn.Layer

    class Wrapped(base):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return post(self.inner, x, fw.B)

    return Wrapped()


def small_cnn(fw: Any) -> Any:
    rng = np.random.default_rng(3)
    nn = fw.module.nn
    pool = nn.AdaptiveAvgPool2d(1) if fw.name == "torch" else nn.AdaptiveAvgPool2D(1)
    return fw.sequential(
        fw.conv2d(3, 4, 3, padding=1, weight=rng.standard_normal((4, 3, 3, 3)) * 0.5,
                  bias=rng.standard_normal(4) * 0.1),
        fw.relu(), pool, fw.flatten(),
        fw.linear(4, 3, weight=rng.standard_normal((3, 4)), bias=[0.1, 0.0, -0.1]))


@dataclass
class Case:
    name: str
    call: Callable[[Ctx], Any]
    error: type
    fix: str
    only: str | None = None
    restores: bool = True  # False: the model's own forward changes it (reported, not undone)


def explain(ctx: Ctx, method: str = "saliency", *, model: Any = None, x: Any = None, **kw: Any) -> Any:
    return xplain.explain(ctx.model if model is None else model, ctx.x if x is None else x,
                          method, **kw)


def with_x(make: Callable[[Ctx], Any], method: str = "saliency", **kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: explain(c, method, x=make(c), **kw)


def with_model(make: Callable[[Ctx], Any], method: str = "saliency", **kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: explain(c, method, model=make(c), **kw)


def opt(method: str, **kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: explain(c, method, **kw)


def _np(c: Ctx) -> np.ndarray:
    return c.fw.numpy(c.x)


# ---- inputs -------------------------------------------------------------------------------------
INPUTS = [
    Case("numpy-input", with_x(_np), InputError, r"convert it first"),
    Case("list-input", with_x(lambda c: _np(c).tolist()), InputError, r"convert it first"),
    Case("rank-1", with_x(lambda c: c.tensor(np.ones(3))), InputError, r"batch dimension"),
    Case("rank-0", with_x(lambda c: c.tensor(np.float32(1.0))), InputError, r"batch dimension"),
    Case("empty-batch", with_x(lambda c: c.tensor(np.ones((0, 3, 8, 8)))), InputError, r"at least one sample"),
    Case("int64", with_x(lambda c: c.tensor(np.ones((2, 3, 8, 8)), "int64")), InputError, r"convert"),
    Case("int32", with_x(lambda c: c.tensor(np.ones((2, 3, 8, 8)), "int32")), InputError, r"convert"),
    Case("bool", with_x(lambda c: c.tensor(np.ones((2, 3, 8, 8)), "bool")), InputError, r"convert"),
    Case("uint8-image", with_x(lambda c: c.tensor(np.ones((2, 3, 8, 8)), "uint8")), InputError, r"convert"),
    Case("float16", with_x(lambda c: c.B.astype(c.x, "float16")), InputError, r"float32 copy"),
    Case("bfloat16", with_x(lambda c: c.B.astype(c.x, "bfloat16")), InputError, r"float32 copy"),
    Case("float64-into-float32", with_x(lambda c: c.B.astype(c.x, "float64")), InputError,
         r"convert the inputs to the model's dtype"),
    Case("nan", with_x(lambda c: c.tensor(np.where(np.arange(384).reshape(2, 3, 8, 8) == 5, np.nan, _np(c)))),
         InputError, r"clean them"),
    Case("inf", with_x(lambda c: c.tensor(np.full((2, 3, 8, 8), np.inf))), InputError, r"clean them"),
    Case("neg-inf-one-sample", with_x(lambda c: c.tensor(np.concatenate([_np(c)[:1], np.full((1, 3, 8, 8), -np.inf)]))),
         InputError, r"samples \[1\].*clean them"),
    Case("unbatched-chw", with_x(lambda c: c.x[0]), InputError, r"unbatched.*x\[None\]"),
    Case("four-channels", with_x(lambda c: c.tensor(np.ones((2, 4, 8, 8)))), InputError, r"3 input channels.*have 4"),
    Case("one-channel", with_x(lambda c: c.tensor(np.ones((2, 1, 8, 8)))), InputError, r"3 input channels.*have 1"),
    Case("channels-last", with_x(lambda c: c.tensor(np.ones((2, 8, 8, 3)))), InputError, r"permute|transpose"),
    Case("rank-5", with_x(lambda c: c.tensor(np.ones((2, 1, 3, 8, 8)))), InputError, r"check|shape|channels"),
    Case("nan-input-gradcam", with_x(lambda c: c.tensor(np.full((1, 3, 8, 8), np.nan)), "gradcam"),
         InputError, r"clean them"),
    Case("nan-input-occlusion", with_x(lambda c: c.tensor(np.full((1, 3, 8, 8), np.nan)), "occlusion",
                                       sliding_window_shapes=(3, 2, 2)), InputError, r"clean them"),
    Case("inference-mode", lambda c: _inference_mode(c), InputError, r"outside", only="torch"),
    Case("inference-tensor", lambda c: explain(c, x=_inference_tensor(c)), InputError, r"x.clone\(\)", only="torch"),
    Case("meta-device", with_x(lambda c: c.x.to("meta")), InputError, r"pass real tensors", only="torch"),
]


def _inference_mode(c: Ctx) -> Any:
    import torch

    with torch.inference_mode():
        return explain(c)


def _inference_tensor(c: Ctx) -> Any:
    import torch

    with torch.inference_mode():
        return c.x * 1.0


# ---- targets ------------------------------------------------------------------------------------
def tgt(target: Any, method: str = "saliency", **kw: Any) -> Callable[[Ctx], Any]:
    return lambda c: explain(c, method, target=target(c) if callable(target) else target, **kw)


TARGETS = [
    Case("target-out-of-range", tgt(3), TargetError, r"must be in \[0, 2\]"),
    Case("target-negative", tgt(-1), TargetError, r"must be in \[0, 2\]"),
    Case("target-out-of-range-lrp", tgt(7, "lrp"), TargetError, r"must be in \[0, 2\]"),
    Case("target-out-of-range-occlusion", tgt(9, "occlusion", sliding_window_shapes=(3, 4, 4)),
         TargetError, r"must be in \[0, 2\]"),
    Case("target-out-of-range-gradcam", tgt([0, 5], "gradcam"), TargetError, r"must be in \[0, 2\]"),
    Case("target-too-short", tgt([1]), TargetError, r"one class index per sample"),
    Case("target-too-long", tgt([1, 2, 0]), TargetError, r"one class index per sample"),
    Case("target-float", tgt(1.0), TargetError, r"target=1"),
    Case("target-float-list", tgt([1.0, 2.0]), TargetError, r"convert"),
    Case("target-bool", tgt(True), TargetError, r"pass a class index"),
    Case("target-bool-in-list", tgt([True, 0]), TargetError, r"integer class indices"),
    Case("target-numpy-bool", tgt(np.array([True, False])), TargetError, r"integer class indices"),
    Case("target-nested", tgt([[1], [2]]), TargetError, r"one class index per sample"),
    Case("target-ragged", tgt([[1], [2, 0]]), TargetError, r"class indices"),
    Case("target-string", tgt("cat"), TargetError, r"ints|class ind"),
    Case("target-float-tensor", tgt(lambda c: c.tensor([1.0, 0.0])), TargetError, r"convert"),
    Case("target-half-tensor", tgt(lambda c: c.B.astype(c.tensor([1.0, 0.0]), "float16")), TargetError, r"convert"),
    Case("target-bfloat16-tensor", tgt(lambda c: c.B.astype(c.tensor([1.0, 0.0]), "bfloat16")), TargetError, r"convert"),
    Case("target-meta-tensor", tgt(lambda c: c.tensor([1, 0], "int64").to("meta")), TargetError, r"pass class indices",
         only="torch"),
    Case("target-2d-array", tgt(np.zeros((2, 1), dtype=np.int64)), TargetError, r"one class index per sample"),
]


# ---- options ------------------------------------------------------------------------------------
OPTIONS = [
    Case("unknown-method", opt("salency"), OptionError, r"use one of the available methods: .*saliency"),
    Case("method-not-a-string", lambda c: xplain.explain(c.model, c.x, method=3), OptionError, r"xplain.methods"),
    Case("unknown-option", opt("saliency", modes="raw"), OptionError, r"use its options \['mode'\]"),
    Case("saliency-mode", opt("saliency", mode="bogus"), OptionError, r"one of 'abs', 'raw', 'square'"),
    Case("strides-string", opt("occlusion", sliding_window_shapes=(3, 4, 4), strides="abc"), OptionError,
         r"pass an int"),
    Case("window-float", opt("occlusion", sliding_window_shapes=(3, 7.9, 7.9)), OptionError, r"never rounded|pass"),
    Case("window-too-large", opt("occlusion", sliding_window_shapes=(3, 9, 9)), OptionError, r"use windows no larger"),
    Case("window-missing", opt("occlusion"), OptionError, r"sliding_window_shapes=\(3, 15, 15\)"),
    Case("window-wrong-length", opt("occlusion", sliding_window_shapes=(4, 4)), OptionError, r"one per non-batch"),
    Case("stride-zero", opt("occlusion", sliding_window_shapes=(3, 4, 4), strides=0), OptionError, r"\[1, ∞\)"),
    Case("stride-bool", opt("occlusion", sliding_window_shapes=(3, 4, 4), strides=True), OptionError, r"not a bool"),
    Case("occlusion-baseline-nan", opt("occlusion", sliding_window_shapes=(3, 4, 4), baselines=float("nan")),
         OptionError, r"pass a finite"),
    Case("occlusion-baseline-inf-tensor", lambda c: explain(c, "occlusion", sliding_window_shapes=(3, 4, 4),
                                                            baselines=c.tensor(np.full((3, 8, 8), np.inf))),
         OptionError, r"pass finite"),
    Case("rise-p-string", opt("rise", p="0.5", masks=8), OptionError, r"must be a number"),
    Case("rise-p-zero", opt("rise", p=0.0, masks=8), OptionError, r"\(0, 1\]"),
    Case("rise-p-above-one", opt("rise", p=1.5, masks=8), OptionError, r"\(0, 1\]"),
    Case("rise-masks-zero", opt("rise", masks=0), OptionError, r"\[1, ∞\)"),
    Case("rise-cells-float", opt("rise", cells=1.5, masks=8), OptionError, r"never rounded"),
    Case("ig-steps-bool", opt("integrated_gradients", steps=True), OptionError, r"not a bool"),
    Case("ig-steps-zero", opt("integrated_gradients", steps=0), OptionError, r"\[1, ∞\)"),
    Case("ig-steps-float", opt("integrated_gradients", steps=2.5), OptionError, r"never rounded"),
    Case("ig-steps-string", opt("integrated_gradients", steps="10"), OptionError, r"pass an int"),
    Case("ig-integration", opt("integrated_gradients", integration="simpson"), OptionError, r"one of 'gausslegendre'"),
    Case("ig-baseline-nan", opt("integrated_gradients", baseline=float("nan")), OptionError, r"pass a finite"),
    Case("ig-baseline-inf-tensor", lambda c: explain(c, "integrated_gradients",
                                                     baseline=c.tensor(np.full((1, 3, 8, 8), np.inf))),
         OptionError, r"pass finite"),
    Case("ig-baseline-shape", lambda c: explain(c, "integrated_gradients", baseline=c.tensor(np.zeros((3, 4, 4)))),
         OptionError, r"one baseline per sample"),
    Case("ig-baseline-name", opt("integrated_gradients", baseline="gray"), OptionError, r"one of"),
    Case("ig-return-delta-int", opt("integrated_gradients", return_delta=1), OptionError, r"True or False"),
    Case("deeplift-baseline-nan", opt("deeplift", baseline=float("inf")), OptionError, r"pass a finite"),
    Case("gradient-shap-samples", opt("gradient_shap", samples=-2), OptionError, r"\[1, ∞\)"),
    Case("gradient-shap-stdev-nan", opt("gradient_shap", stdev=float("nan")), OptionError, r"finite"),
    Case("smoothgrad-samples-zero", opt("smoothgrad", samples=0), OptionError, r"\[1, ∞\)"),
    Case("smoothgrad-stdev-negative", opt("smoothgrad", stdev=-0.1), OptionError, r"\[0, ∞\)"),
    Case("smoothgrad-base-unknown", opt("smoothgrad", base="nope"), OptionError, r"available"),
    Case("smoothgrad-base-wrapper", opt("smoothgrad", base="vargrad"), OptionError, r"pass the method to smooth"),
    Case("smoothgrad-base-options-list", opt("smoothgrad", base_options=["x"]), OptionError, r"pass a dict"),
    Case("smoothgrad-base-option-unknown", opt("smoothgrad", base_options={"steps": 3}), OptionError, r"its options"),
    Case("smoothgrad-base-option-type", opt("smoothgrad", base="integrated_gradients",
                                            base_options={"steps": True}), OptionError, r"not a bool"),
    Case("cam-relu-string", opt("gradcam", relu="yes"), OptionError, r"True or False"),
    Case("cam-normalize-int", opt("gradcam", normalize=1), OptionError, r"True or False"),
    Case("cam-top-k-zero", opt("cam", top_k=0), OptionError, r"\[1, ∞\)"),
    Case("cam-unknown-layer", opt("gradcam", layer="features.99"), LayerError, r"xplain.layers\(model"),
    Case("scorecam-batch-size-zero", opt("scorecam", batch_size=0), OptionError, r"\[1, ∞\)"),
    Case("prototype-lr-zero", opt("prototype", lr=0.0, steps=2), OptionError, r"\(0, ∞\)"),
    Case("prototype-beta1-one", opt("prototype", beta1=1.0, steps=2), OptionError, r"\[0, 1\)"),
    Case("lrp-epsilon-negative", opt("lrp", epsilon=-1.0), OptionError, r"\[0, ∞\)"),
    Case("lrp-gamma-string", opt("lrp", gamma="a"), OptionError, r"must be a number"),
    Case("lrp-composite-unknown", opt("lrp", composite="nope"), OptionError, r"epsilon_plus_flat"),
    Case("lrp-rules-list", opt("lrp", rules=["x"]), OptionError, r"pass a dict"),
    Case("lrp-zbox-no-bounds", opt("lrp", composite="epsilon_gamma_box"), OptionError, r"pass low= and high="),
    Case("lrp-zbox-inputs-outside", opt("lrp", composite="epsilon_gamma_box", low=-0.1, high=0.1), OptionError,
         r"pass the bounds of the inputs' actual range"),
    Case("lrp-unknown-layer", opt("lrp", layer="nope"), LayerError, r"xplain.layers"),
    Case("seed-negative", opt("saliency", seed=-1), OptionError, r"pass an int"),
    Case("seed-float", opt("saliency", seed=1.5), OptionError, r"never rounded"),
    Case("seed-string", opt("saliency", seed="x"), OptionError, r"pass an int"),
    Case("max-batch-string", opt("occlusion", sliding_window_shapes=(3, 4, 4), max_batch="abc"), OptionError,
         r"pass an int"),
    Case("max-batch-zero", opt("saliency", max_batch=0), OptionError, r"\[1, ∞\)"),
    Case("max-batch-bool", opt("saliency", max_batch=True), OptionError, r"not a bool"),
    Case("memory-budget-words", opt("saliency", memory_budget="lots"), OptionError, r"use e.g. '2GB'"),
    Case("memory-budget-negative", opt("saliency", memory_budget=-5), OptionError, r"use e.g. '2GB'"),
    Case("progress-string", opt("saliency", progress="yes"), OptionError, r"True or False"),
    Case("backend-int", opt("saliency", backend=3), OptionError, r"pass a string"),
    Case("backend-unknown", opt("saliency", backend="jax"), BackendError, r"install"),
]


# ---- models -------------------------------------------------------------------------------------
def _nan_weight(c: Ctx) -> Any:
    m = copy.deepcopy(c.model)
    w = c.fw.numpy(m[0].weight).copy()
    w[0, 0, 0, 0] = np.nan
    c.fw._set(m[0], w, None, transpose=False)
    return m


def _half(c: Ctx) -> Any:
    m = copy.deepcopy(c.model)
    return m.half() if c.fw.name == "torch" else m.to(dtype="float16")


def _self_editing(c: Ctx) -> Any:
    """A model whose forward scales its own weights in place (a side effect)."""
    def post(inner, x, B):
        w = inner[0].weight
        if c.fw.name == "torch":
            import torch

            with torch.no_grad():
                w.mul_(1.0001)
        else:
            w.set_value(w.numpy() * 1.0001)
        return inner(x)
    return c.wrapped(post)


def _overflow(out, B):
    return out + B.exp(out * 0.0 + 100.0)  # e^100 is beyond float32: +Inf in every score


def _no_grad_forward(inner, x, B):
    with B.no_grad():
        return inner(x)


def _script(c: Ctx) -> Any:
    import torch

    return torch.jit.script(c.model)


def _trace(c: Ctx) -> Any:
    import torch

    return torch.jit.trace(c.model, c.x)


def _to_static(c: Ctx) -> Any:
    import paddle

    return paddle.jit.to_static(copy.deepcopy(c.model), full_graph=True)


def _raises(inner, x, B):
    raise ValueError("shape mismatch deep inside the model")


MODELS = [
    Case("model-not-a-model", with_model(lambda c: (lambda x: x)), BackendError, r"pass a model or tensor"),
    Case("model-returns-tuple", with_model(lambda c: c.wrapped(lambda m, x, B: (m(x), m(x)))), ModelError,
         r"wrap it"),
    Case("model-returns-dict", with_model(lambda c: c.wrapped(lambda m, x, B: {"out": m(x)})), ModelError, r"wrap it"),
    Case("model-returns-3d", with_model(lambda c: c.wrapped(lambda m, x, B: B.reshape(m(x), (-1, 3, 1)))),
         ModelError, r"flatten or select"),
    Case("model-returns-1d", with_model(lambda c: c.wrapped(lambda m, x, B: B.sum(m(x), axis=1))),
         ModelError, r"flatten or select"),
    Case("model-batch-mismatch", with_model(lambda c: c.wrapped(lambda m, x, B: m(x)[:1])), ModelError,
         r"one row per sample"),
    Case("model-batch-mismatch-lrp", with_model(lambda c: c.wrapped(lambda m, x, B: m(x)[:1]), "lrp"), ModelError,
         r"one row per sample"),
    Case("model-zero-classes", with_model(lambda c: c.wrapped(lambda m, x, B: m(x)[:, :0])), ModelError,
         r"explain a model"),
    Case("model-nan-weight", with_model(_nan_weight), ModelError, r"reload or fix the weights"),
    Case("model-nan-weight-occlusion", with_model(_nan_weight, "occlusion", sliding_window_shapes=(3, 4, 4)),
         ModelError, r"reload or fix the weights"),
    Case("model-overflow", with_model(lambda c: c.wrapped(lambda m, x, B: _overflow(m(x), B))), ModelError,
         r"fix the model, or explain in float64"),
    Case("model-overflow-gradcam", with_model(lambda c: c.wrapped(lambda m, x, B: _overflow(m(x), B)), "gradcam"),
         ModelError, r"explain in float64"),
    Case("model-half", with_model(_half), ModelError, r"float32 copy"),
    Case("model-no-grad-forward", with_model(lambda c: c.wrapped(_no_grad_forward)), ModelError,
         r"remove that from forward\(\)"),
    Case("model-detached-output", with_model(lambda c: c.wrapped(lambda m, x, B: B.stop_gradient(m(x)))),
         ModelError, r"occlusion"),
    Case("model-no-grad-ig", with_model(lambda c: c.wrapped(_no_grad_forward), "integrated_gradients"),
         ModelError, r"remove that"),
    Case("model-forward-raises", with_model(lambda c: c.wrapped(_raises)), InputError, r"check|shape"),
    # built-in methods keep no copy of the weights (it would cost more than the method): a
    # model that rewrites its own weights in forward is reported, and its edit stays
    Case("model-edits-its-weights", with_model(_self_editing), ModelModifiedError,
         r"forward pass modifies it.*explain a copy.*could not be undone", restores=False),
    Case("scripted-gradcam", with_model(_script, "gradcam"), ModelError, r"pass the eager|Pure-gradient", only="torch"),
    Case("scripted-lrp", with_model(_script, "lrp"), ModelError, r"can explain it as it is", only="torch"),
    Case("traced-lrp", with_model(_trace, "lrp"), ModelError, r"can explain it as it is", only="torch"),
    Case("traced-deeplift", with_model(_trace, "deeplift"), ModelError, r"can explain it", only="torch"),
    Case("traced-guided-backprop", with_model(_trace, "guided_backprop"), ModelError, r"can explain it",
         only="torch"),
    Case("to-static-gradcam", with_model(_to_static, "gradcam"), ModelError, r"pass the dygraph model",
         only="paddle"),
    Case("to-static-lrp", with_model(_to_static, "lrp"), ModelError, r"pass the dygraph model", only="paddle"),
    Case("to-static-deeplift", with_model(_to_static, "deeplift"), ModelError, r"pass the dygraph model",
         only="paddle"),
    # paddle's static program passes no gradient to the input of a model with frozen weights:
    # without this refusal saliency was an all-zero map
    Case("to-static-saliency", with_model(_to_static, "saliency"), ModelError, r"pass the eager \(dygraph\)",
         only="paddle"),
    Case("to-static-ig", with_model(_to_static, "integrated_gradients", steps=2), ModelError,
         r"use a method that needs no gradient", only="paddle"),
]


# ---- output= (models returning several tensors) ---------------------------------------------------
class _Out:
    """An output object with one tensor attribute."""

    def __init__(self, logits: Any) -> None:
        self.logits = logits


def returns(make: Callable[[Any], Any], method: str = "saliency", **kw: Any) -> Callable[[Ctx], Any]:
    """The call on a model whose forward returns ``make(logits)``."""
    return with_model(lambda c: c.wrapped(lambda m, x, B: make(m(x))), method, **kw)


OUTPUTS = [
    Case("model-returns-list", returns(lambda o: [o, o]), ModelError, r"a list of 2 items.*pass output=0"),
    Case("model-returns-namedtuple", returns(lambda o: _Pair(o, o)), ModelError,
         r"named tuple _Pair.*pass output='logits'"),
    Case("model-returns-object", returns(_Out), ModelError, r"tensor attributes \(\.logits.*pass output='logits'"),
    Case("model-returns-tuple-gradcam", returns(lambda o: (o, o), "gradcam"), ModelError, r"pass output=0"),
    Case("model-returns-dict-lrp", returns(lambda o: {"out": o}, "lrp"), ModelError, r"pass output='out'"),
    Case("model-returns-dict-occlusion", returns(lambda o: {"out": o}, "occlusion", sliding_window_shapes=(3, 4, 4)),
         ModelError, r"pass output='out'"),
    Case("output-index-out-of-range", returns(lambda o: (o, o), output=2), OptionError, r"pass an index in \[0, 1\]"),
    Case("output-index-on-dict", returns(lambda o: {"out": o}, output=0), OptionError, r"indexes a tuple or list"),
    Case("output-missing-key", returns(lambda o: {"out": o}, output="logits"), OptionError,
         r"pass one of its keys \['out'\]"),
    Case("output-missing-attribute", returns(_Out, output="scores"), OptionError, r"no key or tensor attribute"),
    Case("output-method-attribute", returns(lambda o: (o, o), output="count"), OptionError,
         r"no key or tensor attribute 'count'"),
    Case("output-function-raises", returns(lambda o: (o, o), output=lambda out: out["x"]), OptionError,
         r"raised TypeError.*fix the function"),
    Case("output-function-not-tensor", returns(lambda o: (o, o), output=lambda out: 3), OptionError,
         r"selected int.*pass a selector"),
    Case("output-selects-none", returns(lambda o: (o, None), output=1), OptionError, r"selected None"),
    Case("output-selects-3d", returns(lambda o: (o[:, :, None], o), output=0), ModelError,
         r"as selected by output=.*flatten or select"),
    Case("output-on-single-tensor", opt("saliency", output=0), OptionError, r"one tensor of shape.*remove output="),
    Case("output-key-on-single-tensor", opt("gradcam", output="T"), OptionError, r"remove output="),
    Case("output-float", returns(lambda o: (o, o), output=0.0), OptionError, r"never rounded"),
    Case("output-bool", returns(lambda o: (o, o), output=True), OptionError, r"not a bool"),
    Case("output-list", returns(lambda o: (o, o), output=[0]), OptionError, r"pass an index \(output=0\)"),
    Case("cam-layout-unknown", opt("gradcam", layout="nhwc"), OptionError, r"one of 'channels_first'"),
    Case("cam-layout-contradicts-conv", opt("gradcam", layer="0", layout="channels_last"), LayerError,
         r"4 channels sit on axis 1.*remove layout="),
    Case("scorecam-layout-contradicts-conv", opt("scorecam", layer="1", layout="channels_last"), LayerError,
         r"channels_first.*remove layout="),
]

_Pair = collections.namedtuple("_Pair", "logits aux")


# ---- plugins ------------------------------------------------------------------------------------
class _Pack:
    """A run-time plugin registering one method ``bad_<name>``."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name, self.fn = name, fn

    @xplain.hookimpl
    def xplain_register_methods(self, registry: Any) -> None:
        registry.add_method(f"bad_{self.name}", self.fn)


def plugin_case(name: str, fn: Callable[..., Any], error: type, fix: str) -> Case:
    def call(c: Ctx) -> Any:
        pack = _Pack(name, fn)
        plugins.register(pack, name=f"badpack_{name}")
        try:
            return explain(c, f"bad_{name}")
        finally:
            plugins.unregister(name=f"badpack_{name}")
    return Case(f"plugin-{name}", call, error, fix)


def _returns_numpy(run):
    return run.backend.to_numpy(run.inputs)


def _returns_none(run):
    return None


def _returns_wrong_shape(run):
    return run.inputs[:, :1]


def _returns_nan(run):
    return run.inputs * float("nan")


def _returns_other_framework(run):
    import torch

    other = None
    if run.backend.name == "torch":
        import paddle

        other = paddle.zeros(list(run.backend.shape(run.inputs)))
    else:
        other = torch.zeros(run.backend.shape(run.inputs))
    return other


def _first_weight(run):
    return run.backend.layers(run.model)[1].module


def _edits_data(run):
    conv = _first_weight(run)
    if run.backend.name == "torch":
        conv.weight.data.mul_(2.0)
    else:
        conv.weight.set_value(conv.weight.numpy() * 2.0)
    return run.inputs * 0.0


def _replaces_parameter(run):
    conv = _first_weight(run)
    if run.backend.name == "torch":
        import torch

        conv.weight = torch.nn.Parameter(conv.weight.detach() * 0.0)
    else:
        conv.weight = conv.create_parameter(conv.weight.shape)
    return run.inputs * 0.0


def _replaces_submodule(run):
    seq = run.model
    if run.backend.name == "torch":
        import torch

        seq[1] = torch.nn.Identity()
    else:
        import paddle

        seq._sub_layers["1"] = paddle.nn.Identity()
    return run.inputs * 0.0


def _raises_plain(run):
    raise RuntimeError("plugin bug")


PLUGINS = [
    plugin_case("numpy", _returns_numpy, PluginError, r"XPLAIN_DISABLE_PLUGINS=badpack_numpy"),
    plugin_case("none", _returns_none, PluginError, r"fix the plugin"),
    plugin_case("shape", _returns_wrong_shape, PluginError, r"fix the plugin"),
    plugin_case("nan", _returns_nan, PluginError, r"fix the plugin"),
    plugin_case("other_framework", _returns_other_framework, PluginError, r"fix the plugin"),
    plugin_case("edits_data", _edits_data, ModelModifiedError, r"XPLAIN_DISABLE_PLUGINS"),
    plugin_case("replaces_parameter", _replaces_parameter, ModelModifiedError, r"fix it or block it"),
    plugin_case("replaces_submodule", _replaces_submodule, ModelModifiedError, r"fix it or block it"),
]

CASES = INPUTS + TARGETS + OPTIONS + MODELS + OUTPUTS + PLUGINS
BACKEND = os.environ.get("XPLAIN_BACKEND", "torch")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


#: the cases of the backend under test (those of one framework only are not collected elsewhere;
#: a tox env installs one framework, so "a tensor of the other framework" needs both installed)
HERE = [c for c in CASES if c.only in (None, BACKEND)
        and not (c.name == "plugin-other_framework"
                 and not _installed("paddle" if BACKEND == "torch" else "torch"))]


@pytest.fixture(scope="module")
def base(fw):
    model = small_cnn(fw)
    x = fw.tensor(np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)))
    return model, x


@pytest.mark.parametrize("case", HERE, ids=[c.name for c in HERE])
def test_bad_call_is_refused_and_model_untouched(fw, base, case):
    model, x = base
    before = fw.model_state(model)
    with pytest.raises(XplainError) as info:
        case.call(Ctx(fw, model, x))
    assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    assert re.search(case.fix, msg), f"fix {case.fix!r} not in: {msg}"
    assert FIX_WORDS.search(msg), f"no fix named in: {msg}"
    if case.restores:
        fw.assert_same_state(before, fw.model_state(model))


def test_catalogue_is_large_enough():
    # the issue asks for at least 120 cases over both backends
    per_backend = {b: sum(1 for c in CASES if c.only in (None, b)) for b in ("torch", "paddle")}
    assert sum(per_backend.values()) >= 120, per_backend


def test_good_calls_on_the_same_model_still_work(fw, base):
    """The catalogue's model and input are fine: the refusals above are about the bad part."""
    model, x = base
    w = fw.numpy(model[4].weight) if fw.name == "torch" else fw.numpy(model[4].weight).T
    got = xplain.explain(model, x, "saliency", target=[0, 2], mode="raw").numpy()
    assert got.shape == (2, 3, 8, 8) and np.isfinite(got).all()
    # the gradient of a target logit through the pooled head has the size of that class's weights
    assert np.abs(got).sum() > 0 and w.shape == (3, 4)


# paddle's static graph passes no input gradient: gradient methods are refused there (catalogue)
COMPILED = [("saliency", {"mode": "raw"}), ("integrated_gradients", {"steps": 4}),
            ("occlusion", {"sliding_window_shapes": (3, 4, 4)})]
COMPILED_HERE = [c for c in COMPILED if os.environ.get("XPLAIN_BACKEND", "torch") != "paddle"
                 or c[0] == "occlusion"]


@pytest.mark.parametrize("method,options", COMPILED_HERE, ids=[c[0] for c in COMPILED_HERE])
def test_compiled_models_still_explained_by_methods_without_hooks(fw, base, method, options):
    """Refusing hook-based methods on compiled models must not refuse the rest: where the
    compiled model passes gradients (TorchScript) or the method needs none (occlusion), the map
    equals the eager model's."""
    import copy as _copy

    model, x = base
    eager = xplain.explain(model, x, method, target=[0, 2], **options).numpy()
    if fw.name == "torch":
        import torch

        compiled = [torch.jit.script(model), torch.jit.trace(model, x)]
    else:
        import paddle

        compiled = [paddle.jit.to_static(_copy.deepcopy(model), full_graph=True)]
    for c in compiled:
        got = xplain.explain(c, x, method, target=[0, 2], **options).numpy()
        # the same kernels run in the same order: equal to float32 rounding
        np.testing.assert_allclose(got, eager, rtol=1e-5, atol=1e-6 * np.abs(eager).max())


# ---- the same promises on a real architecture of each zoo ------------------------------------
ZOO_CASES = [
    ("unbatched", lambda fw, m, x: xplain.explain(m, x[0], "saliency"), InputError, r"unbatched.*x\[None\]"),
    ("grayscale", lambda fw, m, x: xplain.explain(m, x[:, :1], "gradcam"), InputError, r"3 input channels.*have 1"),
    ("float64", lambda fw, m, x: xplain.explain(m, fw.B.astype(x, "float64"), "lrp"), InputError,
     r"convert the inputs to the model's dtype"),
    ("target-1000", lambda fw, m, x: xplain.explain(m, x, "lrp", target=1000), TargetError, r"\[0, 999\]"),
    ("zbox-bounds", lambda fw, m, x: xplain.explain(m, x, "lrp", composite="epsilon_gamma_box", low=-0.5,
                                                   high=0.5), OptionError, r"pass the bounds"),
    ("occlusion-window", lambda fw, m, x: xplain.explain(m, x, "occlusion", sliding_window_shapes=(3, 8.5, 8)),
     OptionError, r"never rounded"),
]


@pytest.fixture(scope="module")
def resnet(fw):
    return fw.model("resnet18"), fw.tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)))


@pytest.mark.parametrize("name,call,error,fix", ZOO_CASES, ids=[c[0] for c in ZOO_CASES])
def test_refusals_on_resnet18(fw, resnet, name, call, error, fix):
    model, x = resnet
    before = fw.model_state(model)
    with pytest.raises(error, match=fix):
        call(fw, model, x)
    fw.assert_same_state(before, fw.model_state(model))


def test_compiled_resnet18_refused_by_hook_methods(fw, resnet):
    model, x = resnet
    if fw.name == "torch":
        import torch

        compiled, fix = torch.jit.trace(model, x), r"TorchScript"
    else:
        import paddle

        compiled, fix = paddle.jit.to_static(copy.deepcopy(model), full_graph=True), r"to_static"
    for method in ("lrp", "gradcam", "deeplift"):
        with pytest.raises(ModelError, match=fix):
            xplain.explain(compiled, x, method)


def test_nan_weight_deep_in_resnet18_is_named(fw, resnet):
    model, x = resnet
    broken = copy.deepcopy(model)
    conv = broken.layer4[1].conv2
    w = fw.numpy(conv.weight).copy()
    w[3, 1, 0, 0] = np.nan
    fw._set(conv, w, None, transpose=False)
    for method in ("saliency", "occlusion"):
        opts = {"sliding_window_shapes": (3, 16, 16)} if method == "occlusion" else {}
        with pytest.raises(ModelError, match=r"layer4\.1\.conv2\.weight \(1 non-finite\).*reload or fix"):
            xplain.explain(broken, x, method, **opts)


def test_plugin_edit_of_resnet18_is_caught_and_undone(fw, resnet):
    model, x = resnet
    before = fw.model_state(model)

    def sneaky(run):
        conv = run.model.layer3[0].conv1
        if run.backend.name == "torch":
            conv.weight.data[0, 0, 0, 0] += 1.0  # one value, no version bump
        else:
            w = conv.weight.numpy()
            w[0, 0, 0, 0] += 1.0
            conv.weight.set_value(w)
        return run.inputs * 0.0

    plugins.register(_Pack("sneaky", sneaky), name="badpack_sneaky")
    try:
        with pytest.raises(ModelModifiedError, match=r"layer3\.0\.conv1\.weight was modified.*put back exactly"):
            xplain.explain(model, x, "bad_sneaky")
    finally:
        plugins.unregister(name="badpack_sneaky")
    fw.assert_same_state(before, fw.model_state(model))
