"""The public entry point: :func:`explain` and the :class:`Explanation` it returns."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import backend_for
from .checks import (FLOAT_DTYPES, OUTPUT_SELECTORS, check_model_dtype, check_parameters, check_result,
                     nonfinite_rows)
from .errors import InputError, OptionError
from .guard import borrowed
from .options import NonNegativeInt, PositiveInt, check_options, describe, problem
from .plugins import DISABLE_ENV, registry
from .run import MethodResult, Run
from .targets import parse_targets

_RUN_OPTIONS = ("seed", "max_batch", "memory_budget", "progress", "output")
BUILTIN_METHODS = "builtin_methods"  # the entry-point name of the built-in methods plugin


@dataclass
class Explanation:
    """The result of :func:`explain`.

    Attributes:
        attributions: tensor of the model's framework and device; shape of the input unless the
            method documents otherwise (CAM maps are ``(N, H, W)``).
        method: the method's registered name.
        targets: the explained class per sample, ``int64[N]``.
        backend: the backend's name (``"torch"``, ``"paddle"``).
        extras: method-specific results (``relevance_sum``, ``delta``, ``outputs`` ...), also
            readable as attributes: ``exp.relevance_sum``. With ``target=None``, ``scores``
            holds the model's scores on the inputs (numpy ``(N, classes)``) that the targets
            were taken from, at no extra cost.
    """

    attributions: Any
    method: str
    targets: np.ndarray
    backend: str
    extras: dict[str, Any] = field(default_factory=dict)
    _backend_obj: Any = field(default=None, repr=False)
    #: the explained inputs (the caller's tensor, not a copy), for figures
    inputs: Any = field(default=None, repr=False)

    def numpy(self) -> np.ndarray:
        """A numpy copy of :attr:`attributions` (for plotting and files)."""
        return self._backend_obj.to_numpy(self.attributions)

    def __repr__(self) -> str:
        from .display import summary_line

        return summary_line(self)

    def _repr_html_(self) -> str:
        from .display import html_view

        return html_view(self)

    def _repr_png_(self) -> bytes:
        from .display import png_bytes

        return png_bytes(self)

    def figure(self, max_images: int = 8) -> np.ndarray:
        """Per sample (at most ``max_images``): the input (scaled by its own range), the heat
        map with a colour bar in the attribution's units, the positive evidence over the input;
        RGB uint8."""
        from .display import figure

        return figure(self, max_images)

    def show(self, max_images: int = 8) -> None:
        """Display :meth:`figure` (inline in a notebook, else with matplotlib)."""
        from .display import show

        show(self, max_images)

    def save(self, path: str | os.PathLike, max_images: int = 8) -> Any:
        """Write :meth:`figure` as a PNG; returns the path."""
        from .display import save

        return save(self, path, max_images)

    def __getattr__(self, name: str) -> Any:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(f"Explanation has no attribute {name!r}; extras of this method: "
                             f"{sorted(extras)}")


def methods(model: Any = None) -> list[str]:
    """Names of every registered attribution method (built-in and from plugins); with
    ``model``, those that apply to it: a method that reads layers of particular kinds (attention
    rollout reads attention layers; its function's ``needs_layers``) is left out for a model
    without any. Such a method refuses those models with a ``LayerError``."""
    entries = registry().methods
    if model is None:
        return sorted(entries)
    kinds = {info.kind for info in backend_for(model).layers(model)}

    def applies(name: str) -> bool:
        needed = set(getattr(entries[name].fn, "needs_layers", ()))
        return not needed or bool(kinds & needed)
    return sorted(n for n in entries if applies(n))


def validate_inputs(backend: Any, inputs: Any, model: Any = None) -> None:
    """Refuse inputs that would give meaningless attributions (docs/architecture.md §7, "right or
    refused"): wrong type, rank, dtype or device, an empty batch, NaN/Inf, tensors that cannot
    take gradients."""
    if not backend.is_tensor(inputs):
        raise InputError(f"inputs must be a {backend.name} tensor, got {type(inputs).__name__}; "
                         f"convert it first (e.g. torch.as_tensor / paddle.to_tensor)")
    why = backend.gradients_unavailable(inputs)
    if why is not None:
        raise InputError(why)
    device = backend.device(inputs)
    if device == "meta" or "meta" in device.lower().split("("):
        raise InputError("inputs are on the 'meta' device and hold no values; pass real tensors")
    shape = backend.shape(inputs)
    if len(shape) < 2:
        raise InputError(f"inputs have shape {shape}; add a batch dimension first "
                         f"(e.g. x[None] / x.unsqueeze(0) for a single image)")
    if shape[0] == 0:
        raise InputError("inputs hold an empty batch; pass at least one sample")
    dtype = backend.dtype_name(inputs)
    if not dtype.startswith(("float", "bfloat")):
        raise InputError(f"inputs have dtype {dtype}; gradients need floating point — convert "
                         f"with .float() / .astype('float32') (and normalise as in training)")
    if dtype not in FLOAT_DTYPES:
        raise InputError(f"inputs have dtype {dtype}; xplain computes attributions in float32 or "
                         f"float64 (half precision loses the small terms an attribution sums) — "
                         f"explain a float32 copy of the model on x.float() / x.astype('float32')")
    if model is not None:
        check_model_dtype(backend, model, inputs)
    if not backend.all(backend.isfinite(inputs)):
        raise InputError(f"inputs contain NaN or Inf (samples {nonfinite_rows(backend, inputs)[:8]});"
                         f" clean them (e.g. nan_to_num) before explaining — attributions of "
                         f"non-finite inputs are meaningless")


#: The run options of :func:`explain` and what each accepts (checked like method options).
_RUN_OPTION_HINTS: dict[str, Any] = {
    "seed": NonNegativeInt | None,
    "max_batch": PositiveInt | None,
    "progress": bool | None,
    "backend": str | None,
    "output": int | str | Callable | None,
}

#: Words for a run option's accepted values where :func:`~xplain.options.describe` has none.
_RUN_OPTION_WORDS = {"output": OUTPUT_SELECTORS + ", or None when the model returns the scores"}


def _check_run_options(values: dict[str, Any]) -> None:
    for name, value in values.items():
        why = problem(value, _RUN_OPTION_HINTS[name])
        if why is not None:
            words = _RUN_OPTION_WORDS.get(name) or describe(_RUN_OPTION_HINTS[name])
            raise OptionError(f"{name}={value!r} {why}; pass {words}")


def _method_entry(method: Any) -> Any:
    reg = registry()
    if not isinstance(method, str):
        raise OptionError(f"method must be a method name (str), got {type(method).__name__}; "
                          f"pass one of xplain.methods()")
    if method not in reg.methods:
        if not reg.methods:
            raise OptionError(f"unknown method {method!r}: no methods are registered — are all "
                              f"plugins blocked by {DISABLE_ENV}={os.environ.get(DISABLE_ENV, '')!r}? "
                              f"unset it (the built-ins are the plugin 'builtin_methods')")
        raise OptionError(f"unknown method {method!r}; use one of the available methods: "
                          f"{', '.join(sorted(reg.methods))}")
    return reg.methods[method]


def explain(model: Any, inputs: Any, method: str = "saliency", target: Any = None, *,
            backend: str | None = None, seed: int | None = 0, max_batch: int | None = None,
            memory_budget: int | str = "2GB", progress: bool | None = None,
            output: int | str | Callable[[Any], Any] | None = None, **options: Any) -> Explanation:
    """Explain ``model``'s prediction on ``inputs`` with an attribution ``method``.

    Args:
        model: ``torch.nn.Module`` or ``paddle.nn.Layer`` (any registered backend's model)
            returning class scores of shape ``(N, classes)``, or a tuple/dict/object holding
            them (see ``output``). Borrowed: left exactly as found,
            also when the call raises; calls on one model from several threads are serialised.
        inputs: float32/float64 tensor ``(N, ...)`` of the model's framework, dtype and device,
            typically ``(N, C, H, W)``.
        method: a name from :func:`methods`.
        target: class to explain: ``None`` (each sample's argmax), an int, or one int per sample.
        backend: force a backend by name instead of detecting it from the model's type.
        seed: seed (an int ``>= 0``) of the numpy generator that draws all randomness (noise,
            masks, baselines).
        max_batch / memory_budget: bound on samples per forward pass for multi-pass methods.
        progress: show a progress bar (default: only when stderr is a terminal).
        output: where the ``(N, classes)`` scores are in the model's output, for models that
            return more than one tensor: an index (``output=0``: GoogLeNet's ``(out, aux1,
            aux2)``), a dict key or attribute name (``output="out"``, ``output="logits"``) or a
            function (``output=lambda out: out[0]``). Every method explains that tensor (CAM's
            automatic layer is one that feeds it). ``None``: the model returns the scores tensor;
            an output of several tensors is then refused with a list of what it holds.
        **options: method options, checked against the method's signature and type hints;
            unknown names and values of the wrong type or range are an error, never ignored.

    Returns:
        An :class:`Explanation` whose ``attributions`` are a tensor of the model's framework.

    Raises:
        XplainError: a subclass naming the problem and the fix, for every bad input, option,
            target, model or plugin result; never a silently wrong map.
    """
    entry = _method_entry(method)
    if not entry.accepts_any_option:
        unknown = sorted(set(options) - set(entry.options))
        if unknown:
            raise OptionError(f"method {method!r} has no option(s) {unknown}; use its options "
                              f"{list(entry.options) or '(none)'} (plus {list(_RUN_OPTIONS)})")
    check_options(method, entry.fn, options)
    _check_run_options({"seed": seed, "max_batch": max_batch, "progress": progress,
                        "backend": backend, "output": output})
    B = backend_for(model, name=backend)
    if not B.is_model(model):
        raise InputError(f"model must be a {B.name} model, got {type(model).__name__}")
    validate_inputs(B, inputs, model)
    check_parameters(B, model)
    targets = parse_targets(target, B.shape(inputs)[0], B)
    builtin = entry.plugin == BUILTIN_METHODS
    who = f"method {method!r}" + ("" if builtin else f" of plugin {entry.plugin!r}")
    with B.gradient_lock(), borrowed(B, model, deep=not builtin, who=who,
                                     run_forward=lambda m: B.forward(m, inputs[:1])):
        run = Run(B, model, inputs, targets, seed=seed, max_batch=max_batch,
                  memory_budget=memory_budget, progress=progress, method=method, output=output)
        result = entry.fn(run, **options)
        if not isinstance(result, MethodResult):
            result = MethodResult(result)
        check_result(B, inputs, result.attributions, method=method, plugin=entry.plugin,
                     builtin=builtin)
        resolved = run.resolve_targets()
        extras = dict(result.extras)
        if run.scores is not None and "scores" not in extras:
            extras["scores"] = run.scores
    return Explanation(result.attributions, method, resolved, B.name, extras, B, inputs)


def predict(model: Any, inputs: Any, *, output: int | str | Callable[[Any], Any] | None = None,
            backend: str | None = None) -> np.ndarray:
    """``model``'s class scores on ``inputs`` as float numpy ``(N, classes)``, computed without
    gradients, with the same checks and ``output=`` selection as :func:`explain` (the model is
    borrowed as there: left exactly as found)."""
    _check_run_options({"seed": 0, "max_batch": None, "progress": None, "backend": backend,
                        "output": output})
    B = backend_for(model, name=backend)
    if not B.is_model(model):
        raise InputError(f"model must be a {B.name} model, got {type(model).__name__}")
    validate_inputs(B, inputs, model)
    with B.gradient_lock(), borrowed(B, model, deep=False, who="predict",
                                     run_forward=lambda m: B.forward(m, inputs[:1])):
        run = Run(B, model, inputs, None, output=output, method="predict")
        with B.no_grad():
            return B.to_numpy(run.forward(inputs))
