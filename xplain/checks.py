"""Run-time checks that refuse a silently wrong answer where bad values enter or leave.

Each check is cheap enough for every call (a reduction over a tensor the call has anyway) and,
when it fails, spends what it needs to say *where* the bad value came from: which inputs, which
parameters, or the forward pass itself. Used by :mod:`xplain.api` (inputs, results) and
:class:`xplain.run.Run` (model outputs).
"""
from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .errors import InputError, ModelError, OptionError, XplainError

#: Why a gradient method cannot explain a model whose input the gradient never reaches.
NO_INPUT_GRADIENT = (
    "the target score's gradient does not reach the model's input: the forward pass runs part "
    "of its work outside the framework's autodiff (a compiled or static graph such as "
    "paddle.jit.to_static, a no_grad block, a numpy round trip); pass the eager (dygraph) model, "
    "or use a method that needs no gradient (occlusion, rise)")

#: dtypes attributions are computed in. Half precision is refused: its 3-4 significant digits
#: lose the small per-pixel terms whose sum is the explanation.
FLOAT_DTYPES = ("float32", "float64")


def check_model_dtype(B: Any, model: Any, inputs: Any) -> None:
    """Refuse inputs whose dtype or device differs from the model's parameters."""
    first = next((t for _, t in B.named_tensors(model)
                  if B.dtype_name(t).startswith(("float", "bfloat"))), None)
    mdtype, mdevice = (None, None) if first is None else (B.dtype_name(first), B.device(first))
    dtype = B.dtype_name(inputs)
    if mdtype is not None and mdtype not in FLOAT_DTYPES:
        raise ModelError(f"the model's parameters are {mdtype}; xplain computes attributions in "
                         f"float32 or float64 (half precision loses the small terms an "
                         f"attribution sums) — explain a float32 copy: copy.deepcopy(model).float()"
                         f" (torch) / model.to(dtype='float32') (paddle), with float32 inputs")
    if mdtype is not None and dtype != mdtype:
        raise InputError(f"the inputs are {dtype} but the model's parameters are {mdtype}; convert "
                         f"the inputs to the model's dtype (x.to({mdtype!r}) / x.astype({mdtype!r}))")
    device = B.device(inputs)
    if mdevice is not None and device != mdevice:
        raise InputError(f"the inputs are on {device} but the model is on {mdevice}; move the "
                         f"inputs to the model's device first")


#: model → the (name, identity, version) of each parameter/buffer when they were last found finite
_FINITE: "weakref.WeakKeyDictionary[Any, tuple]" = weakref.WeakKeyDictionary()


def check_parameters(B: Any, model: Any) -> None:
    """Refuse a model whose parameters or buffers hold NaN/Inf (naming them). The scan is
    skipped while no parameter was replaced or modified in place since the last clean scan
    (identity and version counters), so repeated calls on one model cost nothing."""
    tensors = B.named_tensors(model)
    key = tuple((n, id(t), B.version(t)) for n, t in tensors)
    try:
        if _FINITE.get(model) == key:
            return
    except TypeError:  # not weakly referenceable: scan every time
        pass
    bad = nonfinite_parameters(B, model)
    if bad:
        raise ModelError(f"the model's parameters hold NaN/Inf: {', '.join(bad)}; reload or fix the "
                         f"weights (a diverged training run, a bad checkpoint?)")
    try:
        _FINITE[model] = key
    except TypeError:
        pass


def nonfinite_parameters(B: Any, model: Any, limit: int = 5) -> list[str]:
    """Names of parameters/buffers holding NaN or Inf (at most ``limit``), with counts."""
    bad = []
    for name, t in B.named_tensors(model):
        if not B.dtype_name(t).startswith(("float", "bfloat")):
            continue
        ok = B.isfinite(t)
        if not B.all(ok):
            count = int(np.size(B.to_numpy(t))) - int(B.to_numpy(B.sum(B.astype(ok, "int64"))))
            bad.append(f"{name} ({count} non-finite)")
            if len(bad) >= limit:
                break
    return bad


def nonfinite_rows(B: Any, x: Any) -> list[int]:
    """Indices of the samples (first axis) of ``x`` holding NaN or Inf."""
    a = B.to_numpy(x)
    return np.flatnonzero(~np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)).tolist()


def check_output(B: Any, model: Any, x: Any, out: Any) -> None:
    """Refuse a model output holding NaN/Inf, saying whether the inputs, the parameters or the
    forward pass itself produced it."""
    if B.all(B.isfinite(out)):
        return
    rows = nonfinite_rows(B, out)
    if not B.all(B.isfinite(x)):
        raise InputError(f"a forward pass received NaN/Inf in samples {nonfinite_rows(B, x)[:8]} "
                         f"(from a baseline or perturbation built from the options): pass finite "
                         f"baselines and options")
    params = nonfinite_parameters(B, model)
    if params:
        raise ModelError(f"the model's output is NaN/Inf (samples {rows[:8]}) because its "
                         f"parameters hold non-finite values: {', '.join(params)}; reload or fix "
                         f"the weights (a diverged training run?)")
    raise ModelError(f"the model's output is NaN/Inf (samples {rows[:8]}) although its inputs and "
                     f"parameters are finite: the forward pass overflows (e.g. exp of a large "
                     f"value, a division by zero); fix the model, or explain in float64 "
                     f"(model.double() and x.double())")


def check_result(B: Any, inputs: Any, attributions: Any, *, method: str, plugin: str,
                 builtin: bool) -> None:
    """Refuse a method's result of the wrong type, framework, device, shape, or with NaN/Inf.

    Accepted shapes: the input's ``(N, ...)``, or ``(N,) + spatial`` (one map per sample, as CAM
    methods return for ``(N, C, H, W)`` inputs)."""
    from .errors import PluginError

    def fail(why: str) -> XplainError:
        if builtin:
            return ModelError(f"method {method!r} {why}")
        return PluginError(f"method {method!r} of plugin {plugin!r} {why}; fix the plugin, or "
                           f"block it with XPLAIN_DISABLE_PLUGINS={plugin}")

    if not B.is_tensor(attributions):
        raise fail(f"returned {type(attributions).__module__}.{type(attributions).__name__}, not a "
                   f"{B.name} tensor (a method returns a tensor of the model's framework, or an "
                   f"xplain.MethodResult holding one)")
    shape, ishape = B.shape(attributions), B.shape(inputs)
    allowed = {ishape, (ishape[0],) + ishape[2:]} if len(ishape) > 2 else {ishape}
    if shape not in allowed:
        raise fail(f"returned attributions of shape {shape} for inputs of shape {ishape}; expected "
                   f"{' or '.join(str(s) for s in sorted(allowed))}")
    if B.device(attributions) != B.device(inputs):
        raise fail(f"returned attributions on {B.device(attributions)}, the inputs are on "
                   f"{B.device(inputs)}")
    if not B.all(B.isfinite(attributions)):
        rows = nonfinite_rows(B, attributions)
        if builtin:
            raise ModelError(f"the attributions of {method!r} hold NaN/Inf (samples {rows[:8]}) "
                             f"although the model's outputs are finite: its gradient overflows "
                             f"(e.g. through exp, or a sqrt/log near 0); explain in float64 "
                             f"(model.double(), x.double()) or choose another method")
        raise fail(f"returned NaN/Inf attributions (samples {rows[:8]})")


def call_model(B: Any, model: Any, x: Any) -> Any:
    """``model(x)``; a framework error raised by the model's forward becomes an
    :class:`~xplain.errors.InputError` naming the input's shape and what the model expects (every
    forward pass xplain runs goes through here: probes included)."""
    try:
        return B.forward(model, x)
    except XplainError:
        raise
    except Exception as exc:
        raise InputError(f"the model's forward pass failed on inputs of shape {B.shape(x)} "
                         f"({B.dtype_name(x)}): {type(exc).__name__}: {str(exc).strip()[:400]}"
                         f"{input_hint(B, model, x)}; check the inputs' shape, channels and "
                         f"dtype against what the model was built for") from exc


#: What ``output=`` may be (:func:`select_output`), in words for messages.
OUTPUT_SELECTORS = ("an index (output=0) for a tuple/list, a key or attribute name "
                    "(output='logits') for a dict or object, or a function of the model's output "
                    "(output=lambda out: out[0])")

_SHOWN_ITEMS = 8  # items of a model's output listed in a message


def _part(B: Any, value: Any) -> str:
    """One item of a model's output in words: ``tensor (2, 10)``, ``None``, ``tuple of 2``."""
    if B.is_tensor(value):
        return f"tensor {B.shape(value)}"
    if isinstance(value, (tuple, list, Mapping)):
        return f"{type(value).__name__} of {len(value)}"
    return "None" if value is None else type(value).__name__


def _tensor_attributes(B: Any, obj: Any) -> dict[str, Any]:
    """The public attributes of ``obj`` that hold tensors (instance attributes only: reading
    them runs no code, unlike properties)."""
    try:
        items = vars(obj).items()
    except TypeError:  # no __dict__ (slots)
        return {}
    return {k: v for k, v in items if not k.startswith("_") and B.is_tensor(v)}


def describe_output(B: Any, out: Any) -> str:
    """A model's raw output in words, listing its items (``a tuple of 3 items: [0] tensor
    (2, 10), ...``), for messages that ask the user to select the scores with ``output=``."""
    kind = type(out).__name__
    if B.is_tensor(out):
        return f"one tensor of shape {B.shape(out)}"
    if isinstance(out, Mapping):
        parts = [f"{k!r}: {_part(B, v)}" for k, v in list(out.items())[:_SHOWN_ITEMS]]
        return f"a {kind} with {len(out)} keys {{{', '.join(parts)}{', ...' if len(out) > _SHOWN_ITEMS else ''}}}"
    if isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)  # a named tuple
        names = [f"{f}=" for f in fields] if fields else [f"[{i}] " for i in range(len(out))]
        parts = [n + _part(B, v) for n, v in list(zip(names, out))[:_SHOWN_ITEMS]]
        what = f"a named tuple {kind}" if fields else f"a {kind}"
        return (f"{what} of {len(out)} items ({', '.join(parts)}"
                f"{', ...' if len(out) > _SHOWN_ITEMS else ''})")
    attrs = _tensor_attributes(B, out)
    if attrs:
        parts = [f".{k} {_part(B, v)}" for k, v in list(attrs.items())[:_SHOWN_ITEMS]]
        return f"a {type(out).__module__}.{kind} object with tensor attributes ({', '.join(parts)})"
    return f"a {type(out).__module__}.{kind} object"


def _suggest_selector(B: Any, out: Any) -> str:
    """``output=`` for the first item of ``out`` that looks like class scores (a 2-D tensor),
    as a hint; the user still decides which item is the one to explain."""
    if isinstance(out, Mapping):
        items = list(out.items())
    elif isinstance(out, (tuple, list)):
        fields = getattr(out, "_fields", None)
        items = list(zip(fields, out)) if fields else list(enumerate(out))
    else:
        items = list(_tensor_attributes(B, out).items())
    for key, value in items:
        if B.is_tensor(value) and len(B.shape(value)) == 2:
            return f"output={key!r}"
    return "output=lambda out: ... (a function returning the (batch, classes) scores)"


def selector_name(output: Any) -> str:
    """``output=``'s value as the user wrote it, for messages (a function by its name)."""
    if callable(output) and not isinstance(output, (numbers.Integral, str)):
        return getattr(output, "__name__", type(output).__name__)
    return repr(output)


def select_output(B: Any, out: Any, output: Any = None) -> Any:
    """The tensor of class scores in a model's raw output ``out``, chosen by ``output=``.

    ``output`` is ``None`` (the model returns the scores tensor itself), an int (an item of a
    tuple/list, negative counts from the end), a str (a key of a dict, else an attribute of an
    object or named tuple) or a callable ``out -> tensor``. Anything that does not select a
    tensor is refused with the output's structure in the message, never guessed: a model that
    returns several tensors (GoogLeNet's auxiliary logits, a segmentation model's ``"aux"``)
    is explained only for the one the user names. A selector applied to a single tensor is
    refused too: ``tensor[0]`` would be the first sample's row, not a choice among outputs.
    """
    what = lambda: describe_output(B, out)  # noqa: E731 - built only for a message
    if output is None:
        if B.is_tensor(out):
            return out
        raise ModelError(f"the model returned {what()}, not a tensor of class scores; pass "
                         f"{_suggest_selector(B, out)} to xplain.explain to say which item to "
                         f"explain (output= takes {OUTPUT_SELECTORS}), or wrap it so that it "
                         f"returns that tensor")
    name = selector_name(output)
    if isinstance(output, (numbers.Integral, str)) and B.is_tensor(out):
        raise OptionError(f"output={name} selects an item of a tuple, dict or object the model "
                          f"returns, but it returned {what()} (xplain runs the model in eval "
                          f"mode, where torchvision's GoogLeNet and Inception3 return only their "
                          f"main logits); remove output=, or pass output=lambda out: ... to "
                          f"transform the tensor")
    if isinstance(output, str):
        picked = _by_name(B, out, output, what)
    elif isinstance(output, numbers.Integral):
        picked = _by_index(out, int(output), what)
    else:
        picked = _by_function(out, output, name, what)
    if not B.is_tensor(picked):
        raise OptionError(f"output={name} selected {_part(B, picked)} from {what()}, not a "
                          f"{B.name} tensor; pass a selector that picks the (batch, classes) "
                          f"scores tensor")
    return picked


def _by_name(B: Any, out: Any, key: str, what: Callable[[], str]) -> Any:
    if isinstance(out, Mapping):
        if key not in out:
            raise OptionError(f"output={key!r}: the model returned {what()}, without the key "
                              f"{key!r}; pass one of its keys {list(out)[:_SHOWN_ITEMS]}")
        return out[key]
    fields = getattr(out, "_fields", None)
    if (fields is not None and key in fields) or key in _tensor_attributes(B, out):
        return getattr(out, key)
    raise OptionError(f"output={key!r}: the model returned {what()}, which has no key or tensor "
                      f"attribute {key!r}; pass {OUTPUT_SELECTORS}")


def _by_index(out: Any, index: int, what: Callable[[], str]) -> Any:
    if not isinstance(out, (tuple, list)):
        raise OptionError(f"output={index!r} indexes a tuple or list, but the model returned "
                          f"{what()}; pass {OUTPUT_SELECTORS}")
    if not -len(out) <= index < len(out):
        raise OptionError(f"output={index!r} is out of range: the model returned {what()}; pass "
                          f"an index in [0, {len(out) - 1}]")
    return out[index]


def _by_function(out: Any, fn: Callable[[Any], Any], name: str, what: Callable[[], str]) -> Any:
    try:
        return fn(out)
    except XplainError:
        raise
    except Exception as exc:
        raise OptionError(f"output={name} raised {type(exc).__name__}: {str(exc).strip()[:300]} on "
                          f"the model's output, {what()}; fix the function so that it returns "
                          f"the (batch, classes) scores tensor") from exc


def input_hint(B: Any, model: Any, x: Any) -> str:
    """What the model's first conv/linear layer expects, when the inputs do not fit it (``""``
    when nothing is known or they fit)."""
    try:
        first = next((i for i in B.layers(model) if i.kind in ("conv", "linear")), None)
    except Exception:
        return ""
    if first is None:
        return ""
    shape = B.shape(x)
    w = B.shape(first.params["weight"])
    if first.kind == "conv":
        nd, cin = len(w) - 2, w[1] * first.attrs.get("groups", 1)
        if len(shape) == nd + 1:
            return (f". The inputs look unbatched: the first layer {first.name!r} takes "
                    f"(N, {cin}, ...) — add a batch dimension (x[None] / x.unsqueeze(0))")
        if len(shape) == nd + 2 and shape[1] != cin:
            return (f". The first layer {first.name!r} takes {cin} input channels, the inputs "
                    f"have {shape[1]} (grayscale vs RGB? channels-last images need "
                    f"x.permute(0, 3, 1, 2) / x.transpose([0, 3, 1, 2]))")
    elif first.kind == "linear" and len(shape) == 2 and shape[1] != w[1]:
        return (f". The first layer {first.name!r} takes {w[1]} features, the inputs have "
                f"{shape[1]}")
    return ""
